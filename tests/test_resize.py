"""Post-upscale resize: one pass, the chosen filter, WebUI-like mode handling."""
import numpy as np
import pytest
from PIL import Image

from lib_sdfix.resize import RESIZE_FILTERS, resize_after_upscale, resize_image_one_pass, upscale_natively, upscaler_passes


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
    from lib_sdfix.imaging.metrics import laplacian_variance
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


def _x4(im):
    return im.resize((im.width * 4, im.height * 4), Image.NEAREST)


def _img(w, h, mode="RGB"):
    return Image.effect_noise((w, h), 50).convert(mode)


@pytest.mark.parametrize("source,scale,passes,size", [((64, 64), 2, 1, (256, 256)), ((16, 16), 20, 3, (1024, 1024)),
                                                      ((64, 64), 1, 1, (256, 256)), ((64, 64), 1.1, 0, (64, 64))])
def test_upscale_natively_runs_like_the_webui_loop(source, scale, passes, size):
    calls = []
    out = upscale_natively(_img(*source), scale, lambda im: calls.append(im.size) or _x4(im))
    assert len(calls) == passes and out.size == size


def test_upscale_natively_stops_when_interrupted_or_stuck():
    assert upscale_natively(_img(8, 8), 4, _x4, interrupted=lambda: True).size == (8, 8)
    calls = []
    upscale_natively(_img(8, 8), 4, lambda im: calls.append(1) or im)
    assert calls == [1]


def _resize_log(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, tuple(size), resample, kwargs.get("box")))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return calls


@pytest.mark.parametrize("mode,expected_main", [(0, (200, 120)), (1, (200, 200)), (2, (120, 120))])
def test_resize_modes_do_one_main_resample_from_native(monkeypatch, mode, expected_main):
    calls = _resize_log(monkeypatch)
    out = resize_image_one_pass(mode, _img(64, 64), 200, 120, lambda im, s: _x4(im), "LANCZOS")
    assert out.size == (200, 120)
    main = [c for c in calls if c[3] is None and c[0] == (256, 256)]
    assert [(c[1], c[2]) for c in main] == [(expected_main, Image.LANCZOS)]


def test_without_an_upscaler_the_hosts_lanczos_is_kept(monkeypatch):
    """The filter choice only concerns the resize after an upscaler; masks and plain resizes stay LANCZOS."""
    calls = _resize_log(monkeypatch)
    resize_image_one_pass(0, _img(64, 64), 100, 100, None, "BICUBIC")
    resize_image_one_pass(0, _img(64, 64, "L"), 100, 100, lambda im, s: pytest.fail("no upscaler for L"), "BOX")
    assert [(c[0], c[1], c[2]) for c in calls] == [((64, 64), (100, 100), Image.LANCZOS)] * 2


def test_downscale_never_runs_the_upscaler():
    out = resize_image_one_pass(0, _img(64, 64), 32, 32, lambda im, s: pytest.fail("scale < 1"), "LANCZOS")
    assert out.size == (32, 32)
