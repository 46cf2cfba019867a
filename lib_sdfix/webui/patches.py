"""The one place SDFix's replacements of host functions are installed and removed: :func:`hold`.

Who holds what: a generation's session holds the hooks its fixes need (hooks.fix_targets) and, with the
``nan_watch`` option, the NaN watch's (diagnose.nan_watch); the A/B runner holds the sampler hook
(ab.sampling); the diagnosis runner holds the NaN watch's for each of its runs.  The replacements are
reference-counted (:class:`lib_sdfix.patching.PatchSet`): a function stays replaced while any holder
needs it and is the host's own object again after the last release.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, List, Tuple

from lib_sdfix.patching import PatchSet

__all__ = ["Target", "hold", "held", "active", "release_all"]

#: (owner, attribute, factory): ``factory(original)`` builds the replacement of ``owner.attribute``.
Target = Tuple[Any, str, Callable[[Callable], Callable]]

_PATCHES = PatchSet()


def hold(targets: Iterable[Target]) -> Callable[[], None]:
    """Install each target's replacement (or count one more holder of it); returns the release.

    The release (idempotent) lets go of them in reverse order and removes replacements left dormant
    by other code that had patched on top of them, once they are on top again.  If one cannot be
    installed, those already held are released and the error raised."""
    held_now: List[Tuple[Any, str]] = []
    try:
        for owner, attr, factory in targets:
            _PATCHES.acquire(owner, attr, factory)
            held_now.append((owner, attr))
    except BaseException:
        _let_go(held_now)
        raise

    def release() -> None:
        _let_go(held_now)
        _PATCHES.sweep()

    return release


def _let_go(held_now: List[Tuple[Any, str]]) -> None:
    while held_now:
        _PATCHES.release(*held_now.pop())


@contextlib.contextmanager
def held(targets: Iterable[Target]) -> Iterator[None]:
    """:func:`hold` for the block."""
    release = hold(targets)
    try:
        yield
    finally:
        release()


def active() -> List[str]:
    """The attributes replaced now (held or dormant), for /sdfix/v1/status and tests."""
    return _PATCHES.active()


def release_all() -> None:
    """Every replacement removed, whoever holds it (the WebUI unloads its scripts)."""
    _PATCHES.release_all()
