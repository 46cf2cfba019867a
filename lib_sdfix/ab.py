"""The WebUI-free half of the A/B comparison: variants, work sharing, metrics, notes, saving, API body.

Why: a user can only trust SDFix on their own model and prompt if they see what it changes, on the
same seed, with numbers.  Everything here takes plain values and PIL images, so the tab, the API
route and the tests share one implementation; ``scripts/`` only runs the WebUI and plugs results in.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from lib_sdfix.generation import FIX_DECODE, FIX_ENCODE, FIX_PARITY, FIX_RESIZE, split_fixes
from lib_sdfix.limits import check_text, check_txt2img_payload, decode_image_field
from lib_sdfix.settings import INFOTEXT_KEY, SDFixSettings, SettingsError, describe

__all__ = [
    "MODES",
    "MAX_VARIANTS",
    "MAX_LABEL_CHARS",
    "FIXES",
    "Variant",
    "plan_variants",
    "parse_variants",
    "DecodeConfig",
    "SamplingGroup",
    "sampling_groups",
    "count_runs",
    "count_decodes",
    "RunContext",
    "effect_notes",
    "metrics_table",
    "metrics_json",
    "metrics_display",
    "heatmap",
    "compose_grid",
    "png_base64",
    "compare_html",
    "save_comparison",
    "payload_from_infotext",
    "settings_from_infotext",
    "resolve_seed",
    "ABRequest",
    "ab_request_from_body",
    "decode_image_field",
]

#: Comparison modes: A = SDFix off / B = SDFix on, or baseline + each fix alone + all fixes.
MODES = ("ab", "ablation")
#: Most variants one comparison may render (each one is at least a VAE decode, up to a full sampling).
MAX_VARIANTS = 8
#: A label is one line above a grid cell and a table row: more than this is never readable.
MAX_LABEL_CHARS = 128
#: The fixes an ablation switches one by one: (fix key as in the infotext notes, option, label).
FIXES: Tuple[Tuple[str, str, str], ...] = (
    (FIX_DECODE, "precision_guard", "precision guard"),
    (FIX_ENCODE, "guard_encode", "guard encode"),
    (FIX_PARITY, "hires_parity", "Hires parity"),
    (FIX_RESIZE, "post_resize", "post-resize"),
)
_TOGGLES = tuple(option for _, option, _ in FIXES)

# Variant names end up in file names and HTML ids: keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


# --- variants ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One image of the comparison: a short file-safe ``name``, what the UI shows, and its settings."""

    name: str
    label: str
    settings: SDFixSettings


def plan_variants(mode: str, base: SDFixSettings) -> List[Variant]:
    """The variants of ``mode``; ``base`` (the user's SDFix settings) supplies filter, dtype and the rest.

    "ab": A = SDFix off, B = ``base`` switched on.  "ablation": baseline (off), each fix alone (on,
    with only that toggle set), all fixes on.  The first variant is always the reference.
    """
    off = base.changed(enabled=False)
    if mode == "ab":
        return [Variant("A", "A: SDFix off", off), Variant("B", "B: SDFix on", base.changed(enabled=True))]
    if mode == "ablation":
        variants = [Variant("baseline", "baseline (SDFix off)", off)]
        for fix, option, label in FIXES:
            alone = {toggle: toggle == option for toggle in _TOGGLES}
            variants.append(Variant(fix, f"{label} only", base.changed(enabled=True, **alone)))
        variants.append(Variant("all", "all fixes", base.changed(enabled=True, **{t: True for t in _TOGGLES})))
        return variants
    raise SettingsError({"variants": f"unknown mode {describe(mode)}; expected one of {list(MODES)} or a list of variants"})


