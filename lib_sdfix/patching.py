"""Temporary, reference-counted monkeypatches that always leave the host exactly as it was.

Why: the WebUI offers no hook inside its VAE decode/encode or its upscaler resize, so SDFix replaces a
few functions -- but only while a generation that wants the fix runs.  Between generations, and
whenever SDFix is off, every function is the host's own object again (identity, not a copy).

Other extensions patch the same functions.  When one wraps SDFix's replacement and later puts back
what it saw (SDFix's replacement), a naive patcher would forget the original and wrap itself one
layer deeper each generation.  Here the original is remembered for good, a replacement is never
wrapped again, and a replacement that could not be removed (someone sits on top of it) is removed
by :meth:`PatchSet.sweep` as soon as it is on top again.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

from lib_sdfix.failsafe import log_once

__all__ = ["PatchSet", "is_replacement"]

_ABSENT = object()
_MARK = "__sdfix_replaces__"


def is_replacement(fn: Any) -> bool:
    """Whether ``fn`` is one of SDFix's replacement functions."""
    return getattr(fn, _MARK, None) is not None


@dataclass
class _Patch:
    owner: Any
    attr: str
    own_value: Any  # what owner.__dict__ held before SDFix (or _ABSENT: the attribute was inherited)
    replacement: Any
    users: int


def _current(owner: Any, attr: str) -> Any:
    if hasattr(owner, "__dict__"):
        return vars(owner).get(attr, _ABSENT)
    return getattr(owner, attr, _ABSENT)


class PatchSet:
    """Install replacements while at least one user holds them; restore the originals at the last release.

    ``acquire(owner, attr, factory)`` calls ``factory(original)`` once per installation to build the
    replacement; the replacement is marked so it is recognised wherever it turns up again.  Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._patches: Dict[Tuple[int, str], _Patch] = {}

    def acquire(self, owner: Any, attr: str, factory: Callable[[Any], Any]) -> None:
        key = (id(owner), attr)
        with self._lock:
            patch = self._patches.get(key)
            if patch is None:
                current = _current(owner, attr)
                if current is not _ABSENT and is_replacement(current):
                    # Our own replacement, put back by someone who had wrapped it: never wrap it again.
                    own_value = getattr(current, _MARK)
                    patch = _Patch(owner, attr, own_value, current, 0)
                else:
                    original = getattr(owner, attr)
                    replacement = factory(original)
                    setattr(replacement, _MARK, current)
                    patch = _Patch(owner, attr, current, replacement, 0)
                    setattr(owner, attr, replacement)
                self._patches[key] = patch
            patch.users += 1

    def release(self, owner: Any, attr: str) -> None:
        with self._lock:
            patch = self._patches.get((id(owner), attr))
            if patch is None or patch.users == 0:
                return
            patch.users -= 1
            if patch.users == 0:
                self._remove(patch)

    def _remove(self, patch: _Patch) -> bool:
        """Put the original back if our replacement is on top; else keep the record (dormant) for sweep()."""
        current = _current(patch.owner, patch.attr)
        if current is not patch.replacement:
            log_once(f"patch-stacked:{patch.attr}",
                     f"{patch.attr} was patched again by other code while SDFix held it; SDFix's replacement "
                     "passes calls through and is removed once it is on top again")
            return False
        if patch.own_value is _ABSENT:
            delattr(patch.owner, patch.attr)
        else:
            setattr(patch.owner, patch.attr, patch.own_value)
        del self._patches[(id(patch.owner), patch.attr)]
        return True

    def sweep(self) -> None:
        """Remove dormant replacements (no users) that are on top again."""
        with self._lock:
            for patch in [p for p in self._patches.values() if p.users == 0]:
                self._remove(patch)

    def release_all(self) -> None:
        """Drop every patch regardless of users (shutdown / script unload)."""
        with self._lock:
            for patch in list(self._patches.values()):
                patch.users = 0
                self._remove(patch)

    def active(self) -> List[str]:
        """Names of the attributes currently patched (held or dormant), for diagnostics."""
        with self._lock:
            return sorted(f"{getattr(p.owner, '__name__', type(p.owner).__name__)}.{p.attr}" for p in self._patches.values())

    def holds(self, owner: Any, attr: str) -> bool:
        with self._lock:
            patch = self._patches.get((id(owner), attr))
            return patch is not None and patch.users > 0
