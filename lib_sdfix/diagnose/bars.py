"""Horizontal bars, one panel per metric, for rows that are categories with long names (the cost of speed's
options): each bar runs from the panel's baseline (0 % for a change, 1 for a ratio) to the row's value,
labelled with the row's full name and its value.  A PNG (PIL) and the same layout as inline SVG.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from PIL import Image

from lib_sdfix.diagnose.chart import grid_shape, svg_color, svg_open
from lib_sdfix.imaging.grid import latin1

__all__ = ["BarPanel", "bar_chart_image", "bar_chart_svg"]

_LABEL_W, _BAR_W, _VALUE_W = 210, 170, 56
_W = _LABEL_W + _BAR_W + _VALUE_W
_ROW, _TOP, _PAD = 18, 24, 10
_GAIN, _LOSS, _BASE, _TEXT = (44, 160, 44), (214, 39, 40), (90, 90, 90), (20, 20, 20)


@dataclass(frozen=True)
class BarPanel:
    """One metric: its title, the rows' labels and values (None: missing), the baseline, the number format,
    and whether a value above the baseline is good (detail kept) or bad (more time)."""

    title: str
    labels: Tuple[str, ...]
    values: Tuple[Optional[float], ...]
    baseline: float = 0.0
    fmt: str = "+.1f"
    higher_is_better: bool = False


def _height(panel: BarPanel) -> int:
    return _TOP + _ROW * len(panel.labels) + _PAD


def _bars(panel: BarPanel) -> List[Tuple[float, float, Optional[float], Tuple[int, int, int]]]:
    """(x of the baseline, x of the bar's end, value, colour) per row, x within the bar area."""
    finite = [v for v in panel.values if v is not None and math.isfinite(v)] + [panel.baseline]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    scale = (_BAR_W - 8) / span
    base_x = 4 + (panel.baseline - low) * scale
    out = []
    for value in panel.values:
        if value is None or not math.isfinite(value):
            out.append((base_x, base_x, None, _BASE))
            continue
        good = (value > panel.baseline) == panel.higher_is_better or value == panel.baseline
        out.append((base_x, 4 + (value - low) * scale, value, _GAIN if good else _LOSS))
    return out


def _label(text: str, limit: int = 34) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def bar_chart_image(panels: Sequence[BarPanel]) -> Image.Image:
    """The panels in two columns, as one RGB picture."""
    from PIL import ImageDraw, ImageFont

    row_h = max([_height(p) for p in panels] or [_TOP])
    columns, rows = grid_shape(len(panels))
    image = Image.new("RGB", (_W * columns, row_h * rows), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, panel in enumerate(panels):
        ox, oy = (index % columns) * _W, (index // columns) * row_h
        draw.text((ox + 6, oy + 6), latin1(panel.title), fill=_TEXT, font=font)
        bars = _bars(panel)
        base_x = ox + _LABEL_W + (bars[0][0] if bars else 0)
        draw.line([(base_x, oy + _TOP - 2), (base_x, oy + _TOP + _ROW * len(bars))], fill=_BASE)
        for i, ((start, end, value, colour), label) in enumerate(zip(bars, panel.labels)):
            y = oy + _TOP + i * _ROW
            draw.text((ox + 6, y + 3), latin1(_label(label)), fill=_TEXT, font=font)
            left, right = sorted((ox + _LABEL_W + start, ox + _LABEL_W + end))
            if value is not None:
                draw.rectangle([left, y + 3, max(right, left + 1), y + _ROW - 3], fill=colour)
            text = "–" if value is None else format(value, panel.fmt)
            draw.text((ox + _LABEL_W + _BAR_W + 4, y + 3), latin1(text), fill=_TEXT, font=font)
    return image


def bar_chart_svg(panels: Sequence[BarPanel]) -> str:
    """The same panels as inline SVG markup (for the HTML report)."""
    row_h = max([_height(p) for p in panels] or [_TOP])
    columns, rows = grid_shape(len(panels))
    parts = [svg_open(_W * columns, row_h * rows)]
    rgb = svg_color

    for index, panel in enumerate(panels):
        ox, oy = (index % columns) * _W, (index // columns) * row_h
        bars = _bars(panel)
        parts.append(f'<g transform="translate({ox},{oy})"><text x="6" y="16" font-weight="bold">'
                     f"{html.escape(panel.title)}</text>")
        if bars:
            x = _LABEL_W + bars[0][0]
            parts.append(f'<line x1="{x:.1f}" y1="{_TOP - 2}" x2="{x:.1f}" y2="{_TOP + _ROW * len(bars)}" '
                         f'stroke="{rgb(_BASE)}" />')
        for i, ((start, end, value, colour), label) in enumerate(zip(bars, panel.labels)):
            y = _TOP + i * _ROW
            parts.append(f'<text x="6" y="{y + 13}"><title>{html.escape(label)}</title>{html.escape(_label(label))}</text>')
            if value is not None:
                left, right = sorted((_LABEL_W + start, _LABEL_W + end))
                parts.append(f'<rect x="{left:.1f}" y="{y + 3}" width="{max(right - left, 1):.1f}" height="{_ROW - 6}" '
                             f'fill="{rgb(colour)}" />')
            text = "–" if value is None else format(value, panel.fmt)
            parts.append(f'<text x="{_LABEL_W + _BAR_W + 4}" y="{y + 13}">{html.escape(text)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
