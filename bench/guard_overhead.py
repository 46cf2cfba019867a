"""Cost of the precision guard on a full-size SD1.5-architecture VAE decoder (random weights).

Prints guarded/unguarded decode time measured side by side in one run (pairs alternate A B A B, the
order flipped every pair, the median of per-pair ratios reported), plus the guard's own enter/exit
cost measured in isolation.  Both run at the same dtype (fp32 VAE), so only the guard is compared.
Target: ratio <= 1.01.

    python bench/guard_overhead.py [--latent 16] [--pairs 7]

Needs diffusers (``pip install -e .[bench]``) for the AutoencoderKL architecture.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from lib_sdfix.precision import precision_guard
from lib_sdfix.vae.call import guarded_call


def sd15_vae():
    """SD1.5's AutoencoderKL configuration (83.7M parameters, 49.5M in the decoder), random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
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
    return vae.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=16, help="latent side (64 = a 512x512 decode)")
    parser.add_argument("--pairs", type=int, default=7, help="guarded/unguarded pairs to time")
    args = parser.parse_args()

    vae = sd15_vae()
    latent = torch.randn(1, 4, args.latent, args.latent)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True  # what the WebUI sets at start

    def plain():
        with torch.no_grad():
            return vae.decode(latent).sample

    def guarded():
        with torch.no_grad():
            return guarded_call(lambda z: vae.decode(z).sample, vae, latent, tiling=False)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    plain(), guarded()  # warm-up
    ratios, plain_times, guarded_times = [], [], []
    for i in range(args.pairs):
        order = (plain, guarded) if i % 2 == 0 else (guarded, plain)
        times = {fn: timed(fn) for fn in order}
        plain_times.append(times[plain])
        guarded_times.append(times[guarded])
        ratios.append(times[guarded] / times[plain])

    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        with precision_guard():
            pass
    guard_cost = (time.perf_counter() - start) / n

    side = args.latent * 8
    print(f"SD1.5 VAE decoder, {side}x{side} output, fp32, torch {torch.__version__}, {args.pairs} pairs")
    print(f"unguarded decode  median {statistics.median(plain_times) * 1000:9.1f} ms")
    print(f"guarded decode    median {statistics.median(guarded_times) * 1000:9.1f} ms")
    print(f"guard enter+exit  {guard_cost * 1e6:9.2f} us  ({guard_cost / statistics.median(plain_times):.2e} of a decode)")
    print(f"ratio guarded/unguarded (median of pairs): {statistics.median(ratios):.4f}  "
          f"[min {min(ratios):.4f}, max {max(ratios):.4f}]  target <= 1.01")


if __name__ == "__main__":
    main()
