"""SDFix for AUTOMATIC1111 WebUI v1.10: thin glue from the WebUI's script callbacks to ``lib_sdfix``.

Everything here only adapts: it reads the WebUI's objects, hands them to the core, and installs the
core's replacements for the few WebUI functions that have no hook (VAE decode/encode, upscaler
resize) -- only while a generation that wants them runs, restored right after.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import modules.scripts as scripts
from modules import script_callbacks, shared

from lib_sdfix import __version__
from lib_sdfix.generation import (
    FIX_DECODE,
    FIX_ENCODE,
    FIX_PARITY,
    FIX_RESIZE,
    GenerationSession,
    current_session,
    guarded_decode,
    guarded_encode,
    latent_upscale_note,
    pop_session,
    push_session,
    thread_sessions,
    resize_image_one_pass,
    upscale_natively,
)
from lib_sdfix.patching import PatchSet
from lib_sdfix.safety import log_once, logger
from lib_sdfix.settings import (
    INFOTEXT_KEY,
    NOTES_INFOTEXT_KEY,
    OPTION_PREFIX,
    SDFixSettings,
    SettingsError,
    defaults_from_options,
)

_PATCHES = PatchSet()
_SESSION_ATTR = "_sdfix_session"
_OVERRIDES_ATTR = "sdfix_overrides"  # set by the X/Y/Z axes on each cell's copy of p


# --- settings ------------------------------------------------------------------------------------


def _cmd_opt(name: str, default: Any = None) -> Any:
    return getattr(shared.cmd_opts, name, default)


def _disabled_by_flag() -> bool:
    return bool(_cmd_opt("sdfix_disable", False))


def _settings_defaults() -> SDFixSettings:
    """The Settings-panel defaults, with ``--sdfix-decode-dtype`` on top."""
    try:
        defaults = defaults_from_options(lambda key, default: getattr(shared.opts, key, default))
    except SettingsError as err:
        log_once("bad-options", f"ignoring invalid SDFix settings, using built-in defaults: {err}")
        defaults = SDFixSettings()
    dtype = _cmd_opt("sdfix_decode_dtype")
    return defaults.changed(decode_dtype=dtype) if dtype else defaults


def _add_infotext() -> bool:
    return bool(getattr(shared.opts, OPTION_PREFIX + "add_infotext", True))


@functools.lru_cache(maxsize=None)
def _args_error_class() -> type:
    """An HTTPException subclass: the WebUI API answers it with its status (422) and no traceback.
    starlette 0.26's HTTPException has no __str__, so the UI's error box would show nothing."""
    from fastapi import HTTPException

    class SDFixArgsError(HTTPException):
        def __str__(self) -> str:
            return str(self.detail)

    return SDFixArgsError


def _fail_generation(p: Any, err: SettingsError) -> None:
    """Script hooks cannot fail a request (the WebUI catches their exceptions), but ``p.init`` is
    called right after ``process`` and is not wrapped: make it raise the validation error."""
    message = f"SDFix: {err}"

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise _args_error_class()(status_code=422, detail=message)

    p.init = refuse


# --- the WebUI function replacements ----------------------------------------------------------


def _full_decode_method() -> bool:
    from modules import sd_samplers_common

    if shared.state.interrupted and getattr(shared.opts, "live_preview_fast_interrupt", False):
        return False  # the WebUI decodes with the preview approximation then: leave it
    return sd_samplers_common.approximation_indexes.get(shared.opts.sd_vae_decode_method, 0) == 0


def _vae_decode(model: Any) -> Callable[[Any], Any]:
    """The WebUI's full VAE decode (samples_to_images_tensor's Full branch) without its dtype casts:
    the guard has already put the VAE and the latent in the dtype they must run in."""
    import torch
    from modules import devices

    from lib_sdfix.precision import vae_weight_dtype

    def decode(latent: Any) -> Any:
        with torch.no_grad(), devices.without_autocast():
            return model.decode_first_stage(latent.to(vae_weight_dtype(model.first_stage_model)))

    return decode


def _make_decode_first_stage(original: Callable) -> Callable:
    def decode_first_stage(model, x):
        session = current_session()
        if session is None or not session.wants(FIX_DECODE) or not _full_decode_method():
            return original(model, x)
        return guarded_decode(session, _vae_decode(model), model.first_stage_model, x, lambda z: original(model, z))

    return decode_first_stage


def _make_samples_to_images_tensor(original: Callable) -> Callable:
    """Covers the full decodes that bypass decode_first_stage ("save images before highres fix" in
    latent mode); live previews (approximation=None) only when the user asked for it."""

    def samples_to_images_tensor(sample, approximation=None, model=None):
        session = current_session()
        if session is None or not session.wants(FIX_DECODE):
            return original(sample, approximation, model)
        if approximation is None and not (session.settings.guard_previews and _preview_is_full()):
            return original(sample, approximation, model)
        if approximation not in (None, 0) or not _full_decode_method():
            return original(sample, approximation, model)
        model = model or shared.sd_model
        return guarded_decode(session, _vae_decode(model), model.first_stage_model, sample,
                              lambda z: original(z, approximation, model))

    return samples_to_images_tensor


def _preview_is_full() -> bool:
    from modules import lowvram, sd_samplers_common

    if sd_samplers_common.approximation_indexes.get(shared.opts.show_progress_type, 0) != 0:
        return False
    return not (lowvram.is_enabled(shared.sd_model) and not shared.opts.live_preview_allow_lowvram_full)


def _make_images_tensor_to_samples(original: Callable) -> Callable:
    def images_tensor_to_samples(image, approximation=None, model=None):
        from modules import devices, sd_samplers_common

        session = current_session()
        if approximation is None:
            resolved = sd_samplers_common.approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
        else:
            resolved = approximation
        if session is None or not session.wants(FIX_ENCODE) or resolved == 3:
            return original(image, approximation, model)
        model = model or shared.sd_model
        model.first_stage_model.to(devices.dtype_vae)  # what the WebUI's encode does first; restored dtype

        def encode(img):
            img = img.to(shared.device) * 2 - 1
            if len(img) > 1:
                import torch

                return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(i.unsqueeze(0)))[0] for i in img])
            return model.get_first_stage_encoding(model.encode_first_stage(img))

        return guarded_encode(session, encode, model.first_stage_model, image,
                              lambda img: original(img, approximation, model), result_dtype=devices.dtype_vae)

    return images_tensor_to_samples


def _native_upscaler(upscaler_name: Optional[str]) -> Optional[Callable[[Any, float], Any]]:
    """``upscale(image, scale)`` giving the named upscaler's native output, as images.resize_image picks it."""
    from modules import upscaler as upscaler_module

    name = upscaler_name or shared.opts.upscaler_for_img2img
    if name is None or name == "None":
        return None
    found = [x for x in shared.sd_upscalers if x.name == name]
    data = found[0] if found else shared.sd_upscalers[0]
    if not found:
        print(f"could not find upscaler named {name or '<empty string>'}, using {data.name} as a fallback")
    scaler = data.scaler

    def upscale(image: Any, scale: float) -> Any:
        if type(scaler).upscale is not upscaler_module.Upscaler.upscale and not _is_ours(type(scaler).upscale):
            session = current_session()
            if session is not None:
                session.report.note(f"upscaler {data.name} resizes inside its own upscale(); one extra resample")
            return scaler.upscale(image, scale, data.data_path)
        scaler.scale = scale
        return upscale_natively(image, scale, lambda im: scaler.do_upscale(im, data.data_path),
                                lambda: shared.state.interrupted)

    return upscale


