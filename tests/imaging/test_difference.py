"""lib_sdfix.imaging.difference: the heatmap of two renders, and what changed between them."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.imaging.difference import describe_change, difference_heatmap, heatmap
from lib_sdfix.settings import SettingsError


def test_heatmap_validates_gain_and_amplifies(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(1))
    for bad in (0.5, 65, True, "4", float("nan"), None):
        with pytest.raises(SettingsError) as err:
            heatmap(photo, blurred, bad)
        assert "heatmap_gain" in err.value.problems
    low, high = heatmap(photo, blurred, 1), heatmap(photo, blurred, 64)
    assert np.array_equal(np.asarray(heatmap(photo, blurred, 4)), np.asarray(difference_heatmap(photo, blurred, 4.0)))
    assert np.asarray(high, dtype=float).mean() > np.asarray(low, dtype=float).mean() + 20


def test_describe_change_says_how_much_changed():
    a = Image.new("RGB", (10, 10), (0, 0, 0))
    assert describe_change(a.copy(), a) is None
    b = a.copy()
    b.putpixel((0, 0), (0, 40, 0))
    assert describe_change(b, a) == "changed 1% of pixels (largest difference 40/255)"
    assert describe_change(a.resize((5, 5)), a) == "size (5, 5) differs from (10, 10)"


def test_heatmap_shows_where_images_differ():
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[10:20, 5:15] = 40
    heat = np.asarray(difference_heatmap(a, b, gain=4.0))
    assert heat.shape == (32, 32, 3)
    assert heat[15, 10].sum() > heat[0, 0].sum() + 100
    assert (heat[0, 0] == heat[31, 31]).all()
    stronger = np.asarray(difference_heatmap(a, b, gain=8.0))
    assert stronger[15, 10].sum() > heat[15, 10].sum()


def test_size_mismatch_and_bad_gain_are_rejected():
    with pytest.raises(ValueError, match="same size"):
        difference_heatmap(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="gain"):
        difference_heatmap(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), gain=0)
