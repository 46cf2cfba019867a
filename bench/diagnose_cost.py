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

The cost of speed (kind "optimizations") on the diffusers front, ``--optimizations``: the diagnosis as
``python -m lib_sdfix diagnose optimizations`` runs it (warm-up, reference, attention slicing, VAE tiling
-- decode only, sharing the reference's sampling --, channels-last, fewer steps, all on; report written)
against each of its rows run alone (the row's state on the pipeline, a full sampling and decode), rounds
alternating.  Target: diagnosis / rows alone <= 1.0.

    python bench/diagnose_cost.py --optimizations [--rounds 3] [--steps 8] [--size 128] [--model DIR] [--device cpu]

The cost of speed in a running WebUI, ``--url``: the diagnosis as the route runs it
(an untimed warm-up, the reference, each option alone, all on; TAESD sharing the reference's sampling)
against each of its rows generated alone through ``/sdapi/v1/txt2img`` with that row's options, rounds
alternating.  The user's options are set for the run (token merging 0.5, NGMS 2, TAESD where the WebUI
has its decoder) and set back after.  Target: diagnosis / rows alone <= 1.0.

    python bench/diagnose_cost.py --url http://127.0.0.1:7860 [--rounds 3] [--steps 8] [--size 128] [--auth u:p]
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


def _side_by_side(rounds: int, diagnosis, alone, digits: int) -> None:
    """``rounds`` alternating rounds (the order flipped every round); prints the medians and their ratio."""
    ratios, diag, parts = [], [], []
    for i in range(rounds):
        if i % 2 == 0:
            d, p = diagnosis(), alone()
        else:
            p, d = alone(), diagnosis()
        diag.append(d)
        parts.append(p)
        ratios.append(d / p)
    print(f"diagnosis {statistics.median(diag):7.{digits}f} s, rows alone {statistics.median(parts):7.{digits}f} s   ratio "
          f"{statistics.median(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}; fastest/fastest "
          f"{min(diag) / min(parts):.3f}]")


def _call(args: argparse.Namespace, method: str, path: str, body=None):
    import base64
    import json
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if args.auth:
        headers["Authorization"] = "Basic " + base64.b64encode(args.auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def _webui_cost(args: argparse.Namespace) -> None:
    """The cost of speed in a running WebUI against its rows generated alone (see the module docstring)."""
    payload = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": args.steps,
               "width": args.size, "height": args.size, "cfg_scale": 5, "sampler_name": "Euler"}
    body = {"kind": "optimizations", "payload": payload}
    before = _call(args, "GET", "/sdapi/v1/options")
    mine = {"token_merging_ratio": 0.5, "s_min_uncond": 2.0}
    listed = {o["key"]: o for o in _call(args, "POST", "/sdfix/v1/diagnose", {
        **body, "payload": {**payload, "steps": 1}, "options": ["token_merging_ratio"]})["options"]}
    taesd = listed.get("sd_vae_decode_method")
    if taesd and "is not there" not in taesd.get("note", ""):
        mine["sd_vae_decode_method"] = "TAESD"
    _call(args, "POST", "/sdapi/v1/options", mine)
    try:
        answer = _call(args, "POST", "/sdfix/v1/diagnose", body)  # warm-up of both sides (loads TAESD, ...)
        cells = [(c["name"], c["changes"]) for c in answer["cells"]]

        def diagnosis() -> float:
            start = time.perf_counter()
            _call(args, "POST", "/sdfix/v1/diagnose", body)
            return time.perf_counter() - start

        def alone() -> float:
            total = 0.0
            for _, changes in cells:
                start = time.perf_counter()
                _call(args, "POST", "/sdapi/v1/txt2img", {**payload, "override_settings": changes, "save_images": False})
                total += time.perf_counter() - start
            return total

        runs = [r["kind"] for r in answer["timings"]["runs"]]
        print(f"WebUI {args.url}: {args.size}x{args.size}, {args.steps} steps, options {mine}, {args.rounds} rounds; "
              f"target: diagnosis / rows alone <= 1.0")
        print(f"diagnosis: {len(cells)} rows = {runs.count('full generation')} full generations + "
              f"{sum(k.startswith('decode only') for k in runs)} decode-only runs + a {answer['warm_up']['steps']}-step "
              f"warm-up; rows alone: {len(cells)} full generations")
        _side_by_side(args.rounds, diagnosis, alone, digits=2)
    finally:
        _call(args, "POST", "/sdapi/v1/options", {k: before[k] for k in mine if k in before})


#: What --optimizations measures: one decode-only option (shares the reference's sampling) among others.
COST_OPTIONS = ("attention_slicing", "vae_tiling", "channels_last", "steps")


def _diffusers_cost(args: argparse.Namespace) -> None:
    """The diffusers front's cost of speed against its rows alone (see the module docstring)."""
    import functools
    import tempfile

    from lib_sdfix.cli.ab_run import diffusers_warnings_off
    from lib_sdfix.cli.diagnose_cost import CostConfig, _both, _Runs, run_optimizations
    from lib_sdfix.cli.diagnose_run import _Pipeline
    from lib_sdfix.cli.pipeline_options import Switcher, fewer_steps
    from lib_sdfix.diagnose.optimizations import UNSET

    diffusers_warnings_off()
    options = tuple((k, fewer_steps(args.steps) if k == "steps" else UNSET) for k in COST_OPTIONS)
    with tempfile.TemporaryDirectory(prefix="sdfix-bench-cost-") as out:
        config = CostConfig(kind="optimizations", out=Path(out), model=args.model, device=args.device, steps=args.steps,
                            width=args.size, height=args.size, progress=False, repeats=1,
                            options=options)
        pipe = _Pipeline(config)
        first = run_optimizations(config, pipe)  # warm-up of both sides; its plan is what "alone" runs
        plan = first["plan"]

        def diagnosis() -> float:
            start = time.perf_counter()
            run_optimizations(CostConfig(**{**vars(config), "options": options}), pipe)
            return time.perf_counter() - start

        def alone() -> float:
            import torch

            runs = _Runs(pipe, config, {"timings": {"runs": []}})
            total = 0.0
            threads = torch.get_num_threads()
            if args.model is None and args.device == "cpu":
                torch.set_num_threads(1)  # as the command runs the embedded model: the same threads on both sides
            with tempfile.TemporaryDirectory(prefix="sdfix-bench-alone-") as scratch:
                switcher = Switcher(pipe.pipe, pipe.device, scratch)
                for cell in plan.cells:
                    steps = int(dict(cell.changes).get("steps", args.steps))
                    start = time.perf_counter()
                    with switcher.switched(dict(cell.changes)):
                        functools.partial(_both, runs, steps)()
                    total += time.perf_counter() - start
            torch.set_num_threads(threads)
            return total

        runs = [r["kind"] for r in first["timings"]["runs"]]
        print(f"diffusers front, {args.model or 'embedded tiny SD1.5'} on {args.device}, {args.size}x{args.size}, "
              f"{args.steps} steps, options {', '.join(COST_OPTIONS)}, {args.rounds} rounds; target: diagnosis / rows "
              f"alone <= 1.0")
        print(f"diagnosis: {len(plan.cells)} rows = {sum('full generation' in k for k in runs)} full generations + "
              f"{sum('decode only' in k for k in runs)} decode-only runs + a {first['warm_up']['steps']}-step warm-up; "
              f"rows alone: {len(plan.cells)} full generations")
        _side_by_side(args.rounds, diagnosis, alone, digits=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--url", default=None, help="a running WebUI with --api and SDFix: measure the cost of speed "
                        "kind there instead of the diffusers front's sweeps")
    parser.add_argument("--auth", default="", help="user:password of the WebUI's --api-auth")
    parser.add_argument("--optimizations", action="store_true", help="measure the cost-of-speed kind on the "
                        "diffusers front instead of the sweeps")
    args = parser.parse_args()
    if args.url:
        _webui_cost(args)
        return
    if args.optimizations:
        _diffusers_cost(args)
        return

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
