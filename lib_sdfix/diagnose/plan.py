"""One-variable sweeps: the cells of a sweep, and which of them can share a sampling.

The classic debugging strategy: fix the seed and change one variable at a time -- CFG scale, steps,
sampler, schedule, or SDFix's precision.  Every cell is the user's generation with one field (or
SDFix's precision toggles) changed.  Cells with the same generation fields differ only in SDFix's
settings; :func:`lib_sdfix.sampling_plan.sampling_groups` tells which of those share a sampling
(without Hires all of them: only the decode differs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from lib_sdfix.sampling_plan import SamplingGroup, Variant, count_runs, sampling_groups
from lib_sdfix.settings import FIXES, SDFixSettings

__all__ = ["AXES", "PRECISION_FIXES", "AXIS_LABELS", "DEFAULT_VALUES", "NUMERIC_AXES", "Cell", "sweep_cells", "payload_groups",
           "count_samplings", "count_decodes", "value_text"]

#: What a sweep can vary, as txt2img field names ("precision": SDFix's guarded VAE decode and encode).
AXES = ("cfg_scale", "steps", "sampler_name", "scheduler", "precision")
#: The fixes the "precision" axis turns on and off: those of lib_sdfix.settings.FIXES against VAE precision.
PRECISION_FIXES = tuple(f.key for f in FIXES if f.cause == "vae_precision")
AXIS_LABELS = {"cfg_scale": "CFG scale", "steps": "steps", "sampler_name": "sampler", "scheduler": "schedule type",
               "precision": " + ".join(PRECISION_FIXES)}
NUMERIC_AXES = ("cfg_scale", "steps")
#: The usual ranges to try (CFG 1-15; steps up to 100) and the common samplers and schedules; the host
#: keeps the names it knows.
DEFAULT_VALUES: Dict[str, Tuple[Any, ...]] = {
    "cfg_scale": (1.0, 3.0, 5.0, 7.0, 10.0, 15.0),
    "steps": (10, 20, 50, 100),
    "sampler_name": ("Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC"),
    "scheduler": ("Automatic", "Karras", "Exponential", "Uniform"),
    "precision": ("off", "on"),
}


def value_text(axis: str, value: Any) -> str:
    """The value as shown in labels and charts: 7 not 7.0, on/off for precision."""
    if axis == "precision":
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One image of a sweep: a file-safe ``name``, its label, the swept value, the txt2img fields it
    changes and its SDFix settings."""

    name: str
    label: str
    value: Any
    fields: Tuple[Tuple[str, Any], ...]
    settings: SDFixSettings

    def payload(self, base: Mapping[str, Any]) -> Dict[str, Any]:
        return {**base, **dict(self.fields)}

    @property
    def variant(self) -> Variant:
        """The cell as a variant (name, label, settings), for the sampling planner."""
        return Variant(self.name, self.label, self.settings)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:24] or "x"


def sweep_cells(axis: str, values: Sequence[Any], base: SDFixSettings) -> List[Cell]:
    """The cells of a sweep over ``axis``; ``values`` are already checked (lib_sdfix.diagnose.request).

    Precision "on" is SDFix on with its guarded decode and encode; "off" is SDFix on with both off,
    so every other SDFix setting (the user's) stays the same across the cells.
    """
    cells: List[Cell] = []
    used: Dict[str, int] = {}
    for value in values:
        shown = value_text(axis, value)
        if axis == "precision":
            settings = base.changed(enabled=True, **{k: bool(value) for k in PRECISION_FIXES})
            fields: Tuple[Tuple[str, Any], ...] = ()
            label = f"{'+'.join(PRECISION_FIXES)} {shown}"
        else:
            settings, fields = base, ((axis, value),)
            label = {"cfg_scale": f"CFG {shown}", "steps": f"{shown} steps"}.get(axis, shown)
        stem = {"cfg_scale": "cfg", "steps": "steps", "sampler_name": "sampler", "scheduler": "schedule",
                "precision": "precision"}[axis]
        name = f"{stem}-{_slug(shown)}"
        if name in used:  # two names that slug alike ("DPM++ 2M" and "DPM 2M")
            used[name] += 1
            name = f"{name}-{used[name]}"
        used.setdefault(name, 1)
        cells.append(Cell(name, label, value, fields, settings))
    return cells


def payload_groups(cells: Sequence[Cell], *, hires: bool, latent_upscaler: bool,
                   parity_changes_sampler: bool = True) -> List[Tuple[Tuple[Tuple[str, Any], ...], List[SamplingGroup]]]:
    """Cells by the generation fields they change (each needs its own sampling), and within each, the
    sampling groups of their SDFix settings (cells that differ only in the decode share)."""
    buckets: Dict[Tuple[Tuple[str, Any], ...], List[Cell]] = {}
    for cell in cells:
        buckets.setdefault(cell.fields, []).append(cell)
    return [(fields, sampling_groups([c.variant for c in members], hires=hires, latent_upscaler=latent_upscaler,
                                     parity_changes_sampler=parity_changes_sampler))
            for fields, members in buckets.items()]


def count_samplings(cells: Sequence[Cell], *, hires: bool = False, latent_upscaler: bool = True) -> int:
    """Sampling passes a sweep needs: per distinct generation, what the sampling planner counts."""
    return sum(count_runs(groups) for _, groups in payload_groups(cells, hires=hires, latent_upscaler=latent_upscaler))


def count_decodes(cells: Sequence[Cell]) -> int:
    """Final VAE decodes a sweep needs: one per cell (each cell is its own image and infotext)."""
    return len(cells)
