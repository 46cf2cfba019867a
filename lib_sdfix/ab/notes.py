"""Which fixes changed something in a comparison, and why one could not, in one line each."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from PIL import Image

from lib_sdfix.imaging.difference import describe_change
from lib_sdfix.parity import resolve_hires_sampling
from lib_sdfix.refine import describe as describe_refine
from lib_sdfix.refine import refine_steps, skip_reason
from lib_sdfix.sampling_plan import Variant
from lib_sdfix.settings import FIXES, SDFixSettings

_REFINE = "late_refine"

__all__ = ["RunContext", "effect_notes"]


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
    steps: Optional[int] = None
    hires_steps: Optional[int] = None  # None: the first pass's steps

    @property
    def final_steps(self) -> Optional[int]:
        """The steps of the last pass (the one the late refine re-runs the end of)."""
        return (self.hires_steps or self.steps) if self.hires else self.steps

    def final_sampler(self, settings: SDFixSettings) -> Optional[str]:
        """The sampler of the last pass for a variant (parity decides the Hires pass's)."""
        if not self.hires or not self.first_sampler:
            return self.first_sampler
        return resolve_hires_sampling(self.first_sampler, self.first_scheduler, self.hires_sampler,
                                      self.hires_scheduler, parity=settings.wants("hires_parity")).sampler

    def refine_text(self, settings: SDFixSettings) -> Optional[str]:
        """What the late refine did for a variant, when the run's shape tells."""
        if not settings.wants(_REFINE) or not self.final_steps:
            return None
        return describe_refine(settings.late_refine_strength, self.final_steps)

    def refine_skipped(self, settings: SDFixSettings) -> Optional[str]:
        """Why the late refine could not run for a variant, or None."""
        reason = skip_reason(self.final_sampler(settings))
        if reason is not None:
            return reason
        if self.final_steps and refine_steps(settings.late_refine_strength, self.final_steps) == 0:
            return describe_refine(settings.late_refine_strength, self.final_steps)
        return None

    @property
    def latent_upscaler(self) -> bool:
        return self.upscaler is None or self.upscaler.strip().startswith("Latent")

    @property
    def sampler_already_equal(self) -> Optional[bool]:
        """Whether the Hires pass already used the first pass's sampler and schedule (None: unknown)."""
        if not self.hires or not self.first_sampler:
            return None
        first = resolve_hires_sampling(self.first_sampler, self.first_scheduler, None, None, parity=False)
        hires = resolve_hires_sampling(self.first_sampler, self.first_scheduler, self.hires_sampler,
                                       self.hires_scheduler, parity=False)
        return (first.sampler, first.scheduler) == (hires.sampler, hires.scheduler)


def _no_effect_reasons(context: RunContext, variants: Sequence[Variant]) -> Dict[str, str]:
    """fix -> why it cannot have changed anything in this run, from the run's shape alone."""
    reasons: Dict[str, str] = {}
    if not context.hires:
        reasons["hires_parity"] = "no Hires pass"
    elif context.sampler_already_equal:
        reasons["hires_parity"] = "first and Hires sampler already equal"

    if not context.hires:
        reasons["post_resize"] = "no upscaler ran"
    elif context.latent_upscaler:
        reasons["post_resize"] = f"no upscaler model ran ({context.upscaler or 'Latent'})"
    elif context.upscaler.strip() == "None":
        # The WebUI's plain resize is LANCZOS too: only another filter can differ.
        filters = {v.settings.resize_filter for v in variants if v.settings.wants("post_resize")}
        if filters <= {"LANCZOS"}:
            reasons["post_resize"] = "no upscaler model ran (None), and LANCZOS is the WebUI's own resize"
    if not context.hires or context.latent_upscaler:
        why = "latent Hires upscaler" if context.hires else "no Hires pass"
        reasons["guard_encode"] = f"no VAE encode happened ({why}, not img2img)"
    return reasons


def effect_notes(variants: Sequence[Variant], images: Mapping[str, Image.Image], context: RunContext) -> List[str]:
    """Which fixes actually changed something in this run, one line each.

    A "fix alone" variant (SDFix on, only that toggle set) is compared pixel by pixel with the
    baseline (the first variant with SDFix off): identical -> "<fix>: no effect ..." with the reason
    when the run's shape explains it, e.g. "hires_parity: no effect, first and Hires sampler already equal".
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
        on = v.settings.fixes_on()
        if len(on) == 1:
            alone.setdefault(on[0], v)
    for fix in (f.key for f in FIXES):
        variant = alone.get(fix)
        if variant is None or base_image is None or variant.name not in images:
            continue
        measured.add(fix)
        change = describe_change(images[variant.name], base_image)
        if fix == _REFINE:
            notes.append(_refine_note(context, variant.settings, change))
        elif change is None:
            notes.append(f"{fix}: no effect, {reasons[fix]}" if fix in reasons else f"{fix}: no effect in this run")
        else:
            notes.append(f"{fix}: {change}")
    if _REFINE not in measured:
        for with_refine, without in _refine_pairs(variants, images):
            measured.add(_REFINE)
            change = describe_change(images[with_refine.name], images[without.name])
            notes.append(_refine_note(context, with_refine.settings, change, f" vs {without.label}"))

    for v in variants:
        if v is baseline or v in alone.values() or v.name not in images or base_image is None:
            continue
        change = describe_change(images[v.name], base_image)
        notes.append(f"{v.label}: {change} vs {baseline.label}" if change else f"{v.label}: identical to {baseline.label}")

    used = {fix for v in variants for fix in v.settings.fixes_on()}
    for fix in (f.key for f in FIXES):
        if fix in used and fix not in measured and fix in reasons:
            notes.append(f"{fix}: no effect, {reasons[fix]}")
    return notes


def _refine_pairs(variants: Sequence[Variant], images: Mapping[str, Image.Image]) -> List[tuple]:
    """(with, without) variants that differ only in the late refine."""
    pairs = []
    for variant in variants:
        if not variant.settings.wants(_REFINE) or variant.name not in images:
            continue
        twin = variant.settings.changed(late_refine=False)
        other = next((v for v in variants if v.name in images and v.settings.changed(
            late_refine_strength=twin.late_refine_strength) == twin), None)
        if other is not None:
            pairs.append((variant, other))
    return pairs


def _refine_note(context: RunContext, settings: SDFixSettings, change: Optional[str], against: str = "") -> str:
    """``late_refine: changed 41% of pixels (...) vs A; re-ran the last 6 of 20 steps (strength 0.3)``."""
    done = context.refine_text(settings)
    if change is None:
        why = context.refine_skipped(settings)
        return f"{_REFINE}: no effect{against}, {why}" if why else f"{_REFINE}: no effect in this run{against}"
    return f"{_REFINE}: {change}{against}" + (f"; {done}" if done else "")

