"""SDFix A/B Compare and VAE Round Trip for ComfyUI, on the core's metrics, heatmaps and findings.

* A/B: two IMAGE batches (e.g. ComfyUI's VAEDecode and SDFix's decode of one latent) -> the difference
  heatmap (:func:`lib_sdfix.ab.output.heatmap`), the metrics table of :func:`lib_sdfix.ab.output.metrics_table`
  (PSNR, SSIM, Laplacian variance, high-frequency energy and their ratios to A) as an image and as text.
* Round trip (:mod:`lib_sdfix.diagnose.roundtrip`): one image encoded and decoded by the VAE as ComfyUI
  runs it, by SDFix's guarded call, and with the VAE cast to fp32/fp16/bf16 under guarded flags; the
  metrics against the original and against fp32, the findings, the grid, the chart and the heatmaps.

Images become 8-bit RGB as ComfyUI's SaveImage writes them (``255 x value``, clipped, truncated).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator, List, Sequence, Tuple

from lib_sdfix.comfy.inputs import InputError, image_batch

__all__ = ["to_pil", "to_image", "ab_compare", "table_image", "vae_roundtrip", "parse_variants", "COMFY_VARIANT"]

#: The round trip's name for "the VAE as ComfyUI runs it" (the core calls the host's own variant "webui").
COMFY_VARIANT = "comfyui"


def to_pil(image: Any) -> Any:
    """One IMAGE (H x W x C float in [0, 1]) as 8-bit RGB, as SaveImage writes it."""
    from lib_sdfix.diagnose.roundtrip import tensor_to_image

    return tensor_to_image(image[..., :3].permute(2, 0, 1), signed=False, truncate=True)


def to_image(images: Sequence[Any]) -> Any:
    """PIL images (same size) as an IMAGE batch."""
    import numpy as np
    import torch

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def table_image(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> Any:
    """A plain table (PIL's built-in font) as a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def latin(text: str) -> str:
        return str(text).replace("∞", "inf").replace("–", "-").encode("latin-1", "replace").decode("latin-1")

    cells = [[latin(h) for h in headers]] + [[latin(c) for c in row] for row in rows]
    widths = [max(probe.textlength(row[i], font=font) for row in cells) for i in range(len(headers))]
    line = max(probe.textbbox((0, 0), "Ag", font=font)[3], 10) + 6
    pad = 8
    top = line if title else 0
    image = Image.new("RGB", (int(sum(widths) + pad * (len(widths) + 1)), top + line * len(cells) + pad), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((pad, 3), latin(title), fill=(0, 0, 0), font=font)
    for r, row in enumerate(cells):
        x, y = pad, top + r * line + 3
        if r == 1:
            draw.line((0, y - 3, image.width, y - 3), fill=(160, 160, 160))
        for i, text in enumerate(row):
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
            x += widths[i] + pad
    return image


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def ab_compare(image_a: Any, image_b: Any, heatmap_gain: float, label_a: str = "A", label_b: str = "B"
               ) -> Tuple[Any, Any, str]:
    """(heatmaps IMAGE, table IMAGE, text) for each pair of the two batches (A is the reference)."""
    from lib_sdfix.ab.output import metrics_display, metrics_json
    from lib_sdfix.imaging import heatmap, metrics_table

    a, b = image_batch(image_a, "image_a"), image_batch(image_b, "image_b")
    if a.shape[1:3] != b.shape[1:3]:
        raise InputError("image_b", f"{b.shape[2]}x{b.shape[1]}, but image_a is {a.shape[2]}x{a.shape[1]}: "
                                    "the A/B compares images of one size")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise InputError("image_b", f"a batch of {b.shape[0]} against image_a's {a.shape[0]}: give batches of "
                                    "one size (or one image on a side)")
    pairs = max(a.shape[0], b.shape[0])
    label_a, label_b = (label_a or "A").strip() or "A", (label_b or "B").strip() or "B"
    if label_a == label_b:
        label_b += " (B)"
    heatmaps, all_rows, texts = [], [], []
    for i in range(pairs):
        pa, pb = to_pil(a[min(i, a.shape[0] - 1)]), to_pil(b[min(i, b.shape[0] - 1)])
        rows = metrics_table({label_a: pa, label_b: pb}, {}, label_a)
        headers, shown = metrics_display(rows)
        headers, shown = headers[:-1], [r[:-1] for r in shown]  # no time column: nothing is timed here
        if pairs > 1:
            shown = [[f"#{i} {r[0]}"] + r[1:] for r in shown]
        all_rows += shown
        heatmaps.append(heatmap(pa, pb, heatmap_gain))
        texts.append(metrics_json(rows))
    table = table_image(headers, all_rows, f"SDFix A/B: {label_b} against {label_a} (reference); heatmap gain "
                                           f"{heatmap_gain:g}")
    text = _text_table(headers, all_rows)
    same = [t["variants"][1]["psnr"] == "inf" for t in texts]
    if all(same):
        text += f"\n{label_b} is identical to {label_a}."
    return to_image(heatmaps), to_image([table]), text


# --- VAE round trip ---------------------------------------------------------------------------------


def parse_variants(text: str, device: Any) -> Tuple[List[str], List[str]]:
    """The variants to run (core names) from a comma list ("" = the device's defaults) and notes."""
    from lib_sdfix.diagnose.roundtrip import VARIANTS, default_variants, skipped_note, supported_variants

    names = [t.strip().lower() for t in (text or "").split(",") if t.strip()]
    known = [COMFY_VARIANT] + [v for v in VARIANTS if v != "webui"]
    notes: List[str] = []
    if not names:
        chosen = list(default_variants(device))
        skipped = skipped_note(device, chosen, "name {it} in 'precisions'")
        notes += [skipped] if skipped else []
    else:
        chosen = []
        for name in names:
            if name not in known:
                raise InputError("precisions", f"unknown precision {name!r}; expected a comma list of {', '.join(known)}")
            core = "webui" if name == COMFY_VARIANT else name
            if core not in chosen:
                chosen.append(core)
        unsupported = [n for n in chosen if n not in supported_variants(device)]
        if unsupported:
            notes.append(f"not run: {', '.join(unsupported)} (this device cannot run {'them' if len(unsupported) > 1 else 'it'})")
            chosen = [n for n in chosen if n not in unsupported]
    return chosen, notes


@contextlib.contextmanager
def _precision(vae: Any, name: str) -> Iterator[None]:
    """ComfyUI's own state ("webui"), or the VAE in one dtype for the block with the flags guarded."""
    if name in ("webui", "precision_guard"):
        yield
        return
    from lib_sdfix.comfy.vae import vae_module
    from lib_sdfix.diagnose.roundtrip import vae_in_dtype
    from lib_sdfix.precision import autocast_disabled, precision_guard

    with precision_guard(), autocast_disabled(), vae_in_dtype(vae_module(vae), name, [(vae, "vae_dtype")]):
        yield


def _round_trip(vae: Any, name: str, pixels: Any) -> Tuple[Any, List[str]]:
    from lib_sdfix.comfy.vae import guarded_decode, guarded_encode

    if name == "precision_guard":
        encoded = guarded_encode(vae, pixels)
        decoded = guarded_decode(vae, encoded.result)
        notes = [f"precision_guard: {r.describe()}" for r in (encoded, decoded) if not r.guarded]
        return decoded.result, notes
    with _precision(vae, name):
        return vae.decode(vae.encode(pixels)), []


def vae_roundtrip(image: Any, vae: Any, precisions: str, heatmap_gain: float) -> Dict[str, Any]:
    """The round trip of the first image of ``image``: grid, heatmaps, chart and table images, and text."""
    from lib_sdfix import diagnose
    from lib_sdfix.comfy.vae import dtype_name, vae_module
    from lib_sdfix.diagnose.output import display_table
    from lib_sdfix.diagnose.roundtrip import crop_for_vae, image_to_tensor, variant_label

    batch = image_batch(image, "image")
    module = vae_module(vae)
    device = next((p.device for p in module.parameters()), "cpu")
    variants, notes = parse_variants(precisions, device)
    if batch.shape[0] > 1:
        notes.append(f"the round trip uses the first of {batch.shape[0]} images")
    original, crop = crop_for_vae(to_pil(batch[0]))
    notes += [crop] if crop else []
    pixels = image_to_tensor(original).permute(0, 2, 3, 1).contiguous()  # NHWC, as ComfyUI's IMAGE
    host_label = f"as loaded by ComfyUI ({dtype_name(getattr(vae, 'vae_dtype', None))})"
    images, times, labels = {}, {}, {}
    for name in variants:
        start = time.perf_counter()
        decoded, run_notes = _round_trip(vae, name, pixels)
        notes += run_notes
        images[name] = to_pil(decoded.reshape(-1, *decoded.shape[-3:])[0])
        times[name] = time.perf_counter() - start
        labels[name] = variant_label(name, host_label)
    analysis = diagnose.analyse_roundtrip(original, images, times, labels, gain=heatmap_gain)
    headers, rows = display_table("vae_roundtrip", analysis["rows"])
    findings = analysis["findings"]
    lines = [_text_table(headers, rows), ""]
    lines += [f"finding {f.key} ({f.likelihood}): {f.text}" + (f" Next: {f.next_step}" if f.next_step else "")
              for f in findings] or ["findings: none (every precision reproduces fp32 closely)"]
    lines += [f"note: {n}" for n in notes]
    heat = [m for name in images for m in analysis["heatmaps"][name].values()]
    heat_labels = [f"{labels[name]} vs {against}" for name in images for against in analysis["heatmaps"][name]]
    from lib_sdfix.imaging import compose_grid

    return {
        "grid": to_image([analysis["grid"]]),
        "heatmaps": to_image([compose_grid(heat, heat_labels)]),
        "table": to_image([table_image(headers, rows, "SDFix VAE round trip")]),
        "chart": analysis["chart"],
        "text": "\n".join(lines),
        "findings": [f.as_dict() for f in findings],
    }
