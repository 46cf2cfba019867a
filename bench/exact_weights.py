"""Exact fp32 weights from the checkpoint vs the in-place upcast, on a full-size SD1.5-architecture VAE.

A random (seeded) AutoencoderKL with SD1.5's configuration is saved as an fp32 safetensors
"checkpoint" (``first_stage_model.`` keys, plus a tensor that is not the VAE), then loaded in half
precision as a host loads it.  Each configuration runs in a fresh process and times a guarded decode
(``precision_guard`` + ``fp32_vae`` around ``vae.decode``):

* upcast -- ``fp32_vae(vae)``: the half-precision weights cast to fp32 in place for the call;
* exact  -- ``fp32_vae(vae, exact=exact_weights(vae, [checkpoint]).tensors)``: the file's own fp32
  values (first call: file read and content match; later calls: the cached tensors);
* reference -- the same checkpoint loaded in fp32, decoded under the guard alone.

Printed: first-call time (exact: including ``exact_weights()``), later-call median, the fp32 swap in
and out alone (what differs between the modes; median of 5), peak memory above the loaded model
during the calls (CPU: ``ru_maxrss``; CUDA: ``torch.cuda.max_memory_allocated``, and what stays
allocated), the exact-weights cache size, exact/upcast ratios, and whether each output equals the
reference bit for bit.  The CPU stands in for a GPU running a bf16/fp16 VAE; ``--device cuda`` runs
the same.

    python bench/exact_weights.py [--size 64] [--calls 3] [--dtype bf16] [--device cpu]

Needs diffusers and safetensors (``pip install -e .[bench,diffusers]``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFIX = "first_stage_model."
CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def write_checkpoint(path: str) -> int:
    """SD1.5's VAE architecture, random weights (seed 0), fp32, under the checkpoint's VAE prefix."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = AutoencoderKL(**CONFIG)
    tensors = {PREFIX + k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(320, 4, 3, 3)  # not the VAE
    save_file(tensors, path)
    return sum(p.numel() for p in vae.parameters())


# --- one configuration, in its own process -------------------------------------------------------------


def load_vae(path: str, dtype, device: str):
    """Built on the meta device, each tensor read with plain file reads and cast on its own (a
    memory-mapped file would count in RSS while open): the load stays below the peak the calls
    reach, so ``ru_maxrss`` measures the calls."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**CONFIG)
    state = {}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        for key, info in header.items():
            if not key.startswith(PREFIX):
                continue
            assert info["dtype"] == "F32", info
            begin, end = info["data_offsets"]
            f.seek(8 + header_len + begin)
            raw = bytearray(f.read(end - begin))
            tensor = torch.frombuffer(raw, dtype=torch.float32).reshape(info["shape"])
            state[key[len(PREFIX):]] = tensor.to(device=device, dtype=dtype, copy=True)
            del raw, tensor
    vae.load_state_dict(state, assign=True)
    return vae.eval()


def child(args: argparse.Namespace) -> None:
    import gc
    import resource

    import torch

    from lib_sdfix.precision import precision_guard
    from lib_sdfix.vae.exact import exact_weights
    from lib_sdfix.vae.fp32 import fp32_vae

    torch.manual_seed(1)
    cuda = args.device.startswith("cuda")
    dtype = torch.float32 if args.child == "reference" else getattr(torch, DTYPES[args.dtype])
    vae = load_vae(args.checkpoint, dtype, args.device)
    latent = torch.randn(1, 4, args.size, args.size).to(args.device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def guarded(body):
        with torch.no_grad(), precision_guard():
            if args.child == "exact":
                cache = exact_weights(vae, [args.checkpoint])
                assert cache.mode == "exact", cache.reason
                with fp32_vae(vae, exact=cache.tensors) as mode:
                    return mode, body()
            with fp32_vae(vae) as mode:
                return mode, body()

    def decode():
        return guarded(lambda: vae.decode(latent).sample)

    gc.collect()
    sync()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    times = []
    match_s = None
    for i in range(1 + args.calls):
        start = time.perf_counter()
        if i == 0 and args.child == "exact":
            exact_weights(vae, [args.checkpoint])  # file read + match, timed on its own too
            match_s = time.perf_counter() - start
        mode, out = decode()
        sync()
        times.append(time.perf_counter() - start)
        if i == 0:
            first = out.float().cpu()
        del out
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    swaps = []
    for _ in range(5):  # what differs between the modes: getting the fp32 weights in and out
        start = time.perf_counter()
        guarded(sync)
        swaps.append(time.perf_counter() - start)
    result = {
        "mode": mode,
        "first_s": times[0],
        "later_s": statistics.median(times[1:]) if args.calls else None,
        "match_s": match_s,
        "rss_delta": rss_peak - rss_before,
        "swap_s": statistics.median(swaps),
        "held_gpu": (torch.cuda.memory_allocated() - gpu_before) if cuda else None,
        "gpu_delta": (torch.cuda.max_memory_allocated() - gpu_before) if cuda else None,
        "cache_bytes": exact_weights(vae, [args.checkpoint]).nbytes if args.child == "exact" else 0,
        "weights_dtype": str(next(vae.parameters()).dtype),
    }
    torch.save(first, os.path.join(os.path.dirname(args.checkpoint), f"{args.child}.pt"))
    print("RESULT " + json.dumps(result))


# --- the comparison -------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, kind: str, checkpoint: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--checkpoint", checkpoint, "--size", str(args.size),
               "--calls", str(args.calls), "--dtype", args.dtype, "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{kind} run failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def mib(n: float) -> str:
    return f"{n / 2 ** 20:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent side (64 = a 512x512 decode)")
    parser.add_argument("--calls", type=int, default=None,
                        help="later calls timed after the first, median reported (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="the dtype the VAE is loaded in")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--child", choices=["upcast", "exact", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.calls is None:
        args.calls = 5 if args.device.startswith("cuda") else 1
    if args.size < 1 or args.calls < 0:
        parser.error("--size must be >= 1 and --calls >= 0")
    started = time.perf_counter()
    load = os.getloadavg()

    import torch

    with tempfile.TemporaryDirectory(prefix="sdfix-exact-") as tmp:
        checkpoint = os.path.join(tmp, "model.safetensors")
        params = write_checkpoint(checkpoint)
        results = {kind: run_child(args, kind, checkpoint) for kind in ("reference", "upcast", "exact")}
        outputs = {kind: torch.load(os.path.join(tmp, f"{kind}.pt"), weights_only=True) for kind in results}
        file_bytes = os.path.getsize(checkpoint)

    cuda = args.device.startswith("cuda")
    memory = "gpu_delta" if cuda else "rss_delta"
    memory_label = "peak GPU mem above model" if cuda else "peak RSS above model"
    side = args.size * 8
    up, ex = results["upcast"], results["exact"]
    for kind in ("upcast", "exact"):
        if results[kind]["weights_dtype"] != f"torch.{DTYPES[args.dtype]}":
            print(f"WARNING: {kind}: the VAE was left in {results[kind]['weights_dtype']}")
    print(f"SD1.5-architecture VAE ({params / 1e6:.1f}M parameters, random), {args.dtype} on {args.device}, "
          f"{side}x{side} decode, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"checkpoint {file_bytes / 2 ** 20:.0f} MiB fp32; {args.calls} later call(s), each mode in a fresh process; "
          f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'':28s}{'upcast':>14s}{'exact':>14s}{'exact/upcast':>14s}")
    print(f"{'first call':28s}{up['first_s']:13.3f}s{ex['first_s']:13.3f}s{ex['first_s'] / up['first_s']:14.3f}")
    print(f"{'  of which exact_weights()':28s}{'':>14s}{ex['match_s']:13.3f}s")
    print(f"{'fp32 in+out, no decode':28s}{up['swap_s']:13.3f}s{ex['swap_s']:13.3f}s{ex['swap_s'] / up['swap_s']:14.3f}")
    if args.calls:
        print(f"{'later calls (median)':28s}{up['later_s']:13.3f}s{ex['later_s']:13.3f}s{ex['later_s'] / up['later_s']:14.3f}")
    print(f"{memory_label:28s}{mib(up[memory]):>14s}{mib(ex[memory]):>14s}"
          f"{(ex[memory] / up[memory]) if up[memory] else float('nan'):14.3f}")
    if cuda:
        print(f"{'peak RSS above the model':28s}{mib(up['rss_delta']):>14s}{mib(ex['rss_delta']):>14s}")
    if cuda:
        print(f"{'GPU memory still held after':28s}{mib(up['held_gpu']):>14s}{mib(ex['held_gpu']):>14s}")
    print(f"{'cache (fp32, CPU)':28s}{mib(up['cache_bytes']):>14s}{mib(ex['cache_bytes']):>14s}"
          f"   ({ex['cache_bytes']} bytes)")
    reference = outputs["reference"]
    for kind in ("upcast", "exact"):
        out = outputs[kind]
        same = out.shape == reference.shape and torch.equal(out.view(torch.int32), reference.view(torch.int32))
        diff = (out - reference).abs().max().item()
        print(f"{kind} decode ({results[kind]['mode']}) == fp32 reference bit for bit: {same}"
              f"  (max abs diff {diff:.3g})")
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
