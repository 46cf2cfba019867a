"""What a diagnosis shows and keeps, the same for the WebUI and the diffusers front: the metrics of every
cell, the findings, the grid or strip, the chart, the heatmaps, the strict JSON and the saved files.

Both fronts render images their own way and hand them here, so the analysis is one implementation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from lib_sdfix.diagnose.chart import chart_image, panels_for
from lib_sdfix.diagnose.findings import roundtrip_findings, rule_non_finite, steps_findings, sweep_findings
from lib_sdfix.diagnose.plan import AXIS_LABELS, NUMERIC_AXES, Cell, value_text
from lib_sdfix.diagnose.roundtrip import roundtrip_heatmaps, roundtrip_rows
from lib_sdfix.diagnose.steps import compose_strip, step_rows
from lib_sdfix.imaging.difference import heatmap
from lib_sdfix.imaging.files import save_image_set
from lib_sdfix.imaging.grid import compose_grid
from lib_sdfix.imaging.table import json_safe, metrics_table, text_table

__all__ = ["FORMAT", "merge_nan", "analyse_sweep", "analyse_roundtrip", "analyse_steps", "display_table",
           "diagnosis_json", "save_diagnosis"]

FORMAT = "sdfix-diagnose/1"

def merge_nan(summaries: Mapping[str, Optional[Mapping[str, Any]]]) -> Optional[Dict[str, Any]]:
    """One NaN-watch summary for several cells: finite if all are; else the first cell's first finding."""
    present = {name: s for name, s in summaries.items() if s}
    if not present:
        return None
    bad = [(name, s) for name, s in present.items() if not s.get("finite", True)]
    if not bad:
        return {"finite": True, "first": None, "later": [], "cells": list(present)}
    name, first = bad[0]
    merged = dict(first)
    merged["first"] = dict(first["first"], cell=name) if first.get("first") else None
    merged["cells"] = [n for n, _ in bad]
    return merged


def analyse_sweep(axis: str, cells: Sequence[Cell], images: Mapping[str, Image.Image], times: Mapping[str, float],
                  reference: str, *, gain: float = 4.0,
                  nan: Optional[Mapping[str, Optional[Mapping[str, Any]]]] = None) -> Dict[str, Any]:
    """Metrics of every rendered cell against the ``reference`` cell, findings, grid, chart, heatmaps."""
    done = [c for c in cells if c.name in images]
    merged = merge_nan(nan or {})
    result: Dict[str, Any] = {"rows": [], "findings": [f for f in (rule_non_finite(merged),) if f], "grid": None,
                              "chart": None, "heatmaps": {}, "nan": merged}
    if not done:
        return result
    result["grid"] = compose_grid([images[c.name] for c in done], [c.label for c in done])
    if reference not in images:
        return result
    rows = metrics_table({c.name: images[c.name] for c in done}, times, reference, labels={c.name: c.label for c in done})
    for row, cell in zip(rows, done):
        row["axis"], row["value"] = axis, cell.value
    result["rows"] = rows
    result["findings"] = sweep_findings(axis, rows, result["nan"]) if len(done) >= 2 else []
    numeric = [float(c.value) for c in done] if axis in NUMERIC_AXES else None
    result["panels"] = panels_for(rows, [value_text(axis, c.value) for c in done], numeric)
    result["chart"] = chart_image(result["panels"], AXIS_LABELS[axis])
    result["heatmaps"] = {c.name: heatmap(images[reference], images[c.name], gain) for c in done
                          if c.name != reference and images[c.name].size == images[reference].size}
    return result


def analyse_roundtrip(original: Image.Image, images: Mapping[str, Image.Image], times: Mapping[str, float],
                      labels: Mapping[str, str], *, gain: float = 4.0) -> Dict[str, Any]:
    """Each reconstruction against the original and fp32: rows, findings, grid, chart, two heatmaps each."""
    rows = roundtrip_rows(original, images, times, labels=labels)
    names = list(images)
    metrics = (("psnr", "PSNR vs original (dB)"), ("high_frequency_ratio", "HF energy / original"),
               ("laplacian_ratio", "Laplacian var. / original"), ("psnr_vs_fp32", "PSNR vs fp32 (dB)"))
    panels = panels_for(rows[1:], names, None, metrics)
    return {
        "rows": rows, "findings": roundtrip_findings(rows),
        "grid": compose_grid([original, *images.values()], ["original", *[labels.get(n, n) for n in names]]),
        "panels": panels, "chart": chart_image(panels, "variant") if panels else None,
        "heatmaps": roundtrip_heatmaps(original, images, gain), "nan": None,
    }


