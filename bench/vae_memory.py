"""Peak memory and time of a VAE decode: native dtype, fp32 untiled, fp32 tiled (SD1.5 and SDXL VAE
architectures, random seeded weights), each configuration in a fresh process.

* native: the VAE in its own dtype (fp16 on CUDA, bf16 on the CPU), diffusers' plain ``decode``.
* fp32: SDFix's untiled guarded decode (the VAE cast to fp32 in place for the call).
* tiled: SDFix's tiled fp32 decode (``lib_sdfix.vae.call``, tiling forced).

Peak memory is what the call adds to a process holding the native VAE and the latent: on CUDA
``max_memory_allocated`` minus what was allocated before; on the CPU the peak RSS (VmHWM, reset
through /proc/self/clear_refs) minus the RSS before, with glibc told to return freed memory at once
(``MALLOC_MMAP_THRESHOLD_``), as RSS otherwise keeps whatever the heap once held.  Time is the call's
wall time after a small warm-up; with ``--repeat`` the fastest run counts (other work on the
machine only ever slows a run down).  ``--allocator default`` runs the children with glibc's own
settings, as a WebUI runs: times as users see them (freed strips are reused from the heap while the
untiled call's large tensors are mapped afresh), peaks then not exact.  Targets: tiled peak <= 1.1 x
native peak, tiled time <= 1.3 x fp32 time, tiled vs fp32 output within 1/255 mean absolute
difference with no seam.  A heatmap PNG
of |tiled - fp32| (brightest = the largest difference) is written to ``--out`` for every size, and
the estimate of ``lib_sdfix.vae.estimate`` is printed next to each measurement.

    python bench/vae_memory.py [--device cpu|cuda] [--archs sd15,sdxl] [--sizes 512,1024] [--repeat 1]
                               [--allocator exact|default] [--out DIR]

Needs diffusers (``pip install -e .[bench]``).  On this 2-core CPU a 512x512 fp32 decode takes about
17 s, a 1024x1024 one about 70 s and a 2048x2048 one about 6 min with a 16 GB peak (the untiled fp32
child): the default is 512 for both architectures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("native", "fp32", "tiled")
# The two VAEs differ in their weights and scaling factor only, not in their shapes.
ARCHS: Dict[str, Dict[str, Any]] = {
    "sd15": dict(sample_size=512, scaling_factor=0.18215),
    "sdxl": dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
}


def build_vae(arch: str):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed({"sd15": 0, "sdxl": 1}[arch])
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, **ARCHS[arch]).eval()


# --- one configuration (child process) -------------------------------------------------------------


def _rss() -> Dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def child(arch: str, size: int, mode: str, device_name: str, out: Path) -> Dict[str, Any]:
    import torch

    from lib_sdfix.vae.call import guarded_call
    from lib_sdfix.vae.estimate import estimate
    from lib_sdfix.vae.net import network_of

    device = torch.device(device_name)
    native = torch.float16 if device.type == "cuda" else torch.bfloat16
    vae = build_vae(arch).to(device=device, dtype=native)
    vae.requires_grad_(False)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(size)).to(device, native)

    def decode(z: Any) -> Any:
        with torch.no_grad():
            if mode == "native":
                return vae.decode(z).sample
            if mode == "fp32":
                return guarded_call(lambda t: vae.decode(t).sample, vae, z, tiling=False)
            return guarded_call(lambda t: vae.decode(t).sample, vae, z, tiling=True)

    decode(latent[:, :, :8, :8])  # warm-up: kernels, allocator, first-call setup
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_rss()
        before = _rss()["VmRSS"]
    start = time.perf_counter()
    image = decode(latent)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss()["VmHWM"]) - before
    if mode != "native":
        torch.save(image.float().cpu(), out / f"{arch}-{size}-{mode}.pt")
    graph = network_of(vae.decoder)
    cast = sum(4 * p.numel() for p in vae.parameters())
    est = estimate(graph, latent.shape, native, cast_bytes=cast, device=device)
    estimated = {"native": est.native, "fp32": est.fp32, "tiled": est.tiled}[mode]
    return {"arch": arch, "size": size, "mode": mode, "device": device_name, "peak": peak, "seconds": seconds,
            "estimate": estimated, "strip_bytes": est.strip_bytes}


# --- the comparison (parent process) ------------------------------------------------------------------


def run_child(arch: str, size: int, mode: str, device: str, out: Path, allocator: str = "exact") -> Dict[str, Any]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if allocator == "exact":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    command = [sys.executable, __file__, "--child", arch, str(size), mode, "--device", device, "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arch} {size} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seam_rows(graph: Any, latent: int, strip_bytes: int) -> List[int]:
    """Output rows next to a strip boundary of any operation (boundaries mapped to output pixels)."""
    from lib_sdfix.vae.estimate import walk

    rows = set()
    height = latent
    ops = list(walk(graph, latent, latent))
    out_h = graph.output_size(latent, latent)[0]
    for _op, _cin, _cout, _pin, pout, widest, width in ops:
        height = pout // width
        per = max(1, strip_bytes // (4 * widest * width))
        scale = out_h // height
        for boundary in range(per, height, per):
            rows.update({boundary * scale - 1, boundary * scale})
    return sorted(r for r in rows if 0 <= r < out_h)


def compare(arch: str, size: int, out: Path, strip_bytes: int) -> Dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    from lib_sdfix.vae.net import network_of

    untiled = torch.load(out / f"{arch}-{size}-fp32.pt", weights_only=True)[0]
    tiled = torch.load(out / f"{arch}-{size}-tiled.pt", weights_only=True)[0]
    diff = ((tiled - untiled).abs() / 2.0 * 255.0)  # [-1, 1] output -> 0..255 pixel units
    per_pixel = diff.amax(dim=0).numpy()
    graph = network_of(build_vae(arch).decoder)
    seams = seam_rows(graph, size // 8, strip_bytes)
    mask = np.zeros(per_pixel.shape[0], dtype=bool)
    mask[seams] = True
    along = float(per_pixel[mask].mean()) if mask.any() else 0.0
    elsewhere = float(per_pixel[~mask].mean())
    scale = 255.0 / max(float(per_pixel.max()), 1e-12)
    Image.fromarray(np.clip(per_pixel * scale, 0, 255).astype(np.uint8), "L").save(out / f"{arch}-{size}-heatmap.png")
    return {"max": float(diff.max()), "mean": float(diff.mean()), "seam": along / elsewhere if elsewhere else 1.0,
            "seam_rows": len(seams)}


def _mb(value: float) -> str:
    return f"{value / 2 ** 20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default="sd15,sdxl")
    parser.add_argument("--sizes", default="512", help="output sides, comma-separated (512, 1024, 2048)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per configuration (fastest counts)")
    parser.add_argument("--allocator", choices=("exact", "default"), default="exact",
                        help="CPU: exact = freed memory returned at once (exact peak RSS, the default); "
                             "default = glibc as a WebUI runs it (times as users see them)")
    parser.add_argument("--out", default="bench-out/vae_memory")
    parser.add_argument("--child", nargs=3, metavar=("ARCH", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        arch, size, mode = args.child
        print(json.dumps(child(arch, int(size), mode, args.device, out)))
        return

    archs = [a for a in args.archs.split(",") if a]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    results: Dict[Any, Dict[str, Any]] = {}
    for arch in archs:
        for size in sizes:
            for mode in modes:
                runs = [run_child(arch, size, mode, args.device, out, args.allocator)
                        for _ in range(max(1, args.repeat))]
                best = min(runs, key=lambda r: r["seconds"])
                best["peak"] = max(r["peak"] for r in runs)  # memory: the worst run
                results[(arch, size, mode)] = best
                print(f"{arch} {size} {mode}: peak {_mb(best['peak'])} MiB (estimated {_mb(best['estimate'])}), "
                      f"{best['seconds']:.2f} s", flush=True)

    allocator = "" if args.device.startswith("cuda") else f", {args.allocator} allocator"
    print(f"\nVAE decode on {args.device} ({'fp16' if args.device.startswith('cuda') else 'bf16'} native{allocator}), "
          f"peak memory the call adds (MiB) and time (s):\n")
    print("| arch | size | native peak | fp32 peak | tiled peak | tiled/native (<= 1.1) | fp32 time | tiled time "
          "| tiled/fp32 time (<= 1.3) | max diff (/255) | mean diff (/255) | seam ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        for size in sizes:
            row = {m: results.get((arch, size, m)) for m in MODES}
            if not all(row.values()):
                continue
            quality = compare(arch, size, out, row["tiled"]["strip_bytes"])
            print(f"| {arch} | {size}² | {_mb(row['native']['peak'])} | {_mb(row['fp32']['peak'])} "
                  f"| {_mb(row['tiled']['peak'])} | {row['tiled']['peak'] / row['native']['peak']:.2f} "
                  f"| {row['fp32']['seconds']:.1f} | {row['tiled']['seconds']:.1f} "
                  f"| {row['tiled']['seconds'] / row['fp32']['seconds']:.2f} | {quality['max']:.4f} "
                  f"| {quality['mean']:.5f} | {quality['seam']:.2f} |")
    print("\nEstimates (lib_sdfix.vae.estimate) vs measured peak:")
    for (arch, size, mode), r in results.items():
        print(f"  {arch} {size}² {mode}: estimated {_mb(r['estimate'])} MiB, measured {_mb(r['peak'])} MiB "
              f"({r['estimate'] / max(r['peak'], 1):.2f}x)")
    print(f"\nHeatmaps of |tiled - fp32|: {out}/<arch>-<size>-heatmap.png")


if __name__ == "__main__":
    main()
