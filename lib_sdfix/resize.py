"""One high-quality resize from an upscaler's native output to the target size.

Why: RealESRGAN & co. restore detail at their native scale (x4); a BILINEAR resize to the target
(x2) blends it away again, and two resamplings in a row (to a size, then to a multiple of 8) blur
twice.  One LANCZOS pass from the native output keeps the detail.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Tuple

from PIL import Image

__all__ = ["RESIZE_FILTERS", "resize_after_upscale", "upscaler_passes", "upscale_natively", "resize_sizes",
           "resize_image_one_pass", "upscale_target"]

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


def upscale_target(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """The size the WebUI's ``Upscaler.upscale`` aims at: ``scale`` x ``size``, floored to a multiple of 8."""
    return int((size[0] * scale) // 8 * 8), int((size[1] * scale) // 8 * 8)


def upscale_natively(image: Any, scale: float, do_upscale: Callable[[Any], Any],
                     interrupted: Callable[[], bool] = lambda: False,
                     stop: Optional[Callable[[Any, int, int, int], bool]] = None) -> Any:
    """Run an upscaler model as the host's ``Upscaler.upscale`` does -- up to three passes until the
    image reaches ``scale`` x its size (floored to a multiple of 8) -- but without its final resize:
    the caller resizes the native output once, straight to the real target.

    ``stop(image, dest_w, dest_h, pass_index)`` decides before each pass whether the image is big
    enough (hosts differ; the default is AUTOMATIC1111's rule).
    """
    dest_w, dest_h = upscale_target(image.size, scale)
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
