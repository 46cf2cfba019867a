"""A user's image, whatever its mode, as 8-bit RGB with its values scaled -- not clipped.

Pillow's ``convert("RGB")`` clips wider integer pixels at 255 instead of scaling them: a 16-bit
grayscale PNG (mode ``I`` on Pillow 9.5, ``I;16`` on newer Pillow) comes out almost white, and a VAE
round trip of it measures a white image.  It also drops an alpha channel, showing whatever colour
transparent pixels happen to hold.  :func:`to_rgb8` is the one conversion every place that takes a
user's image uses (the diagnose round trip from the API, the tab and the command line; the metrics):

* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and ``I`` holding 0-65535 as Pillow
  opens 16-bit PNGs) is scaled 0-65535 -> 0-255, rounded;
* transparency (RGBA, LA, PA, La, RGBa, and P/L/RGB/1/I with a transparent colour) is flattened onto
  white, as the WebUIs' img2img flattens its input by default;
* the other 8-bit modes (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX) are converted by Pillow;
* what has no defined 8-bit meaning is refused with :class:`ImageModeError`: 32-bit floats (``F``)
  and 32-bit integers outside 0-65535.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
from PIL import Image

__all__ = ["ImageModeError", "to_rgb8", "rgb8", "WHITE"]

WHITE = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDEST = 65535  # what 16 bits hold; Pillow opens 16-bit PNGs as 32-bit "I" (Pillow < 10.x) or "I;16"


class ImageModeError(ValueError):
    """An image whose pixels have no defined 8-bit meaning (refused, not guessed at)."""


def rgb8(image: Image.Image) -> Image.Image:
    """:func:`to_rgb8` without its notes."""
    return to_rgb8(image)[0]


def to_rgb8(image: Image.Image, background: Tuple[int, int, int] = WHITE) -> Tuple[Image.Image, List[str]]:
    """A new 8-bit RGB image of ``image``, and notes saying what the conversion did (none for plain
    8-bit RGB).  Raises :class:`ImageModeError` for pixels without a defined 8-bit scale."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy(), []
    if mode == "F":
        raise ImageModeError("32-bit floating-point pixels (mode F) have no defined range: save the image "
                             "with 8 or 16 bits per channel")
    if mode == "I" or mode.startswith("I;"):
        return _wide_gray(image, background)
    notes: List[str] = []
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            flat = Image.new("RGBA", rgba.size, tuple(background) + (255,))
            flat.alpha_composite(rgba)
            return flat.convert("RGB"), [_flattened(background)]
        return rgba.convert("RGB"), notes
    try:
        out = image.convert("RGB")
    except ValueError as err:  # a mode Pillow cannot convert
        raise ImageModeError(f"mode {mode} images cannot be converted to RGB ({err})") from None
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB without its colour profile")
    return out, notes


def _flattened(background: Tuple[int, int, int]) -> str:
    colour = "white" if tuple(background) == WHITE else "#%02x%02x%02x" % tuple(background)
    return f"transparent pixels flattened onto {colour} (as the WebUI's img2img does)"


def _wide_gray(image: Image.Image, background: Tuple[int, int, int]) -> Tuple[Image.Image, List[str]]:
    """16-bit (or 32-bit integer holding 16-bit) grayscale: 0-65535 scaled to 0-255, rounded."""
    try:
        values = np.asarray(image)
    except Exception:  # noqa: BLE001 -- a raw mode numpy is not told about: Pillow widens it
        values = np.asarray(image.convert("I"))
    if values.dtype.kind not in "ui":
        values = np.asarray(image.convert("I"))
    values = values.astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > _WIDEST:
        raise ImageModeError(f"32-bit integer pixels (mode {image.mode}) from {low} to {high}: only 0-{_WIDEST} "
                             "(16 bits) has a defined scale; save the image with 8 or 16 bits per channel")
    gray = ((values * 255 + _WIDEST // 2) // _WIDEST).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    notes = [f"16-bit grayscale image (mode {image.mode}) scaled to 8 bits"]
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        hidden = values == transparent
        if hidden.any():
            rgb[hidden] = background
            notes.append(_flattened(background))
    return Image.fromarray(rgb, "RGB"), notes
