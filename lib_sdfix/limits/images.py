"""Images in a request: base64 text decoded into a loaded image, refused before any pixel is decoded
when it is not a PNG, JPEG or WebP, too long, or claims too many pixels."""
from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any, Optional

from lib_sdfix.limits.values import MAX_IMAGE_PIXELS, max_base64_chars
from lib_sdfix.settings import SettingsError, describe

__all__ = ["IMAGE_FORMATS", "decode_image_field"]

#: What the WebUI writes (samples_format png/jpg/webp); exotic decoders stay out of reach.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

_WHITESPACE_RE = re.compile(r"[ \t\r\n]+")


def decode_image_field(value: Any, field_path: str, max_pixels: int = MAX_IMAGE_PIXELS, *,
                       max_chars: Optional[int] = None) -> Any:
    """A base64 image from an API body as a loaded PIL image, or :class:`SettingsError` naming ``field_path``.

    Accepts plain base64 or a ``data:image/...;base64,`` URL (as the WebUI does), PNG, JPEG or WebP
    (:data:`IMAGE_FORMATS`; no URLs are fetched).  Refused before any pixel is decoded: text longer
    than such an image can need (``max_chars``, default :func:`max_base64_chars`), bad base64, data
    Pillow cannot identify, and a header claiming more than ``max_pixels`` pixels -- a few bytes
    can claim 100000x100000 and would take gigabytes to decode.  The check is SDFix's own: Pillow's
    global ``Image.MAX_IMAGE_PIXELS`` may be off (the WebUI's X/Y/Z plot script sets it to None).
    Damaged pixel data is refused too.
    """
    from PIL import Image

    def fail(why: str) -> None:
        raise SettingsError({field_path: why})

    if not isinstance(value, str):
        fail(f"expected a base64-encoded PNG, JPEG or WebP image (text), got {type(value).__name__} {describe(value)}")
    limit = max_chars if max_chars is not None else max_base64_chars(max_pixels)
    if len(value) > limit:
        fail(f"{len(value)} characters is more than an image of at most {max_pixels} pixels needs ({limit})")
    text = value
    if text.startswith(("http://", "https://")):
        fail("URLs are not fetched: send the image itself, base64-encoded")
    if text.startswith("data:"):
        comma = text.find(",", 0, 256)
        header = text[:comma] if comma >= 0 else ""
        if not (header.startswith("data:image/") and header.endswith(";base64")):
            fail("expected plain base64 or a data:image/...;base64, URL")
        text = text[comma + 1:]
    text = _WHITESPACE_RE.sub("", text)
    if not text:
        fail("empty: expected a base64-encoded image")
    if len(text) % 4 == 1:
        fail("not valid base64 (wrong length)")
    text += "=" * (-len(text) % 4)  # clients often drop the padding
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        fail("not valid base64")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:
        fail(f"image header claims more than {max_pixels} pixels ({err})")
    except Exception:  # noqa: BLE001 -- any parse failure of untrusted bytes means "not an image"
        fail(f"not a {', '.join(IMAGE_FORMATS)} image")
    width, height = image.size
    if width < 1 or height < 1:
        fail(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        fail(f"image header claims {width}x{height} = {width * height} pixels; at most {max_pixels}")
    try:
        image.load()
    except Exception:  # noqa: BLE001 -- truncated or corrupt pixel data
        fail(f"damaged {image.format} image data")
    return image
