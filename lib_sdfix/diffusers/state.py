"""What SDFix leaves on the objects it hardens: the pipeline's options, chosen causes and report, its
method wrappers, and the last Hires resize :func:`lib_sdfix.diffusers.hires_fix` made for it.

Both live on the object itself, so they go when the pipeline or VAE goes (a process-wide registry
would keep every hardened model alive).  The wrappers are :class:`lib_sdfix.patching.PatchSet`
patches -- the one patch mechanism of both fronts -- one set per object: a wrapper is installed
once however often a pipeline is hardened, is never wrapped again, and removing it puts back
exactly what was there (the class's method, or another library's own wrapper).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from lib_sdfix.diffusers.causes import cause_on
from lib_sdfix.failsafe import FixReport
from lib_sdfix.patching import PatchSet, is_replacement
from lib_sdfix.settings import SDFixSettings

__all__ = ["Hardening", "state_of", "set_state", "clear_state", "wrap_method", "unwrap_method", "is_ours",
           "component", "HiresResize", "record_hires_resize", "last_hires_resize", "last_hires_size"]

_STATE_ATTR = "_sdfix_state"
_PATCHES_ATTR = "_sdfix_patches"
_LAST_RESIZE_ATTR = "_sdfix_last_hires_resize"


class Hardening:
    """What a hardened object runs with: the options, the causes chosen (all of them, or some for an
    ablation run) and the report its fixes write to.  Options are read when a fix runs, so
    hardening again with other options only replaces them."""

    def __init__(self, options: SDFixSettings, fixes: Iterable[str], report: FixReport) -> None:
        self.options = options
        self.fixes = frozenset(fixes)
        self.report = report

    def on(self, cause: str, patch: str = "") -> bool:
        """Whether the fix against ``cause`` (its ``patch`` part: "decode", "encode") works now."""
        return cause in self.fixes and cause_on(self.options, cause, patch)


def state_of(pipe: Any) -> Optional[Hardening]:
    """The hardening of a pipeline, or None if it is not hardened."""
    return getattr(pipe, _STATE_ATTR, None) if pipe is not None else None


def set_state(pipe: Any, state: Hardening) -> None:
    object.__setattr__(pipe, _STATE_ATTR, state)


def clear_state(pipe: Any) -> None:
    if _STATE_ATTR in pipe.__dict__:
        object.__delattr__(pipe, _STATE_ATTR)


def is_ours(fn: Any) -> bool:
    """Whether ``fn`` is one of SDFix's wrappers."""
    return fn is not None and is_replacement(fn)


def _patches(owner: Any, create: bool = True) -> Optional[PatchSet]:
    patches = owner.__dict__.get(_PATCHES_ATTR)
    if patches is None and create:
        patches = PatchSet()
        object.__setattr__(owner, _PATCHES_ATTR, patches)
    return patches


def wrap_method(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Install ``make(original)`` as ``owner.name`` unless SDFix's wrapper is there already; True if
    installed now."""
    patches = _patches(owner)
    if patches.holds(owner, name):
        return False
    had = is_ours(owner.__dict__.get(name))
    patches.acquire(owner, name, make)
    return not had


def unwrap_method(owner: Any, name: str) -> None:
    """Remove SDFix's wrapper from ``owner.name``, putting back what was there before it."""
    patches = _patches(owner, create=False)
    if patches is None:
        return
    patches.release(owner, name)
    if not patches.active():  # nothing held or waiting to be removed: leave no trace on the object
        object.__delattr__(owner, _PATCHES_ATTR)


def component(pipes: Sequence[Any], name: str) -> Any:
    """The first pipeline's component ``name`` that is set, or None."""
    for pipe in pipes:
        value = getattr(pipe, name, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class HiresResize:
    """One resize of a Hires pass: the filter, the upscaler's output size and the target size (width,
    height), and how many resizes ran (0 when the upscaler already gave the target size)."""

    filter: str
    source: Tuple[int, int]
    target: Tuple[int, int]
    passes: int

    def as_dict(self) -> Dict[str, Any]:
        """As :attr:`lib_sdfix.diffusers.HiresResult.resize` and the A/B report's JSON give it."""
        return {"filter": self.filter, "from": list(self.source), "to": list(self.target), "passes": self.passes}


def record_hires_resize(pipe: Any, resize: HiresResize) -> None:
    """Keep ``resize`` on ``pipe`` as its last Hires resize (the audit reports it, the VAE's memory
    estimate uses its size)."""
    object.__setattr__(pipe, _LAST_RESIZE_ATTR, resize)


def last_hires_resize(pipe: Any) -> Optional[HiresResize]:
    """The last Hires resize made for ``pipe``; None before one."""
    return getattr(pipe, _LAST_RESIZE_ATTR, None)


def last_hires_size(pipe: Any) -> Optional[Tuple[int, int]]:
    """(width, height) of the last Hires pass made for ``pipe``; None before one."""
    last = last_hires_resize(pipe)
    return None if last is None else last.target