def parse_variants(value: Any, base: SDFixSettings, path: str = "variants") -> List[Variant]:
    """Variants from the API: "ab", "ablation", ["ab"], or [{"name", "settings", "label"?}, ...].

    Each ``settings`` dict holds named SDFix options (missing ones come from ``base``).  Raises
    :class:`SettingsError` naming every offending field path, e.g. ``variants[1].settings.precision_guard``.
    """
    if isinstance(value, str):
        if value not in MODES:
            _fail(path, f"unknown mode {describe(value)}; expected one of {list(MODES)} or a list of variants")
        return plan_variants(value, base)
    if not isinstance(value, list):
        _fail(path, f"expected one of {list(MODES)} or a list of variants, got {type(value).__name__}")
    if not value:
        _fail(path, "must not be empty")
    if len(value) == 1 and isinstance(value[0], str):
        return parse_variants(value[0], base, f"{path}[0]")
    if len(value) > MAX_VARIANTS:
        _fail(path, f"at most {MAX_VARIANTS} variants, got {len(value)}")

    problems: Dict[str, str] = {}
    variants: List[Variant] = []
    seen: Dict[str, int] = {}
    for i, spec in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(spec, Mapping):
            problems[where] = f"expected an object {{\"name\": ..., \"settings\": {{...}}}}, got {type(spec).__name__}"
            continue
        unknown = [key for key in spec if key not in ("name", "label", "settings")]
        for key in unknown[:10]:
            problems[f"{where}.{key}"] = "unknown field; expected name, label, settings"
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems[f"{where}.name"] = (f"expected 1-32 letters, digits, '_', '-' or '.', starting with a letter or "
                                         f"digit, got {describe(name)}")
        elif name.casefold() in seen:  # names become file names: "a" and "A" collide on Windows/macOS
            problems[f"{where}.name"] = f"duplicate name {name!r} (also variants[{seen[name.casefold()]}])"
        else:
            seen[name.casefold()] = i
        label = spec.get("label", name)
        try:
            check_text(label, MAX_LABEL_CHARS, name=True)
            if not label.strip():
                raise ValueError(f"expected non-empty text, got {describe(label)}")
        except ValueError as err:
            if "label" in spec or f"{where}.name" not in problems:
                problems[f"{where}.label"] = str(err)
        options = spec.get("settings", {})
        settings = None
        if not isinstance(options, Mapping):
            problems[f"{where}.settings"] = f"expected an object of named SDFix options, got {type(options).__name__}"
        else:
            try:
                settings = SDFixSettings.from_mapping(options, base)
            except SettingsError as err:
                problems.update({f"{where}.settings.{k}": v for k, v in err.problems.items()})
        if settings is not None and f"{where}.name" not in problems and f"{where}.label" not in problems:
            variants.append(Variant(name, label, settings))
    if problems:
        raise SettingsError(problems)
    return variants


def _fail(where: str, why: str) -> None:
    raise SettingsError({where: why})


# --- work sharing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeConfig:
    """How a final latent is decoded: the WebUI's own decode (``guarded`` False), or guarded in ``dtype``."""

    guarded: bool
    dtype: Optional[str] = None

    @classmethod
    def of(cls, settings: SDFixSettings) -> "DecodeConfig":
        guarded = dict(split_fixes(settings))[FIX_DECODE]
        return cls(guarded, settings.decode_dtype if guarded else None)


@dataclass(frozen=True)
class SamplingGroup:
    """Variants that can share one sampling run, and the distinct final decodes they need after it.

    ``key`` lists what the shared run depends on as (option, effective value) pairs; it is empty
    without Hires, where every variant shares the one and only sampling.
    """

    key: Tuple[Tuple[str, Any], ...]
    variants: Tuple[Variant, ...]
    decodes: Tuple[DecodeConfig, ...]
    hires: bool = False

    @property
    def settings(self) -> SDFixSettings:
        """Settings to run the shared sampling with (every variant of the group agrees on what matters)."""
        return self.variants[0].settings

    def variants_for(self, decode: DecodeConfig) -> Tuple[Variant, ...]:
        """The variants whose image is this decode's output."""
        return tuple(v for v in self.variants if DecodeConfig.of(v.settings) == decode)


def _hires_key(settings: SDFixSettings, latent_upscaler: bool, parity_changes_sampler: bool) -> Tuple[Tuple[str, Any], ...]:
    on = dict(split_fixes(settings))
    key: List[Tuple[str, Any]] = [("hires_parity", on[FIX_PARITY] if parity_changes_sampler else None)]
    if not latent_upscaler:
        # A non-latent upscaler decodes the first pass, upscales, resizes and encodes again: every one
        # of those fixes changes what the Hires pass starts from.
        key += [
            ("precision_guard", on[FIX_DECODE]),
            ("guard_encode", on[FIX_ENCODE]),
            ("post_resize", on[FIX_RESIZE]),
            ("resize_filter", settings.resize_filter if on[FIX_RESIZE] else None),
            ("decode_dtype", settings.decode_dtype if (on[FIX_DECODE] or on[FIX_ENCODE]) else None),
        ]
    return tuple(key)


