"""Detail metrics for two renders of the same seed: how much fine detail B keeps compared with A.

Oil-painting smear shows up as lost high-frequency energy and a lower variance of the Laplacian;
PSNR/SSIM say how different the two images are at all.  scikit-image ships with the WebUI, so these
cost no extra install there.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Union

import numpy as np
from PIL import Image

from lib_sdfix.image_input import rgb8

__all__ = [
    "DetailReport",
    "compare_detail",
    "psnr",
    "ssim",
    "laplacian_variance",
    "high_frequency_energy",
    "detail_ratio",
    "ImageLike",
    "to_float_rgb",
    "check_same_size",
]

ImageLike = Union[Image.Image, np.ndarray]


def to_float_rgb(image: ImageLike) -> np.ndarray:
    """H x W x 3 float64 in [0, 1]."""
    if isinstance(image, Image.Image):
        array = np.asarray(rgb8(image), dtype=np.float64) / 255.0
    else:
        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0.0) > 1.0:
            array = array / 255.0
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
    return array


def _luma(array: np.ndarray) -> np.ndarray:
    return array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114


def check_same_size(a: np.ndarray, b: np.ndarray) -> None:
    """ValueError unless the two arrays have the same shape (images of the same size)."""
    if a.shape != b.shape:
        raise ValueError(f"images must have the same size, got {a.shape[1::-1]} and {b.shape[1::-1]}")


def psnr(a: ImageLike, b: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    fa, fb = to_float_rgb(a), to_float_rgb(b)
    check_same_size(fa, fb)
    mse = float(np.mean((fa - fb) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: ImageLike, b: ImageLike) -> float:
    """Structural similarity of the luma (1.0 for identical images)."""
    from skimage.metrics import structural_similarity

    fa, fb = _luma(to_float_rgb(a)), _luma(to_float_rgb(b))
    check_same_size(fa, fb)
    win = min(7, min(fa.shape) // 2 * 2 - 1)  # odd, at most the image side
    if win < 3:
        return 1.0 if np.array_equal(fa, fb) else 0.0
    return float(structural_similarity(fa, fb, data_range=1.0, win_size=win))


def laplacian_variance(image: ImageLike) -> float:
    """Variance of the Laplacian of the luma: the classic sharpness measure (higher = more detail)."""
    from scipy import ndimage

    return float(ndimage.laplace(_luma(to_float_rgb(image))).var())


def high_frequency_energy(image: ImageLike, cutoff: float = 0.25) -> float:
    """Share of the luma's spectral energy above ``cutoff`` x Nyquist (mean removed)."""
    luma = _luma(to_float_rgb(image))
    luma = luma - luma.mean()
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(luma))) ** 2
    h, w = luma.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None] / 0.5
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :] / 0.5
    radius = np.sqrt(fx**2 + fy**2)
    total = float(spectrum.sum())
    return 0.0 if total == 0.0 else float(spectrum[radius > cutoff].sum() / total)


@dataclass(frozen=True)
class DetailReport:
    """Metrics of B against A; ratios > 1 mean B keeps more fine detail than A."""

    psnr: float
    ssim: float
    laplacian_variance_a: float
    laplacian_variance_b: float
    high_frequency_a: float
    high_frequency_b: float

    @property
    def laplacian_ratio(self) -> float:
        return detail_ratio(self.laplacian_variance_b, self.laplacian_variance_a)

    @property
    def high_frequency_ratio(self) -> float:
        return detail_ratio(self.high_frequency_b, self.high_frequency_a)

    def as_dict(self) -> Dict[str, float]:
        out = asdict(self)
        out["laplacian_ratio"] = self.laplacian_ratio
        out["high_frequency_ratio"] = self.high_frequency_ratio
        return out


def detail_ratio(value: float, reference: float) -> float:
    """``value / reference``: > 1 means more detail than the reference; a flat reference gives 1 or inf."""
    if reference == 0.0:
        return 1.0 if value == 0.0 else math.inf
    return value / reference


def compare_detail(a: ImageLike, b: ImageLike) -> DetailReport:
    """All metrics of B against A (same size required)."""
    return DetailReport(
        psnr=psnr(a, b),
        ssim=ssim(a, b),
        laplacian_variance_a=laplacian_variance(a),
        laplacian_variance_b=laplacian_variance(b),
        high_frequency_a=high_frequency_energy(a),
        high_frequency_b=high_frequency_energy(b),
    )