def _is_ours(fn: Any) -> bool:
    return getattr(fn, "__sdfix__", False)


def _make_resize_image(original: Callable) -> Callable:
    def resize_image(resize_mode, im, width, height, upscaler_name=None):
        session = current_session()
        if session is None or not session.wants(FIX_RESIZE) or resize_mode not in (0, 1, 2):
            return original(resize_mode, im, width, height, upscaler_name)
        upscale = _native_upscaler(upscaler_name)
        return session.report.run(
            FIX_RESIZE,
            lambda: resize_image_one_pass(resize_mode, im, width, height, upscale, session.settings.resize_filter),
            lambda: original(resize_mode, im, width, height, upscaler_name),
        )

    return resize_image


def _make_upscaler_upscale(original: Callable) -> Callable:
    """Upscaler.upscale (used directly by the SD upscale script): native passes, then one resize."""

    def upscale(self, img, scale, selected_model=None):
        session = current_session()
        if session is None or not session.wants(FIX_RESIZE):
            return original(self, img, scale, selected_model)

        def fixed():
            from lib_sdfix.resize import resize_after_upscale

            self.scale = scale
            dest = (int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8))
            native = upscale_natively(img, scale, lambda im: self.do_upscale(im, selected_model),
                                      lambda: shared.state.interrupted)
            return resize_after_upscale(native, dest, session.settings.resize_filter)

        return session.report.run(FIX_RESIZE, fixed, lambda: original(self, img, scale, selected_model))

    upscale.__sdfix__ = True
    return upscale


