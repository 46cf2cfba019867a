"""SDFix for AUTOMATIC1111 WebUI v1.10: thin glue from the WebUI's script callbacks to ``lib_sdfix``.

Everything here only adapts: it reads the WebUI's objects, hands them to the core, and installs the
core's replacements for the few WebUI functions that have no hook (VAE decode/encode, upscaler
resize) -- only while a generation that wants them runs, restored right after.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, List, Optional

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
        owner = getattr(session, "owner", None)
        if owner is None or id(owner) not in running:
            _finish(session)


def _start(p: Any, session: GenerationSession) -> None:
    session.owner = p
    session.patches = _patch_targets(session.settings) if session.settings.enabled else []
    for owner, attr, factory in session.patches:
        _PATCHES.acquire(owner, attr, factory)
    push_session(session)
    setattr(p, _SESSION_ATTR, session)
    original_close = p.close

    def close() -> None:
        try:
            _finish(session)
        finally:
            original_close()

    p.close = close


def _finish(session: GenerationSession) -> None:
    """Unbind the session and drop its patches; idempotent."""
    if getattr(session, "finished", False):
        return
    session.finished = True
    pop_session(session)
    for owner, attr, _ in reversed(getattr(session, "patches", [])):
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
        if not settings.enabled:
            if INFOTEXT_KEY in p.extra_generation_params or NOTES_INFOTEXT_KEY in p.extra_generation_params:
                _write_infotext(p, None)
            return
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

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        session = getattr(p, _SESSION_ATTR, None)
        if session is not None:
            _finish(session)


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
    try:
        add_xyz_axes()  # --nowebui builds the UI before on_before_ui fires
    except Exception as exc:  # noqa: BLE001
        log_once("xyz", f"could not add X/Y/Z axes: {exc}", exc)
    logger.debug("SDFix %s loaded", __version__)
