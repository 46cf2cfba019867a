"""One SDFix session per generation object ``p``: opened when ``p`` gets its settings, closed with ``p``.

Why here and not in the script: the WebUI re-executes ``scripts/sdfix.py`` on "Reload script
bodies", so any state kept there would be duplicated; this module is imported once per process.

Lifetime: a session opens when the WebUI hands ``p`` its script arguments (``setup``, before a
selectable script such as SD upscale runs its upscaler) or, at the latest, in ``process``.  It ends at
``postprocess`` or when ``p`` is closed, and otherwise as soon as no frame of the thread holds ``p``
any more (a generation that raised where nothing closed it) -- see :mod:`lib_sdfix.generation`.
Patches are installed when the first session wanting them opens and removed when the last one ends.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from lib_sdfix.generation import GenerationSession, current_session, drop_stale_sessions, push_session
from lib_sdfix.patching import PatchSet
from lib_sdfix.settings import SDFixSettings

__all__ = ["PATCHES", "open_session", "session_of", "finish", "scoped_session", "current_session"]

PATCHES = PatchSet()
_SESSION_ATTR = "_sdfix_session"
_CLOSE_MARK = "__sdfix_close_of__"


def _patch_targets(settings: SDFixSettings) -> list:
    from lib_sdfix.webui import hooks
    from lib_sdfix.webui.host import current

    if not settings.enabled:
        return []
    targets = current().patch_targets(decode=settings.precision_guard, encode=settings.guard_encode,
                                      resize=settings.post_resize)
    return [(owner, attr, hooks.FACTORIES[kind]) for owner, attr, kind in targets]


def _release(session: GenerationSession) -> None:
    for owner, attr, _ in reversed(session.patches):
        PATCHES.release(owner, attr)
    session.patches = []
    PATCHES.sweep()


def session_of(p: Any) -> Optional[GenerationSession]:
    """``p``'s own open session (a shallow copy of ``p`` carries the attribute but not the ownership)."""
    session = getattr(p, _SESSION_ATTR, None)
    if session is None or session.owner is not p or session.finished:
        return None
    return session


def open_session(p: Any, settings: SDFixSettings) -> GenerationSession:
    """Open ``p``'s session: install the patches it needs, bind it to this thread, finish it with ``p.close``."""
    drop_stale_sessions()
    session = GenerationSession(settings, owner=p)
    session.on_finish.append(_release)
    for owner, attr, factory in _patch_targets(settings):
        PATCHES.acquire(owner, attr, factory)
        session.patches.append((owner, attr, factory))
    push_session(session)
    setattr(p, _SESSION_ATTR, session)
    _close_with(p, session)
    return session


def _close_with(p: Any, session: GenerationSession) -> None:
    """Finish the session when ``p`` is closed (the WebUI closes every top-level ``p``)."""
    current_close = vars(p).get("close") if hasattr(p, "__dict__") else None
    if current_close is not None and getattr(current_close, _CLOSE_MARK, None) not in (None, id(p)):
        current_close = None  # copied from another p by copy(p): close this one with its class's close
    original = current_close if current_close is not None else type(p).close.__get__(p)

    def close(*args: Any, **kwargs: Any) -> Any:
        try:
            session.finish()
        finally:
            return original(*args, **kwargs)

    setattr(close, _CLOSE_MARK, id(p))
    p.close = close


def finish(session: Optional[GenerationSession]) -> None:
    if session is not None:
        session.finish()


@contextlib.contextmanager
def scoped_session(settings: SDFixSettings) -> Iterator[GenerationSession]:
    """A session for work outside a generation (ends with the block)."""
    session = GenerationSession(settings)
    session.on_finish.append(_release)
    for owner, attr, factory in _patch_targets(settings):
        PATCHES.acquire(owner, attr, factory)
        session.patches.append((owner, attr, factory))
    push_session(session)
    try:
        yield session
    finally:
        session.finish()