def _patch_targets(settings: SDFixSettings) -> List[tuple]:
    """(owner, attribute, factory) for every replacement the settings need."""
    from modules import images, processing, sd_samplers_common, upscaler

    targets = []
    if settings.precision_guard:
        targets += [
            (processing, "decode_first_stage", _make_decode_first_stage),
            (sd_samplers_common, "decode_first_stage", _make_decode_first_stage),
            (sd_samplers_common, "samples_to_images_tensor", _make_samples_to_images_tensor),
        ]
    if settings.guard_encode:
        targets += [
            (processing, "images_tensor_to_samples", _make_images_tensor_to_samples),
            (sd_samplers_common, "images_tensor_to_samples", _make_images_tensor_to_samples),
        ]
    if settings.post_resize:
        targets += [
            (images, "resize_image", _make_resize_image),
            (upscaler.Upscaler, "upscale", _make_upscaler_upscale),
        ]
    return targets


# --- one generation ------------------------------------------------------------------------------


def _running_generations() -> List[Any]:
    """The ``p`` of every process_images call on this thread's stack (outermost last)."""
    found, frame = [], sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "process_images_inner" and "p" in frame.f_locals:
            found.append(frame.f_locals["p"])
        frame = frame.f_back
    return found


def _drop_stale_sessions() -> None:
    """Finish sessions left behind by a generation that raised where nothing closed its ``p``
    (e.g. an X/Y/Z cell): none of them may apply to the generation starting now."""
    running = {id(p) for p in _running_generations()}
    for session in thread_sessions():
        if session.owner is None or id(session.owner) not in running:
            _finish(session)


def _open(session: GenerationSession) -> None:
    """Install the session's patches and bind it to this thread."""
    session.patches = _patch_targets(session.settings) if session.settings.enabled else []
    for owner, attr, factory in session.patches:
        _PATCHES.acquire(owner, attr, factory)
    push_session(session)


def _start(p: Any, session: GenerationSession) -> None:
    """Open the session for generation ``p``; closing ``p`` (the WebUI always does) finishes it."""
    session.owner = p
    _open(session)
    setattr(p, _SESSION_ATTR, session)
    original_close = p.close

    def close() -> None:
        try:
            _finish(session)
        finally:
            original_close()

    p.close = close


@contextlib.contextmanager
def _session_scope(settings: SDFixSettings) -> Iterator[GenerationSession]:
    """A session for work outside a generation (the A/B tab's extra decodes)."""
    session = GenerationSession(settings)
    _open(session)
    try:
        yield session
    finally:
        _finish(session)


def _finish(session: GenerationSession) -> None:
    """Unbind the session and drop its patches; idempotent."""
    if session.finished:
        return
    session.finished = True
    pop_session(session)
    for owner, attr, _ in reversed(session.patches):
        _PATCHES.release(owner, attr)


def _resolve_parity(p: Any, session: GenerationSession) -> None:
    from modules import sd_samplers, sd_schedulers

    from lib_sdfix.parity import resolve_hires_sampling

    def sampler_name(name: Optional[str]) -> Optional[str]:
        config = sd_samplers.all_samplers_map.get(name) if name else None
        return config.name if config else name

    def scheduler_label(name: Optional[str]) -> Optional[str]:
        scheduler = sd_schedulers.schedulers_map.get(name) if name else None
        return scheduler.label if scheduler else name

    choice = resolve_hires_sampling(
        p.sampler_name, scheduler_label(p.scheduler),
        sampler_name(p.hr_sampler_name), scheduler_label(p.hr_scheduler), parity=True,
    )
    p.hr_sampler_name = None if choice.sampler == p.sampler_name else choice.sampler
    p.hr_scheduler = choice.scheduler
    if choice.note:
        session.report.note(f"parity: {choice.note}")


def _latent_note(p: Any, session: GenerationSession) -> None:
    mode_name = p.hr_upscaler if p.hr_upscaler is not None else shared.latent_upscale_default_mode
    mode = shared.latent_upscale_modes.get(mode_name)
    note = latent_upscale_note(mode_name, mode, p.denoising_strength, session.settings.latent_denoise_warning)
    if note:
        session.report.note(note)


