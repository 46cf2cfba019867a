"""Temporary, reference-counted monkeypatches that always leave the host exactly as it was.

Why: the WebUI offers no hook inside its VAE decode/encode or its upscaler resize, so SDFix replaces a
few functions -- but only while a generation that wants the fix runs.  Between generations, and
whenever SDFix is off, every function is the WebUI's own object again (identity, not a copy).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

from lib_sdfix.safety import log_once

__all__ = ["PatchSet"]

_ABSENT = object()


@dataclass
class _Patch:
    owner: Any
    attr: str
    original: Any  # the attribute as found (for restore)
    own_value: Any  # what owner.__dict__ held before (or _ABSENT: the attribute was inherited)
    replacement: Any
    users: int


class PatchSet:
    """Install replacements while at least one user holds them; restore the originals at the last release.

    ``acquire(owner, attr, factory)`` calls ``factory(original)`` once to build the replacement.
    Thread-safe.  If another extension patched the same attribute on top of ours in the meantime, ours
    is left in place (removing it would drop theirs) and reported once.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._patches: Dict[Tuple[int, str], _Patch] = {}

    def acquire(self, owner: Any, attr: str, factory: Callable[[Any], Any]) -> None:
        key = (id(owner), attr)
        with self._lock:
            patch = self._patches.get(key)
            if patch is None:
                original = getattr(owner, attr)
                own_value = vars(owner).get(attr, _ABSENT) if hasattr(owner, "__dict__") else _ABSENT
                patch = _Patch(owner, attr, original, own_value, factory(original), 0)
                setattr(owner, attr, patch.replacement)
                self._patches[key] = patch
            patch.users += 1

    def release(self, owner: Any, attr: str) -> None:
        key = (id(owner), attr)
        with self._lock:
            patch = self._patches.get(key)
            if patch is None:
                return
            patch.users -= 1
            if patch.users > 0:
                return
            del self._patches[key]
            current = vars(owner).get(attr, _ABSENT) if hasattr(owner, "__dict__") else getattr(owner, attr)
            if current is not patch.replacement:
                log_once(f"patch-stacked:{attr}", f"{attr} was patched again by other code while SDFix held it; leaving both in place")
                return
            if patch.own_value is _ABSENT:
                delattr(owner, attr)
            else:
                setattr(owner, attr, patch.own_value)

    def release_all(self) -> None:
        """Drop every patch regardless of users (shutdown / script unload)."""
        with self._lock:
            for patch in list(self._patches.values()):
                patch.users = 1
                self.release(patch.owner, patch.attr)

    def active(self) -> List[str]:
        """Names of the attributes currently patched, for diagnostics."""
        with self._lock:
            return sorted(f"{getattr(p.owner, '__name__', type(p.owner).__name__)}.{p.attr}" for p in self._patches.values())

    def original(self, owner: Any, attr: str) -> Any:
        """The pre-patch attribute (or the current one when not patched)."""
        with self._lock:
            patch = self._patches.get((id(owner), attr))
            return patch.original if patch else getattr(owner, attr)
