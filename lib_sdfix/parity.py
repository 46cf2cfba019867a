"""Hires parity: the Hires/img2img pass samples with the first pass's sampler and schedule.

Why: a Hires pass that silently falls back to another sampler or a uniform schedule (PNDM/DDIM in
diffusers, a different "Hires sampler" in the WebUI) smooths away the detail the first pass made,
worst at the low denoising strengths Hires.fix uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["HiresSampling", "resolve_hires_sampling", "latent_upscale_note", "SAME_SAMPLER", "SAME_SCHEDULER", "AUTOMATIC",
           "SAME_MARKERS", "is_same_marker"]

SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
AUTOMATIC = "Automatic"

#: What the WebUI (its UI, its API, a pasted infotext) says for "as the first pass" in a Hires
#: sampler/scheduler field.  The one list: the A/B form, infotext parsing and parity read it.
SAME_MARKERS = frozenset({"", SAME_SAMPLER, SAME_SCHEDULER, "None"})


@dataclass(frozen=True)
class HiresSampling:
    """What the Hires pass must use, and a note when parity overrode an explicit choice."""

    sampler: str
    scheduler: str
    sampler_overridden: bool = False
    scheduler_overridden: bool = False
    note: str = ""

    @property
    def overridden(self) -> bool:
        return self.sampler_overridden or self.scheduler_overridden


def is_same_marker(value: Optional[str]) -> bool:
    """Whether a Hires sampler/scheduler value means "as the first pass"."""
    return value is None or (isinstance(value, str) and value.strip() in SAME_MARKERS)


def resolve_hires_sampling(
    first_sampler: str,
    first_scheduler: Optional[str],
    hires_sampler: Optional[str],
    hires_scheduler: Optional[str],
    parity: bool,
) -> HiresSampling:
    """Resolve the Hires pass's sampler and schedule type.

    ``hires_sampler``/``hires_scheduler`` take the WebUI's values: a name, or None / "" / "Use same
    sampler" / "Use same scheduler" for "same as the first pass".  "Automatic" is an explicit
    schedule choice (the sampler's own default), so under parity it is overridden when the first
    pass used a named schedule.  With ``parity`` off, explicit choices are kept and only the "same"
    markers are resolved.
    """
    first_scheduler = AUTOMATIC if is_same_marker(first_scheduler) else first_scheduler.strip()
    first_sampler = first_sampler.strip()
    want_sampler = first_sampler if is_same_marker(hires_sampler) else hires_sampler.strip()
    want_scheduler = first_scheduler if is_same_marker(hires_scheduler) else hires_scheduler.strip()
    if not parity:
        return HiresSampling(want_sampler, want_scheduler)

    sampler_overridden = want_sampler != first_sampler
    scheduler_overridden = want_scheduler != first_scheduler
    notes = []
    if sampler_overridden:
        notes.append(f"Hires sampler {want_sampler} -> {first_sampler}")
    if scheduler_overridden:
        notes.append(f"Hires schedule {want_scheduler} -> {first_scheduler}")
    return HiresSampling(
        first_sampler,
        first_scheduler,
        sampler_overridden,
        scheduler_overridden,
        "; ".join(notes),
    )


def latent_upscale_note(upscaler: Optional[str], latent_mode: Optional[dict], denoising: float,
                        threshold: float) -> Optional[str]:
    """A note when a bilinear latent upscaler meets low denoising: a known blur source SDFix reports
    but never changes silently."""
    if latent_mode is None or latent_mode.get("mode") != "bilinear" or threshold <= 0:
        return None
    if denoising is None or denoising >= threshold:
        return None
    return (f"Hires upscaler {upscaler or 'Latent'} is bilinear: with denoising {denoising:g} below "
            f"{threshold:g} it blurs detail (use an upscaler model or more denoising)")