def _write_infotext(p: Any, session: Optional[GenerationSession]) -> None:
    """Own copy of extra_generation_params (X/Y/Z cells share one dict) with SDFix's entries."""
    params = {k: v for k, v in p.extra_generation_params.items() if k not in (INFOTEXT_KEY, NOTES_INFOTEXT_KEY)}
    if session is not None and _add_infotext():
        params[INFOTEXT_KEY] = session.settings.to_infotext()
        params[NOTES_INFOTEXT_KEY] = lambda **_: session.infotext_notes()
    p.extra_generation_params = params


def apply_settings(p: Any, settings: SDFixSettings) -> Optional[GenerationSession]:
    """Apply SDFix to generation ``p`` (before ``p.init``): the AlwaysOn script and the A/B tab."""
    if not settings.enabled:
        if INFOTEXT_KEY in p.extra_generation_params or NOTES_INFOTEXT_KEY in p.extra_generation_params:
            _write_infotext(p, None)
        return None
    session = GenerationSession(settings)
    try:
        _start(p, session)
        if getattr(p, "enable_hr", False):
            if settings.hires_parity:
                session.report.run(FIX_PARITY, _resolve_parity, lambda *a: None, p, session)
            _latent_note(p, session)
    except Exception as exc:  # noqa: BLE001 -- never break a generation
        log_once("process", f"SDFix could not set up this generation: {exc}", exc)
        session.report.mark_failed("setup", exc)
    _write_infotext(p, session)
    return session


# --- the AlwaysOn script ------------------------------------------------------------------------


class SDFixScript(scripts.Script):
    """SDFix accordion in txt2img and img2img; applies the fixes to each generation."""

    sorting_priority = 20

    def title(self) -> str:
        return "SDFix"

    def show(self, is_img2img: bool) -> Any:
        return False if _disabled_by_flag() else scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> List[Any]:
        from lib_sdfix.ui import build_script_controls, infotext_paste_value
        from lib_sdfix.settings import UI_ARG_ORDER

        controls = build_script_controls(_settings_defaults(), self.elem_id)
        self.infotext_fields = [
            (control, lambda params, name=name: infotext_paste_value(params, name))
            for control, name in zip(controls, UI_ARG_ORDER)
        ]
        self.paste_field_names = [INFOTEXT_KEY]
        return controls

    def process(self, p: Any, *args: Any) -> None:
        if _disabled_by_flag():
            return
        _drop_stale_sessions()
        try:
            settings = SDFixSettings.from_args(args, _settings_defaults())
            overrides = getattr(p, _OVERRIDES_ATTR, None)
            if overrides:
                settings = settings.changed(**overrides)
        except SettingsError as err:
            _fail_generation(p, err)
            return
        apply_settings(p, settings)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        session = getattr(p, _SESSION_ATTR, None)
        if session is not None:
            _finish(session)


# --- A/B comparison ----------------------------------------------------------------------------

_PAYLOAD_DROPPED = ("script_name", "script_args", "alwayson_scripts", "infotext", "send_images", "save_images",
                    "force_task_id", "sampler_index")


def _txt2img_fields(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The payload checked by the WebUI's own txt2img API model; SettingsError naming bad fields."""
    from pydantic import ValidationError

    from modules import sd_samplers
    from modules.api import models

    try:
        request = models.StableDiffusionTxt2ImgProcessingAPI(**payload)
    except ValidationError as err:
        raise SettingsError({"payload." + ".".join(str(x) for x in e["loc"]): e["msg"] for e in err.errors()}) from None
    except TypeError as err:
        raise SettingsError({"payload": str(err)}) from None
    sampler, scheduler = sd_samplers.get_sampler_and_scheduler(request.sampler_name or request.sampler_index,
                                                               request.scheduler)
    if sampler not in sd_samplers.all_samplers_map:
        raise SettingsError({"payload.sampler_name": f"sampler not found: {request.sampler_name!r}"})
    fields = {k: v for k, v in vars(request).items() if k not in _PAYLOAD_DROPPED}
    fields["sampler_name"] = sampler
    if not fields.get("scheduler") and scheduler != "Automatic":
        fields["scheduler"] = scheduler
    if fields.get("n_iter", 1) != 1 or fields.get("batch_size", 1) != 1:
        raise SettingsError({"payload.batch_size": "A/B compares one image: batch_size and n_iter must be 1"})
    return fields


def _new_txt2img(fields: Dict[str, Any]) -> Any:
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **fields)
    p.outpath_samples = shared.opts.outdir_txt2img_samples
    p.outpath_grids = shared.opts.outdir_txt2img_grids
    p.do_not_save_samples = p.do_not_save_grid = True
    p.scripts = None  # a comparison renders SDFix's variants only, nothing of other extensions
    return p


