"""lib_sdfix.limits.images: base64 images decoded only within their bounds."""
import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from lib_sdfix.limits.images import decode_image_field
from lib_sdfix.limits.values import MAX_IMAGE_PIXELS, max_base64_chars
from lib_sdfix.settings import SettingsError

from .support import b64, png_bytes

# --- base64 images --------------------------------------------------------------------------------------


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width, height, idat):
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with ``idat`` as its pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def field_problem(value, **kw):
    with pytest.raises(SettingsError) as err:
        decode_image_field(value, "payload.image", **kw)
    assert list(err.value.problems) == ["payload.image"]
    return err.value.problems["payload.image"]


def test_decode_image_field_reads_png_jpeg_webp_and_data_urls():
    image = decode_image_field(b64(png_bytes(40, 30)), "image")
    assert image.size == (40, 30) and image.format == "PNG"
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 8), (10, 20, 30)).save(buffer, format=fmt)
        assert decode_image_field(b64(buffer.getvalue()), "image").size == (16, 8)
    data = b64(png_bytes(5, 5))
    assert decode_image_field("data:image/png;base64," + data, "image").size == (5, 5)
    wrapped = "\n".join(data[i:i + 76] for i in range(0, len(data), 76))  # MIME line breaks
    assert decode_image_field(wrapped, "image").size == (5, 5)
    assert decode_image_field(data.rstrip("="), "image").size == (5, 5)  # padding dropped


def test_decode_image_field_refuses_what_is_not_an_image():
    assert "got int" in field_problem(5)
    assert "got NoneType" in field_problem(None)
    assert "empty" in field_problem("")
    assert "base64" in field_problem("not base64 at all!")
    assert "base64" in field_problem("abcde")  # impossible length
    assert "not a PNG, JPEG, WEBP image" in field_problem(b64(b"hello, this is text" * 10))
    assert "URLs are not fetched" in field_problem("https://example.com/x.png")
    assert "data:image" in field_problem("data:text/plain;base64," + b64(b"x"))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    assert "not a PNG" in field_problem(b64(buffer.getvalue()))  # only what the WebUI writes
    truncated = png_bytes(64, 64)
    assert "damaged" in field_problem(b64(truncated[:-30]))


def test_decode_image_field_refuses_a_decompression_bomb_from_its_header(monkeypatch):
    tiny = _png_claiming(100_000, 100_000, zlib.compress(b"\x00" * 64))
    assert len(tiny) < 200
    assert "pixels" in field_problem(b64(tiny))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as the WebUI's X/Y/Z plot script leaves it
    assert "100000x100000" in field_problem(b64(tiny))
    # Under Pillow's own limit but over ours: 5000x5000 of real zero rows, 25 MB that deflate to ~25 kB.
    bomb = _png_claiming(5000, 5000, zlib.compress(b"\x00" * (5001 * 5000), 9))
    assert len(bomb) < 100_000

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    message = field_problem(b64(bomb))
    assert "5000x5000" in message and str(MAX_IMAGE_PIXELS) in message
    assert "100x100" in field_problem(b64(png_bytes(100, 100)), max_pixels=99 * 100)


def test_decode_image_field_caps_the_text_before_decoding():
    assert max_base64_chars(MAX_IMAGE_PIXELS) > len(b64(b"\x00" * (MAX_IMAGE_PIXELS * 4)))
    assert "characters" in field_problem("A" * (max_base64_chars(100) + 1), max_pixels=100)
    assert "characters" in field_problem(b64(png_bytes(8, 8)), max_chars=10)
