"""Settings -> session -> infotext: what the AlwaysOn script does for each generation ``p``."""
from __future__ import annotations

import functools
import sys
from typing import Any, Optional, Sequence, Set

from lib_sdfix.failsafe import log_once
from lib_sdfix.parity import latent_upscale_note
from lib_sdfix.settings import (
    INFOTEXT_KEY,
    NOTES_INFOTEXT_KEY,
    OPTION_PREFIX,
    REFINE_INFOTEXT_KEY,
    SDFixSettings,
    SettingsError,
    defaults_from_options,
)
from lib_sdfix.webui import session as sessions
from lib_sdfix.webui.hooks import fix_targets
from lib_sdfix.webui.hosts import current
from lib_sdfix.webui.session import GenerationSession

__all__ = ["settings_defaults", "disabled_by_flag", "setup", "process", "postprocess", "apply_settings",
           "OVERRIDES_ATTR", "AXIS_NOTES_ATTR"]

OVERRIDES_ATTR = "sdfix_overrides"  # set by SDFix's X/Y/Z axes on each cell's copy of p
AXIS_NOTES_ATTR = "sdfix_axis_notes"  # SDFix's X/Y/Z axes' notes (values left out), on the plot's p
_ENTRIES = (INFOTEXT_KEY, REFINE_INFOTEXT_KEY, NOTES_INFOTEXT_KEY)  # SDFix's infotext entries, in order
# X/Y/Z axes whose value is a deliberate per-cell Hires sampling choice: parity steps aside for them.
_XYZ_HIRES_SAMPLER = ("Hires sampler",)
_XYZ_HIRES_SCHEDULER = ("Hires schedule type", "Hires scheduler")


def disabled_by_flag() -> bool:
    return bool(current().cmd_opt("sdfix_disable", False))


def settings_defaults() -> SDFixSettings:
    """The Settings-panel defaults, with ``--sdfix-vae-dtype`` on top."""
    shared = current().shared
    try:
        defaults = defaults_from_options(lambda key, default: getattr(shared.opts, key, default))
    except SettingsError as err:
        log_once("bad-options", f"ignoring invalid SDFix settings, using built-in defaults: {err}")
        defaults = SDFixSettings()
    dtype = current().cmd_opt("sdfix_vae_dtype")
    return defaults.changed(vae_dtype=dtype) if dtype else defaults


def add_infotext() -> bool:
    return bool(getattr(current().shared.opts, OPTION_PREFIX + "add_infotext", True))


def settings_for(p: Any, args: Sequence[Any]) -> SDFixSettings:
    """``p``'s settings from its script args (and SDFix's X/Y/Z overrides); SettingsError if invalid."""
    settings = SDFixSettings.from_args(args, settings_defaults())
    overrides = getattr(p, OVERRIDES_ATTR, None)
    return settings.changed(**overrides) if overrides else settings


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


def setup(p: Any, args: Sequence[Any]) -> None:
    """When ``p`` gets its script args: open the session early, so a selectable script that upscales
    before any generation starts (SD upscale) already gets the resize fix.  Invalid args wait for
    ``process``, which fails the request."""
    if disabled_by_flag() or sessions.session_of(p) is not None:
        return
    try:
        settings = settings_for(p, args)
    except SettingsError:
        return
    if settings.enabled:
        try:
            sessions.open_session(p, settings, fix_targets(settings))
        except Exception as exc:  # noqa: BLE001 -- never break a generation
            log_once("setup", f"SDFix could not prepare this generation: {exc}", exc)


def process(p: Any, args: Sequence[Any]) -> Optional[GenerationSession]:
    if disabled_by_flag():
        return None
    try:
        settings = settings_for(p, args)
    except SettingsError as err:
        sessions.finish(sessions.session_of(p))
        _fail_generation(p, err)
        return None
    return apply_settings(p, settings)


def postprocess(p: Any) -> None:
    sessions.finish(sessions.session_of(p))


