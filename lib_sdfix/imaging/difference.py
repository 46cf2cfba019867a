"""Where and how much two renders differ: the colour heatmap of |A - B|, and one line saying what changed."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from PIL import Image

from lib_sdfix.imaging.metrics import ImageLike, check_same_size, to_float_rgb
from lib_sdfix.settings import SettingsError, describe

__all__ = ["difference_heatmap", "heatmap", "valid_heatmap_gain", "describe_change"]

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
    fa, fb = to_float_rgb(a), to_float_rgb(b)
    check_same_size(fa, fb)
    diff = np.clip(np.abs(fa - fb).max(axis=-1) * gain, 0.0, 1.0)
    return Image.fromarray(_colormap(diff), "RGB")


def valid_heatmap_gain(gain: Any) -> bool:
    """Whether ``gain`` is a heatmap gain a request may ask for: a number from 1 to 64."""
    # Comparisons only: math.isnan() of a huge JSON integer raises OverflowError.
    return not isinstance(gain, bool) and isinstance(gain, (int, float)) and 1 <= gain <= 64


def heatmap(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    """|A - B| as a colour heatmap; ``gain`` (1-64) amplifies differences too small to see."""
    if not valid_heatmap_gain(gain):
        raise SettingsError({"heatmap_gain": f"must be a number between 1 and 64, got {describe(gain)}"})
    return difference_heatmap(a, b, float(gain))


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def describe_change(image: Image.Image, baseline: Image.Image) -> Optional[str]:
    """None when pixel-identical, else how much changed: the share of pixels and the largest difference."""
    a, b = _rgb(baseline), _rgb(image)
    if a.shape != b.shape:
        return f"size {image.size} differs from {baseline.size}"
    diff = np.abs(a - b).max(axis=-1)
    if not diff.any():
        return None
    share = float((diff > 0).mean()) * 100.0
    return f"changed {share:.3g}% of pixels (largest difference {int(diff.max())}/255)"
