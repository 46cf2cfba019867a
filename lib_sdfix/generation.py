"""Per-generation state and the host-independent halves of SDFix's WebUI hooks.

A :class:`GenerationSession` holds one generation's validated settings and its :class:`FixReport`.
It is bound to the thread that runs the generation, so a decode running elsewhere (a live preview
served by another request thread, a second generation) is never affected by it.  A session lives
only while the generation object that owns it is still in use on that thread: a generation that
raised where nothing closed it (an X/Y/Z cell whose exception the plot swallows) leaves a session
whose owner no frame holds any more; it is finished the next time anything looks for a session, so
no fix of a dead job ever applies to later work.  The functions here take the host's functions as
arguments, so they are tested without a WebUI.
"""
from __future__ import annotations

import contextlib
import sys
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
    "referenced_on_stack",
    "upscale_natively",
    "resize_image_one_pass",
    "resize_sizes",
    "latent_upscale_note",
]

FIX_DECODE = "guard"
FIX_ENCODE = "encode"
FIX_PARITY = "parity"
FIX_RESIZE = "resize"


class GenerationSession:
    """One generation's SDFix settings and what happened to each fix."""

    def __init__(self, settings: SDFixSettings, owner: Any = None) -> None:
        self.settings = settings
        self.report = FixReport()
        self.owner: Any = owner  # the host's generation object (the WebUI's ``p``); None: a scoped session
        self.patches: List[Tuple[Any, str, Any]] = []  # (owner, attribute, factory) the host installed
        self.finished = False
        self.on_finish: List[Callable[["GenerationSession"], None]] = []

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

    def finish(self) -> None:
        """Unbind from this thread and run the finish callbacks (the host drops its patches); idempotent."""
        if self.finished:
            return
        self.finished = True
        pop_session(self)
        for callback in self.on_finish:
            callback(self)


_LOCAL = threading.local()


def _stack() -> List[GenerationSession]:
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    return stack


def referenced_on_stack(obj: Any, start: int = 2) -> bool:
    """Whether any frame on this thread's stack holds ``obj`` in a local variable."""
    frame = sys._getframe(start)
    while frame is not None:
        if any(value is obj for value in frame.f_locals.values()):
            return True
        frame = frame.f_back
    return False


def _alive(session: GenerationSession) -> bool:
    return not session.finished and (session.owner is None or referenced_on_stack(session.owner, 3))


def current_session() -> Optional[GenerationSession]:
    """The innermost live session bound to this thread; stale ones found on the way are finished."""
    stack = getattr(_LOCAL, "stack", None)
    while stack:
        session = stack[-1]
        if _alive(session):
            return session
        session.finish()
    return None


def drop_stale_sessions() -> None:
    """Finish every session of this thread whose generation is no longer in use."""
    for session in list(getattr(_LOCAL, "stack", [])):
        if not _alive(session):
            session.finish()


@contextlib.contextmanager
def bound_session(session: GenerationSession) -> Iterator[GenerationSession]:
    """Bind ``session`` to the current thread for the block; finished afterwards."""
    push_session(session)
    try:
        yield session
    finally:
        session.finish()


def push_session(session: GenerationSession) -> None:
    _stack().append(session)


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


# --- upscale + resize ---------------------------------------------------------------------------


def upscale_natively(image: Any, scale: float, do_upscale: Callable[[Any], Any],
                     interrupted: Callable[[], bool] = lambda: False,
                     stop: Optional[Callable[[Any, int, int, int], bool]] = None) -> Any:
    """Run an upscaler model as the host's ``Upscaler.upscale`` does -- up to three passes until the
    image reaches ``scale`` x its size (floored to a multiple of 8) -- but without its final resize:
    the caller resizes the native output once, straight to the real target.

    ``stop(image, dest_w, dest_h, pass_index)`` decides before each pass whether the image is big
    enough (hosts differ; the default is AUTOMATIC1111's rule).
    """
    dest_w = int((image.width * scale) // 8 * 8)
    dest_h = int((image.height * scale) // 8 * 8)
    if stop is None:
        stop = lambda im, w, h, i: im.width >= w and im.height >= h and (i > 0 or scale != 1)  # noqa: E731
    for i in range(3):
        if stop(image, dest_w, dest_h, i):
            break
        if interrupted():
            break
        shape = image.size
        image = do_upscale(image)
        if shape == image.size:
            break
    return image


def resize_sizes(resize_mode: int, image_size: Tuple[int, int], width: int, height: int) -> Tuple[int, int]:
    """The size the host's ``resize_image`` resizes the main image to (before cropping or filling)."""
    if resize_mode == 0:
        return width, height
    im_w, im_h = image_size
    ratio, src_ratio = width / height, im_w / im_h
    if resize_mode == 1:
        return (width if ratio > src_ratio else im_w * height // im_h,
                height if ratio <= src_ratio else im_h * width // im_w)
    return (width if ratio < src_ratio else im_w * height // im_h,
            height if ratio >= src_ratio else im_h * width // im_w)


def resize_image_one_pass(resize_mode: int, image: Any, width: int, height: int,
                          upscale: Optional[Callable[[Any, float], Any]], filter_name: str) -> Any:
    """The host's ``images.resize_image`` (modes 0 just resize, 1 crop and resize, 2 resize and fill)
    with the main image resampled once, from the upscaler's native output, with ``filter_name``.

    ``upscale(image, scale)`` returns the upscaler's native output, or None to use no upscaler.
    Where no upscaler runs (no upscaler, a mask, a downscale) the host's own LANCZOS resize is used:
    the filter choice only concerns what follows an upscaler.
    """
    from PIL import Image

    from lib_sdfix.resize import resize_after_upscale

    def resize(im: Any, w: int, h: int) -> Any:
        scale = max(w / im.width, h / im.height)
        if upscale is not None and im.mode != "L" and scale > 1.0:
            return resize_after_upscale(upscale(im, scale), (w, h), filter_name)
        return im if im.size == (w, h) else im.resize((w, h), resample=Image.LANCZOS)

    src_w, src_h = resize_sizes(resize_mode, image.size, width, height)
    if resize_mode == 0:
        return resize(image, width, height)
    resized = resize(image, src_w, src_h)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if resize_mode == 1:
        return result
    # The fill strips stretch the outermost row/column of the resized image, as the WebUI does.
    ratio, src_ratio = width / height, image.width / image.height
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
