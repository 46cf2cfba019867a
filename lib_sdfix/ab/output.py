"""What a comparison shows and keeps beyond the shared pictures and tables of :mod:`lib_sdfix.imaging`:
the metrics document (strict JSON), the tab's table, the slider markup, and the saved set."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from lib_sdfix.imaging.files import save_image_set
from lib_sdfix.imaging.table import json_safe, text_table
from lib_sdfix.sampling_plan import Variant

__all__ = ["metrics_json", "metrics_display", "compare_html", "save_comparison"]


def metrics_json(rows: Sequence[Mapping[str, Any]], *, reference_name: Optional[str] = None,
                 notes: Sequence[str] = ()) -> Dict[str, Any]:
    """The metrics as strict JSON: infinities (PSNR of identical images, a ratio against a flat
    reference) become the strings "inf"/"-inf" -- JSON has no Infinity, and null would read as "not
    measured" -- NaN becomes null."""
    if reference_name is None:
        reference_name = next((r["name"] for r in rows if r.get("reference")), None)
    return {
        "format": "sdfix-ab-metrics/1",
        "reference": reference_name,
        "variants": [{k: json_safe(v) for k, v in row.items()} for row in rows],
        "notes": list(notes),
    }


# (row key, column title, number format) of the table the tab shows.
_DISPLAY_COLUMNS = (
    ("label", "variant", ""), ("psnr", "PSNR dB", ".2f"), ("ssim", "SSIM", ".4f"),
    ("laplacian_variance", "Laplacian var.", ".3g"), ("high_frequency_energy", "HF energy", ".4f"),
    ("laplacian_ratio", "Laplacian ratio", ".3f"), ("high_frequency_ratio", "HF ratio", ".3f"),
    ("time_s", "time s", ".2f"),
)


def metrics_display(rows: Sequence[Mapping[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """(headers, rows of text) for a table widget; the reference row is marked, infinity shown as ∞."""
    return text_table(_DISPLAY_COLUMNS, rows)


_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def compare_html(a_png_b64: str, b_png_b64: str, labels: Sequence[str] = ("A", "B")) -> str:
    """Markup for ``javascript/sdfix_ab.js``: a ``.sdfix-compare`` block with ``img[data-role=a|b]``.

    Without JS (or before it runs) ``style.css`` shows the two captioned images side by side.
    """
    if len(labels) != 2:
        raise ValueError(f"expected two labels, got {len(labels)}")
    figures = []
    for role, data, label in (("a", a_png_b64, labels[0]), ("b", b_png_b64, labels[1])):
        if not isinstance(data, str) or not _B64_RE.match(data):
            raise ValueError(f"image {role.upper()} must be base64 PNG data")
        text = html.escape(str(label), quote=True)
        figures.append(
            f'<figure class="sdfix-compare-item"><figcaption>{text}</figcaption>'
            f'<img data-role="{role}" alt="{text}" src="data:image/png;base64,{data}"></figure>'
        )
    aria = html.escape(f"Compare {labels[0]} with {labels[1]}", quote=True)
    return (f'<div class="sdfix-compare" data-mode="slider" tabindex="0" role="group" aria-label="{aria}">'
            f'<div class="sdfix-compare-fallback">{"".join(figures)}</div></div>')


def save_comparison(out_dir: Union[str, Path], basename: str, variants: Sequence[Variant],
                    images: Mapping[str, Image.Image], infotexts: Mapping[str, str],
                    metrics: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
    """Write each variant's PNG (infotext in its "parameters" chunk), the labelled grid and the metrics
    JSON (:func:`lib_sdfix.imaging.files.save_image_set`: ``<basename>-<variant>.png``,
    ``<basename>-grid.png``, ``<basename>-metrics.json``, nothing overwritten).  ``metrics`` is the
    metrics document, or the metrics rows (:func:`metrics_json` makes the document).  Variants without
    an image are left out.  Returns {"images": {name: Path}, "grid": Path, "metrics": Path}.
    """
    items = [(v.name, v.label, images[v.name], infotexts.get(v.name)) for v in variants if v.name in images]
    document = metrics if isinstance(metrics, Mapping) else metrics_json(list(metrics))
    return save_image_set(out_dir, basename, items, document)
