"""The host functions SDFix replaces while a generation wants a fix, and what each replacement does.

Why these functions: the WebUI has no hook inside its VAE decode/encode or its upscaler resize.  Each
replacement asks for the session bound to its thread; without one (another thread, no generation,
SDFix off) it is the host's own function, called as is.  The VAE replacements never re-implement the
host's decode: they run the host's own function inside the precision guard with the VAE and every
attribute that names its dtype set to fp32 (see :mod:`lib_sdfix.vae.fp32`), so whatever the host
does inside (``--upcast-sampling``'s hijack, Forge's wrapper, reForge's casts) sees fp32.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

from lib_sdfix.failsafe import log_once
from lib_sdfix.settings import FIXES, SDFixSettings
from lib_sdfix.webui import refine
from lib_sdfix.webui.hosts import current
from lib_sdfix.webui.patches import Target
from lib_sdfix.webui.session import GenerationSession, current_session

__all__ = ["FACTORIES", "fix_targets", "hook_targets", "vae_call", "last_decode_size", "watching_samplers"]

_LAST_DECODE: Dict[str, Any] = {}  # {"size": (width, height)} of the last guarded fp32 decode


def last_decode_size() -> Optional[Any]:
    """(width, height) of the last image SDFix's fp32 VAE decoded (the Hires size after a Hires
    generation); None before the first."""
    return _LAST_DECODE.get("size")


def _record(session: GenerationSession, run: Any) -> None:
    from lib_sdfix.vae.call import report_run

    if run.kind == "decoder":
        _LAST_DECODE["size"] = (run.output[1], run.output[0])
    report_run(session.report, run)


def vae_call(session: GenerationSession, fix: str, call: Callable[[], Any], *, model: Any = None,
             wrapper: Any = None, result_dtype: Any = None) -> Any:
    """``call()`` -- the host's own VAE function -- under the guard; the host's path as is if that fails.

    In fp32 the VAE's decoder/encoder run untiled, one image at a time or tiled, as the memory
    estimate says (:mod:`lib_sdfix.vae.call`); out of memory retries tiled before the host's path."""
    from lib_sdfix.precision import autocast_disabled, precision_guard
    from lib_sdfix.vae.call import guarded_call
    from lib_sdfix.vae.exact import exact_weights

    host = current()

    def guarded() -> Any:
        with precision_guard(), autocast_disabled():
            if not session.settings.upcast:
                return call()
            vae_wrapper = wrapper if wrapper is not None else host.vae_wrapper(model)
            module = host.vae_module(model, vae_wrapper)
            exact = exact_weights(module, host.vae_source_files())
            result = guarded_call(call, module, dtype_attrs=host.vae_dtype_attrs(vae_wrapper), exact=exact.tensors,
                                  record=lambda run: _record(session, run),
                                  record_weights=lambda weights: session.report.fact("weights", weights))
        return result if result_dtype is None else result.to(result_dtype)

    return session.report.run(fix, guarded, call)


def _wants(fix: str) -> Optional[GenerationSession]:
    session = current_session()
    return session if session is not None and session.wants(fix) else None


def _approximate(session: GenerationSession, fix: str, method: str) -> None:
    what = "decode" if fix == "precision_guard" else "encode"
    session.report.mark_skipped(fix, f"VAE {what} method {method} does not run the VAE")


# --- decode ---------------------------------------------------------------------------------------


def decode_first_stage(original: Callable) -> Callable:
    """``decode_first_stage(model, x)``: every final decode of a generation (the host's decode method)."""

    def replacement(model, x, *args, **kwargs):
        session = _wants("precision_guard")
        if session is None:
            return original(model, x, *args, **kwargs)
        host = current()
        method = host.decode_method()
        if host.approximation_index(method) != 0:
            _approximate(session, "precision_guard", method)
            return original(model, x, *args, **kwargs)
        return vae_call(session, "precision_guard", lambda: original(model, x, *args, **kwargs), model=model)

    return replacement


