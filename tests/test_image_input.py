"""A user's image in any mode -> 8-bit RGB, scaled and not clipped (lib_sdfix.image_input), and the places
that take one: the round trip's crop and tensor, the metrics, the diagnose request."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from lib_sdfix.image_input import ImageModeError, rgb8, to_rgb8

RAMP16 = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)


def png_file(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    buffer.seek(0)
    return buffer


def gray16_png():
    """A 16-bit grayscale PNG spanning 0-65535, opened as Pillow opens it (mode I on 9.5, I;16 on newer)."""
    opened = Image.open(png_file(Image.fromarray(RAMP16)))
    opened.load()
    return opened


def expected8(values):
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_a_16_bit_grayscale_png_spans_0_to_255_not_white():
    opened = gray16_png()
    assert opened.mode in ("I", "I;16")
    assert opened.convert("RGB").getextrema()[0][0] == 0 and np.asarray(opened.convert("L")).mean() > 250, \
        "Pillow's own conversion clips: what this module is for"
    image, notes = to_rgb8(opened)
    array = np.asarray(image)
    assert image.mode == "RGB" and image.size == (64, 48) and array.min() == 0 and array.max() == 255
    assert np.array_equal(array[:, :, 0], expected8(RAMP16)) and (array[:, :, 0] == array[:, :, 2]).all()
    assert 120 < array.mean() < 135  # a ramp: mid-grey on average, not white
    assert notes == [f"16-bit grayscale image (mode {opened.mode}) scaled to 8 bits"]


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I", "<i4")])
def test_every_16_bit_layout_is_scaled(mode, dtype):
    image = Image.frombytes(mode, (64, 48), RAMP16.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(rgb8(image))[:, :, 1], expected8(RAMP16))


def test_32_bit_integers_outside_16_bits_and_floats_are_refused():
    with pytest.raises(ImageModeError, match=r"mode I\) from -5 to 70000"):
        to_rgb8(Image.frombytes("I", (2, 1), np.array([-5, 70000], dtype="<i4").tobytes()))
    with pytest.raises(ImageModeError, match="floating-point pixels"):
        to_rgb8(Image.new("F", (4, 4), 0.5))


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # transparent: its colour must not show
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    image, notes = to_rgb8(rgba)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((2, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (127, 127, 127) and "flattened onto white" in notes[0]
    la = Image.new("LA", (2, 2), (30, 0))
    assert rgb8(la).getpixel((0, 0)) == (255, 255, 255) and rgb8(la.convert("La")).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 3)
    palette.putpalette([0, 0, 0] * 3 + [9, 8, 7] + [0, 0, 0] * 252)
    palette.info["transparency"] = 3
    assert rgb8(palette).getpixel((0, 0)) == (255, 255, 255)
    pa = Image.new("PA", (2, 2), (3, 0))
    assert rgb8(pa).getpixel((0, 0)) == (255, 255, 255)
    opaque = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    assert to_rgb8(opaque) == (Image.new("RGB", (2, 2), (10, 20, 30)), [])  # nothing to flatten: no note


def test_16_bit_with_a_transparent_value_and_on_another_background():
    values = np.array([[0, 65535], [1000, 1000]], dtype=np.uint16)
    image = Image.fromarray(values)
    image.info["transparency"] = 1000
    out, notes = to_rgb8(image, background=(0, 0, 0))
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 255], [0, 0]] and "onto #000000" in notes[1]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX", "RGB"])
def test_8_bit_modes_convert_as_pillow_does(mode):
    source = Image.new("RGB", (8, 8), (200, 100, 50))
    image = source.convert(mode) if mode not in ("HSV", "LAB") else Image.new(mode, (8, 8), (20, 180, 200))
    out, notes = to_rgb8(image)
    assert out.mode == "RGB" and out.tobytes() == image.convert("RGB").tobytes() and out is not image
    assert notes == (["CMYK image converted to RGB without its colour profile"] if mode == "CMYK" else [])


def test_the_round_trip_and_the_metrics_see_the_scaled_image():
    from lib_sdfix.diagnose.roundtrip import crop_for_vae, image_to_tensor
    from lib_sdfix.imaging.metrics import psnr

    opened = gray16_png()
    cropped, note = crop_for_vae(opened)
    assert note is None and np.array_equal(np.asarray(cropped), np.asarray(rgb8(opened)))
    tensor = image_to_tensor(opened)
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0 and 0.45 < float(tensor.mean()) < 0.55
    assert psnr(opened, rgb8(opened)) == float("inf")
    assert psnr(opened, Image.new("RGB", opened.size, (255, 255, 255))) < 10  # far from white


def _b64(image):
    return base64.b64encode(png_file(image).getvalue()).decode()


def test_the_diagnose_request_keeps_16_bits_for_the_run_and_refuses_what_has_no_scale(monkeypatch):
    from lib_sdfix.diagnose import request as R
    from lib_sdfix.settings import SDFixSettings, SettingsError

    sixteen = Image.fromarray(np.tile(RAMP16, (2, 2)))
    request = R.diagnose_request_from_body({"kind": "vae_roundtrip", "image": _b64(sixteen)}, SDFixSettings())
    assert np.asarray(rgb8(request.image)).max() == 255 and np.asarray(rgb8(request.image)).min() == 0
    monkeypatch.setattr(R, "decode_image_field", lambda value, field: Image.new("F", (64, 64), 0.5))
    with pytest.raises(SettingsError) as err:
        R.diagnose_request_from_body({"kind": "vae_roundtrip", "image": "x"}, SDFixSettings())
    assert "floating-point pixels" in err.value.problems["image"]