def apply_settings(p: Any, settings: SDFixSettings) -> Optional[GenerationSession]:
    """Apply SDFix to generation ``p`` (before ``p.init``): the AlwaysOn script and the A/B runner."""
    session = sessions.session_of(p)
    if session is not None and session.settings != settings:
        session.finish()
        session = None
    if not settings.enabled:
        if any(key in p.extra_generation_params for key in _ENTRIES):
            _write_infotext(p, None)
        return None
    if session is None:
        try:
            session = sessions.open_session(p, settings, fix_targets(settings))
        except Exception as exc:  # noqa: BLE001 -- never break a generation
            log_once("process", f"SDFix could not set up this generation: {exc}", exc)
            return None
    for note in getattr(p, AXIS_NOTES_ATTR, None) or ():
        session.report.note(note)
    try:
        if getattr(p, "enable_hr", False):
            if settings.hires_parity:
                session.report.run("hires_parity", _resolve_parity, lambda *a: None, p, session)
            _latent_note(p, session)
    except Exception as exc:  # noqa: BLE001 -- never break a generation
        log_once("process", f"SDFix could not set up this generation: {exc}", exc)
        session.report.mark_failed("setup", exc)
    _write_infotext(p, session)
    return session


def _xyz_axis_labels() -> Set[str]:
    """Labels of the X/Y/Z plot axes that set the cell being generated on this thread."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "cell" and code.co_filename.endswith("xyz_grid.py"):
            local = frame.f_locals
            return {getattr(local.get(k), "label", "") for k in ("x_opt", "y_opt", "z_opt")} - {""}
        frame = frame.f_back
    return set()


def _resolve_parity(p: Any, session: GenerationSession) -> None:
    from modules import sd_samplers, sd_schedulers

    from lib_sdfix.parity import resolve_hires_sampling

    def sampler_name(name: Optional[str]) -> Optional[str]:
        config = sd_samplers.all_samplers_map.get(name) if name else None
        return config.name if config else name

    def scheduler_label(name: Optional[str]) -> Optional[str]:
        scheduler = sd_schedulers.schedulers_map.get(name) if name else None
        return scheduler.label if scheduler else name

    axes = _xyz_axis_labels()
    keep_sampler = any(label in axes for label in _XYZ_HIRES_SAMPLER)
    keep_scheduler = any(label in axes for label in _XYZ_HIRES_SCHEDULER)
    hr_sampler, hr_scheduler = sampler_name(p.hr_sampler_name), scheduler_label(p.hr_scheduler)
    choice = resolve_hires_sampling(
        p.sampler_name, scheduler_label(p.scheduler),
        None if keep_sampler else hr_sampler, None if keep_scheduler else hr_scheduler, parity=True,
    )
    if not keep_sampler:
        p.hr_sampler_name = None if choice.sampler == p.sampler_name else choice.sampler
    if not keep_scheduler:
        p.hr_scheduler = choice.scheduler
    if choice.note:
        session.report.note(f"parity: {choice.note}")
    if keep_sampler and hr_sampler and hr_sampler != p.sampler_name:
        session.report.note(f"parity: Hires sampler {hr_sampler} set by the X/Y/Z plot, kept")
    if keep_scheduler and hr_scheduler and hr_scheduler != choice.scheduler:
        session.report.note(f"parity: Hires schedule {hr_scheduler} set by the X/Y/Z plot, kept")


def _latent_note(p: Any, session: GenerationSession) -> None:
    shared = current().shared
    mode_name = p.hr_upscaler if p.hr_upscaler is not None else shared.latent_upscale_default_mode
    mode = shared.latent_upscale_modes.get(mode_name)
    note = latent_upscale_note(mode_name, mode, p.denoising_strength, session.settings.latent_denoise_warning)
    if note:
        session.report.note(note)


def _write_infotext(p: Any, session: Optional[GenerationSession]) -> None:
    """Own copy of extra_generation_params (X/Y/Z cells share one dict) with SDFix's entries."""
    params = {k: v for k, v in p.extra_generation_params.items() if k not in _ENTRIES}
    if session is not None and add_infotext():
        entries = session.settings.infotext_entries()
        params[INFOTEXT_KEY] = lambda **_: infotext_value(session)
        if REFINE_INFOTEXT_KEY in entries:
            params[REFINE_INFOTEXT_KEY] = entries[REFINE_INFOTEXT_KEY]
        params[NOTES_INFOTEXT_KEY] = lambda **_: session.infotext_notes()
    p.extra_generation_params = params


def infotext_value(session: GenerationSession) -> str:
    """The "SDFix" entry: the settings, plus the weights the fp32 VAE ran with when it ran, and
    ``tiled=decode`` (``encode``) when the fp32 VAE ran tiled."""
    text = session.settings.to_infotext()
    for key in ("weights", "tiled"):
        value = session.report.facts.get(key)
        if value:
            text += f" {key}={value}"
    return text