def sampling_groups(variants: Sequence[Variant], *, hires: bool, latent_upscaler: bool,
                    parity_changes_sampler: bool = True) -> List[SamplingGroup]:
    """Group ``variants`` by the sampling they can share, in first-appearance order.

    Without Hires the final VAE decode is the only stage after sampling: one group, one decode per
    distinct decode config.  With Hires the first pass is shared by all (no fix touches it) and the
    Hires pass is shared by variants that agree on parity and -- for a non-latent upscaler -- on
    the decode/resize/encode fixes that shape its input.  ``parity_changes_sampler=False`` (the
    first and Hires sampler/schedule are already equal) lets variants differing only in parity share.
    """
    buckets: Dict[Tuple[Tuple[str, Any], ...], List[Variant]] = {}
    for variant in variants:
        key = _hires_key(variant.settings, latent_upscaler, parity_changes_sampler) if hires else ()
        buckets.setdefault(key, []).append(variant)
    groups = []
    for key, members in buckets.items():
        decodes = tuple(dict.fromkeys(DecodeConfig.of(v.settings) for v in members))
        groups.append(SamplingGroup(key, tuple(members), decodes, hires))
    return groups


def count_runs(groups: Sequence[SamplingGroup]) -> int:
    """Sampling passes the groups need: one shared first pass, plus one Hires pass per group with Hires."""
    if not groups:
        return 0
    return 1 + len(groups) if groups[0].hires else len(groups)


def count_decodes(groups: Sequence[SamplingGroup]) -> int:
    """Final VAE decodes the groups need (one per distinct decode config in each group)."""
    return sum(len(g.decodes) for g in groups)


# --- which fixes changed something ----------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What the comparison's generation did, to explain why a fix could not change anything.

    ``upscaler`` is the Hires upscaler as the WebUI names it (None = its default latent mode).
    """

    hires: bool = False
    upscaler: Optional[str] = None
    first_sampler: Optional[str] = None
    first_scheduler: Optional[str] = None
    hires_sampler: Optional[str] = None
    hires_scheduler: Optional[str] = None
    img2img: bool = False

    @property
    def latent_upscaler(self) -> bool:
        return self.upscaler is None or self.upscaler.strip().startswith("Latent")

    @property
    def sampler_already_equal(self) -> Optional[bool]:
        """Whether the Hires pass already used the first pass's sampler and schedule (None: unknown)."""
        if not self.hires or not self.first_sampler:
            return None
        from lib_sdfix.parity import resolve_hires_sampling

        first = resolve_hires_sampling(self.first_sampler, self.first_scheduler, None, None, parity=False)
        hires = resolve_hires_sampling(self.first_sampler, self.first_scheduler, self.hires_sampler,
                                       self.hires_scheduler, parity=False)
        return (first.sampler, first.scheduler) == (hires.sampler, hires.scheduler)


def _no_effect_reasons(context: RunContext, variants: Sequence[Variant]) -> Dict[str, str]:
    """fix -> why it cannot have changed anything in this run, from the run's shape alone."""
    reasons: Dict[str, str] = {}
    if not context.hires:
        reasons[FIX_PARITY] = "no Hires pass"
    elif context.sampler_already_equal:
        reasons[FIX_PARITY] = "first and Hires sampler already equal"

    if not context.img2img:
        if not context.hires:
            reasons[FIX_RESIZE] = "no upscaler ran"
        elif context.latent_upscaler:
            reasons[FIX_RESIZE] = f"no upscaler model ran ({context.upscaler or 'Latent'})"
        elif context.upscaler.strip() == "None":
            # The WebUI's plain resize is LANCZOS too: only another filter can differ.
            filters = {v.settings.resize_filter for v in variants if dict(split_fixes(v.settings))[FIX_RESIZE]}
            if filters <= {"LANCZOS"}:
                reasons[FIX_RESIZE] = "no upscaler model ran (None), and LANCZOS is the WebUI's own resize"
        encode_happens = context.hires and not context.latent_upscaler
        if not encode_happens:
            why = "latent Hires upscaler" if context.hires else "no Hires pass"
            reasons[FIX_ENCODE] = f"no VAE encode happened ({why}, not img2img)"
    return reasons


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _difference_text(image: Image.Image, baseline: Image.Image) -> Optional[str]:
    """None when pixel-identical, else how much changed."""
    a, b = _rgb(baseline), _rgb(image)
    if a.shape != b.shape:
        return f"size {image.size} differs from {baseline.size}"
    diff = np.abs(a - b).max(axis=-1)
    if not diff.any():
        return None
    share = float((diff > 0).mean()) * 100.0
    return f"changed {share:.3g}% of pixels (largest difference {int(diff.max())}/255)"


