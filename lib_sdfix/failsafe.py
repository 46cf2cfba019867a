"""Never break a generation: run a fix, and if it fails, log once, record it, and go on without it."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

__all__ = ["logger", "FixReport", "log_once"]

logger = logging.getLogger("sdfix")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[SDFix] %(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_LOGGED: Set[str] = set()
_LOGGED_LOCK = threading.Lock()


def log_once(key: str, message: str, exc: Optional[BaseException] = None, *, warning: bool = False) -> bool:
    """Log ``message`` (with the exception's traceback) the first time ``key`` is seen; True if logged.
    ``warning``: at warning level (something SDFix ignores and works around), else as an error."""
    with _LOGGED_LOCK:
        if key in _LOGGED:
            return False
        _LOGGED.add(key)
    (logger.warning if warning else logger.error)(message, exc_info=exc)
    return True


class FixReport:
    """What happened to each fix during one generation: applied, skipped (with why) or failed.

    Feeds the infotext so a user can see whether the image they look at was protected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applied: Dict[str, int] = {}
        self.failed: Dict[str, str] = {}
        self.skipped: Dict[str, str] = {}
        self.notes: List[str] = []
        self.facts: Dict[str, str] = {}  # what an applied fix ran with, e.g. {"weights": "exact"}

    def mark_applied(self, fix: str) -> None:
        with self._lock:
            self.applied[fix] = self.applied.get(fix, 0) + 1

    def mark_failed(self, fix: str, exc: BaseException) -> None:
        with self._lock:
            self.failed.setdefault(fix, f"{type(exc).__name__}: {exc}")

    def mark_skipped(self, fix: str, why: str) -> None:
        """The fix was on but had nothing it could apply to (e.g. an approximate decode method)."""
        with self._lock:
            self.skipped.setdefault(fix, why)

    def fact(self, key: str, value: str) -> None:
        with self._lock:
            self.facts[key] = value

    def note(self, text: str) -> None:
        with self._lock:
            if text and text not in self.notes:
                self.notes.append(text)

    def run(self, fix: str, fn: Callable[..., Any], fallback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)`` with the fix; if it raises an Exception, log once and return ``fallback(*args)``.

        KeyboardInterrupt and other BaseExceptions propagate: an interrupt must stop the generation.
        """
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- a fix must never break the generation
            self.mark_failed(fix, exc)
            log_once(f"{fix}:{type(exc).__name__}", f"{fix} failed, generation goes on without it: {exc}", exc)
            return fallback(*args, **kwargs)
        self.mark_applied(fix)
        return result

    def summary(self) -> str:
        """Human-readable: ``not applied: guard (RuntimeError: ...); skipped: encode (...); <notes>``,
        or "" when all is well."""
        parts: List[str] = []
        if self.failed:
            parts.append("not applied: " + "; ".join(f"{k} ({v})" for k, v in self.failed.items()))
        skipped = {k: v for k, v in self.skipped.items() if k not in self.failed}
        if skipped:
            parts.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
        parts.extend(self.notes)
        return "; ".join(parts)

    def items(self) -> Tuple[Dict[str, int], Dict[str, str], List[str]]:
        with self._lock:
            return dict(self.applied), dict(self.failed), list(self.notes)
