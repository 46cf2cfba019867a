"""The precision guard: full fp32 math while the VAE runs, every flag exactly as before afterwards."""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Dict, Iterator

import torch

from lib_sdfix.precision.flags import LOCK, capture_state, guarded_state, write_state

__all__ = ["precision_guard", "precision_guarded", "autocast_disabled", "guard_depth"]


class _GuardState:
    """Process-wide bookkeeping: one snapshot for however many guards are active at once."""

    def __init__(self) -> None:
        self.depth = 0
        self.before: Dict[Any, Any] = {}
        self.inside: Dict[Any, Any] = {}


_STATE = _GuardState()


def guard_depth() -> int:
    """How many precision guards are active right now, over all threads."""
    return _STATE.depth


def _leave(before: Dict[Any, Any], inside: Dict[Any, Any]) -> None:
    """Put back what the guard changed; a value someone else set meanwhile (differs from ours) stays."""
    now = capture_state()
    final = {key: (before[key] if now.get(key) == inside.get(key) else now.get(key)) for key in before}
    write_state(final, now)


class precision_guard(contextlib.ContextDecorator):
    """Context manager / decorator: no TF32 or other reduced fp32 math, no reduced-precision fp16/bf16
    reductions, no cuDNN autotuning, "highest" matmul precision inside.

    Re-entrant and safe across threads: flags are process-global, so the first guard to enter
    snapshots them and the last to leave restores them.  Exceptions and KeyboardInterrupt restore too.
    """

    def __enter__(self) -> "precision_guard":
        with LOCK:
            if _STATE.depth == 0:
                before = capture_state()
                try:
                    write_state(guarded_state(before), before)
                    inside = capture_state()
                except BaseException:
                    with contextlib.suppress(Exception):
                        write_state(before, capture_state())
                    raise
                _STATE.before, _STATE.inside = before, inside
            _STATE.depth += 1
        return self

    def __exit__(self, *exc: Any) -> bool:
        with LOCK:
            _STATE.depth -= 1
            if _STATE.depth == 0:
                try:
                    _leave(_STATE.before, _STATE.inside)
                finally:
                    _STATE.before, _STATE.inside = {}, {}
        return False


def precision_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :class:`precision_guard` that keeps the function's name and docstring."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with precision_guard():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def autocast_disabled() -> Iterator[None]:
    """Autocast off on the CPU and, where present, CUDA, so nothing casts the VAE math back to half."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield
