"""Runs a diagnosis of kind "optimizations" inside the host: the user's generation with their speed and memory
options at their quality settings, each turned back on alone, and all on (lib_sdfix.diagnose.optimizations).

Every cell is a real generation through ``process_images`` with the whole script runner, as an A/B
variant is (``ab.runner.Run``).  One warm-up run (2 steps, every measured option on: it loads what they
load, e.g. the TAESD decoder) comes first and is never timed.  Cells whose changes differ only in
decode-only options share a sampling: the first samples, the others get its latent (the A/B runner's
injection) and are timed as decode-only runs, against a decode-only run of the donor.  Options go back to
the user's values after each run: ``override_settings`` by the host, ``setting`` options by
:func:`lib_sdfix.webui.diagnose.speed_options.switched_settings` -- on an interrupt or an error too.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

from lib_sdfix.diagnose.cost import Timed, analyse_cost
from lib_sdfix.diagnose.optimizations import CostCell, plan_cost
from lib_sdfix.diagnose.peak_memory import measure_peak, memory_kind
from lib_sdfix.failsafe import log_once
from lib_sdfix.settings import SettingsError
from lib_sdfix.webui.ab.request import prepare
from lib_sdfix.webui.ab.runner import Run, first_image
from lib_sdfix.webui.apply import settings_defaults
from lib_sdfix.webui.diagnose.speed_options import SwitchError, cell_fields, found_options, switched_settings
from lib_sdfix.webui.hosts import current

__all__ = ["run_optimizations", "check_against_host", "WARM_UP_STEPS"]

#: Steps of the untimed warm-up run (and 1 Hires step): enough to load and compile what the options use.
WARM_UP_STEPS = 2


def run_optimizations(request: Any) -> Dict[str, Any]:
    """Measure the plan of a validated OptimizationsRequest; the caller holds the queue lock and job state."""
    shared = current().shared
    request, alwayson, fields, hires, latent_upscaler = prepare(request)
    found = found_options(request.payload)
    by_key = {f.key: f for f in found}
    plan = plan_cost(found, request.options)
    device = current().device()
    result: Dict[str, Any] = {
        "kind": "optimizations", "complete": False, "seed": fields.get("seed"), "cells": [], "analysis": {},
        "notes": list(plan.notes), "saved": None, "options": plan.listed, "repeats": request.repeats,
        "memory": {"measures": memory_kind(device)}, "warm_up": None,
        "timings": {"samplings": 0, "unet_steps": 0, "decodes": 0, "runs": []},
    }
    settings = settings_defaults()
    groups = plan.sampling_groups()
    shares = sum(len(g) for g in groups if len(g) > 1)  # decode-only runs (the donors' included)
    shared.state.job_count = 1 + request.repeats * (len(plan.cells) + shares)
    failed: Dict[str, str] = {}

    def generate(cell: CostCell, inject: List[Any], what: str, steps: Optional[Dict[str, Any]] = None) -> Tuple[Any, Run, float, Any]:
        changes = dict(cell.changes)
        steps_before = result["timings"]["unet_steps"]

        def count_step(stage: str, d: Any) -> None:
            result["timings"]["unet_steps"] += 1
        run = Run({**cell_fields(fields, changes, by_key), **(steps or {})}, alwayson, settings)
        with measure_peak(device) as peak:
            start = time.perf_counter()
            try:
                with switched_settings(changes, by_key):
                    processed = run.run(inject, observer=count_step)
            except SwitchError as err:
                failed[cell.name] = str(err)
                processed = None
            except Exception as exc:  # noqa: BLE001 -- one cell failing (NaNs, a missing decoder, OOM) is a finding
                log_once(f"cost-cell-{cell.name}-{type(exc).__name__}", f"SDFix cost of speed: {cell.label} failed: {exc}", exc)
                failed[cell.name] = f"the generation failed ({type(exc).__name__}: {exc})"
                processed = None
            elapsed = time.perf_counter() - start
        result["timings"]["runs"].append({"cells": [cell.name], "kind": what, "time_s": elapsed,
                                          "steps": result["timings"]["unet_steps"] - steps_before})
        if processed is not None and not shared.state.interrupted:
            result["timings"]["samplings"] += 0 if inject else 1
            result["timings"]["decodes"] += 1
        return processed, run, elapsed, peak.peak_bytes

    # The warm-up: the plan's last cell (every measured option on), short, untimed.
    warm = plan.cells[-1]
    short = {"steps": min(WARM_UP_STEPS, int(fields.get("steps") or WARM_UP_STEPS))}
    if hires:
        short["hr_second_pass_steps"] = 1
    _, _, warm_s, _ = generate(warm, [], "warm-up (not timed)", short)
    result["warm_up"] = {"cell": warm.name, "steps": short["steps"], "time_s": warm_s}

    images: Dict[str, Any] = {}
    infotexts: Dict[str, str] = {}
    timed: Dict[str, Timed] = {}
    for cells in groups:
        donor, outputs = cells[0], None
        timed[donor.name] = Timed()
        for _ in range(request.repeats):
            if shared.state.interrupted or donor.name in failed:
                break
            processed, run, elapsed, peak = generate(donor, [], "full generation")
            if processed is None or shared.state.interrupted or not processed.images:
                break
            timed[donor.name].record(elapsed, peak)
            if donor.name not in images:
                images[donor.name], infotexts[donor.name] = first_image(processed)
                outputs = run.outputs
        if len(cells) < 2 or outputs is None:
            continue
        # Without Hires (or with a latent upscaler) only the final decode differs: hand every pass over;
        # else the first pass (the decode feeds the Hires pass's upscaler).
        inject = list(outputs[:2] if hires and latent_upscaler else outputs[:1])
        scope = "decode" if not hires or latent_upscaler else "Hires pass and decode"
        for cell in cells:
            own = timed[cell.name] if cell is donor else timed.setdefault(cell.name, Timed(shared_with=donor.name, scope=scope))
            for _ in range(request.repeats):
                if shared.state.interrupted or cell.name in failed:
                    break
                processed, _, elapsed, peak = generate(cell, inject, f"{scope} only (sampling shared with {donor.name})")
                if processed is None or shared.state.interrupted or not processed.images:
                    break
                if cell is donor:
                    own.record_decode(elapsed, peak)
                    continue
                own.record(elapsed, peak)
                if cell.name not in images:
                    images[cell.name], infotexts[cell.name] = first_image(processed)
        if shared.state.interrupted:
            break

    result["notes"] += [f"{name}: {why}" for name, why in failed.items()]
    analysis = analyse_cost(plan, images, timed, gain=request.heatmap_gain)
    rows = {r["name"]: r for r in analysis["rows"]}
    order = [c for c in plan.cells if c.name in images]
    result["cells"] = [{"name": c.name, "label": c.label, "value": rows.get(c.name, {}).get("value"), "changes": dict(c.changes),
                        "image": images[c.name], "infotext": infotexts[c.name],
                        "time_s": rows.get(c.name, {}).get("time_s"), "metrics": rows.get(c.name), "nan": None,
                        "heatmap": analysis["heatmaps"].get(c.name)} for c in order]
    result.update(analysis=analysis, complete=len(order) == len(plan.cells) and not shared.state.interrupted)
    if shared.state.interrupted:
        result["notes"].append("interrupted: the cells rendered so far are shown; every option is back to your value")
    if plan.reference.name not in images and order:
        result["notes"].append("the reference was not rendered: no comparison")
    if result["memory"]["measures"] == "process peak RSS":
        result["notes"].append("memory is the process's peak RSS (no GPU): weights, caches and the WebUI included")
    return result


def check_against_host(request: Any) -> Any:
    """A value this WebUI does not list for a named option (a cross-attention method it lacks) is a 422."""
    if not request.options:
        return request
    by_key = {f.key: f for f in found_options(request.payload)}
    problems = {}
    for key, value in request.options:
        item = by_key.get(key)
        if item is not None and item.choices is not None and isinstance(value, str) and value not in item.choices:
            problems[f"options.{key}"] = f"must be one of this WebUI's choices {list(item.choices)}, got {value!r}"
    if problems:
        raise SettingsError(problems)
    return request
