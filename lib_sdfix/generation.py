"""Per-generation state and the host-independent halves of SDFix's WebUI hooks.

A :class:`GenerationSession` holds one generation's validated settings and its :class:`FixReport`.
It is bound to the thread that runs the generation, so a decode running elsewhere (a live preview
served by another request thread, a second generation) is never affected by it.  The functions here
take the host's functions as arguments, so they are tested without a WebUI; ``scripts/sdfix.py`` only
plugs the WebUI's functions in.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple

from lib_sdfix.safety import FixReport
from lib_sdfix.settings import SDFixSettings

__all__ = [
    "GenerationSession",
    "current_session",
    "thread_sessions",
    "push_session",
    "pop_session",
    "bound_session",
    "guarded_decode",
    "guarded_encode",
    "upscale_natively",
    "resize_image_one_pass",
    "latent_upscale_note",
]

FIX_DECODE = "guard"
FIX_ENCODE = "encode"
FIX_PARITY = "parity"
FIX_RESIZE = "resize"


class GenerationSession:
    """One generation's SDFix settings and what happened to each fix."""

    def __init__(self, settings: SDFixSettings) -> None:
        self.settings = settings
        self.report = FixReport()
        self.owner: Any = None  # the host's generation object (the WebUI's ``p``), when there is one
        self.patches: List[Tuple[Any, str, Any]] = []  # (owner, attribute, factory) the host installed
        self.finished = False

    @property
    def upcast(self) -> bool:
        return self.settings.decode_dtype == "fp32"

    def wants(self, fix: str) -> bool:
        s = self.settings
        if not s.enabled:
            return False
        return {
            FIX_DECODE: s.precision_guard,
            FIX_ENCODE: s.guard_encode,
            FIX_PARITY: s.hires_parity,
            FIX_RESIZE: s.post_resize,
        }[fix]

    def infotext_notes(self) -> Optional[str]:
        """The "SDFix notes" infotext value, or None when there is nothing to say."""
        return self.report.summary() or None


_LOCAL = threading.local()


def current_session() -> Optional[GenerationSession]:
    """The session bound to this thread, if a generation with SDFix on is running here."""
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def bound_session(session: GenerationSession) -> Iterator[GenerationSession]:
    """Bind ``session`` to the current thread for the block."""
    push_session(session)
    try:
        yield session
    finally:
        pop_session(session)


def push_session(session: GenerationSession) -> None:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    _LOCAL.stack.append(session)


def thread_sessions() -> List[GenerationSession]:
    """The sessions bound to this thread, innermost last (a copy)."""
    return list(getattr(_LOCAL, "stack", []))


def pop_session(session: GenerationSession) -> bool:
    """Unbind ``session`` from this thread; False if it was not bound here."""
    stack = getattr(_LOCAL, "stack", [])
    if session in stack:
        stack.remove(session)
        return True
    return False


# --- VAE ------------------------------------------------------------------------------------------


def guarded_decode(session: GenerationSession, full_decode: Callable[[Any], Any], vae: Any, latent: Any,
                   fallback: Callable[[Any], Any]) -> Any:
    """Full-VAE decode of ``latent`` under the precision guard (fp32 VAE unless decode dtype is "auto").

    ``full_decode(latent)`` is the host's decode without any dtype cast of its own; ``fallback`` is
    the host's untouched path, used if the guarded decode raises.
    """
    from lib_sdfix.precision import guarded_vae_call

    return session.report.run(
        FIX_DECODE,
        lambda z: guarded_vae_call(full_decode, vae, z, upcast=session.upcast),
        fallback,
        latent,
    )


def guarded_encode(session: GenerationSession, full_encode: Callable[[Any], Any], vae: Any, image: Any,
                   fallback: Callable[[Any], Any], result_dtype: Any = None) -> Any:
    """Full-VAE encode under the precision guard; the latent is returned in ``result_dtype`` (what the
    host's own encode returns, so the sampler sees the dtype it expects)."""
    from lib_sdfix.precision import guarded_vae_call

    def encode(img: Any) -> Any:
        latent = guarded_vae_call(full_encode, vae, img, upcast=session.upcast)
        return latent if result_dtype is None else latent.to(result_dtype)

    return session.report.run(FIX_ENCODE, encode, fallback, image)


# --- upscale + resize ---------------------------------------------------------------------------


def upscale_natively(image: Any, scale: float, do_upscale: Callable[[Any], Any],
                     interrupted: Callable[[], bool] = lambda: False) -> Any:
    """Run an upscaler model as the WebUI's ``Upscaler.upscale`` does -- up to three passes until the
    image reaches ``scale`` x its size (floored to a multiple of 8) -- but without its final resize:
    the caller resizes the native output once, straight to the real target."""
    dest_w = int((image.width * scale) // 8 * 8)
    dest_h = int((image.height * scale) // 8 * 8)
    for i in range(3):
        if image.width >= dest_w and image.height >= dest_h and (i > 0 or scale != 1):
            break
        if interrupted():
            break
        shape = image.size
        image = do_upscale(image)
        if shape == image.size:
            break
    return image


def resize_image_one_pass(resize_mode: int, image: Any, width: int, height: int,
                          upscale: Optional[Callable[[Any, float], Any]], filter_name: str) -> Any:
    """The WebUI's ``images.resize_image`` (modes 0 just resize, 1 crop and resize, 2 resize and fill)
    with every main-image resample done once, from the upscaler's native output, with ``filter_name``.

    ``upscale(image, scale)`` returns the upscaler's native output, or None to use no upscaler.
    """
    from PIL import Image

    from lib_sdfix.resize import resize_after_upscale

    def resize(im: Any, w: int, h: int) -> Any:
        scale = max(w / im.width, h / im.height)
        if upscale is not None and im.mode != "L" and scale > 1.0:
            im = upscale(im, scale)
        return resize_after_upscale(im, (w, h), filter_name)

    if resize_mode == 0:
        return resize(image, width, height)

    ratio = width / height
    src_ratio = image.width / image.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = resize(image, src_w, src_h)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result

    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = resize(image, src_w, src_h)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    # The fill strips stretch the outermost row/column of the resized image, as the WebUI does.
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            result.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                         box=(0, fill_height + src_h))
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            result.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill_width + src_w, 0))
    return result


def latent_upscale_note(upscaler: Optional[str], latent_mode: Optional[dict], denoising: float,
                        threshold: float) -> Optional[str]:
    """A note when a bilinear latent upscaler meets low denoising: a known blur source SDFix reports
    but never changes silently."""
    if latent_mode is None or latent_mode.get("mode") != "bilinear" or threshold <= 0:
        return None
    if denoising is None or denoising >= threshold:
        return None
    return (f"Hires upscaler {upscaler or 'Latent'} is bilinear: with denoising {denoising:g} below "
            f"{threshold:g} it blurs detail (use an upscaler model or more denoising)")


def split_fixes(settings: SDFixSettings) -> List[Tuple[str, bool]]:
    """(fix, on) pairs in display order, for status lines and the A/B tab."""
    on = settings.enabled
    return [
        (FIX_DECODE, on and settings.precision_guard),
        (FIX_ENCODE, on and settings.guard_encode),
        (FIX_PARITY, on and settings.hires_parity),
        (FIX_RESIZE, on and settings.post_resize),
    ]
