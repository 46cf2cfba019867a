"""What SDFix leaves on the objects it hardens: the pipeline's options, chosen causes and report, and
its method wrappers.

Both live on the object itself, so they go when the pipeline or VAE goes (a process-wide registry
would keep every hardened model alive).  The wrappers are :class:`lib_sdfix.patching.PatchSet`
patches -- the one patch mechanism of both fronts -- one set per object: a wrapper is installed
once however often a pipeline is hardened, is never wrapped again, and removing it puts back
exactly what was there (the class's method, or another library's own wrapper).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

from lib_sdfix.diffusers.causes import cause_on
from lib_sdfix.failsafe import FixReport
from lib_sdfix.patching import PatchSet, is_replacement
from lib_sdfix.settings import SDFixSettings

__all__ = ["Hardening", "state_of", "set_state", "clear_state", "wrap_method", "unwrap_method", "is_ours",
           "component"]

_STATE_ATTR = "_sdfix_state"
_PATCHES_ATTR = "_sdfix_patches"


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
