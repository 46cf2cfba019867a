"""The A/B report: one self-contained HTML page (inline CSS and JS), the PNGs beside it, and JSON.

Why a page: the difference the fixes make is in fine detail, which a number alone does not show.
The page puts "without" and "with" on top of each other with a slider, shows where they differ
(heatmap), the detail metrics, what the audit found, and the timings.  It references the PNGs by
relative name, so the folder can be zipped or served as it is.
"""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image

from lib_sdfix.ab.output import metrics_display, metrics_json
from lib_sdfix.imaging.difference import difference_heatmap
from lib_sdfix.imaging.table import json_safe, metrics_table

__all__ = ["write_report", "REPORT_NAME", "JSON_NAME", "CSS", "escape"]

REPORT_NAME = "report.html"
JSON_NAME = "report.json"

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d1d1f}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f5f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.present{color:#b00020;font-weight:600}.absent{color:#1b7f3b;font-weight:600}.unknown{color:#777}
.compare{position:relative;display:block;width:100%;line-height:0;user-select:none}
.compare img{display:block;width:100%;height:auto;image-rendering:pixelated}
.compare img.top{position:absolute;left:0;top:0;clip-path:inset(0 50% 0 0)}
.compare .bar{position:absolute;top:0;bottom:0;left:50%;width:2px;background:#fff;box-shadow:0 0 3px #000}
.slider{width:100%;margin:.5rem 0}
.labels{display:flex;justify-content:space-between;font-weight:600}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}.gallery figure{margin:0;width:260px}
.gallery img{width:256px;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:13px;color:#444}.note{color:#555}code{background:#f5f5f7;padding:0 .2rem}
"""

_JS = """
(function(){
  var range=document.getElementById('split');
  var top=document.getElementById('top');
  var bar=document.getElementById('bar');
  function show(){var v=range.value;top.style.clipPath='inset(0 '+(100-v)+'% 0 0)';bar.style.left=v+'%';}
  range.addEventListener('input',show);show();
})();
"""


def escape(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _number(value: float, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "identical" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _save(image: Optional[Image.Image], out: Path, name: str) -> Optional[str]:
    if image is None:
        return None
    image.save(out / name)
    return name


def _display_width(image: Image.Image) -> int:
    """Small images (the embedded model's) are shown enlarged, pixel-exact, large ones as they are."""
    width = image.width
    while width < 512:
        width *= 2
    return min(width, 1024)


def _status_cell(finding: Dict[str, Any]) -> str:
    css = {True: "present", False: "absent"}.get(finding["present"], "unknown")
    return f'<td><span class="{css}">{escape(finding["status"])}</span><br />{escape(finding["detail"])}</td>'


def write_report(out: Path, result: Any) -> Path:
    """Write ``report.html``, ``report.json`` and the PNGs of an A/B result into ``out``; return the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = result.arms
    baseline = arms["without"].image
    files: Dict[str, Dict[str, Optional[str]]] = {}
    for name, arm in arms.items():
        slug = _slug(name)
        files[name] = {
            "image": _save(arm.image, out, f"{slug}.png"),
            "first_pass": _save(arm.first_pass, out, f"{slug}-first-pass.png"),
            "hires_input": _save(getattr(arm, "resized", None), out, f"{slug}-hires-input.png"),
        }
    # The same table the WebUI's A/B tab shows: every arm against "without".
    rows = metrics_table({name: arm.image for name, arm in arms.items()},
                         {name: arm.timings.get("total") for name, arm in arms.items()}, "without")
    heatmap = _save(difference_heatmap(baseline, arms["with"].image), out, "heatmap.png")

    payload = {
        "config": result.config,
        "environment": result.environment,
        "notes": result.notes,
        "audit": {"without": result.audit_before, "with": result.audit_after},
        "metrics": metrics_json(rows, reference_name="without"),
        "heatmap": heatmap,
        "arms": {
            name: {
                "fixes": list(arm.fixes),
                "late_refine": getattr(arm, "refine", None),
                "files": files[name],
                "timings_s": arm.timings,
                "hires_resize": arm.resize,
                "notes": arm.notes,
                "failed": arm.failed,
                "audit": arm.audit,
            }
            for name, arm in arms.items()
        },
    }
    (out / JSON_NAME).write_text(json.dumps(json_safe(payload), indent=2), encoding="utf-8")
    page = out / REPORT_NAME
    page.write_text(_render(result, files, rows, heatmap), encoding="utf-8")
    return page


def _render(result: Any, files: Dict[str, Dict[str, Optional[str]]], rows: List[Dict[str, Any]],
            heatmap: Optional[str]) -> str:
    arms = result.arms
    config, env = result.config, result.environment
    width = _display_width(arms["with"].image)
    parts: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8" />',
        '<meta name="viewport" content="width=device-width, initial-scale=1" />',
        "<title>SDFix A/B report</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<h1>SDFix A/B report</h1>",
        f'<p class="note">Same seed ({escape(config["seed"])}), same service, without and with SDFix\'s fixes. '
        f"Model: {escape(env['model'])}. Device: {escape(env['device'])}, {escape(env['dtype'])}.</p>",
    ]
    for note in result.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')

    parts += [
        "<h2>Without / with</h2>",
        f'<div style="width:{width}px;max-width:100%">',
        '<div class="labels"><span>with SDFix</span><span>without</span></div>',
        '<div class="compare">',
        f'<img src="{escape(files["without"]["image"])}" alt="without SDFix" width="{width}" />',
        f'<img src="{escape(files["with"]["image"])}" alt="with SDFix" class="top" id="top" width="{width}" />',
        '<div class="bar" id="bar"></div>',
        "</div>",
        '<input type="range" min="0" max="100" value="50" id="split" class="slider" aria-label="split between with and without" />',
        "</div>",
        "<h2>Where they differ</h2>",
        '<p class="note">|without &#8722; with| per pixel, largest channel, &#215;4.</p>',
        f'<img src="{escape(heatmap)}" alt="difference heatmap" width="{width}" style="image-rendering:pixelated" />',
    ]

    headers, cells = metrics_display(rows)
    parts += ["<h2>Detail metrics against \u201cwithout\u201d</h2>",
              '<p class="note">Ratios above 1 mean the arm keeps more fine detail than the unfixed service '
              "(variance of the Laplacian; share of spectral energy above a quarter of Nyquist).</p>",
              "<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"]
    for row in cells:
        parts.append("<tr><td>" + escape(row[0]) + "</td>" + "".join(f'<td class="num">{escape(c)}</td>' for c in row[1:]) + "</tr>")
    parts.append("</table>")

    parts += ["<h2>Audit</h2>", "<table>", "<tr><th>cause</th><th>without</th><th>with</th></tr>"]
    for cause, finding in result.audit_before.items():
        parts.append(f"<tr><td><code>{escape(cause)}</code><br />{escape(finding['title'])}</td>"
                     f"{_status_cell(finding)}{_status_cell(result.audit_after[cause])}</tr>")
    parts.append("</table>")

    stages = sorted({k for arm in arms.values() for k in arm.timings if k != "total"},
                    key=["txt2img", "upscale", "resize", "img2img", "refine"].index)
    parts += ["<h2>Timings (seconds)</h2>", "<table>",
              "<tr><th>arm</th>" + "".join(f"<th>{escape(s)}</th>" for s in stages) + "<th>total</th></tr>"]
    for name, arm in arms.items():
        cells = "".join(f'<td class="num">{_number(arm.timings.get(s), 2)}</td>' for s in stages)
        parts.append(f"<tr><td>{escape(name)}</td>{cells}<td class=\"num\">{_number(arm.timings['total'], 2)}</td></tr>")
    parts.append("</table>")

    parts += ["<h2>Every arm</h2>", '<div class="gallery">']
    for name, arm in arms.items():
        caption = escape(name)
        if getattr(arm, "refine", None):
            caption += f"<br />late refine, strength {escape(format(arm.refine, 'g'))}"
        if arm.resize:
            r = arm.resize
            caption += (f"<br />Hires resize: {escape(r['filter'])} {r['from'][0]}&#215;{r['from'][1]} "
                        f"&#8594; {r['to'][0]}&#215;{r['to'][1]}")
        if arm.notes:
            caption += "<br />" + "<br />".join(escape(n) for n in arm.notes)
        if arm.failed:
            caption += "<br />not applied: " + escape("; ".join(f"{k} ({v})" for k, v in arm.failed.items()))
        parts.append(f'<figure><img src="{escape(files[name]["image"])}" alt="{escape(name)}" />'
                     f'<figcaption>{caption}</figcaption></figure>')
        if files[name]["first_pass"]:
            parts.append(f'<figure><img src="{escape(files[name]["first_pass"])}" alt="{escape(name)} first pass" />'
                         f"<figcaption>{escape(name)}: first pass</figcaption></figure>")
    parts.append("</div>")

    parts += ["<h2>Run</h2>", "<table>"]
    for key, value in list(config.items()) + list(env.items()):
        parts.append(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>")
    parts += ["</table>", f'<p class="note">Machine-readable: <a href="{JSON_NAME}">{JSON_NAME}</a>.</p>',
              f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