def _latents_to_image(decoded: Any) -> Any:
    """What process_images does between its decode and the PIL image (no face restore etc.)."""
    import numpy as np
    import torch
    from PIL import Image

    x = torch.stack(list(decoded)).float()
    x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)[0]
    return Image.fromarray((255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8))


def _decode_again(latent: Any, settings: SDFixSettings) -> Any:
    """Decode a captured final latent the way a generation with ``settings`` would."""
    from modules import devices, processing

    decode = lambda: processing.decode_latent_batch(shared.sd_model, latent, target_device=devices.cpu,  # noqa: E731
                                                    check_for_nans=True)
    if not settings.enabled or not settings.precision_guard:
        return _latents_to_image(decode())
    only_decode = settings.changed(guard_encode=False, hires_parity=False, post_resize=False)
    with _session_scope(only_decode):
        return _latents_to_image(decode())


def _retag_infotext(infotext: str, settings: SDFixSettings) -> str:
    """The infotext of one generation, re-labelled with another variant's SDFix settings."""
    import re

    text = re.sub(r", SDFix notes: (\"(?:\\.|[^\\\"])*\"|[^,\n]*)", "", infotext)
    text = re.sub(r", SDFix: [^,\n]*", "", text)
    if settings.enabled and _add_infotext():
        text += f", {INFOTEXT_KEY}: {settings.to_infotext()}"
    return text


def _capture_first_pass(p: Any, store: List[Any]) -> None:
    """Keep the first pass's latent of ``p`` (what sample() hands to its Hires pass)."""
    original = p.sample_hr_pass

    def sample_hr_pass(samples: Any, *args: Any, **kwargs: Any) -> Any:
        store.append(samples.clone())
        return original(samples, *args, **kwargs)

    p.sample_hr_pass = sample_hr_pass


def _hires_from_first_pass(p: Any, latent: Any) -> Callable:
    """``p.sample`` that skips the first pass and starts the Hires pass from a shared first-pass
    latent: the tail of the WebUI's txt2img sample() (no fix touches the first pass, and the Hires
    pass draws its own noise from the seeds, so the result equals a full run)."""
    import torch

    from modules import devices, processing, sd_models, sd_samplers

    def sample(conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        p.sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
        samples = latent.clone()
        decoded = None
        if p.latent_scale_mode is None:
            decoded = torch.stack(processing.decode_latent_batch(p.sd_model, samples, target_device=devices.cpu,
                                                                 check_for_nans=True)).to(dtype=torch.float32)
        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=p.hr_checkpoint_info)
        return p.sample_hr_pass(samples, decoded, seeds, subseeds, subseed_strength, prompts)

    return sample


