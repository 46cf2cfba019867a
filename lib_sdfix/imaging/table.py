"""The metrics table: several images measured against a reference, as rows, as text for a table
widget or a report, and as strict JSON."""
from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from PIL import Image

from lib_sdfix.imaging.metrics import detail_ratio, high_frequency_energy, laplacian_variance, psnr, ssim

__all__ = ["metrics_table", "text_table", "json_safe", "Column"]

#: (row key, column title, number format) of a table shown as text.
Column = Tuple[str, str, str]


def metrics_table(images: Mapping[str, Image.Image], times: Mapping[str, float], reference_name: str, *,
                  labels: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per image, in ``images`` order: detail metrics, and PSNR/SSIM/ratios against the reference.

    Ratios > 1 mean more fine detail than the reference.  PSNR of an image identical to the
    reference is ``inf``; pairwise values are None when the sizes differ.  ``time_s`` is what the
    caller measured for that image (None if it has none, e.g. a decode-only variant).
    """
    if reference_name not in images:
        raise ValueError(f"reference {reference_name!r} is not among the images {list(images)}")
    detail = {name: (laplacian_variance(im), high_frequency_energy(im)) for name, im in images.items()}
    reference = images[reference_name]
    ref_lap, ref_hf = detail[reference_name]
    rows = []
    for name, image in images.items():
        lap, hf = detail[name]
        same_size = image.size == reference.size
        rows.append({
            "name": name,
            "label": (labels or {}).get(name, name),
            "reference": name == reference_name,
            "psnr": psnr(reference, image) if same_size else None,
            "ssim": ssim(reference, image) if same_size else None,
            "laplacian_variance": lap,
            "high_frequency_energy": hf,
            "laplacian_ratio": detail_ratio(lap, ref_lap),
            "high_frequency_ratio": detail_ratio(hf, ref_hf),
            "time_s": None if times.get(name) is None else float(times[name]),
        })
    return rows


def text_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """(headers, rows of text) for a table widget: numbers in each column's format, the reference row's
    label marked, infinity shown as ∞, a missing value as –; "label" and "step" are shown as they are."""
    out = []
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            if key in ("label", "step"):
                cells.append(f"{value} (reference)" if row.get("reference") and key == "label" else str(value))
            elif value is None:
                cells.append("–")
            elif isinstance(value, float) and math.isinf(value):
                cells.append("∞" if value > 0 else "-∞")
            else:
                cells.append(format(value, fmt))
        out.append(cells)
    return [title for _, title, _ in columns], out


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
