"""Runs diagnosis plans (lib_sdfix.diagnose) inside the host, on the A/B runner.

Sweeps and step strips are real generations exactly as A/B variants are (``ab.runner.Run``:
``process_images`` with the whole script runner, SDFix's slot set), sharing samplings the same way:
cells that differ only in SDFix's decode get the sampled latent injected.  The runner's per-step
observer gives the step strip its denoised predictions and the NaN watch its checks.  The VAE round
trip calls the host's own encode and decode (``sd_samplers_common``) in each precision: as the host
runs it, in an SDFix session with the guard (the hooks the fixes use), or with the VAE cast to one
dtype and the flags guarded.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from lib_sdfix.diagnose.nan_watch import NanWatch
from lib_sdfix.webui.ab.request import prepare, sampler_already_equal, txt2img_fields
from lib_sdfix.webui.ab.runner import Rendered, Run, first_image, group_runs, render_groups
from lib_sdfix.webui.apply import settings_defaults
from lib_sdfix.webui.diagnose.cost_runner import check_against_host, run_optimizations
from lib_sdfix.webui.diagnose.nan_watch import observe_step, watching
from lib_sdfix.webui.hooks import fix_targets
from lib_sdfix.webui.hosts import current
from lib_sdfix.webui.session import scoped_session

__all__ = ["request_from_body", "run_diagnosis", "save_result", "api_response", "vae_device"]


# --- the request --------------------------------------------------------------------------------------


def vae_device() -> Any:
    return current().device()


def request_from_body(body: Any) -> Any:
    """A validated diagnosis request, with the names this host knows and the precisions its device runs."""
    from lib_sdfix import diagnose
    from lib_sdfix.names import sweep_names

    host = current()
    names = host.payload_names()
    request = diagnose.diagnose_request_from_body(
        body, settings_defaults(), choices=names, extra_rules=host.txt2img_extra_fields(), names=sweep_names(names),
        supported_variants=diagnose.supported_variants(vae_device()),
        default_variants=diagnose.default_variants(vae_device()))
    if request.kind == "optimizations":
        return check_against_host(request)
    return request


def run_diagnosis(request: Any) -> Dict[str, Any]:
    """Run a validated request on the caller's thread (the caller holds the queue lock and job state)."""
    start = time.perf_counter()
    runner = {"vae_roundtrip": _roundtrip, "sweep": _sweep, "steps": _steps, "optimizations": run_optimizations}[request.kind]
    result = runner(request)
    result["timings"]["total_s"] = time.perf_counter() - start
    if request.save and result["cells"]:
        result["saved"] = save_result(result)
    return result


def _result(kind: str, **fields: Any) -> Dict[str, Any]:
    return {"kind": kind, "complete": False, "seed": None, "cells": [], "analysis": {}, "notes": [], "saved": None,
            "timings": {"samplings": 0, "unet_steps": 0, "decodes": 0, "runs": []}, **fields}


# --- VAE round trip ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _precision(name: str) -> Any:
    """The host's own state ("webui"), SDFix's guard ("precision_guard"), or the VAE in one dtype with guarded flags."""
    if name == "webui":
        yield
        return
    if name == "precision_guard":
        settings = settings_defaults().changed(enabled=True, precision_guard=True, guard_encode=True, vae_dtype="fp32")
        with scoped_session(settings, fix_targets(settings)):
            yield
        return
    from lib_sdfix.diagnose.roundtrip import vae_in_dtype
    from lib_sdfix.precision import autocast_disabled, precision_guard

    host = current()
    wrapper = host.vae_wrapper()
    with precision_guard(), autocast_disabled(), vae_in_dtype(host.vae_module(None, wrapper), name,
                                                                host.vae_dtype_attrs(wrapper)):
        yield


def _seeded() -> Any:
    """The hosts' encode samples the VAE's posterior: every variant draws the same noise (RNG restored after)."""
    import torch

    stack = contextlib.ExitStack()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(0)
    return stack