def analyse_steps(step_images: Mapping[int, Image.Image], final: Image.Image, steps: int, *,
                  nan: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Per captured step: detail against the final image; findings on when detail appears; strip; chart."""
    rows = step_rows(step_images, final, steps)
    metrics = (("high_frequency_energy", "high-frequency energy"), ("laplacian_variance", "Laplacian variance"),
               ("high_frequency_ratio", "HF energy / final image"), ("psnr_vs_final", "PSNR vs final (dB)"))
    panels = panels_for(rows, [str(r["step"]) for r in rows], [float(r["step"]) for r in rows], metrics)
    return {
        "rows": rows, "findings": steps_findings(rows, nan), "strip": compose_strip(step_images, final, steps),
        "grid": None, "panels": panels, "chart": chart_image(panels, "sampling step") if panels else None,
        "heatmaps": {}, "nan": nan,
    }


# (row key, column title, format) per kind, for the tab's table and the report.
_COLUMNS = {
    "sweep": (("label", "cell", ""), ("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".4f"),
              ("high_frequency_energy", "HF energy", ".4f"), ("laplacian_variance", "Laplacian var.", ".3g"),
              ("high_frequency_ratio", "HF ratio", ".3f"), ("laplacian_ratio", "Laplacian ratio", ".3f"),
              ("time_s", "time s", ".2f")),
    "vae_roundtrip": (("label", "variant", ""), ("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".4f"),
                      ("high_frequency_ratio", "HF ratio", ".3f"), ("laplacian_ratio", "Laplacian ratio", ".3f"),
                      ("psnr_vs_fp32", "PSNR vs fp32 dB", ".2f"), ("ssim_vs_fp32", "SSIM vs fp32", ".5f"),
                      ("time_s", "time s", ".2f")),
    "optimizations": (("label", "option", ""), ("value", "value", ""), ("time_delta_pct", "time Δ %", "+.1f"),
                      ("memory_delta_pct", "memory Δ %", "+.1f"), ("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".4f"),
                      ("detail_ratio", "detail ratio", ".3f"), ("verdict", "verdict", ""), ("time_s", "time s", ".2f")),
    "steps": (("step", "step", ""), ("high_frequency_energy", "HF energy", ".4f"),
              ("laplacian_variance", "Laplacian var.", ".3g"), ("high_frequency_ratio", "HF / final", ".3f"),
              ("psnr_vs_final", "PSNR vs final dB", ".2f"), ("ssim_vs_final", "SSIM vs final", ".4f")),
}


def display_table(kind: str, rows: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """(headers, rows of text); the reference row is marked, infinity shown as ∞, missing as –."""
    return text_table(_COLUMNS[kind], rows)


def diagnosis_json(kind: str, analysis: Mapping[str, Any], **extra: Any) -> Dict[str, Any]:
    """The metrics document (strict JSON: infinities as "inf", NaN as null), without pictures."""
    document = {"format": FORMAT, "kind": kind, **extra, "rows": list(analysis.get("rows", [])),
                "findings": [f.as_dict() for f in analysis.get("findings", [])], "nan_watch": analysis.get("nan")}
    return json_safe(document)


def save_diagnosis(out_dir: Union[str, Path], basename: str, items: Sequence[Tuple[str, str, Image.Image, Optional[str]]],
                   document: Mapping[str, Any], extras: Mapping[str, Optional[Image.Image]] = ()) -> Dict[str, Any]:
    """Write each image (name, label, image, infotext) with its infotext, the labelled grid and the metrics
    JSON (:func:`lib_sdfix.imaging.files.save_image_set`: nothing is overwritten), then the extra pictures
    (chart, strip, heatmaps) under the same name stem.  Returns the paths."""
    paths = save_image_set(out_dir, basename, list(items), document)
    stem = paths["grid"].name[:-len("-grid.png")]
    written: Dict[str, str] = {}
    for suffix, image in dict(extras).items():
        if image is None:
            continue
        path = paths["grid"].with_name(f"{stem}-{suffix}.png")
        try:
            with open(path, "xb") as fh:  # never replaces a file
                image.save(fh, format="PNG")
            written[suffix] = str(path)
        except FileExistsError:
            continue
    return {"images": {k: str(v) for k, v in paths["images"].items()}, "grid": str(paths["grid"]),
            "metrics": str(paths["metrics"]), "extras": written}
