"""The cost of speed, measured: per cell of a :class:`lib_sdfix.diagnose.optimizations.CostPlan` its time,
peak memory and quality against the reference, a verdict, the findings, the chart.

Times are medians of the timed repeats (a warm-up run is never among them).  A cell that reused another's
sampling (only the decode differs) was timed as a decode-only run; its time is the donor's full time with
the donor's own decode-only run swapped for this one (``time = donor - donor decode + this decode``), and
its memory is compared decode with decode (``memory_scope: "decode"``).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from PIL import Image

from lib_sdfix.diagnose.bars import BarPanel, bar_chart_image
from lib_sdfix.diagnose.findings import LIKELY, POSSIBLE, LikelyCause
from lib_sdfix.diagnose.optimizations import CostPlan
from lib_sdfix.diagnose.speed_options import option_value_text
from lib_sdfix.imaging.difference import heatmap
from lib_sdfix.imaging.grid import compose_grid
from lib_sdfix.imaging.table import metrics_table

__all__ = ["Timed", "cell_time", "cost_rows", "verdict", "cost_findings", "cost_panels", "analyse_cost", "COST_METRICS"]

#: Below these (in %), a time or memory change is noise on a busy machine, not a gain.
TIME_NOISE_PCT, MEMORY_NOISE_PCT = 3.0, 2.0
#: Detail ratio (the lower of the Laplacian and high-frequency ratios) under which detail is lost.
DETAIL_LOSS = 0.97
#: (row key, panel title, baseline, number format, whether above the baseline is better) of the chart.
COST_METRICS = (("time_delta_pct", "time vs reference (%)", 0.0, "+.1f", False),
                ("memory_delta_pct", "peak memory vs reference (%)", 0.0, "+.1f", False),
                ("detail_ratio", "detail ratio vs reference (1 = kept)", 1.0, ".3f", True),
                ("ssim", "SSIM vs reference", 1.0, ".4f", True))


def cost_panels(rows: Sequence[Mapping[str, Any]]) -> List[BarPanel]:
    """One bar panel per metric of :data:`COST_METRICS`, a bar per row (the reference's is its baseline)."""
    labels = tuple(str(r["label"]) for r in rows)
    panels = []
    for key, title, baseline, fmt, higher in COST_METRICS:
        values = tuple(float(r[key]) if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) else None
                       for r in rows)
        if any(v is not None for v in values):
            panels.append(BarPanel(title, labels, values, baseline, fmt, higher))
    return panels


@dataclass
class Timed:
    """What the runner measured for one cell: the seconds of each timed repeat, the peak memory (bytes) of
    the cell's runs, and -- for a cell that reused ``shared_with``'s sampling -- that its runs were decode
    only.  ``decode_times``/``decode_peak``: a donor's own decode-only run(s), for the swap."""

    times: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    shared_with: Optional[str] = None
    decode_times: List[float] = field(default_factory=list)
    decode_peak: Optional[int] = None
    scope: str = "decode"  # what a shared cell's runs did: "decode", or "Hires pass and decode"

    def record(self, elapsed: float, peak: Optional[int]) -> None:
        """One timed run of the cell: its seconds, and the highest peak of its runs so far."""
        self.times.append(elapsed)
        self.peak_bytes = _higher(self.peak_bytes, peak)

    def record_decode(self, elapsed: float, peak: Optional[int]) -> None:
        """One decode-only run of a donor (the decode its sharers' times are swapped against)."""
        self.decode_times.append(elapsed)
        self.decode_peak = _higher(self.decode_peak, peak)


def _higher(old: Optional[int], new: Optional[int]) -> Optional[int]:
    return max(new or 0, old or 0) or None


def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def cell_time(name: str, timed: Mapping[str, Timed]) -> Optional[float]:
    """The cell's generation time: its own median, or the donor's with the decode swapped."""
    own = timed.get(name)
    if own is None or not own.times:
        return None
    if own.shared_with is None:
        return _median(own.times)
    donor = timed.get(own.shared_with)
    if donor is None or not donor.times or not donor.decode_times:
        return None
    return max(0.0, _median(donor.times) - _median(donor.decode_times) + _median(own.times))


