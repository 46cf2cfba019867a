"""The cost of speed: which of the user's speed and memory options to measure, and the generations that do it.

The reference is the user's generation with every switchable option at its quality setting; then one
cell per option turned back on alone (at the user's value, or the value the request names), and one with
all of them on -- the user's actual setup.  Cells whose changes differ only in options that act on the
VAE decode (``decode_only``) share one sampling: the runner samples the first and hands the latent to the
others (:func:`sampling_key`).  Options a host has only at start (flags) or only with a model reload are
listed with their value, not measured.  The measurements and the report: :mod:`lib_sdfix.diagnose.cost`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lib_sdfix.diagnose.speed_options import SpeedOption, option_value_text

__all__ = ["MAX_OPTIONS", "MAX_REPEATS", "UNSET", "FoundOption", "CostCell", "CostPlan", "plan_cost", "sampling_key",
           "listing"]

#: Options measured in one request: each is at least one more generation under the queue lock.
MAX_OPTIONS = 12
#: Timed repeats of each cell (the median is reported).
MAX_REPEATS = 5


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Measure this option at the user's own value" (a request that names an option without a value).
UNSET: Any = _Unset()
Changes = Tuple[Tuple[str, Any], ...]


@dataclass(frozen=True)
class FoundOption:
    """An option as the host has it now: the user's ``value``; ``available`` False where this host (or this
    version of it) lacks it; ``note`` what the host said about it (e.g. the cross-attention implementation
    its choice resolved to); ``choices`` the names it accepts where the host lists them; ``blocked`` why it
    cannot be measured here now (e.g. a decoder file the host would download)."""

    option: SpeedOption
    value: Any = None
    available: bool = True
    note: str = ""
    choices: Optional[Tuple[str, ...]] = None
    blocked: str = ""

    @property
    def key(self) -> str:
        return self.option.key

    @property
    def on(self) -> bool:
        """Set away from its quality setting (an option without one is never "on")."""
        return self.available and self.option.quality is not None and self.value != self.option.quality

    @property
    def reference_value(self) -> Any:
        return self.value if self.option.quality is None else self.option.quality


@dataclass(frozen=True)
class CostCell:
    """One generation of the plan: a file-safe ``name``, its label, the options it measures (key -> value)
    and every change it makes to the user's setup (key -> value, sorted)."""

    name: str
    label: str
    measured: Tuple[Tuple[str, Any], ...]
    changes: Changes
    role: str  # "reference", "option" or "all"


@dataclass
class CostPlan:
    """The cells to render (the reference first), every known option as listed in the report, notes."""

    cells: List[CostCell]
    listed: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)
    decode_only_keys: Tuple[str, ...] = ()

    @property
    def reference(self) -> CostCell:
        return self.cells[0]

    def sampling_key(self, cell: CostCell) -> Changes:
        return sampling_key(cell, self.decode_only_keys)

    def sampling_groups(self) -> List[List[CostCell]]:
        """The cells by sampling key, in plan order: a group's first cell samples, the others share it."""
        groups: Dict[Changes, List[CostCell]] = {}
        for cell in self.cells:
            groups.setdefault(self.sampling_key(cell), []).append(cell)
        return list(groups.values())


def sampling_key(cell: CostCell, decode_only_keys: Sequence[str]) -> Changes:
    """The cell's changes that reach the sampling: cells with the same key share one."""
    return tuple((k, v) for k, v in cell.changes if k not in decode_only_keys)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:32] or "x"


def listing(found: FoundOption, *, measured: bool = False, note: str = "") -> Dict[str, Any]:
    """One option as the report lists it: name, label, value, quality setting, how it switches, whether on."""
    option = found.option
    status = ("not in this WebUI" if not found.available else "measured" if measured
              else "cannot be measured here" if found.blocked
              else "switchable" if option.switchable else "only at start" if option.how == "start"
              else "needs a model reload")
    return {"key": option.key, "label": option.label, "value": found.value if found.available else None,
            "quality_value": option.quality, "how": option.how, "switchable": option.switchable,
            "on": found.on, "decode_only": option.decode_only, "status": status, "trades": option.trades,
            "note": "; ".join(n for n in (found.note, found.blocked, note) if n)}