def _roundtrip(request: Any) -> Dict[str, Any]:

    from modules import sd_samplers_common

    from lib_sdfix import diagnose
    from lib_sdfix.diagnose.roundtrip import crop_for_vae, image_to_tensor, skipped_note, tensor_to_image, variant_label
    from lib_sdfix.image_input import to_rgb8

    shared = current().shared
    model = shared.sd_model
    result = _result("vae_roundtrip", variants=list(request.variants))
    image, notes = to_rgb8(request.image)
    result["notes"] += notes
    original, crop_note = crop_for_vae(image)
    if crop_note:
        result["notes"].append(crop_note)
    shared.state.job_count = len(request.variants)
    pixels = image_to_tensor(original)
    images, times, labels = {}, {}, {}
    for name in request.variants:
        if shared.state.interrupted:
            break
        start = time.perf_counter()
        with current().no_grad(), _precision(name):
            with _seeded():
                latent = sd_samplers_common.images_tensor_to_samples(pixels.clone(), 0, model)
            decoded = sd_samplers_common.samples_to_images_tensor(latent, 0, model)
        images[name], times[name] = tensor_to_image(decoded, truncate=True), time.perf_counter() - start
        labels[name] = variant_label(name)
        result["timings"]["decodes"] += 1
        result["timings"]["runs"].append({"cells": [name], "kind": "encode + decode", "time_s": times[name]})
        shared.state.nextjob()
    method = current().decode_method()
    if method != "Full":
        result["notes"].append(f"the WebUI decodes generations with {method}; the round trip uses the full VAE")
    skipped = skipped_note(vae_device(), request.variants, "tick {it} under Precisions (API: name {it} in dtypes)")
    if skipped:
        result["notes"].append(skipped)
    analysis = diagnose.analyse_roundtrip(original, images, times, labels, gain=request.heatmap_gain)
    result.update(complete=len(images) == len(request.variants), original=original, analysis=analysis)
    rows = {r["name"]: r for r in analysis["rows"]}
    result["cells"] = [{"name": n, "label": labels[n], "value": n, "image": images[n], "infotext": _roundtrip_info(n, labels[n]),
                        "time_s": times[n], "metrics": rows.get(n), "nan": None,
                        "heatmaps": analysis["heatmaps"].get(n, {})} for n in images]
    return result


def _roundtrip_info(name: str, label: str) -> str:
    audit = current().audit()
    return (f"SDFix VAE round trip: {label}, VAE weights {audit.get('vae_weights_dtype')}, "
            f"host {audit.get('host')}, checkpoint {audit.get('checkpoint')}")


# --- generations: sweeps and step strips -----------------------------------------------------------------


def _watched_run(run: Run, inject: List[Any], on_step: Optional[Callable[[str, Any], None]] = None) -> Tuple[Any, Any, int]:
    """One generation with a NaN watch; (processed, watch summary, steps the samplers took)."""
    watch = NanWatch()
    counted = [0]

    def observer(stage: str, d: Any) -> None:
        counted[0] += 1
        observe_step(watch, stage, d)
        if on_step is not None:
            on_step(stage, d)

    try:
        with watching(watch):
            processed = run.run(inject, observer=observer)
    except Exception as exc:
        stopped = current().nans_exception()
        if stopped is None or not isinstance(exc, stopped):
            raise
        # AUTOMATIC1111 stops a generation with NaNs (unless --disable-nan-check): the cell fails, the
        # watch says where the values went non-finite.
        return None, dict(watch.summary(), error=f"{type(exc).__name__}: {exc}"), counted[0]
    return processed, watch.summary(), counted[0]