def run_comparison(request: Any) -> Dict[str, Any]:
    """Render every variant of an A/B request with the least work; images, infotexts, metrics, notes.

    Runs on the caller's thread; the caller holds the WebUI's queue lock and job state.
    """
    import time

    from lib_sdfix import ab
    from modules import processing

    request = request.with_resolved_seed()
    fields = _txt2img_fields(request.payload)
    hires = bool(fields.get("enable_hr"))
    upscaler = fields.get("hr_upscaler")
    latent_upscaler = upscaler is None or upscaler in shared.latent_upscale_modes
    groups = ab.sampling_groups(request.variants, hires=hires, latent_upscaler=latent_upscaler)
    runs = [(g, g.decodes[0]) for g in groups] if not hires else [(g, d) for g in groups for d in g.decodes]
    shared.state.job_count = len(runs) + 1 if hires else len(runs)

    images: Dict[str, Any] = {}
    infotexts: Dict[str, str] = {}
    times: Dict[str, float] = {}
    first_pass: List[Any] = []  # the first-pass latent, shared by every Hires run
    for group, decode in runs:
        if shared.state.interrupted:
            break
        settings = group.variants_for(decode)[0].settings
        p = _new_txt2img(fields)
        apply_settings(p, settings)
        captured: List[Any] = []
        if not hires:
            original_sample = p.sample

            def capturing_sample(*args: Any, _sample: Callable = original_sample, **kwargs: Any) -> Any:
                samples = _sample(*args, **kwargs)
                captured.append(samples)
                return samples

            p.sample = capturing_sample
        elif first_pass:
            p.sample = _hires_from_first_pass(p, first_pass[0])
        else:
            _capture_first_pass(p, first_pass)
        start = time.perf_counter()
        with contextlib.closing(p):
            processed = processing.process_images(p)
        elapsed = time.perf_counter() - start
        if not processed.images:
            break
        for variant in group.variants_for(decode):
            images[variant.name], times[variant.name] = processed.images[0], elapsed
            same = variant.settings == settings
            infotexts[variant.name] = processed.infotexts[0] if same else _retag_infotext(processed.infotexts[0], variant.settings)
        for other in group.decodes if not hires else ():
            if other == decode or not captured or shared.state.interrupted:
                continue
            start = time.perf_counter()
            image = _decode_again(captured[0], group.variants_for(other)[0].settings)
            elapsed = time.perf_counter() - start
            for variant in group.variants_for(other):
                images[variant.name], times[variant.name] = image, elapsed
                infotexts[variant.name] = _retag_infotext(processed.infotexts[0], variant.settings)

    done = [v for v in request.variants if v.name in images]
    reference = request.reference
    result: Dict[str, Any] = {
        "seed": fields.get("seed"), "complete": len(done) == len(request.variants),
        "variants": [{"name": v.name, "label": v.label, "settings": v.settings.as_dict()} for v in done],
        "images": images, "infotexts": infotexts, "times": times,
        "runs": len(runs) + 1 if hires else len(runs),  # sampling passes: one shared first pass with Hires
        "metrics": [], "notes": [], "heatmap": None, "saved": None,
    }
    if reference.name not in images or len(done) < 2:
        return result
    context = ab.RunContext(hires=hires, upscaler=upscaler, first_sampler=fields.get("sampler_name"),
                            first_scheduler=fields.get("scheduler"), hires_sampler=fields.get("hr_sampler_name"),
                            hires_scheduler=fields.get("hr_scheduler"))
    rows = ab.metrics_table({v.name: images[v.name] for v in done}, times, reference.name,
                            labels={v.name: v.label for v in done})
    result["metrics"] = rows
    result["notes"] = ab.effect_notes(done, images, context)
    result["heatmap"] = ab.heatmap(images[reference.name], images[done[-1].name], request.heatmap_gain)
    if request.save:
        result["saved"] = _save_comparison(fields, done, images, infotexts, rows, result["notes"])
    return result


def _save_comparison(fields: Dict[str, Any], variants: List[Any], images: Dict[str, Any],
                     infotexts: Dict[str, str], rows: List[Dict[str, Any]], notes: List[str]) -> Dict[str, Any]:
    """Under <outputs>/sdfix-ab, named with the WebUI's filename pattern and sequence number."""
    import os

    from lib_sdfix import ab
    from modules import images as webui_images
    from modules import paths_internal

    out_dir = os.path.join(shared.opts.outdir_samples or paths_internal.default_output_dir, "sdfix-ab")
    os.makedirs(out_dir, exist_ok=True)
    p = _new_txt2img(fields)
    first = images[variants[0].name]
    pattern = shared.opts.samples_filename_pattern or "[seed]-[prompt_spaces]"
    name = webui_images.FilenameGenerator(p, fields.get("seed"), fields.get("prompt", ""), first).apply(pattern)
    basename = f"{webui_images.get_next_sequence_number(out_dir, ''):05}-{name}"
    paths = ab.save_comparison(out_dir, basename, variants, images, infotexts,
                               ab.metrics_json(rows, reference_name=variants[0].name, notes=notes))
    return {"images": {k: str(v) for k, v in paths["images"].items()}, "grid": str(paths["grid"]),
            "metrics": str(paths["metrics"])}