def samples_to_images_tensor(original: Callable) -> Callable:
    """Explicit full decodes that bypass decode_first_stage (``approximation=0``: the "save images before
    highres fix" image, always made with the full VAE whatever the decode method).  Live previews
    (``approximation=None``) are left alone: they run on another thread, at the same time as sampling."""

    def replacement(sample, approximation=None, model=None, *args, **kwargs):
        session = _wants("precision_guard")
        host = current()
        if session is None or approximation != 0 or _fast_interrupt(host):
            return original(sample, approximation, model, *args, **kwargs)
        return vae_call(session, "precision_guard", lambda: original(sample, approximation, model, *args, **kwargs),
                        model=model)

    return replacement


def _fast_interrupt(host: Any) -> bool:
    """The host then decodes with the preview approximation whatever was asked."""
    shared = host.shared
    return bool(getattr(shared.state, "interrupted", False) and getattr(shared.opts, "live_preview_fast_interrupt", False))


def wrapper_decode(original: Callable) -> Callable:
    """A VAE wrapper's decode (Forge ``decode_inner``, reForge ``decode``): whoever calls it."""

    def replacement(self, samples, *args, **kwargs):
        session = _wants("precision_guard")
        if session is None:
            return original(self, samples, *args, **kwargs)
        return vae_call(session, "precision_guard", lambda: original(self, samples, *args, **kwargs), wrapper=self)

    return replacement


# --- encode ---------------------------------------------------------------------------------------


def images_tensor_to_samples(original: Callable) -> Callable:
    """``images_tensor_to_samples(image, approximation, model)``: img2img init images and the Hires input."""

    def replacement(image, approximation=None, model=None, *args, **kwargs):
        session = _wants("guard_encode")
        if session is None:
            return original(image, approximation, model, *args, **kwargs)
        host = current()
        method = host.encode_method()
        index = approximation if approximation is not None else host.approximation_index(method)
        if index == 3:
            _approximate(session, "guard_encode", "TAESD")
            return original(image, approximation, model, *args, **kwargs)
        return vae_call(session, "guard_encode", lambda: original(image, approximation, model, *args, **kwargs),
                        model=model, result_dtype=host.encode_result_dtype())

    return replacement


def wrapper_encode(original: Callable) -> Callable:
    def replacement(self, pixels, *args, **kwargs):
        session = _wants("guard_encode")
        if session is None:
            return original(self, pixels, *args, **kwargs)
        return vae_call(session, "guard_encode", lambda: original(self, pixels, *args, **kwargs), wrapper=self)

    return replacement


# --- upscaler + resize ------------------------------------------------------------------------------


def _is_base_upscale(fn: Any) -> bool:
    from modules import upscaler as upscaler_module

    from lib_sdfix.patching import is_replacement

    return fn is upscaler_module.Upscaler.upscale or is_replacement(fn)


def _native_upscaler(session: GenerationSession, upscaler_name: str) -> Callable[[Any, float], Any]:
    """``upscale(image, scale)`` giving the named upscaler's native output, as the host's resize picks it."""
    from lib_sdfix.resize import upscale_natively

    host = current()
    shared = host.shared
    found = [x for x in shared.sd_upscalers if x.name == upscaler_name]
    data = found[0] if found else shared.sd_upscalers[0]
    if not found:
        print(f"could not find upscaler named {upscaler_name or '<empty string>'}, using {data.name} as a fallback")
    scaler = data.scaler

    def upscale(image: Any, scale: float) -> Any:
        if not _is_base_upscale(type(scaler).upscale):
            session.report.note(f"upscaler {data.name} resizes inside its own upscale(); one extra resample")
            return scaler.upscale(image, scale, data.data_path)
        scaler.scale = scale
        return upscale_natively(image, scale, lambda im: scaler.do_upscale(im, data.data_path),
                                lambda: bool(shared.state.interrupted), host.upscale_stop(scale))

    return upscale


def resize_image(original: Callable) -> Callable:
    """``images.resize_image``: where an upscaler model runs on the main image, one resize from its native
    output with the chosen filter; everything else (no upscaler, masks, downscales) is the host's own."""
    from lib_sdfix.resize import resize_image_one_pass, resize_sizes

    def replacement(resize_mode, im, width, height, upscaler_name=None, *args, **kwargs):
        session = _wants("post_resize")
        host = current()
        call = lambda: original(resize_mode, im, width, height, upscaler_name, *args, **kwargs)  # noqa: E731
        if session is None or args or set(kwargs) - set(host.resize_extra_keywords()) or kwargs.get("force_RGBA"):
            return call()
        name = upscaler_name or getattr(host.shared.opts, "upscaler_for_img2img", None)
        if resize_mode not in (0, 1, 2) or name in (None, "None") or im.mode == "L":
            return call()
        w, h = resize_sizes(resize_mode, im.size, width, height)
        if max(w / im.width, h / im.height) <= 1.0:
            return call()

        def fixed():
            image = im.convert("RGB") if host.resize_converts_rgba() and im.mode == "RGBA" else im
            return resize_image_one_pass(resize_mode, image, width, height, _native_upscaler(session, name),
                                         session.settings.resize_filter)

        return session.report.run("post_resize", fixed, call)

    return replacement