def effect_notes(variants: Sequence[Variant], images: Mapping[str, Image.Image], context: RunContext) -> List[str]:
    """Which fixes actually changed something in this run, one line each.

    A "fix alone" variant (SDFix on, only that toggle set) is compared pixel by pixel with the
    baseline (the first variant with SDFix off): identical -> "<fix>: no effect ..." with the reason
    when the run's shape explains it, e.g. "parity: no effect, first and Hires sampler already equal".
    Other variants (B, "all fixes") get how much they changed against the baseline.  Fixes turned on
    somewhere but without a "fix alone" variant get a note only when the run's shape rules them out.
    """
    reasons = _no_effect_reasons(context, variants)
    baseline = next((v for v in variants if not v.settings.enabled), None)
    base_image = images.get(baseline.name) if baseline is not None else None
    notes: List[str] = []
    measured = set()

    alone = {}
    for v in variants:
        on = [fix for fix, enabled in split_fixes(v.settings) if enabled]
        if len(on) == 1:
            alone.setdefault(on[0], v)
    for fix, _, _ in FIXES:
        variant = alone.get(fix)
        if variant is None or base_image is None or variant.name not in images:
            continue
        measured.add(fix)
        change = _difference_text(images[variant.name], base_image)
        if change is None:
            notes.append(f"{fix}: no effect, {reasons[fix]}" if fix in reasons else f"{fix}: no effect in this run")
        else:
            notes.append(f"{fix}: {change}")

    for v in variants:
        if v is baseline or v in alone.values() or v.name not in images or base_image is None:
            continue
        change = _difference_text(images[v.name], base_image)
        notes.append(f"{v.label}: {change} vs {baseline.label}" if change else f"{v.label}: identical to {baseline.label}")

    used = {fix for v in variants for fix, enabled in split_fixes(v.settings) if enabled}
    for fix, _, _ in FIXES:
        if fix in used and fix not in measured and fix in reasons:
            notes.append(f"{fix}: no effect, {reasons[fix]}")
    return notes


# --- metrics ---------------------------------------------------------------------------------------


