"""What a comparison shows and keeps: the metrics table (and its strict JSON), the heatmap, the labelled
grid, the slider markup, and the files saved with their infotexts."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from lib_sdfix.ab.plan import Variant
from lib_sdfix.settings import SettingsError, describe

__all__ = ["metrics_table", "metrics_json", "metrics_display", "heatmap", "compose_grid", "png_base64",
           "compare_html", "save_comparison"]


def metrics_table(images: Mapping[str, Image.Image], times: Mapping[str, float], reference_name: str, *,
                  labels: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per image, in ``images`` order: detail metrics, and PSNR/SSIM/ratios against the reference.

    Ratios > 1 mean more fine detail than the reference.  PSNR of an image identical to the
    reference is ``inf``; pairwise values are None when the sizes differ.  ``time_s`` is what the
    caller measured for that variant (None if it has none, e.g. a decode-only variant).
    """
    from lib_sdfix.metrics import detail_ratio, high_frequency_energy, laplacian_variance, psnr, ssim

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


def metrics_json(rows: Sequence[Mapping[str, Any]], *, reference_name: Optional[str] = None,
                 notes: Sequence[str] = ()) -> Dict[str, Any]:
    """The metrics as strict JSON: infinities (PSNR of identical images, a ratio against a flat
    reference) become the strings "inf"/"-inf" -- JSON has no Infinity, and null would read as "not
    measured" -- NaN becomes null."""
    from lib_sdfix.metrics import json_safe

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
    headers = [title for _, title, _ in _DISPLAY_COLUMNS]
    out = []
    for row in rows:
        cells = []
        for key, _, fmt in _DISPLAY_COLUMNS:
            value = row.get(key)
            if key == "label":
                cells.append(f"{value} (reference)" if row.get("reference") else str(value))
            elif value is None:
                cells.append("–")
            elif math.isinf(value):
                cells.append("∞" if value > 0 else "-∞")
            else:
                cells.append(format(value, fmt))
        out.append(cells)
    return headers, out


def heatmap(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    """|A - B| as a colour heatmap; ``gain`` (1-64) amplifies differences too small to see."""
    from lib_sdfix.metrics import difference_heatmap

    if not valid_heatmap_gain(gain):
        raise SettingsError({"heatmap_gain": f"must be a number between 1 and 64, got {describe(gain)}"})
    return difference_heatmap(a, b, float(gain))


def valid_heatmap_gain(gain: Any) -> bool:
    # Comparisons only: math.isnan() of a huge JSON integer raises OverflowError.
    return not isinstance(gain, bool) and isinstance(gain, (int, float)) and 1 <= gain <= 64


# --- images: grid, HTML, files -----------------------------------------------------------------------


def _latin1(text: str) -> str:
    # PIL's built-in bitmap font only has Latin-1 glyphs.
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
    text_height = max(probe.textbbox((0, 0), _latin1(label) or " ", font=font)[3] for label in labels)
    pad = 4
    strip = text_height + 2 * pad
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images) + strip
    grid = Image.new("RGB", (cell_w * columns, cell_h * rows), background)
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        text = fit_label(_latin1(label), cell_w - 2 * pad, lambda t: draw.textlength(t, font=font))
        draw.text((x + pad, y + pad), text, fill=(0, 0, 0), font=font)
        grid.paste(image.convert("RGB"), (x, y + strip))
    return grid


def png_base64(image: Image.Image) -> str:
    """The image as base64 PNG (for data URLs and the API's JSON)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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


def _png_with_infotext(image: Image.Image, infotext: Optional[str]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # as the WebUI writes it; Pillow switches to iTXt for non-Latin-1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_comparison(out_dir: Union[str, Path], basename: str, variants: Sequence[Variant],
                    images: Mapping[str, Image.Image], infotexts: Mapping[str, str],
                    metrics: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
    """Write each variant's PNG (infotext in its "parameters" chunk), the labelled grid and the metrics JSON.

    Files are ``<basename>-<variant>.png``, ``<basename>-grid.png`` and ``<basename>-metrics.json``
    in ``out_dir`` (created).  Nothing is overwritten: if any of them exists, the whole set moves to
    ``<basename>-1-...``, ``<basename>-2-...``.  Returns {"images": {name: Path}, "grid": Path, "metrics": Path}.
    """
    if not basename or any(sep in basename for sep in ("/", "\\")) or basename in (".", ".."):
        raise ValueError(f"basename must be a plain file name, got {basename!r}")
    present = [v for v in variants if v.name in images]
    if not present:
        raise ValueError("no images to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = metrics if isinstance(metrics, Mapping) else metrics_json(list(metrics))
    grid = compose_grid([images[v.name] for v in present], [v.label for v in present])
    blobs: List[Tuple[str, bytes]] = [(f"-{v.name}.png", _png_with_infotext(images[v.name], infotexts.get(v.name)))
                                      for v in present]
    blobs.append(("-grid.png", _png_with_infotext(grid, infotexts.get(present[0].name))))
    blobs.append(("-metrics.json", json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False).encode("utf-8")))

    for attempt in range(10000):
        stem = basename if attempt == 0 else f"{basename}-{attempt}"
        paths = [out / f"{stem}{suffix}" for suffix, _ in blobs]
        if any(p.exists() for p in paths):
            continue
        written: List[Path] = []
        try:
            for path, (_, data) in zip(paths, blobs):
                with open(path, "xb") as fh:  # exclusive: a file that appeared meanwhile is never replaced
                    written.append(path)
                    fh.write(data)
        except FileExistsError:
            for path in written:
                path.unlink(missing_ok=True)
            continue
        return {
            "images": {v.name: p for v, p in zip(present, paths)},
            "grid": paths[len(present)],
            "metrics": paths[len(present) + 1],
        }
    raise FileExistsError(f"no free file name for {basename!r} in {out}")