def upscaler_upscale(original: Callable) -> Callable:
    """``Upscaler.upscale`` called directly (the SD upscale script): native passes, then one resize."""
    from lib_sdfix.resize import resize_after_upscale, upscale_natively, upscale_target

    def replacement(self, img, scale, selected_model=None, *args, **kwargs):
        session = _wants("post_resize")
        if session is None or args or kwargs:
            return original(self, img, scale, selected_model, *args, **kwargs)
        host = current()

        def fixed():
            self.scale = scale
            dest = upscale_target(img.size, scale)
            native = upscale_natively(img, scale, lambda im: self.do_upscale(im, selected_model),
                                      lambda: bool(host.shared.state.interrupted), host.upscale_stop(scale))
            return resize_after_upscale(native, dest, session.settings.resize_filter)

        return session.report.run("post_resize", fixed, lambda: original(self, img, scale, selected_model))

    return replacement


# --- samplers -----------------------------------------------------------------------------------------

_WATCHERS = threading.local()


def _watchers() -> List[Callable[[Any], Any]]:
    stack = getattr(_WATCHERS, "stack", None)
    if stack is None:
        stack = _WATCHERS.stack = []
    return stack


@contextlib.contextmanager
def watching_samplers(watch: Callable[[Any], Any]) -> Iterator[None]:
    """While the block runs, every sampler the host creates on this thread is handed to ``watch``
    (which returns it): the A/B runner records and replaces sampling this way.  Needs the "sampler"
    patch held (``hook_targets({"sampler"})``)."""
    stack = _watchers()
    stack.append(watch)
    try:
        yield
    finally:
        stack.remove(watch)


def create_sampler(original: Callable) -> Callable:
    """``sd_samplers.create_sampler``: every pass's sampler.  A generation wanting the late refine gets
    its samplers watched (lib_sdfix.webui.refine); watchers on this thread see every sampler."""

    def replacement(*args, **kwargs):
        sampler = original(*args, **kwargs)
        session = current_session()
        if session is not None and session.wants("late_refine"):
            try:
                sampler = refine.watch(sampler)
            except Exception as exc:  # noqa: BLE001 -- never break a generation
                session.report.mark_failed("late_refine", exc)
                log_once(f"late_refine:{type(exc).__name__}", f"late_refine failed, generation goes on without it: {exc}", exc)
        for watcher in list(_watchers()):
            sampler = watcher(sampler)
        return sampler

    return replacement


FACTORIES: Dict[str, Callable[[Callable], Callable]] = {
    "decode_first_stage": decode_first_stage,
    "samples_to_images_tensor": samples_to_images_tensor,
    "images_tensor_to_samples": images_tensor_to_samples,
    "wrapper_decode": wrapper_decode,
    "wrapper_encode": wrapper_encode,
    "resize_image": resize_image,
    "upscaler_upscale": upscaler_upscale,
    "create_sampler": create_sampler,
}


def hook_targets(hooks: Set[str]) -> List[Target]:
    """The host functions to replace for ``hooks`` ("decode", "encode", "resize", "sampler"), each with
    its replacement's factory: what :func:`lib_sdfix.webui.patches.hold` takes."""
    return [(owner, attr, FACTORIES[kind]) for owner, attr, kind in current().patch_targets(hooks)]


def fix_targets(settings: SDFixSettings) -> List[Target]:
    """What a session with ``settings`` holds: the hooks of every fix it wants (lib_sdfix.settings.Fix.patches)."""
    needs = {hook for fix in FIXES if settings.wants(fix.key) for hook in fix.patches}
    return hook_targets(needs) if needs else []