def plan_cost(found: Sequence[FoundOption], requested: Optional[Sequence[Tuple[str, Any]]] = None) -> CostPlan:
    """The cells measuring ``requested`` ((key, value or UNSET), already checked against the table) among the
    host's ``found`` options; None: every switchable option that is on, up to :data:`MAX_OPTIONS`."""
    by_key = {f.key: f for f in found}
    notes: List[str] = []
    item_notes: Dict[str, str] = {}
    measure: List[Tuple[FoundOption, Any]] = []
    if requested is None:
        candidates = [f for f in found if f.on and f.option.switchable and not f.blocked]
        notes += [f"{f.key}: not measured ({f.blocked})" for f in found if f.on and f.option.switchable and f.blocked]
        if len(candidates) > MAX_OPTIONS:
            notes.append(f"{len(candidates)} options are on; the first {MAX_OPTIONS} were measured "
                         f"(name the others in options): {', '.join(f.key for f in candidates[MAX_OPTIONS:])}")
        measure = [(f, f.value) for f in candidates[:MAX_OPTIONS]]
        if not measure:
            notes.append("none of your switchable speed or memory options is away from its quality setting; name "
                         "options (with a value to try) to measure them")
    else:
        for key, value in requested:
            item = by_key.get(key)
            if item is None or not item.available:
                item_notes[key] = "not in this WebUI"
                notes.append(f"{key}: not in this WebUI")
                continue
            if not item.option.switchable:
                why = "only at start: restart without it to compare" if item.option.how == "start" else \
                    "switching it reloads the model's weights: change it in Settings and run the diagnosis again"
                item_notes[key] = why
                notes.append(f"{key}: reported, not measured ({why})")
                continue
            if item.blocked:
                notes.append(f"{key}: not measured ({item.blocked})")
                continue
            chosen = item.value if value is UNSET else value
            if item.choices is not None and isinstance(chosen, str) and chosen not in item.choices:
                item_notes[key] = f"{chosen!r} is not one of this WebUI's choices"
                notes.append(f"{key}: {chosen!r} is not one of this WebUI's choices {list(item.choices)}")
                continue
            if chosen == item.reference_value:
                what = "its quality setting" if item.option.quality is not None else "the reference's value"
                item_notes[key] = f"{option_value_text(chosen)} is {what}: nothing to measure"
                notes.append(f"{key}: {option_value_text(chosen)} is {what}; nothing to measure (give another value)")
                continue
            measure.append((item, chosen))

    reference: Dict[str, Any] = {}
    for item in found:
        if item.available and item.option.switchable and item.option.quality is not None and item.value != item.option.quality:
            reference[item.key] = item.option.quality
    cells = [CostCell("reference", "quality settings", (), tuple(sorted(reference.items())), "reference")]
    used = {"reference"}
    for item, value in measure:
        changes = {**reference, item.key: value}
        label = f"{item.option.label} {option_value_text(value)}"
        name = _slug(f"{item.key}-{option_value_text(value)}")
        while name in used:
            name += "-2"
        used.add(name)
        cells.append(CostCell(name, label, ((item.key, value),), tuple(sorted(changes.items())), "option"))
    if len(measure) >= 2:
        changes = {**reference, **{item.key: value for item, value in measure}}
        whole = all(f.key in changes for f in found if f.on and f.option.switchable) and \
            all(value == item.value for item, value in measure)
        cells.append(CostCell("all-on", "all on (your setup)" if whole else "all measured options on",
                              tuple((i.key, v) for i, v in measure), tuple(sorted(changes.items())), "all"))
    measured_keys = {i.key for i, _ in measure}
    listed = [listing(f, measured=f.key in measured_keys, note=item_notes.get(f.key, "")) for f in found]
    decode_only = tuple(f.key for f in found if f.option.decode_only)
    return CostPlan(cells, listed, notes, decode_only)