def _sweep(request: Any) -> Dict[str, Any]:
    """Each distinct generation of the sweep rendered by the A/B runner (ab.runner.render_groups):
    cells that differ only in SDFix's decode share its sampling; every run has a NaN watch."""
    from lib_sdfix import diagnose
    from lib_sdfix.diagnose.plan import payload_groups

    shared = current().shared
    request, alwayson, base, hires, latent_upscaler = prepare(request)
    planned = []
    for fields_key, groups in payload_groups(request.cells, hires=hires, latent_upscaler=latent_upscaler,
                                             parity_changes_sampler=hires and not sampler_already_equal(base)):
        fields = txt2img_fields({**request.payload, **dict(fields_key)})  # the host checks a swept sampler's name
        planned.append((fields, groups))
    shared.state.job_count = sum(len(group_runs(g)) for _, groups in planned for g in groups)
    result = _result("sweep", seed=base.get("seed"), axis=request.axis, reference=request.reference_cell.name)
    failed: Dict[str, Any] = {}

    def execute(run: Run, inject: List[Any], members: Tuple[Any, ...]) -> Tuple[Any, Dict[str, Any]]:
        processed, nan, steps = _watched_run(run, inject)
        if processed is None:  # the host stopped it (NaNs): its cells fail, the group has no latent to share
            failed.update({m.name: nan for m in members})
            result["notes"].append(f"{', '.join(m.name for m in members)}: the WebUI stopped the generation "
                                   f"({nan.get('error')})")
        return processed, {"steps": steps, "nan": nan}

    rendered = Rendered()
    for fields, groups in planned:
        if shared.state.interrupted:
            break
        render_groups(fields, alwayson, groups, hires=hires, execute=execute, into=rendered)

    timings = result["timings"]
    nan_of: Dict[str, Any] = {}
    for run in rendered.runs:
        nan = run.pop("nan")
        nan_of.update({name: nan for name in run["variants"]})
        timings["unet_steps"] += run["steps"]
        timings["samplings"] += 0 if run["kind"].startswith("decode only") else 1
        timings["decodes"] += (nan or {}).get("checked", {}).get("vae decode", 0)
        timings["runs"].append({"cells": run.pop("variants"), **run})
    images = rendered.images
    order = [c.name for c in request.cells if c.name in images]
    analysis = diagnose.analyse_sweep(request.axis, request.cells, images, {n: rendered.times[n] for n in order},
                                      request.reference_cell.name, gain=request.heatmap_gain,
                                      nan={**{n: nan_of[n] for n in order}, **failed})
    rows = {r["name"]: r for r in analysis["rows"]}
    cells = {c.name: c for c in request.cells}
    result["cells"] = [{"name": n, "label": cells[n].label, "value": cells[n].value, "image": images[n],
                        "infotext": rendered.infotexts[n], "time_s": rendered.times[n], "nan": nan_of[n],
                        "metrics": rows.get(n), "heatmap": analysis["heatmaps"].get(n)} for n in order]
    result.update(analysis=analysis, complete=len(order) == len(request.cells))
    if request.reference_cell.name not in images and order:
        result["notes"].append("the reference cell was not rendered (interrupted): no comparison metrics")
    result["notes"] += rendered.notes + ([rendered.scripts_note] if rendered.scripts_note else [])
    return result


def _steps(request: Any) -> Dict[str, Any]:
    from modules import processing

    from lib_sdfix import diagnose
    from lib_sdfix.diagnose.roundtrip import tensor_to_image

    shared = current().shared
    request = request.with_resolved_seed()
    fields = txt2img_fields(request.payload)
    steps = int(fields.get("steps") or request.steps)
    at = request.at or diagnose.default_strip_steps(steps)
    capture = diagnose.StepCapture(at)
    shared.state.job_count = 2  # the generation, then the decodes of its steps
    settings = settings_defaults()
    result = _result("steps", seed=fields.get("seed"), at=list(at), steps=steps)
    if fields.get("enable_hr"):
        result["notes"].append("the strip shows the first pass; the Hires pass's steps are not captured")

    def on_step(stage: str, d: Any) -> None:
        if stage == "sampling" and isinstance(d, dict) and isinstance(d.get("i"), int):
            capture(d["i"] + 1, d.get("denoised"))

    start = time.perf_counter()
    processed, nan, counted = _watched_run(Run(fields, dict(request.payload.get("alwayson_scripts") or {}), settings),
                                           [], on_step)
    result["timings"].update(samplings=1, unet_steps=counted, decodes=(nan or {}).get("checked", {}).get("vae decode", 0))
    result["timings"]["runs"].append({"cells": ["final"], "kind": "full sampling", "time_s": time.perf_counter() - start,
                                      "steps": counted})
    if processed is None:
        from lib_sdfix.diagnose.findings import rule_non_finite

        result["notes"].append(f"the WebUI stopped the generation ({nan.get('error')})")
        result["analysis"] = {"rows": [], "findings": [f for f in (rule_non_finite(nan),) if f], "nan": nan}
        return result
    if shared.state.interrupted or not processed.images:
        result["notes"].append("interrupted: nothing to show")
        return result
    final, infotext = first_image(processed)
    shared.state.nextjob()
    step_images: Dict[int, Any] = {}
    guarded = settings.changed(enabled=True, precision_guard=True)
    with scoped_session(guarded, fix_targets(guarded)):
        for step, latent in sorted(capture.latents.items()):
            if shared.state.interrupted:
                break
            began = time.perf_counter()
            with current().no_grad():
                step_images[step] = tensor_to_image(processing.decode_first_stage(shared.sd_model, latent[:1]), truncate=True)
            result["timings"]["decodes"] += 1
            result["timings"]["runs"].append({"cells": [f"step {step}"], "kind": "decode (guarded VAE)",
                                              "time_s": time.perf_counter() - began})
    if capture.missing:
        result["notes"].append(f"steps {capture.missing} were not reached (the sampler reported {capture.seen})")
    analysis = diagnose.analyse_steps(step_images, final, steps, nan=nan)
    rows = {r["step"]: r for r in analysis["rows"]}
    cells = [{"name": f"step-{s}", "label": f"step {s}/{steps}", "value": s, "image": step_images[s],
              "infotext": f"{infotext}\nSDFix diagnose: denoised prediction at step {s} of {steps}", "time_s": None,
              "metrics": rows.get(s), "nan": None} for s in sorted(step_images)]
    cells.append({"name": "final", "label": "final image", "value": steps, "image": final, "infotext": infotext,
                  "time_s": None, "metrics": None, "nan": nan})
    result.update(cells=cells, analysis=analysis, complete=not capture.missing and len(step_images) == len(capture.latents))
    return result