def _environment_audit() -> Dict[str, Any]:
    """What /sdfix/v1/status reports: versions, flags, VAE precision, settings that break parity."""
    import torch

    from lib_sdfix.precision import flag_api, read_flags
    from modules import devices

    gpu = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        gpu = {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
               "tf32_capable": major >= 8}
    vae = getattr(getattr(shared, "sd_model", None), "first_stage_model", None)
    return {
        "torch": torch.__version__, "flag_api": flag_api(), "gpu": gpu,
        "flags": {k: str(v) if not isinstance(v, (bool, str)) else v for k, v in read_flags().items()},
        "vae_dtype": str(devices.dtype_vae), "vae_weights_dtype": str(next(vae.parameters()).dtype) if vae is not None else None,
        "no_half_vae": bool(_cmd_opt("no_half_vae", False)), "no_half": bool(_cmd_opt("no_half", False)),
        "upcast_sampling": bool(_cmd_opt("upcast_sampling", False)), "precision": _cmd_opt("precision"),
        "hires_sampler_selection_shown": bool(getattr(shared.opts, "hires_fix_show_sampler", False)),
        "sd_vae_decode_method": getattr(shared.opts, "sd_vae_decode_method", None),
        "sd_vae_encode_method": getattr(shared.opts, "sd_vae_encode_method", None),
        "patched_now": _PATCHES.active(),
    }


def _api_response(result: Dict[str, Any]) -> Dict[str, Any]:
    from lib_sdfix import ab

    out = {k: v for k, v in result.items() if k not in ("images", "heatmap", "metrics")}
    out["images"] = {name: ab.png_base64(image) for name, image in result["images"].items()}
    out["heatmap"] = ab.png_base64(result["heatmap"]) if result["heatmap"] is not None else None
    out["metrics"] = ab.metrics_json(result["metrics"], notes=result["notes"]) if result["metrics"] else None
    return out


def _auth_dependencies() -> List[Any]:
    """The WebUI's --api-auth check, for SDFix's routes too (it only guards /sdapi routes itself)."""
    auth = _cmd_opt("api_auth")
    if not auth:
        return []
    from secrets import compare_digest

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    credentials = dict(item.split(":", 1) for item in auth.split(",") if ":" in item)

    def check(given=Depends(HTTPBasic())) -> bool:
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    # A real class, not the string this module's postponed annotations would give FastAPI.
    check.__annotations__ = {"given": HTTPBasicCredentials, "return": bool}
    return [Depends(check)]


def on_app_started(demo: Any, app: Any) -> None:
    """GET /sdfix/v1/status and POST /sdfix/v1/ab, behind --api-auth like /sdapi/v1/*."""
    from fastapi import Body, HTTPException

    from lib_sdfix import ab
    from modules import call_queue

    def status():
        return {"version": __version__, "disabled": _disabled_by_flag(), "settings": _settings_defaults().as_dict(),
                "environment": _environment_audit()}

    def compare(body=Body(...)):
        try:
            request = ab.ab_request_from_body(body, _settings_defaults())
        except SettingsError as err:
            raise HTTPException(status_code=422, detail=f"SDFix: {err}") from None
        with call_queue.queue_lock:
            shared.state.begin(job="sdfix_ab")
            try:
                result = run_comparison(request)
            except SettingsError as err:
                raise HTTPException(status_code=422, detail=f"SDFix: {err}") from None
            finally:
                shared.state.end()
        return _api_response(result)

    dependencies = _auth_dependencies()
    app.add_api_route("/sdfix/v1/status", status, methods=["GET"], dependencies=dependencies)
    app.add_api_route("/sdfix/v1/ab", compare, methods=["POST"], dependencies=dependencies)


def _tab_outputs(result: Dict[str, Any]) -> List[Any]:
    """Run results -> [seed, compare HTML, gallery, heatmap, metrics, notes, info]."""
    from lib_sdfix import ab

    variants = result["variants"]
    if len(variants) < 2:
        message = "Interrupted before two variants were ready." if not result["complete"] else "Nothing to compare."
        return [result["seed"], "", [], None, None, message, ""]
    images = result["images"]
    reference, last = variants[0], variants[-1]
    compare = ab.compare_html(ab.png_base64(images[reference["name"]]), ab.png_base64(images[last["name"]]),
                              (reference["label"], last["label"]))
    gallery = [(images[v["name"]], v["label"]) for v in variants]
    headers, rows = ab.metrics_display(result["metrics"])
    notes = [f"- {note}" for note in result["notes"]]
    notes.append(f"- {result['runs']} sampling run(s) for {len(variants)} variants, seed {result['seed']}")
    if not result["complete"]:
        notes.append("- interrupted: only the variants shown were rendered")
    if result["saved"]:
        notes.append(f"- saved: `{result['saved']['grid']}`")
    return [result["seed"], compare, gallery, result["heatmap"], {"headers": headers, "data": rows},
            "\n".join(notes), ""]


