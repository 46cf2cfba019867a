"""Per-job state: one SDFix session per generation object ``p``, bound to the thread that runs it.

Why here and not in the script: the WebUI re-executes ``scripts/sdfix.py`` on "Reload script
bodies", so any state kept there would be duplicated; this module is imported once per process.

A :class:`GenerationSession` holds one generation's validated settings and its :class:`FixReport`.
It is bound to the thread that runs the generation, so a decode running elsewhere (a live preview
served by another request thread, a second generation) is never affected by it.  It opens when the
WebUI hands ``p`` its script arguments (``setup``, before a selectable script such as SD upscale
runs its upscaler) or, at the latest, in ``process``; it ends at ``postprocess`` or when ``p`` is
closed, and otherwise as soon as no frame of the thread holds ``p`` any more (a generation that
raised where nothing closed it, e.g. an X/Y/Z cell whose exception the plot swallows): it is
finished the next time anything looks for a session, so no fix of a dead job applies to later work.
A session holds the host patches it is opened with (lib_sdfix.webui.patches) until it finishes; which
patches its fixes need is the hooks' business (hooks.fix_targets), not this module's.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, List, Optional, Set

from lib_sdfix.failsafe import FixReport, log_once
from lib_sdfix.settings import SDFixSettings
from lib_sdfix.webui import patches

__all__ = ["GenerationSession", "open_session", "session_of", "finish", "scoped_session", "current_session",
           "thread_sessions", "bound_session", "referenced_on_stack"]


class GenerationSession:
    """One generation's SDFix settings and what happened to each fix."""

    def __init__(self, settings: SDFixSettings, owner: Any = None) -> None:
        self.settings = settings
        self.report = FixReport()
        self.owner: Any = owner  # the host's generation object (the WebUI's ``p``); None: a scoped session
        self.finished = False
        self.on_finish: List[Callable[["GenerationSession"], None]] = []
        self.marks: Set[str] = set()  # what a fix did once for this generation (e.g. told the progress bar)

    def wants(self, fix: str) -> bool:
        """Whether this generation wants fix ``fix`` (a key of lib_sdfix.settings.FIXES)."""
        return self.settings.wants(fix)

    def hold(self, targets: Iterable[patches.Target]) -> None:
        """Hold these host patches until the session finishes."""
        release = patches.hold(targets)
        self.on_finish.append(lambda _: release())

    def infotext_notes(self) -> Optional[str]:
        """The "SDFix notes" infotext value, or None when there is nothing to say."""
        return self.report.summary() or None

    def finish(self) -> None:
        """Unbind from this thread and run the finish callbacks (the host drops its patches); idempotent."""
        if self.finished:
            return
        self.finished = True
        pop_session(self)
        for callback in self.on_finish:
            callback(self)


_LOCAL = threading.local()


def _stack() -> List[GenerationSession]:
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    return stack


def referenced_on_stack(obj: Any, start: int = 2) -> bool:
    """Whether any frame on this thread's stack holds ``obj`` in a local variable."""
    frame = sys._getframe(start)
    while frame is not None:
        if any(value is obj for value in frame.f_locals.values()):
            return True
        frame = frame.f_back
    return False


def _alive(session: GenerationSession) -> bool:
    return not session.finished and (session.owner is None or referenced_on_stack(session.owner, 3))


def current_session() -> Optional[GenerationSession]:
    """The innermost live session bound to this thread; stale ones found on the way are finished."""
    stack = getattr(_LOCAL, "stack", None)
    while stack:
        session = stack[-1]
        if _alive(session):
            return session
        session.finish()
    return None


def drop_stale_sessions() -> None:
    """Finish every session of this thread whose generation is no longer in use."""
    for session in list(getattr(_LOCAL, "stack", [])):
        if not _alive(session):
            session.finish()


@contextlib.contextmanager
def bound_session(session: GenerationSession) -> Iterator[GenerationSession]:
    """Bind ``session`` to the current thread for the block; finished afterwards."""
    push_session(session)
    try:
        yield session
    finally:
        session.finish()


def push_session(session: GenerationSession) -> None:
    _stack().append(session)


def thread_sessions() -> List[GenerationSession]:
    """The sessions bound to this thread, innermost last (a copy)."""
    return list(getattr(_LOCAL, "stack", []))


def pop_session(session: GenerationSession) -> bool:
    """Unbind ``session`` from this thread; False if it was not bound here."""
    stack = getattr(_LOCAL, "stack", [])
    if session in stack:
        stack.remove(session)
        return True
    return False


# --- ownership of p -------------------------------------------------------------------------------------

_SESSION_ATTR = "_sdfix_session"
_CLOSE_MARK = "__sdfix_close_of__"


def session_of(p: Any) -> Optional[GenerationSession]:
    """``p``'s own open session (a shallow copy of ``p`` carries the attribute but not the ownership)."""
    session = getattr(p, _SESSION_ATTR, None)
    if session is None or session.owner is not p or session.finished:
        return None
    return session


def open_session(p: Any, settings: SDFixSettings, targets: Iterable[patches.Target] = ()) -> GenerationSession:
    """Open ``p``'s session: hold the patches ``targets`` while it lives, bind it to this thread, finish it
    with ``p.close``."""
    drop_stale_sessions()
    session = GenerationSession(settings, owner=p)
    session.hold(targets)
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
        except Exception as exc:  # noqa: BLE001 -- the host's own close must run whatever SDFix's finish did
            log_once("session-close", f"SDFix could not finish its session: {exc}", exc)
        except BaseException:
            original(*args, **kwargs)
            raise
        return original(*args, **kwargs)

    setattr(close, _CLOSE_MARK, id(p))
    p.close = close


def finish(session: Optional[GenerationSession]) -> None:
    if session is not None:
        session.finish()


@contextlib.contextmanager
def scoped_session(settings: SDFixSettings, targets: Iterable[patches.Target] = ()) -> Iterator[GenerationSession]:
    """A session for work outside a generation, holding the patches ``targets`` (ends with the block)."""
    session = GenerationSession(settings)
    session.hold(targets)
    push_session(session)
    try:
        yield session
    finally:
        session.finish()