# --- saving -------------------------------------------------------------------------------------------


def save_result(result: Dict[str, Any]) -> Dict[str, Any]:
    """Under <outputs>/sdfix-diagnose, named with the host's sequence number (and its filename pattern
    for generations): every cell with its infotext, the grid, the chart, the strip, the metrics JSON."""
    from modules import images as webui_images
    from modules import paths_internal

    from lib_sdfix import diagnose

    shared = current().shared
    out_dir = os.path.join(shared.opts.outdir_samples or paths_internal.default_output_dir, "sdfix-diagnose")
    os.makedirs(out_dir, exist_ok=True)
    kind = result["kind"]
    basename = f"{webui_images.get_next_sequence_number(out_dir, ''):05}-{kind.replace('_', '-')}"
    if result.get("seed") is not None:
        basename += f"-{result['seed']}"
    items = [(c["name"], c["label"], c["image"], c.get("infotext")) for c in result["cells"]]
    if kind == "vae_roundtrip":
        items.insert(0, ("original", "original", result["original"], None))
    analysis = result["analysis"]
    extras = {"chart": analysis.get("chart"), "strip": analysis.get("strip")}
    for cell in result["cells"]:
        for against, image in (cell.get("heatmaps") or {}).items():
            extras[f"heatmap-{cell['name']}-vs-{against}"] = image
        if cell.get("heatmap") is not None:
            extras[f"heatmap-{cell['name']}"] = cell["heatmap"]
    document = diagnose.diagnosis_json(kind, analysis, **_document_fields(result))
    return diagnose.save_diagnosis(out_dir, basename, items, document, extras)


def _document_fields(result: Dict[str, Any]) -> Dict[str, Any]:
    keep = ("seed", "complete", "axis", "reference", "variants", "at", "steps", "notes", "timings", "options",
            "repeats", "memory", "warm_up")
    return {k: result[k] for k in keep if k in result}


# --- answers ------------------------------------------------------------------------------------------


def api_response(result: Dict[str, Any]) -> Dict[str, Any]:
    """A diagnosis result as JSON: pictures as base64 PNG, metrics and findings as strict JSON."""
    from lib_sdfix.imaging import json_safe, png_base64

    def b64(image: Any) -> Optional[str]:
        return png_base64(image) if image is not None else None

    analysis = result["analysis"]
    cells = []
    for cell in result["cells"]:
        out = {k: v for k, v in cell.items() if k not in ("image", "heatmap", "heatmaps")}
        out["image"] = b64(cell["image"])
        if cell.get("heatmap") is not None:
            out["heatmap"] = b64(cell["heatmap"])
        if cell.get("heatmaps"):
            out["heatmaps"] = {k: b64(v) for k, v in cell["heatmaps"].items()}
        cells.append(out)
    answer = {k: v for k, v in result.items() if k not in ("cells", "analysis", "original")}
    answer.update(cells=cells, findings=[f.as_dict() for f in analysis.get("findings", [])],
                  grid=b64(analysis.get("grid")), chart=b64(analysis.get("chart")), strip=b64(analysis.get("strip")),
                  nan_watch=analysis.get("nan"))
    if result.get("original") is not None:
        answer["original"] = b64(result["original"])
    return json_safe(answer)
