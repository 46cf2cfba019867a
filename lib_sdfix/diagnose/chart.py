"""Small charts of each metric against the swept value (or the step), as a PNG (PIL) and as inline SVG.

No plotting library: the WebUI does not ship one SDFix could rely on, and a few polylines need none.
Both renderings share one layout (:func:`_layout`), so the tab's picture and the report's SVG agree.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from PIL import Image

from lib_sdfix.imaging.grid import latin1

__all__ = ["Panel", "panels_for", "chart_image", "chart_svg", "METRICS", "grid_shape", "svg_open", "svg_color"]

#: (row key, panel title) charted by default.
METRICS = (("high_frequency_energy", "high-frequency energy"), ("laplacian_variance", "Laplacian variance"),
           ("psnr", "PSNR vs reference (dB)"), ("ssim", "SSIM vs reference"))

_W, _H = 320, 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 26, 50
_COLUMNS = 2
_LABEL_CHARS = 16
_LINE, _POINT, _AXIS, _TEXT = (31, 119, 180), (214, 39, 40), (90, 90, 90), (20, 20, 20)


@dataclass(frozen=True)
class Panel:
    """One metric: x labels, numeric x positions (None: evenly spaced categories), y values (None: missing)."""

    title: str
    labels: Tuple[str, ...]
    xs: Optional[Tuple[float, ...]]
    ys: Tuple[Optional[float], ...]


def panels_for(rows: Sequence[Mapping[str, Any]], labels: Sequence[str], xs: Optional[Sequence[float]] = None,
               metrics: Sequence[Tuple[str, str]] = METRICS) -> List[Panel]:
    """One panel per metric present in ``rows`` (infinite values, e.g. PSNR of the reference itself, are gaps)."""
    panels = []
    for key, title in metrics:
        ys = tuple(float(r[key]) if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) else None
                   for r in rows)
        if sum(y is not None for y in ys) >= 1:
            panels.append(Panel(title, tuple(str(x) for x in labels), tuple(float(x) for x in xs) if xs else None, ys))
    return panels


def _fmt(value: float, digits: int = 3) -> str:
    return format(value, f".{digits}g")


def _digits(low: float, high: float) -> int:
    """Significant digits that tell ticks ``low``..``high`` apart (a narrow range of large values needs more)."""
    scale = max(abs(low), abs(high))
    if scale == 0 or high == low:
        return 3
    return max(3, min(8, math.ceil(math.log10(scale / (high - low))) + 2))


def _layout(panel: Panel) -> Tuple[List[Tuple[float, float, Optional[float]]], List[Tuple[float, str]], List[Tuple[float, str]]]:
    """(points (x, y or None, value), y ticks (y, text), x ticks (x, text)) in panel pixels."""
    n = len(panel.labels)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    if panel.xs and n > 1 and max(panel.xs) > min(panel.xs):
        lo, hi = min(panel.xs), max(panel.xs)
        px = [_LEFT + (x - lo) / (hi - lo) * plot_w for x in panel.xs]
    else:
        px = [_LEFT + (i + 0.5) * plot_w / max(n, 1) for i in range(n)]
    values = [y for y in panel.ys if y is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
    else:
        pad = (high - low) * 0.08
        low, high = low - pad, high + pad

    def py(value: float) -> float:
        return _TOP + (high - value) / (high - low) * plot_h

    points = [(x, py(y) if y is not None else None, y) for x, y in zip(px, panel.ys)]
    digits = _digits(low, high)
    yticks = [(py(v), _fmt(v, digits)) for v in (low + (high - low) * f for f in (0.1, 0.5, 0.9))]
    step = max(1, math.ceil(n / 8))  # at most 8 x labels
    xticks = [(px[i], panel.labels[i][:_LABEL_CHARS]) for i in range(0, n, step)]
    return points, yticks, xticks


def _label_dy(index: int, xticks: Sequence[Tuple[float, str]]) -> int:
    """Long x labels alternate between two lines, so neighbours do not overlap."""
    room = (_W - _LEFT - _RIGHT) / max(len(xticks), 1)
    return 11 if index % 2 and max(len(t) for _, t in xticks) * 6 > room else 0


def grid_shape(count: int) -> Tuple[int, int]:
    """(columns, rows) of ``count`` panels laid out in two columns (at least one of each)."""
    return min(_COLUMNS, max(1, count)), max(1, math.ceil(count / _COLUMNS))


def svg_open(width: int, height: int) -> str:
    """The opening tag of a chart's inline SVG."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">')


