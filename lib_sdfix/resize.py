"""One high-quality resize from an upscaler's native output to the target size.

Why: RealESRGAN & co. restore detail at their native scale (x4); a BILINEAR resize to the target
(x2) blends it away again, and two resamplings in a row (to a size, then to a multiple of 8) blur
twice.  One LANCZOS pass from the native output keeps the detail.
"""
from __future__ import annotations

import math
from typing import Tuple

from PIL import Image

__all__ = ["RESIZE_FILTERS", "resize_after_upscale", "upscaler_passes"]

# Pillow 9.5 has Image.Resampling; older Pillow only the module constants.
_Resampling = getattr(Image, "Resampling", Image)

RESIZE_FILTERS = {
    "LANCZOS": _Resampling.LANCZOS,
    "BICUBIC": _Resampling.BICUBIC,
    "BOX": _Resampling.BOX,
}

# Modes Pillow resamples directly; the rest are converted first, as the WebUI converts to RGB(A).
_DIRECT_MODES = {"RGB", "RGBA", "L", "LA", "I", "F", "I;16"}


def _resample_filter(name: str) -> int:
    try:
        return RESIZE_FILTERS[name.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"resize filter must be one of {sorted(RESIZE_FILTERS)}, got {name!r}") from None


def resize_after_upscale(image: Image.Image, size: Tuple[int, int], filter_name: str = "LANCZOS") -> Image.Image:
    """Resize ``image`` (an upscaler's native output) to ``size`` in exactly one resampling pass.

    Returns the image itself when it already has the target size.  Palette, bilevel and CMYK images
    are converted to RGB (RGBA if the palette has transparency) before resampling; "L", "LA", "RGB",
    "RGBA" keep their mode.
    """
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {size!r}")
    resample = _resample_filter(filter_name)
    if image.size == (width, height):
        return image
    if image.mode not in _DIRECT_MODES:
        has_alpha = image.mode in ("PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
        image = image.convert("RGBA" if has_alpha else "RGB")
    return image.resize((width, height), resample=resample)


def upscaler_passes(source: Tuple[int, int], target: Tuple[int, int], native_scale: float, max_passes: int = 3) -> int:
    """How many times a x``native_scale`` upscaler must run for ``source`` to reach ``target``.

    Mirrors the WebUI's loop (run the model until both sides reach the target, at most three
    times); the single resize then goes from that output straight to the target.
    """
    if native_scale <= 1:
        return 0
    need = max(target[0] / source[0], target[1] / source[1])
    if need <= 1:
        return 0
    return min(max_passes, math.ceil(math.log(need) / math.log(native_scale) - 1e-9))
