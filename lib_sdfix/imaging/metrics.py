"""Detail metrics for two renders of the same seed: how much fine detail B keeps compared with A.

Oil-painting smear shows up as lost high-frequency energy and a lower variance of the Laplacian;
PSNR/SSIM say how different the two images are at all.  scikit-image ships with the WebUI, so these
cost no extra install there.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any, Dict, Mapping, Union

import numpy as np
from PIL import Image

__all__ = [
    "DetailReport",
    "compare_detail",
    "psnr",
    "ssim",
    "laplacian_variance",
    "high_frequency_energy",
    "difference_heatmap",
    "detail_ratio",
    "json_safe",
]

ImageLike = Union[Image.Image, np.ndarray]


def _to_float_rgb(image: ImageLike) -> np.ndarray:
    """H x W x 3 float64 in [0, 1]."""
    if isinstance(image, Image.Image):
        from lib_sdfix.image_input import rgb8

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


def _same_size(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same size, got {a.shape[1::-1]} and {b.shape[1::-1]}")


def psnr(a: ImageLike, b: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    fa, fb = _to_float_rgb(a), _to_float_rgb(b)
    _same_size(fa, fb)
    mse = float(np.mean((fa - fb) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: ImageLike, b: ImageLike) -> float:
    """Structural similarity of the luma (1.0 for identical images)."""
    from skimage.metrics import structural_similarity

    fa, fb = _luma(_to_float_rgb(a)), _luma(_to_float_rgb(b))
    _same_size(fa, fb)
    win = min(7, min(fa.shape) // 2 * 2 - 1)  # odd, at most the image side
    if win < 3:
        return 1.0 if np.array_equal(fa, fb) else 0.0
    return float(structural_similarity(fa, fb, data_range=1.0, win_size=win))


def laplacian_variance(image: ImageLike) -> float:
    """Variance of the Laplacian of the luma: the classic sharpness measure (higher = more detail)."""
    from scipy import ndimage

    return float(ndimage.laplace(_luma(_to_float_rgb(image))).var())


def high_frequency_energy(image: ImageLike, cutoff: float = 0.25) -> float:
    """Share of the luma's spectral energy above ``cutoff`` x Nyquist (mean removed)."""
    luma = _luma(_to_float_rgb(image))
    luma = luma - luma.mean()
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(luma))) ** 2
    h, w = luma.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None] / 0.5
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :] / 0.5
    radius = np.sqrt(fx**2 + fy**2)
    total = float(spectrum.sum())
    return 0.0 if total == 0.0 else float(spectrum[radius > cutoff].sum() / total)


# A small perceptual ramp (black -> purple -> orange -> yellow), sampled to 256 entries.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def _colormap(values: np.ndarray) -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(_RAMP))
    channels = [np.interp(values, positions, _RAMP[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def difference_heatmap(a: ImageLike, b: ImageLike, gain: float = 4.0) -> Image.Image:
    """|A - B| per pixel (max over channels), amplified by ``gain``, as a colour heatmap image."""
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    fa, fb = _to_float_rgb(a), _to_float_rgb(b)
    _same_size(fa, fb)
    diff = np.clip(np.abs(fa - fb).max(axis=-1) * gain, 0.0, 1.0)
    return Image.fromarray(_colormap(diff), "RGB")


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


def json_safe(value: Any) -> Any:
    """A strict-JSON copy of metrics: infinities (PSNR of identical images, a ratio against a flat
    reference) become "inf"/"-inf" -- JSON has no Infinity, and null would read as "not measured" --
    NaN becomes null; mappings and sequences are copied through, paths become text."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


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