def on_ui_tabs() -> List[Any]:
    """The "SDFix A/B" tab."""
    import os

    import gradio as gr

    from lib_sdfix import ab
    from lib_sdfix.ab_ui import MODE_CHOICES, TabCallbacks, build_ab_tab, payload_from_form
    from modules import call_queue, infotext_utils, paths, sd_samplers, sd_schedulers

    def payload_from_text(text: str) -> Dict[str, Any]:
        if not text.strip():
            return {}
        try:
            return ab.payload_from_infotext(infotext_utils.parse_generation_parameters(text))
        except SettingsError as err:
            gr.Warning(f"SDFix: {err}")
            return {}

    def last_generation() -> Dict[str, Any]:
        path = os.path.join(paths.data_path, "params.txt")
        if not os.path.isfile(path):
            gr.Warning("SDFix: no txt2img generation yet")
            return {}
        with open(path, encoding="utf8") as file:
            return payload_from_text(file.read())

    def run(id_task: str, mode: str, gain: float, save: bool, *form: Any) -> List[Any]:
        body = {"payload": payload_from_form(form), "variants": MODE_CHOICES.get(mode, "ab"),
                "heatmap_gain": gain, "save": bool(save)}
        return _tab_outputs(run_comparison(ab.ab_request_from_body(body, _settings_defaults())))

    callbacks = TabCallbacks(
        samplers=sd_samplers.visible_sampler_names,
        schedulers=lambda: [s.label for s in sd_schedulers.schedulers],
        upscalers=lambda: [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]],
        last_generation=last_generation,
        payload_from_text=payload_from_text,
        run=call_queue.wrap_gradio_gpu_call(run, extra_outputs=[gr.update(), "", [], None, None, ""]),
        interrupt=lambda: shared.state.interrupt(),
    )
    return [(build_ab_tab(callbacks), "SDFix A/B", "sdfix_ab")]


# --- Settings panel, X/Y/Z axes, unload ----------------------------------------------------------


def on_ui_settings() -> None:
    import gradio as gr

    from lib_sdfix.ui import SETTINGS_SECTION, settings_panel_options

    components = {"checkbox": gr.Checkbox, "radio": gr.Radio, "slider": gr.Slider}
    for spec in settings_panel_options():
        info = shared.OptionInfo(spec.default, spec.label, components[spec.component], spec.component_args,
                                 section=SETTINGS_SECTION, category_id="sd")
        shared.opts.add_option(spec.key, info.info(spec.info))


def add_xyz_axes() -> None:
    """Axes "SDFix: ..." in the X/Y/Z plot script, for with/without grids."""
    from lib_sdfix.ui import XYZ_AXES, parse_axis_value

    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None or any(getattr(o, "label", "").startswith("SDFix:") for o in xyz.axis_options):
        return

    def apply(option: str) -> Callable:
        def apply_value(p: Any, x: Any, xs: Any) -> None:
            setattr(p, _OVERRIDES_ATTR, {**(getattr(p, _OVERRIDES_ATTR, None) or {}), option: parse_axis_value(option, x)})

        return apply_value

    def confirm(option: str) -> Callable:
        def check(p: Any, xs: Any) -> None:
            for x in xs:
                parse_axis_value(option, x)  # raises SettingsError naming the option: aborts the plot

        return check

    for label, option, choices in XYZ_AXES:
        xyz.axis_options.append(xyz.AxisOption(label, str, apply(option), confirm=confirm(option),
                                               choices=lambda choices=choices: list(choices)))


def on_script_unloaded() -> None:
    _PATCHES.release_all()


if not _disabled_by_flag():
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_before_ui(add_xyz_axes)
    script_callbacks.on_script_unloaded(on_script_unloaded)
    script_callbacks.on_app_started(on_app_started)
    script_callbacks.on_ui_tabs(on_ui_tabs)
    try:
        add_xyz_axes()  # --nowebui builds the UI before on_before_ui fires
    except Exception as exc:  # noqa: BLE001
        log_once("xyz", f"could not add X/Y/Z axes: {exc}", exc)
    logger.debug("SDFix %s loaded", __version__)
