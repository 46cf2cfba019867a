"""Labelled grids: images side by side, each with its label above, in PIL's built-in font."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

from PIL import Image

__all__ = ["compose_grid", "fit_label", "latin1"]


def latin1(text: str) -> str:
    """``text`` as PIL's built-in bitmap font can draw it: it only has Latin-1 glyphs."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def fit_label(text: str, width: float, measure: Callable[[str], float]) -> str:
    """The longest ``text[:k] + "..."`` that fits ``width`` (``text`` itself if it fits).

    Binary search over the prefix length, one measurement per probe: O(n log n) for a label of n
    characters.  Cutting one character at a time and re-measuring is O(n^2), and the grid is drawn
    while the WebUI's queue lock is held.  Text width grows with the prefix, so this picks what
    cutting one by one would: prefixes down to one character plus "...", then "x..", "x.", "x", "".
    """
    if measure(text) <= width:
        return text
    if len(text) > 4:
        if measure(text[:1] + "...") <= width:
            lo, hi = 1, len(text) - 4  # text[:lo] + "..." fits; find the largest such lo
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if measure(text[:mid] + "...") <= width:
                    lo = mid
                else:
                    hi = mid - 1
            return text[:lo] + "..."
        text = text[:1] + "..."
    while text and measure(text) > width:
        text = text[:-1]
    return text


def compose_grid(images: Sequence[Image.Image], labels: Sequence[str], columns: Optional[int] = None,
                 background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The images side by side (up to 4 in a row, then a near-square grid), each with its label above."""
    from PIL import ImageDraw, ImageFont

    if not images:
        raise ValueError("no images to put in a grid")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    n = len(images)
    columns = columns or (n if n <= 4 else math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = max(probe.textbbox((0, 0), latin1(label) or " ", font=font)[3] for label in labels)
    pad = 4
    strip = text_height + 2 * pad
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images) + strip
    grid = Image.new("RGB", (cell_w * columns, cell_h * rows), background)
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        text = fit_label(latin1(label), cell_w - 2 * pad, lambda t: draw.textlength(t, font=font))
        draw.text((x + pad, y + pad), text, fill=(0, 0, 0), font=font)
        grid.paste(image.convert("RGB"), (x, y + strip))
    return grid
