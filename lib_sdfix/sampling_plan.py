"""Renders of one generation that differ only in SDFix's settings (variants), and the sampling runs
they can share -- the A/B comparison's variants and the diagnosis's precision cells alike.

Variants that differ only in the VAE decode share one sampling; with Hires.fix every variant shares
the first pass (no fix touches it) and the Hires pass is shared by variants that agree on what shapes
it (parity, and for an upscaler model the decode/resize/encode fixes before it).  The late refine
samples once more after the last pass: a variant with it never shares its final latent with one
without it (nor with another strength), only the passes before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lib_sdfix.settings import FIXES, SDFixSettings

__all__ = ["Variant", "DecodeConfig", "SamplingGroup", "sampling_groups", "count_runs", "count_decodes"]


@dataclass(frozen=True)
class Variant:
    """One render: a short file-safe ``name``, what the UI shows, and its SDFix settings."""

    name: str
    label: str
    settings: SDFixSettings


@dataclass(frozen=True)
class DecodeConfig:
    """How a final latent is decoded: the WebUI's own decode (``guarded`` False), or guarded in ``dtype``."""

    guarded: bool
    dtype: Optional[str] = None

    @classmethod
    def of(cls, settings: SDFixSettings) -> "DecodeConfig":
        guarded = settings.wants("precision_guard")
        return cls(guarded, settings.vae_dtype if guarded else None)


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
    def refine(self) -> Optional[float]:
        """The late refine's strength in this group, None without it."""
        return dict(self.key).get(_REFINE)

    @property
    def pass_key(self) -> Tuple[Tuple[str, Any], ...]:
        """What the passes before the late refine depend on: groups with the same one share them."""
        return tuple(item for item in self.key if item[0] != _REFINE)

    def variants_for(self, decode: DecodeConfig) -> Tuple[Variant, ...]:
        """The variants whose image is this decode's output."""
        return tuple(v for v in self.variants if DecodeConfig.of(v.settings) == decode)


_REFINE = "late_refine"
#: Host hooks on the way from the first pass to the Hires pass with an upscaler model.
_HIRES_INPUT_HOOKS = {"decode", "encode", "resize"}


def _refine_key(settings: SDFixSettings) -> Tuple[str, Any]:
    return (_REFINE, settings.late_refine_strength if settings.wants(_REFINE) else None)


def _hires_key(settings: SDFixSettings, latent_upscaler: bool, parity_changes_sampler: bool) -> Tuple[Tuple[str, Any], ...]:
    key: List[Tuple[str, Any]] = [("hires_parity", settings.wants("hires_parity") if parity_changes_sampler else None)]
    if not latent_upscaler:
        # An upscaler model decodes the first pass, upscales, resizes and encodes again: every fix that
        # hooks one of those steps changes what the Hires pass starts from.
        key += [(f.key, settings.wants(f.key)) for f in FIXES if _HIRES_INPUT_HOOKS & set(f.patches)]
        vae = settings.wants("precision_guard") or settings.wants("guard_encode")
        key += [("resize_filter", settings.resize_filter if settings.wants("post_resize") else None),
                ("vae_dtype", settings.vae_dtype if vae else None)]
    return tuple(key)


def sampling_groups(variants: Sequence[Variant], *, hires: bool, latent_upscaler: bool,
                    parity_changes_sampler: bool = True) -> List[SamplingGroup]:
    """Group ``variants`` by the sampling they can share, in first-appearance order.

    Without Hires the final VAE decode is the only stage after sampling: one group per late refine
    setting, one decode per distinct decode config.  With Hires the first pass is shared by all (no
    fix touches it) and the Hires pass is shared by variants that agree on parity and -- for a
    non-latent upscaler -- on the decode/resize/encode fixes that shape its input; the late refine
    splits them again.  ``parity_changes_sampler=False`` (the first and Hires sampler/schedule are
    already equal) lets variants differing only in parity share.
    """
    buckets: Dict[Tuple[Tuple[str, Any], ...], List[Variant]] = {}
    for variant in variants:
        key = _hires_key(variant.settings, latent_upscaler, parity_changes_sampler) if hires else ()
        if variant.settings.wants(_REFINE):
            key += (_refine_key(variant.settings),)
        buckets.setdefault(key, []).append(variant)
    groups = []
    for key, members in buckets.items():
        decodes = tuple(dict.fromkeys(DecodeConfig.of(v.settings) for v in members))
        groups.append(SamplingGroup(key, tuple(members), decodes, hires))
    return groups


def count_runs(groups: Sequence[SamplingGroup]) -> int:
    """Sampling passes the groups need: one shared first pass, one Hires pass per distinct Hires setting
    with Hires, and a late refine per group that has one."""
    if not groups:
        return 0
    passes = len({g.pass_key for g in groups})
    refines = sum(1 for g in groups if g.refine is not None)
    return (1 + passes if groups[0].hires else passes) + refines


def count_decodes(groups: Sequence[SamplingGroup]) -> int:
    """Final VAE decodes the groups need (one per distinct decode config in each group)."""
    return sum(len(g.decodes) for g in groups)