def _pct(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    if value is None or reference is None or reference <= 0:
        return None
    return 100.0 * (value - reference) / reference


def cost_rows(plan: CostPlan, images: Mapping[str, Image.Image], timed: Mapping[str, Timed]) -> List[Dict[str, Any]]:
    """One row per rendered cell (reference first): metrics_table's quality columns against the reference,
    time and memory with their change in %, the detail ratio and the verdict."""
    done = [c for c in plan.cells if c.name in images]
    reference = plan.reference.name
    if reference not in images:
        return []
    times = {c.name: cell_time(c.name, timed) for c in done}
    rows = metrics_table({c.name: images[c.name] for c in done}, times, reference, labels={c.name: c.label for c in done})
    ref = timed.get(reference, Timed())
    for row, cell in zip(rows, done):
        own = timed.get(cell.name, Timed())
        row["role"] = cell.role
        row["options"] = {k: v for k, v in cell.measured}
        row["value"] = ", ".join(option_value_text(v) for _, v in cell.measured) if cell.measured else "quality settings"
        row["repeats"] = len(own.times)
        row["time_delta_pct"] = 0.0 if cell.name == reference else _pct(row["time_s"], times[reference])
        if own.shared_with is None:
            row["memory_scope"], row["peak_bytes"] = "generation", own.peak_bytes
            row["memory_delta_pct"] = 0.0 if cell.name == reference else _pct(own.peak_bytes, ref.peak_bytes)
        else:
            donor = timed.get(own.shared_with, Timed())
            row["memory_scope"], row["peak_bytes"] = own.scope, own.peak_bytes
            row["memory_delta_pct"] = _pct(own.peak_bytes, donor.decode_peak)
            row["shared_sampling_with"] = own.shared_with
        lap, hf = row.get("laplacian_ratio"), row.get("high_frequency_ratio")
        row["detail_ratio"] = min(lap, hf) if isinstance(lap, float) and isinstance(hf, float) else None
        row["verdict"] = verdict(row)
    return rows


def _gain(row: Mapping[str, Any]) -> List[str]:
    gains = []
    for key, noise, what in (("time_delta_pct", TIME_NOISE_PCT, "time"), ("memory_delta_pct", MEMORY_NOISE_PCT, "memory")):
        value = row.get(key)
        if isinstance(value, float) and value <= -noise:
            gains.append(f"{value:+.0f} % {what}")
    return gains


def verdict(row: Mapping[str, Any]) -> str:
    """One phrase: what the option costs in quality and what it buys ("loses detail (x0.71) for -18 % time")."""
    if row.get("role") == "reference":
        return "reference"
    psnr, ssim, detail = row.get("psnr"), row.get("ssim"), row.get("detail_ratio")
    if psnr is None:
        quality = "not comparable (another size)"
    elif math.isinf(psnr):
        quality = "identical image"
    elif isinstance(detail, float) and detail < DETAIL_LOSS:
        quality = f"loses detail (x{detail:.2f})"
    elif isinstance(detail, float) and detail > 1 / DETAIL_LOSS + 0.05:
        quality = f"adds high-frequency content (x{detail:.2f})"
    elif isinstance(ssim, float) and ssim < 0.9:
        quality = f"changes the image (SSIM {ssim:.2f})"
    else:
        quality = "keeps detail"
    gains = _gain(row)
    if not gains:
        return f"{quality}; no measurable gain"
    return f"{quality} for {', '.join(gains)}"


def _detail(row: Mapping[str, Any]) -> Optional[float]:
    value = row.get("detail_ratio")
    return value if isinstance(value, float) and math.isfinite(value) else None


def cost_findings(rows: Sequence[Mapping[str, Any]], listed: Sequence[Mapping[str, Any]] = ()) -> List[LikelyCause]:
    """The options that cost the most detail, cost quality for nothing, or are free; flags left unmeasured."""
    findings: List[LikelyCause] = []
    options = [r for r in rows if r.get("role") == "option"]
    losing = sorted((r for r in options if (_detail(r) or 1.0) < DETAIL_LOSS), key=lambda r: _detail(r) or 1.0)
    if losing:
        worst = losing[0]
        findings.append(LikelyCause(
            "cost_detail_loss", "fine detail softened", worst["label"], LIKELY,
            f"{worst['label']}: {_deltas(worst)}, detail x{_detail(worst):.2f} -- the largest detail loss of your setup",
            {"option": worst["name"], "detail_ratio": _detail(worst), "time_delta_pct": worst.get("time_delta_pct"),
             "ssim": worst.get("ssim")},
            "turn it off (or lower it) and compare; it softens texture like the precision causes SDFix removes"))
    for row in options:
        if row is (losing[0] if losing else None):
            continue
        costly = (_detail(row) or 1.0) < DETAIL_LOSS or (isinstance(row.get("ssim"), float) and row["ssim"] < 0.9)
        if costly and not _gain(row):
            findings.append(LikelyCause(
                f"cost_no_gain_{row['name']}", "quality lost for nothing", row["label"], LIKELY,
                f"{row['label']}: detail x{(_detail(row) or 1.0):.2f}, SSIM {row.get('ssim') or 0:.3f}, and no "
                f"measurable gain ({_deltas(row)})", {"option": row["name"]}, "turn it off: it buys nothing here"))
    free = [r for r in options if _gain(r) and (_detail(r) or 1.0) >= DETAIL_LOSS
            and (not isinstance(r.get("ssim"), float) or r["ssim"] >= 0.98)]
    for row in free:
        findings.append(LikelyCause(
            f"cost_free_{row['name']}", "speed or memory at no visible cost", row["label"], POSSIBLE,
            f"{row['label']}: {_deltas(row)} with detail x{(_detail(row) or 1.0):.2f}, SSIM {row.get('ssim') or 1:.3f}",
            {"option": row["name"]}, "keep it"))
    whole = next((r for r in rows if r.get("role") == "all"), None)
    if whole is not None:
        findings.append(LikelyCause(
            "cost_setup", "the whole setup", whole["label"], POSSIBLE,
            f"{whole['label']}: {_deltas(whole)}, detail x{(_detail(whole) or 1.0):.2f}, SSIM "
            f"{whole.get('ssim') or 0:.3f} against the quality settings", {"option": whole["name"]}))
    unmeasured = [item for item in listed if item.get("on") and item.get("how") in ("start", "reload")]
    if unmeasured:
        findings.append(LikelyCause(
            "cost_unmeasured", "options on that a diagnosis cannot switch", "start-up flags or model reloads", POSSIBLE,
            "away from their quality setting, not measurable per generation: "
            + ", ".join(f"{i['label']} ({option_value_text(i['value'])})" for i in unmeasured),
            {"options": [i["key"] for i in unmeasured]},
            "restart without the flag (or change the setting) and run the diagnosis again to compare"))
    return findings


def _deltas(row: Mapping[str, Any]) -> str:
    parts = []
    for key, what in (("time_delta_pct", "time"), ("memory_delta_pct", "memory")):
        value = row.get(key)
        if isinstance(value, float):
            scope = f" ({row['memory_scope']})" if key == "memory_delta_pct" and row.get("memory_scope") != "generation" else ""
            parts.append(f"{value:+.0f} % {what}{scope}")
    return ", ".join(parts) or "no timing"


def analyse_cost(plan: CostPlan, images: Mapping[str, Image.Image], timed: Mapping[str, Timed], *,
                 gain: float = 4.0, nan: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Rows, findings, grid, chart and heatmaps (each cell against the reference) of a measured plan."""
    done = [c for c in plan.cells if c.name in images]
    result: Dict[str, Any] = {"rows": [], "findings": [], "grid": None, "chart": None, "panels": [], "heatmaps": {},
                              "nan": nan, "options": plan.listed}
    if not done:
        return result
    result["grid"] = compose_grid([images[c.name] for c in done], [c.label for c in done])
    rows = cost_rows(plan, images, timed)
    if not rows:
        return result
    result["rows"] = rows
    result["findings"] = cost_findings(rows, plan.listed)
    result["panels"] = cost_panels(rows)
    result["chart"] = bar_chart_image(result["panels"]) if result["panels"] else None
    ref = images[plan.reference.name]
    result["heatmaps"] = {c.name: heatmap(ref, images[c.name], gain) for c in done
                          if c.name != plan.reference.name and images[c.name].size == ref.size}
    return result
