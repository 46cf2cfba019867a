"""Post-upscale resize: one pass, the chosen filter, WebUI-like mode handling."""
import numpy as np
import pytest
from PIL import Image

from lib_sdfix.resize import RESIZE_FILTERS, resize_after_upscale, upscaler_passes


def _native(mode="RGB", size=(64, 48)):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    return Image.fromarray(data, "RGBA").convert(mode)


@pytest.mark.parametrize("name", sorted(RESIZE_FILTERS))
def test_one_pass_with_the_chosen_filter(monkeypatch, name):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, size, resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    src = _native()
    out = resize_after_upscale(src, (40, 30), name)
    assert out.size == (40, 30)
    assert calls == [((64, 48), (40, 30), RESIZE_FILTERS[name])]
    monkeypatch.undo()
    assert np.array_equal(np.asarray(out), np.asarray(src.resize((40, 30), RESIZE_FILTERS[name])))


def test_lanczos_keeps_more_detail_than_bilinear():
    from lib_sdfix.metrics import laplacian_variance
    src = _native(size=(256, 256))
    lanczos = resize_after_upscale(src, (150, 150))
    bilinear = src.resize((150, 150), Image.BILINEAR)
    assert laplacian_variance(lanczos) > laplacian_variance(bilinear) * 1.05


def test_same_size_is_returned_untouched():
    src = _native()
    assert resize_after_upscale(src, src.size) is src


@pytest.mark.parametrize("mode,expected", [("L", "L"), ("RGBA", "RGBA"), ("RGB", "RGB"), ("P", "RGB"), ("CMYK", "RGB"), ("1", "RGB")])
def test_modes(mode, expected):
    assert resize_after_upscale(_native(mode), (20, 10)).mode == expected


def test_transparent_palette_keeps_alpha():
    img = _native("P")
    img.info["transparency"] = 0
    assert resize_after_upscale(img, (20, 10)).mode == "RGBA"


@pytest.mark.parametrize("bad", ["BILINEAR", "nearest", "", None])
def test_unknown_filter_is_rejected(bad):
    with pytest.raises(ValueError, match="resize filter"):
        resize_after_upscale(_native(), (10, 10), bad)


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        resize_after_upscale(_native(), (0, 10))


@pytest.mark.parametrize("src,target,scale,passes", [
    ((64, 64), (128, 128), 4, 1), ((64, 64), (256, 256), 4, 1), ((64, 64), (257, 256), 4, 2),
    ((64, 64), (64, 64), 4, 0), ((64, 64), (100, 100), 2, 1), ((8, 8), (100000, 8), 2, 3), ((64, 64), (128, 128), 1, 0),
])
def test_upscaler_passes(src, target, scale, passes):
    assert upscaler_passes(src, target, scale) == passes