def metrics_table(images: Mapping[str, Image.Image], times: Mapping[str, float], reference_name: str, *,
                  labels: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per image, in ``images`` order: detail metrics, and PSNR/SSIM/ratios against the reference.

    Ratios > 1 mean more fine detail than the reference.  PSNR of an image identical to the
    reference is ``inf``; pairwise values are None when the sizes differ.  ``time_s`` is what the
    caller measured for that variant (None if it has none, e.g. a decode-only variant).
    """
    from lib_sdfix.metrics import high_frequency_energy, laplacian_variance, psnr, ssim

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
            "laplacian_ratio": _ratio(lap, ref_lap),
            "high_frequency_ratio": _ratio(hf, ref_hf),
            "time_s": None if times.get(name) is None else float(times[name]),
        })
    return rows


def _ratio(value: float, reference: float) -> float:
    if reference == 0.0:
        return 1.0 if value == 0.0 else math.inf
    return value / reference


def _json_number(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


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
        "variants": [{k: _json_number(v) for k, v in row.items()} for row in rows],
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

    if not _valid_gain(gain):
        raise SettingsError({"heatmap_gain": f"must be a number between 1 and 64, got {describe(gain)}"})
    return difference_heatmap(a, b, float(gain))


def _valid_gain(gain: Any) -> bool:
    # Comparisons only: math.isnan() of a huge JSON integer raises OverflowError.
    return not isinstance(gain, bool) and isinstance(gain, (int, float)) and 1 <= gain <= 64


# --- images: grid, HTML, files -----------------------------------------------------------------------


def _latin1(text: str) -> str:
    # PIL's built-in bitmap font only has Latin-1 glyphs.
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _fit_label(text: str, width: float, measure: Callable[[str], float]) -> str:
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
        text = _fit_label(_latin1(label), cell_w - 2 * pad, lambda t: draw.textlength(t, font=font))
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


# --- infotext -> payload, seed ----------------------------------------------------------------------


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
    raise ValueError(f"expected an integer, got {value!r}")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__} {value!r}")
    return value


# (infotext key, payload key, converter); Hires entries only apply when the image used Hires.fix.
_INFOTEXT_FIELDS = (
    ("Prompt", "prompt", _as_text),
    ("Negative prompt", "negative_prompt", _as_text),
    ("Steps", "steps", _as_int),
    ("Sampler", "sampler_name", _as_text),
    ("Schedule type", "scheduler", _as_text),
    ("CFG scale", "cfg_scale", _as_float),
    ("Seed", "seed", _as_int),
    ("Size-1", "width", _as_int),
    ("Size-2", "height", _as_int),
    ("Denoising strength", "denoising_strength", _as_float),
)
_HIRES_FIELDS = (
    ("Hires upscale", "hr_scale", _as_float),
    ("Hires resize-1", "hr_resize_x", _as_int),
    ("Hires resize-2", "hr_resize_y", _as_int),
    ("Hires upscaler", "hr_upscaler", _as_text),
    ("Hires steps", "hr_second_pass_steps", _as_int),
    ("Hires sampler", "hr_sampler_name", _as_text),
    ("Hires schedule type", "hr_scheduler", _as_text),
    ("Hires prompt", "hr_prompt", _as_text),
    ("Hires negative prompt", "hr_negative_prompt", _as_text),
)
# Values meaning "as the first pass": the API's defaults already say that.
_SAME_AS_FIRST = {"Use same sampler", "Use same scheduler", ""}


def _uses_hires(params: Mapping[str, Any]) -> bool:
    """As the WebUI's txt2img paste decides: a denoising strength plus a Hires entry (resize 0 = unset)."""
    if "Denoising strength" not in params:
        return False
    if "Hires upscale" in params or "Hires upscaler" in params:
        return True
    return str(params.get("Hires resize-1", 0)).strip() not in ("", "0")


def payload_from_infotext(params: Mapping[str, Any]) -> Dict[str, Any]:
    """A txt2img API payload from the WebUI's parsed infotext (``parse_generation_parameters``).

    Only entries present are set, with API types (ints, floats); Hires entries only when the image
    used Hires.fix (``enable_hr``); "Use same sampler"/"Use same scheduler" are left out (the
    API's default means the same); "Clip skip" becomes an ``override_settings`` entry.  A legacy
    sampler name such as "DPM++ 2M Karras" without "Schedule type" is passed on as is: the WebUI
    API splits it.  The "SDFix" entry is not part of the payload: see :func:`settings_from_infotext`.
    Raises :class:`SettingsError` naming each entry whose value has the wrong type.
    """
    if not isinstance(params, Mapping):
        raise SettingsError({"params": f"expected parsed generation parameters, got {type(params).__name__}"})
    payload: Dict[str, Any] = {}
    problems: Dict[str, str] = {}
    hires = _uses_hires(params)
    table = _INFOTEXT_FIELDS + (_HIRES_FIELDS if hires else ())
    for key, target, convert in table:
        if key not in params or params[key] is None:
            continue
        try:
            value = convert(params[key])
        except ValueError as err:
            problems[key] = str(err)
            continue
        if target in ("hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt") and value.strip() in _SAME_AS_FIRST:
            continue
        payload[target] = value
    if "Clip skip" in params:
        try:
            payload["override_settings"] = {"CLIP_stop_at_last_layers": _as_int(params["Clip skip"])}
        except ValueError as err:
            problems["Clip skip"] = str(err)
    if problems:
        raise SettingsError(problems)
    payload["enable_hr"] = hires
    if hires and "hr_scale" not in payload and not payload.get("hr_resize_x") and not payload.get("hr_resize_y"):
        payload["hr_scale"] = 2.0  # the WebUI's default when the infotext names no Hires size
    return payload


def settings_from_infotext(params: Mapping[str, Any], base: SDFixSettings) -> SDFixSettings:
    """The SDFix settings an image was made with (its "SDFix" entry), else ``base``.

    Raises :class:`SettingsError` when the entry is there but unreadable.
    """
    text = params.get(INFOTEXT_KEY)
    if text is None:
        return base
    return SDFixSettings.from_infotext(text, base)


#: The WebUI draws random seeds from [0, 4294967294).
SEED_RANGE = 4294967294


def resolve_seed(seed: Any, rng: Optional[random.Random] = None) -> int:
    """A concrete seed: -1 / None / "" (the WebUI's "random") draws one from ``rng``; others are checked.

    Called once per comparison, so every variant renders the same seed and the UI can show it.
    """
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        seed = -1
    try:
        value = _as_int(seed)
    except ValueError as err:
        raise SettingsError({"seed": str(err)}) from None
    if value == -1:
        return (rng or random).randrange(SEED_RANGE)
    if value < 0:
        raise SettingsError({"seed": f"must be -1 (random) or a seed >= 0, got {value}"})
    return value


# --- the API body ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABRequest:
    """A validated POST /sdfix/v1/ab body.  ``payload`` is the caller's txt2img fields (a copy)."""

    payload: Dict[str, Any]
    variants: Tuple[Variant, ...]
    heatmap_gain: float = 4.0
    save: bool = False

    @property
    def reference(self) -> Variant:
        return self.variants[0]

    def with_resolved_seed(self, rng: Optional[random.Random] = None) -> "ABRequest":
        """A copy whose payload has a concrete seed (and subseed, when variation seeds are on), so
        every variant renders the same noise."""
        payload = dict(self.payload)
        payload["seed"] = resolve_seed(payload.get("seed", -1), rng)
        strength = payload.get("subseed_strength", 0)
        if "subseed" in payload or (isinstance(strength, (int, float)) and strength):
            payload["subseed"] = resolve_seed(payload.get("subseed", -1), rng)
        return replace(self, payload=payload)


_BODY_FIELDS = ("payload", "variants", "heatmap_gain", "save")


def ab_request_from_body(body: Any, base: SDFixSettings, *,
                         choices: Optional[Mapping[str, Any]] = None,
                         extra_rules: Optional[Mapping[str, Any]] = None) -> ABRequest:
    """Validate the JSON body of POST /sdfix/v1/ab (and of the A/B tab's form) before anything runs.

    ``{"payload": {txt2img fields}, "variants": "ab" | "ablation" | [...] (default "ab"),
    "heatmap_gain": 1-64 (default 4), "save": bool (default false)}``.  Every payload field is
    bounded as the WebUI's UI bounds it (:func:`lib_sdfix.limits.check_txt2img_payload`: sizes,
    steps, prompts, option overrides; unknown fields refused); ``choices`` (optional) maps name
    fields to the names the WebUI knows, e.g. ``{"hr_upscaler": [...]}``.  The request's payload is
    the checked, normalised copy.  Raises :class:`SettingsError` naming every offending field
    path (``payload.width``, ``variants[1].label``, ...).
    """
    if not isinstance(body, Mapping):
        raise SettingsError({"body": f"expected a JSON object, got {type(body).__name__}"})
    problems: Dict[str, str] = {}
    unknown = [key for key in body if key not in _BODY_FIELDS]
    for key in unknown[:10]:
        problems[str(key)] = f"unknown field; expected {list(_BODY_FIELDS)}"

    fields: Dict[str, Any] = {}
    if "payload" not in body:
        problems["payload"] = "required: the txt2img fields (prompt, seed, steps, ...)"
    else:
        try:
            fields = check_txt2img_payload(body["payload"], "payload", choices=choices, extra_rules=extra_rules)
        except SettingsError as err:
            problems.update(err.problems)

    variants: List[Variant] = []
    try:
        variants = parse_variants(body.get("variants", "ab"), base)
    except SettingsError as err:
        problems.update(err.problems)

    gain = body.get("heatmap_gain", 4.0)
    if not _valid_gain(gain):
        problems["heatmap_gain"] = f"must be a number between 1 and 64, got {describe(gain)}"

    save = body.get("save", False)
    if not isinstance(save, bool):
        problems["save"] = f"expected true or false, got {type(save).__name__} {describe(save)}"

    if problems:
        raise SettingsError(problems)
    return ABRequest(fields, tuple(variants), float(gain), save)
