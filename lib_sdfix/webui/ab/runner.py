"""Runs an A/B plan (lib_sdfix.ab) inside the host: every variant is a real generation, sampled once.

Why real generations: a variant's image must be what the user would get from txt2img with those
settings -- with face restoration, colour correction, ``override_settings`` (and their restore),
other extensions' AlwaysOn scripts and the infotext the WebUI writes.  So each variant runs through
``process_images`` with the whole script runner, SDFix's own slot set to the variant's settings
(request.py builds the fields and script args).  Sharing the sampling: variants whose sampling is equal
reuse a captured latent, handed to the host's own samplers instead of sampling (sampling.py).  A
variant with the late refine gets the refined latent, a variant without it the pass's own; a refine
variant whose passes another group already sampled runs only its refine.  The diagnosis runner
(lib_sdfix.webui.diagnose.runner) renders its sweeps with the same loop (:func:`render_groups`).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from lib_sdfix import ab, imaging, sampling_plan
from lib_sdfix.failsafe import log_once
from lib_sdfix.settings import SDFixSettings, SettingsError
from lib_sdfix.webui.ab import sampling
from lib_sdfix.webui.ab.request import prepare, sampler_already_equal, script_args_for
from lib_sdfix.webui.apply import apply_settings
from lib_sdfix.webui.hosts import current

__all__ = ["run_comparison", "render_groups", "Rendered", "Run", "group_runs", "first_image", "save_comparison",
           "api_response"]


# --- one run ----------------------------------------------------------------------------------------


class Run:
    """One generation of the comparison; keeps every latent its samplers returned, in order (first pass,
    Hires pass, late refine)."""

    def __init__(self, fields: Dict[str, Any], alwayson: Dict[str, Any], settings: SDFixSettings) -> None:
        self.fields, self.alwayson, self.settings = fields, alwayson, settings
        self.outputs: List[Any] = []
        self.scripts_note: Optional[str] = None

    def _processing(self) -> Any:
        from modules import processing, scripts

        shared = current().shared
        p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **self.fields)
        p.outpath_samples = shared.opts.outdir_txt2img_samples
        p.outpath_grids = shared.opts.outdir_txt2img_grids
        p.do_not_save_samples = p.do_not_save_grid = True
        # The payload carries every field: built-in scripts that copy the UI's sampler/seed controls into
        # p ("setup_for_ui_only") must not run, exactly as for the WebUI's own API.
        p.is_api = True
        runner = scripts.scripts_txt2img
        try:
            args = script_args_for(runner, self.alwayson, self.settings)
        except SettingsError:
            raise
        except Exception as exc:  # noqa: BLE001 -- an extension's UI failed to build: run SDFix alone
            log_once("ab-scripts", f"SDFix A/B: other extensions' scripts cannot run in comparisons: {exc}", exc)
            self.scripts_note = f"other extensions' scripts did not run ({type(exc).__name__}: {exc})"
            p.scripts = None
            apply_settings(p, self.settings)
            return p
        p.scripts = runner
        p.script_args = args
        return p

    def run(self, inject: List[Any], observer: Any = None) -> Any:
        from modules import processing

        p = self._processing()
        with contextlib.closing(p), sampling.recorded(inject, owner=p, observer=observer) as recorded:
            processed = processing.process_images(p)
        self.outputs = [o for o in recorded.outputs if o is not None]
        return processed


def first_image(processed: Any) -> Tuple[Any, str]:
    index = getattr(processed, "index_of_first_image", 0)
    return processed.images[index], processed.infotexts[index]


def _ran_scripts() -> List[str]:
    """Other extensions' AlwaysOn scripts that ran in every variant (built-in UI-only ones do not run
    for an API-style generation)."""
    from modules import scripts

    return [s.title() for s in scripts.scripts_txt2img.alwayson_scripts
            if s.title() != "SDFix" and not getattr(s, "setup_for_ui_only", False)]


def run_comparison(request: Any) -> Dict[str, Any]:
    """Render every variant of an A/B request with the least sampling; images, infotexts, metrics, notes.

    Runs on the caller's thread; the caller holds the WebUI's queue lock and job state.
    """
    shared = current().shared
    request, alwayson, fields, hires, latent_upscaler = prepare(request)
    upscaler = fields.get("hr_upscaler")
    groups = sampling_plan.sampling_groups(request.variants, hires=hires, latent_upscaler=latent_upscaler,
                                           parity_changes_sampler=hires and not sampler_already_equal(fields))
    plan = [run for group in groups for run in group_runs(group)]
    shared.state.job_count = len(plan)

    rendered = render_groups(fields, alwayson, groups, hires=hires)
    images, infotexts, times, runs = rendered.images, rendered.infotexts, rendered.times, rendered.runs
    run_notes, scripts_note = rendered.notes, rendered.scripts_note

    done = [v for v in request.variants if v.name in images]
    reference = request.reference
    result: Dict[str, Any] = {
        "seed": fields.get("seed"), "complete": len(done) == len(request.variants),
        "variants": [{"name": v.name, "label": v.label, "settings": v.settings.as_dict()} for v in done],
        "images": images, "infotexts": infotexts, "times": times,
        "runs": sum(1 for r in runs if not r["kind"].startswith("decode only")),  # runs that sampled
        "plan": runs,
        "scripts": {"ran": [] if scripts_note else _ran_scripts(), "note": scripts_note},
        "metrics": [], "notes": [], "heatmap": None, "saved": None,
    }
    if reference.name not in images or len(done) < 2:
        return result
    context = ab.RunContext(hires=hires, upscaler=upscaler, first_sampler=fields.get("sampler_name"),
                            first_scheduler=fields.get("scheduler"), hires_sampler=fields.get("hr_sampler_name"),
                            hires_scheduler=fields.get("hr_scheduler"), steps=fields.get("steps"),
                            hires_steps=fields.get("hr_second_pass_steps") or None)
    rows = imaging.metrics_table({v.name: images[v.name] for v in done}, times, reference.name,
                            labels={v.name: v.label for v in done})
    result["metrics"] = rows
    result["notes"] = ab.effect_notes(done, images, context) + run_notes + ([scripts_note] if scripts_note else [])
    result["heatmap"] = imaging.heatmap(images[reference.name], images[done[-1].name], request.heatmap_gain)
    if request.save:
        result["saved"] = save_comparison(fields, done, images, infotexts, rows, result["notes"])
    return result


@dataclass
class Rendered:
    """What :func:`render_groups` rendered: per variant its image, infotext and time; per run what it
    did (``variants``, ``kind``, ``time_s`` and what ``execute`` added) and its note."""

    images: Dict[str, Any] = field(default_factory=dict)
    infotexts: Dict[str, str] = field(default_factory=dict)
    times: Dict[str, float] = field(default_factory=dict)
    runs: List[Dict[str, Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    scripts_note: Optional[str] = None


def render_groups(fields: Dict[str, Any], alwayson: Dict[str, Any], groups: List[Any], *, hires: bool,
                  execute: Optional[Callable[[Any, List[Any], Tuple[Any, ...]], Tuple[Any, Dict[str, Any]]]] = None,
                  into: Optional[Rendered] = None) -> Rendered:
    """Render the sampling groups (lib_sdfix.sampling_plan) of one generation's ``fields``: the first
    run of a group samples, the others get its latents injected (decode only), a Hires pass shares the
    first pass, a late refine group whose passes another group sampled runs only its refine.
    ``execute(run, inject, members) -> (processed, extra)`` runs one generation (default:
    ``run.run(inject)``); a None ``processed`` means the host stopped it: the group goes no further.
    ``into``: add to an earlier call's result (a diagnosis sweep renders several generations).
    Stops at an Interrupt; after "Skip" goes on with the next run."""
    shared = current().shared
    out = into if into is not None else Rendered()
    passes = 2 if hires else 1  # sampling passes before a late refine
    first_pass: Optional[Any] = None
    pass_latents: Dict[Any, List[Any]] = {}  # the passes (no refine) each pass key sampled
    for group in groups:
        sampled: Optional[List[Any]] = None  # every latent of the run that sampled this group
        sampled_by: Tuple[int, Any] = (0, None)  # the run that sampled this group, and its decode
        for decode, members in group_runs(group):
            if shared.state.interrupted:
                break
            run = Run(fields, alwayson, members[0].settings)
            if sampled is not None:
                inject, kind = sampled, "decode only (shared sampling)"
            elif group.pass_key in pass_latents:
                inject = pass_latents[group.pass_key]
                kind = "refine only (shared passes)" if group.refine else "decode only (shared passes)"
            elif first_pass is not None:
                inject, kind = [first_pass], "Hires pass (shared first pass)"
            else:
                inject, kind = [], "full sampling"
            start = time.perf_counter()
            processed, extra = execute(run, inject, members) if execute is not None else (run.run(inject), {})
            elapsed = time.perf_counter() - start
            out.scripts_note = out.scripts_note or run.scripts_note
            if processed is None or shared.state.interrupted or not processed.images:
                break  # an interrupted generation's image is not the variant's, nor its latent the group's
            if getattr(shared.state, "skipped", False):  # "Skip": this run's image is partial; go on with the next
                shared.state.skipped = False
                if sampled is None:
                    break  # the group's sampling was cut short: its other runs have nothing to share
                continue
            if sampled is None:
                sampled, sampled_by = run.outputs, (len(out.runs) + 1, decode)
                if len(run.outputs) >= passes:
                    pass_latents.setdefault(group.pass_key, run.outputs[:passes])
            if first_pass is None and hires and run.outputs:
                first_pass = run.outputs[0]
            image, infotext = first_image(processed)
            for variant in members:
                out.images[variant.name], out.infotexts[variant.name], out.times[variant.name] = image, infotext, elapsed
            out.runs.append({"variants": [v.name for v in members], "kind": kind, "time_s": elapsed, **extra})
            out.notes.append(_run_note(len(out.runs), out.runs[-1], sampled_by, decode))
    return out


def group_runs(group: Any) -> List[Tuple[Any, Tuple[Any, ...]]]:
    """(decode, variants) per run of a sampling group: one run per distinct settings.  Variants that
    decode alike share the sampling but not the run: each writes its own infotext (its SDFix entry)."""
    runs = []
    for decode in group.decodes:
        by_settings: Dict[SDFixSettings, List[Any]] = {}
        for variant in group.variants_for(decode):
            by_settings.setdefault(variant.settings, []).append(variant)
        runs += [(decode, tuple(members)) for members in by_settings.values()]
    return runs


def _run_note(number: int, run: Dict[str, Any], sampled_by: Tuple[int, Any], decode: Any) -> str:
    names = ", ".join(run["variants"])
    if number == 1:
        return f"run 1 ({names}): {run['kind']}"
    if run["kind"] == "decode only (shared sampling)":
        source, source_decode = sampled_by
        why = "only SDFix's decode differs" if decode != source_decode else "same decode, its own infotext"
        return f"run {number} ({names}): decode only -- sampled as run {source}'s group, {why}"
    if run["kind"].endswith("(shared passes)"):
        return (f"run {number} ({names}): {run['kind']} -- its passes are an earlier group's; only the late "
                "refine differs")
    return (f"run {number} ({names}): {run['kind']} -- the Hires pass differs (parity or the "
            "decode/resize/encode fixes shape its input)")


def save_comparison(fields: Dict[str, Any], variants: List[Any], images: Dict[str, Any],
                    infotexts: Dict[str, str], rows: List[Dict[str, Any]], notes: List[str]) -> Dict[str, Any]:
    """Under <outputs>/sdfix-ab, named with the WebUI's filename pattern and sequence number."""
    from modules import images as webui_images
    from modules import paths_internal, processing

    shared = current().shared
    out_dir = os.path.join(shared.opts.outdir_samples or paths_internal.default_output_dir, "sdfix-ab")
    os.makedirs(out_dir, exist_ok=True)
    p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **fields)
    first = images[variants[0].name]
    pattern = shared.opts.samples_filename_pattern or "[seed]-[prompt_spaces]"
    name = webui_images.FilenameGenerator(p, fields.get("seed"), fields.get("prompt", ""), first).apply(pattern)
    basename = f"{webui_images.get_next_sequence_number(out_dir, ''):05}-{name}"
    paths = ab.save_comparison(out_dir, basename, variants, images, infotexts,
                               ab.metrics_json(rows, reference_name=variants[0].name, notes=notes))
    return {"images": {k: str(v) for k, v in paths["images"].items()}, "grid": str(paths["grid"]),
            "metrics": str(paths["metrics"])}


def api_response(result: Dict[str, Any]) -> Dict[str, Any]:
    """A comparison result as JSON: images as base64 PNG, metrics as strict JSON."""
    out = {k: v for k, v in result.items() if k not in ("images", "heatmap", "metrics")}
    out["images"] = {name: imaging.png_base64(image) for name, image in result["images"].items()}
    out["heatmap"] = imaging.png_base64(result["heatmap"]) if result["heatmap"] is not None else None
    out["metrics"] = ab.metrics_json(result["metrics"], notes=result["notes"]) if result["metrics"] else None
    return out
