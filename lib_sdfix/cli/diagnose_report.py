"""The diagnosis report: one self-contained HTML page (inline CSS, the chart as inline SVG), the PNGs
beside it, and ``report.json`` -- the A/B report's layout, for the three diagnosis kinds."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image

from lib_sdfix.cli.ab_report import CSS, JSON_NAME, REPORT_NAME, escape
from lib_sdfix.diagnose.bars import bar_chart_svg
from lib_sdfix.diagnose.chart import chart_svg
from lib_sdfix.diagnose.output import diagnosis_json, display_table
from lib_sdfix.diagnose.plan import AXIS_LABELS
from lib_sdfix.imaging.table import json_safe

__all__ = ["write_report", "TITLES"]

TITLES = {"vae_roundtrip": "VAE round-trip", "sweep": "sweep", "steps": "intermediate steps",
          "optimizations": "the cost of speed"}
_EXTRA_CSS = """
.findings td:first-child{font-weight:600;white-space:nowrap}.likely{color:#b00020}.possible{color:#8a5a00}
.gallery figure.wide{width:auto}.strip img,.grid img{max-width:100%;height:auto;image-rendering:pixelated}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "image"


def _save(image: Optional[Image.Image], out: Path, name: str, files: Dict[str, str]) -> Optional[str]:
    if image is None:
        return None
    image.save(out / name)
    files[name[:-4]] = name
    return name


def _figure(src: str, caption: str, width: Optional[int] = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<figure><img src="{escape(src)}" alt="{escape(caption)}"{size} /><figcaption>{escape(caption)}</figcaption></figure>'


def write_report(out: Path, kind: str, result: Dict[str, Any]) -> Path:
    """Write ``report.html``, ``report.json`` and the pictures of a diagnosis into ``out``; return the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analysis = result["analysis"]
    files: Dict[str, str] = {}
    body: List[str] = []

    if kind == "vae_roundtrip":
        body.append("<h2>Reconstructions</h2>")
        body.append('<p class="note">Each precision encodes and decodes the same image; the first heatmap is '
                    "|original &#8722; reconstruction| &#215;4, the second |fp32 &#8722; reconstruction| &#215;64 "
                    "(what the precision alone changes).</p>")
        body.append('<div class="gallery">' + _figure(_save(result["original"], out, "original.png", files), "original"))
        for name, image in result["images"].items():
            label = result["labels"][name]
            body.append(_figure(_save(image, out, f"{_slug(name)}.png", files), label))
            for against, heat in analysis["heatmaps"].get(name, {}).items():
                body.append(_figure(_save(heat, out, f"heatmap-{_slug(name)}-vs-{against}.png", files),
                                    f"{label}: difference vs {against}"))
        body.append("</div>")
    elif kind == "sweep":
        body.append("<h2>Cells</h2>")
        grid = _save(analysis.get("grid"), out, "grid.png", files)
        if grid:
            body.append(f'<div class="grid">{_figure(grid, "every cell, same seed")}</div>')
        body.append('<div class="gallery">')
        for cell in result["cells"]:
            if cell.name not in result["images"]:
                continue
            ref = " (reference)" if cell.name == result["reference"] else ""
            body.append(_figure(_save(result["images"][cell.name], out, f"{_slug(cell.name)}.png", files),
                                f"{cell.label}{ref}"))
            heat = analysis["heatmaps"].get(cell.name)
            if heat is not None:
                body.append(_figure(_save(heat, out, f"heatmap-{_slug(cell.name)}.png", files),
                                    f"{cell.label}: difference vs reference"))
        body.append("</div>")
    elif kind == "optimizations":
        body += _cost_body(result, out, files)
    else:
        body.append("<h2>Steps</h2>")
        strip = _save(analysis.get("strip"), out, "strip.png", files)
        body.append(f'<div class="strip">{_figure(strip, "the prediction of the final image at each step, then the final image")}</div>')
        body.append('<div class="gallery">')
        for step, image in result["step_images"].items():
            body.append(_figure(_save(image, out, f"step-{step}.png", files), f"step {step}"))
        body.append(_figure(_save(result["final"], out, "final.png", files), "final image"))
        body.append("</div>")

    extra = {k: result[k] for k in ("options", "memory", "warm_up", "repeats") if k in result}
    document = diagnosis_json(kind, analysis, config=result["config"], environment=result["environment"],
                              timings=result["timings"], notes=result["notes"], files=files, **extra)
    (out / JSON_NAME).write_text(json.dumps(json_safe(document), indent=2, allow_nan=False), encoding="utf-8")
    page = out / REPORT_NAME
    page.write_text(_render(kind, result, body), encoding="utf-8")
    return page


def _cost_body(result: Dict[str, Any], out: Path, files: Dict[str, str]) -> List[str]:
    """The cells of an "optimizations" diagnosis with their heatmaps, and every option with its status."""
    analysis = result["analysis"]
    body = ["<h2>Cells</h2>"]
    grid = _save(analysis.get("grid"), out, "grid.png", files)
    if grid:
        body.append(f'<div class="grid">{_figure(grid, "every cell, same seed and noise")}</div>')
    body.append('<div class="gallery">')
    for cell in result["plan"].cells:
        if cell.name not in result["images"]:
            continue
        body.append(_figure(_save(result["images"][cell.name], out, f"{_slug(cell.name)}.png", files), cell.label))
        heat = analysis["heatmaps"].get(cell.name)
        if heat is not None:
            body.append(_figure(_save(heat, out, f"heatmap-{_slug(cell.name)}.png", files),
                                f"{cell.label}: difference vs reference"))
    body.append("</div>")
    _save(analysis.get("chart"), out, "chart.png", files)
    memory = result.get("memory", {}).get("measures", "")
    body += ["<h2>Options</h2>", f'<p class="note">Peak memory measures {escape(memory)}. Times are medians of '
             f'{escape(result.get("repeats"))} timed run(s) per cell, after an untimed warm-up.</p>', "<table>",
             "<tr><th>option</th><th>status</th><th>tried</th><th>quality setting</th><th>trades</th><th>note</th></tr>"]
    for item in result.get("options", []):
        body.append("<tr>" + "".join(f"<td>{escape(item.get(k))}</td>" for k in
                                     ("key", "status", "value", "quality_value", "trades", "note")) + "</tr>")
    body.append("</table>")
    return body


def _render(kind: str, result: Dict[str, Any], body: List[str]) -> str:
    analysis, config, env, timings = result["analysis"], result["config"], result["environment"], result["timings"]
    title = f"SDFix diagnosis: {TITLES[kind]}"
    if kind == "sweep":
        title += f" over {AXIS_LABELS[config['axis']]}"
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
             '<meta name="viewport" content="width=device-width, initial-scale=1" />', f"<title>{escape(title)}</title>",
             f"<style>{CSS}{_EXTRA_CSS}</style>", "</head>", "<body>", f"<h1>{escape(title)}</h1>",
             f'<p class="note">Model: {escape(env["model"])}. Device: {escape(env["device"])}; pipeline {escape(env["dtype"])}, '
             f'VAE loaded in {escape(env["vae_dtype"])}. Seed {escape(config["seed"])}.</p>']
    parts += [f'<p class="note">{escape(note)}</p>' for note in result["notes"]]

    parts.append("<h2>Findings</h2>")
    findings = analysis.get("findings", [])
    if findings:
        parts += ['<p class="note">Likelihoods from this seed and these measurements, not certainties.</p>',
                  '<table class="findings">', "<tr><th>likelihood</th><th>symptom &#8594; cause</th>"
                  "<th>what was measured</th><th>try next</th></tr>"]
        for f in findings:
            parts.append(f'<tr><td class="{escape(f.likelihood)}">{escape(f.likelihood)}</td><td>{escape(f.symptom)} &#8594; '
                         f"{escape(f.cause)}</td><td>{escape(f.text)}</td><td>{escape(f.next_step)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append('<p class="note">No rule fired: nothing measured here points to one cause on its own.</p>')

    parts += body
    panels = analysis.get("panels") or []
    if panels:
        heading = {"vae_roundtrip": "Metrics per precision", "optimizations": "Metrics per option"}.get(
            kind, "Metrics against the varied value")
        svg = bar_chart_svg(panels) if kind == "optimizations" else chart_svg(panels, _x_title(kind, config))
        parts += [f"<h2>{heading}</h2>", f'<div class="chart">{svg}</div>']
    headers, rows = display_table(kind, analysis.get("rows", []))
    parts += ["<h2>Metrics</h2>", "<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        parts.append("<tr><td>" + escape(row[0]) + "</td>" + "".join(f'<td class="num">{escape(c)}</td>' for c in row[1:]) + "</tr>")
    parts.append("</table>")

    parts += ["<h2>Cost</h2>",
              f'<p class="note">{timings["samplings"]} sampling(s), {timings["unet_calls"]} UNet calls, '
              f'{timings["decodes"]} VAE decode(s), {timings["encodes"]} encode(s), {timings["total_s"]:.1f} s in all.</p>',
              "<table>", "<tr><th>run</th><th>seconds</th></tr>"]
    for run in timings["runs"]:
        parts.append(f'<tr><td>{escape(run["kind"])}</td><td class="num">{run["time_s"]:.2f}</td></tr>')
    parts += ["</table>", "<h2>Run</h2>", "<table>"]
    shown = _RUN_KEYS["common"] + _RUN_KEYS[kind]
    for key, value in [(k, config[k]) for k in shown if k in config and k not in env] + list(env.items()):
        parts.append(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>")
    parts += ["</table>", f'<p class="note">Machine-readable: <a href="{JSON_NAME}">{JSON_NAME}</a>.</p>', "</body>",
              "</html>", ""]
    return "\n".join(parts)


#: The config entries the "Run" table shows for each kind (report.json keeps them all).
_RUN_KEYS = {
    "common": ("kind", "model", "device", "dtype", "vae_dtype", "heatmap_gain"),
    "vae_roundtrip": ("image", "size", "dtypes"),
    "sweep": ("prompt", "negative_prompt", "seed", "steps", "width", "height", "cfg_scale", "sampler", "schedule",
              "axis", "values", "reference"),
    "steps": ("prompt", "negative_prompt", "seed", "steps", "width", "height", "cfg_scale", "sampler", "schedule", "at"),
    "optimizations": ("prompt", "negative_prompt", "seed", "steps", "width", "height", "cfg_scale", "sampler",
                      "schedule", "options", "repeats", "vae", "compile"),
}


def _x_title(kind: str, config: Dict[str, Any]) -> str:
    return {"vae_roundtrip": "variant", "steps": "sampling step", "optimizations": "option"}.get(kind) or \
        AXIS_LABELS[config["axis"]]

