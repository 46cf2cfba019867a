"""What a diagnosis sweep costs: at most the sum of its distinct samplings plus one decode per cell.

Runs sweeps on the diffusers front (the embedded tiny SD1.5, offline, any CPU; ``--model`` for a real
one) and measures, side by side in one run, the sweep as ``python -m lib_sdfix diagnose sweep`` runs it
(sampling, decodes, metrics, grid, chart, heatmaps) against its parts timed alone: each distinct
sampling once and each cell's decode once.  Rounds alternate sweep/parts (order flipped every round);
it prints the median of the per-round ratios (and fastest sweep / fastest parts, less sensitive to a
busy machine) with what the sweep counted (samplings, UNet calls, decodes).  Target: samplings ==
distinct values and decodes == cells, and a time ratio <= 1.10 (what the sweep adds is its metrics,
grid, chart and heatmaps); the precision sweep has two cells and one sampling.

    python bench/diagnose_cost.py [--rounds 5] [--steps 8] [--size 128] [--model DIR] [--device cpu]

Needs the ``[diffusers]`` extra.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWEEPS = (("precision", ("off", "on")), ("cfg_scale", (3.0, 7.0, 11.0)), ("steps", (4, 8)))


def _config(args: argparse.Namespace, axis: str, values: tuple):
    from lib_sdfix.cli.diagnose_run import DiagnoseConfig
    from lib_sdfix.diagnose.request import check_values

    checked = check_values(axis, list(values), "values", None)
    return DiagnoseConfig(kind="sweep", model=args.model, device=args.device, steps=args.steps, width=args.size,
                          height=args.size, sampler="Euler", schedule="Automatic", axis=axis, values=tuple(checked),
                          reference=checked[-1], progress=False)


def _sweep(pipe, config) -> float:
    from lib_sdfix.cli.diagnose_run import _sweep as run_sweep

    start = time.perf_counter()
    run_sweep(pipe, config)
    return time.perf_counter() - start


def _parts(pipe, config) -> float:
    """Each distinct sampling once, then one decode per cell -- nothing else."""
    from lib_sdfix.diagnose.plan import sweep_cells
    from lib_sdfix.settings import SDFixSettings

    cells = sweep_cells(config.axis, list(config.values), SDFixSettings())
    total, latents = 0.0, {}
    for cell in cells:
        fields = dict(cell.fields)
        if cell.fields not in latents:
            start = time.perf_counter()
            latents[cell.fields] = pipe.sample(steps=int(fields.get("steps", config.steps)),
                                               cfg=float(fields.get("cfg_scale", config.cfg_scale)),
                                               sampler=config.sampler, schedule=config.schedule)
            total += time.perf_counter() - start
        start = time.perf_counter()
        pipe.decode(latents[cell.fields], guarded=cell.settings.wants("precision_guard"))
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from lib_sdfix.cli.ab_run import diffusers_warnings_off
    from lib_sdfix.cli.diagnose_run import _Pipeline

    diffusers_warnings_off()
    if args.model is None and args.device == "cpu":
        torch.set_num_threads(1)  # the tiny model's ops are too small to split (as the CLI runs it)
    print(f"diffusers front, {args.model or 'embedded tiny SD1.5'} on {args.device}, {args.size}x{args.size}, "
          f"{args.steps} steps, {args.rounds} rounds; target: sweep/parts <= 1.10")
    for axis, values in SWEEPS:
        config = _config(args, axis, values)
        pipe = _Pipeline(config)
        _sweep(pipe, config), _parts(pipe, config)  # warm-up
        ratios, sweeps, parts = [], [], []
        for i in range(args.rounds):
            before = (pipe.counters.samplings, pipe.counters.unet_calls, pipe.counters.decodes)
            if i % 2 == 0:
                t_sweep, t_parts = _sweep(pipe, config), None
                counted = (pipe.counters.samplings, pipe.counters.unet_calls, pipe.counters.decodes)
                t_parts = _parts(pipe, config)
            else:
                t_parts = _parts(pipe, config)
                mid = (pipe.counters.samplings, pipe.counters.unet_calls, pipe.counters.decodes)
                t_sweep = _sweep(pipe, config)
                before = mid
                counted = (pipe.counters.samplings, pipe.counters.unet_calls, pipe.counters.decodes)
            samplings, unet, decodes = (c - b for c, b in zip(counted, before))
            sweeps.append(t_sweep)
            parts.append(t_parts)
            ratios.append(t_sweep / t_parts)
        distinct = len({v for v in config.values}) if axis != "precision" else 1
        print(f"sweep {axis:10s} {len(values)} cells: sweep {statistics.median(sweeps):6.3f} s, parts "
              f"{statistics.median(parts):6.3f} s ({distinct} sampling(s) + {len(values)} decodes)   ratio "
              f"{statistics.median(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}; fastest/fastest "
              f"{min(sweeps) / min(parts):.3f}]   counted: "
              f"{samplings} sampling(s), {unet} UNet calls, {decodes} decodes")


if __name__ == "__main__":
    main()