def svg_color(color: Tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % color


def chart_image(panels: Sequence[Panel], x_title: str = "") -> Image.Image:
    """The panels in a grid of two columns, as one RGB picture."""
    from PIL import ImageDraw, ImageFont

    columns, rows = grid_shape(len(panels))
    image = Image.new("RGB", (_W * columns, _H * rows), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, panel in enumerate(panels):
        ox, oy = (index % _COLUMNS) * _W, (index // _COLUMNS) * _H
        points, yticks, xticks = _layout(panel)
        draw.text((ox + _LEFT, oy + 6), latin1(panel.title), fill=_TEXT, font=font)
        draw.line([(ox + _LEFT, oy + _TOP), (ox + _LEFT, oy + _H - _BOTTOM), (ox + _W - _RIGHT, oy + _H - _BOTTOM)],
                  fill=_AXIS, width=1)
        for y, text in yticks:
            draw.line([(ox + _LEFT - 4, oy + y), (ox + _LEFT, oy + y)], fill=_AXIS)
            draw.text((ox + 4, oy + y - 6), text, fill=_TEXT, font=font)
        for i, (x, text) in enumerate(xticks):
            draw.line([(ox + x, oy + _H - _BOTTOM), (ox + x, oy + _H - _BOTTOM + 4)], fill=_AXIS)
            width = draw.textlength(latin1(text), font=font)
            draw.text((ox + x - width / 2, oy + _H - _BOTTOM + 7 + _label_dy(i, xticks)), latin1(text), fill=_TEXT,
                      font=font)
        if x_title:
            width = draw.textlength(latin1(x_title), font=font)
            draw.text((ox + _LEFT + (_W - _LEFT - _RIGHT - width) / 2, oy + _H - 14), latin1(x_title), fill=_AXIS, font=font)
        for segment in _segments(points):
            if len(segment) > 1:
                draw.line([(ox + x, oy + y) for x, y in segment], fill=_LINE, width=2)
        for x, y, _ in points:
            if y is not None:
                draw.ellipse([ox + x - 3, oy + y - 3, ox + x + 3, oy + y + 3], fill=_POINT)
    return image


def chart_svg(panels: Sequence[Panel], x_title: str = "") -> str:
    """The same panels as inline SVG markup (for the HTML report)."""
    columns, rows = grid_shape(len(panels))
    parts = [svg_open(_W * columns, _H * rows)]
    rgb = svg_color

    for index, panel in enumerate(panels):
        ox, oy = (index % _COLUMNS) * _W, (index // _COLUMNS) * _H
        points, yticks, xticks = _layout(panel)
        parts.append(f'<g transform="translate({ox},{oy})"><title>{html.escape(panel.title)}</title>')
        parts.append(f'<text x="{_LEFT}" y="16" font-weight="bold">{html.escape(panel.title)}</text>')
        parts.append(f'<polyline fill="none" stroke="{rgb(_AXIS)}" points="{_LEFT},{_TOP} {_LEFT},{_H - _BOTTOM} '
                     f'{_W - _RIGHT},{_H - _BOTTOM}" />')
        for y, text in yticks:
            parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{html.escape(text)}</text>')
        for i, (x, text) in enumerate(xticks):
            parts.append(f'<text x="{x:.1f}" y="{_H - _BOTTOM + 15 + _label_dy(i, xticks)}" text-anchor="middle">'
                         f'{html.escape(text)}</text>')
        if x_title:
            parts.append(f'<text x="{_LEFT + (_W - _LEFT - _RIGHT) / 2:.1f}" y="{_H - 6}" text-anchor="middle" '
                         f'fill="{rgb(_AXIS)}">{html.escape(x_title)}</text>')
        for segment in _segments(points):
            if len(segment) > 1:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in segment)
                parts.append(f'<polyline fill="none" stroke="{rgb(_LINE)}" stroke-width="2" points="{coords}" />')
        for (x, y, value), label in zip(points, panel.labels):
            if y is not None:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{rgb(_POINT)}">'
                             f'<title>{html.escape(label)}: {html.escape(_fmt(value))}</title></circle>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _segments(points: Sequence[Tuple[float, Optional[float], Any]]) -> List[List[Tuple[float, float]]]:
    """Runs of consecutive points with a value (a gap splits the line)."""
    out: List[List[Tuple[float, float]]] = [[]]
    for x, y, _ in points:
        if y is None:
            out.append([])
        else:
            out[-1].append((x, y))
    return [s for s in out if s]
