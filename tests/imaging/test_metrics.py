"""Detail metrics validated on real photographs from scikit-image's bundled data."""
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.imaging.metrics import compare_detail, high_frequency_energy, laplacian_variance, psnr, ssim


@pytest.fixture(scope="module", params=["astronaut", "chelsea", "coffee"])
def photo(request):
    from skimage import data
    return Image.fromarray(getattr(data, request.param)())


def test_identical_images(photo):
    report = compare_detail(photo, photo.copy())
    assert math.isinf(report.psnr) and report.ssim == pytest.approx(1.0)
    assert report.laplacian_ratio == pytest.approx(1.0) and report.high_frequency_ratio == pytest.approx(1.0)


def test_blurred_copy_has_less_detail(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(2))
    report = compare_detail(photo, blurred)
    assert report.laplacian_ratio < 0.5
    assert report.high_frequency_ratio < 0.7
    assert 15 < report.psnr < 40 and 0.3 < report.ssim < 0.99


def test_oil_paint_like_smoothing_is_detected_even_when_psnr_is_high(photo):
    """A mild smear (what TF32 does to skin) barely moves PSNR but clearly drops HF energy."""
    smeared = photo.filter(ImageFilter.GaussianBlur(0.8))
    report = compare_detail(photo, smeared)
    assert report.psnr > 25
    assert report.high_frequency_ratio < 0.9 and report.laplacian_ratio < 0.8


def test_metric_values_against_hand_computed():
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = 255  # one pixel, all channels: MSE = 1/256
    assert psnr(a, b) == pytest.approx(10 * math.log10(256))
    assert laplacian_variance(a) == 0.0 and high_frequency_energy(a) == 0.0
    assert ssim(a, b) < 1.0


def test_size_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same size"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
