"""Precision guard for VAE work: full fp32 math while the VAE runs, the process's flags untouched after.

Why: the WebUI (and PyTorch's own default for cuDNN) leaves TF32 on for convolutions, and the VAE is
almost all convolutions.  TF32 keeps a 10-bit mantissa, which flattens the fine colour gradients of
skin and hair into the "oil painting" look.  Turning TF32 off only for matmul is not enough.

Two independent pieces, combined by :func:`guarded_vae_call`:

* :class:`precision_guard` -- TF32 off for matmul and cuDNN, ``cudnn.benchmark`` off, fp32 matmul
  precision "highest", restored exactly on exit.  Works with the legacy ``allow_tf32`` booleans
  (torch 2.1-2.8) and with the ``fp32_precision`` strings (torch >= 2.9), feature-detected.  torch
  >= 2.9 raises on a legacy read once the two APIs were mixed, so the guard drives whichever API the
  process is already on and never leaves a mixed state behind.  Re-entrant and thread-safe: one
  process-wide depth counter; the first entrant snapshots and applies, the last one restores.
* :func:`vae_in_fp32` -- casts the VAE's fp16/bf16 weights to fp32 in place for the call and back
  after (lossless both ways, no second copy of the VAE in memory), with a per-module reference count
  so two threads sharing one VAE never see it cast back under them.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

__all__ = [
    "precision_guard",
    "precision_guarded",
    "vae_in_fp32",
    "guarded_vae_call",
    "read_flags",
    "restore_flags",
    "flag_api",
    "guard_depth",
    "vae_weight_dtype",
]

_REDUCED = ("tf32", "bf16")
_MISSING = object()  # the flag does not exist in this torch
_UNREADABLE = object()  # the flag exists but reading it raised (mixed legacy/new API state)


@dataclass(frozen=True)
class _Flag:
    """One global torch switch the guard may touch."""

    name: str
    family: str  # "legacy", "new" or "common" (exists in every torch version)
    getter: Callable[[], Any]
    setter: Callable[[Any], None]
    guarded: Any  # the value while a guard is active


def _attr_flag(name: str, family: str, owner: Callable[[], Any], attr: str, guarded: Any) -> _Flag:
    return _Flag(
        name,
        family,
        lambda: getattr(owner(), attr),
        lambda value: setattr(owner(), attr, value),
        guarded,
    )


def _backends() -> Any:
    return torch.backends


_ALL_FLAGS: Tuple[_Flag, ...] = (
    _attr_flag("cudnn.benchmark", "common", lambda: torch.backends.cudnn, "benchmark", False),
    _attr_flag("cuda.matmul.allow_tf32", "legacy", lambda: torch.backends.cuda.matmul, "allow_tf32", False),
    _attr_flag("cudnn.allow_tf32", "legacy", lambda: torch.backends.cudnn, "allow_tf32", False),
    _Flag(
        "float32_matmul_precision",
        "legacy",
        torch.get_float32_matmul_precision,
        torch.set_float32_matmul_precision,
        "highest",
    ),
    _attr_flag("fp32_precision", "new", _backends, "fp32_precision", "ieee"),
    _attr_flag("cuda.matmul.fp32_precision", "new", lambda: torch.backends.cuda.matmul, "fp32_precision", "ieee"),
    _attr_flag("cudnn.fp32_precision", "new", lambda: torch.backends.cudnn, "fp32_precision", "ieee"),
    _attr_flag("cudnn.conv.fp32_precision", "new", lambda: torch.backends.cudnn.conv, "fp32_precision", "ieee"),
    _attr_flag("cudnn.rnn.fp32_precision", "new", lambda: torch.backends.cudnn.rnn, "fp32_precision", "ieee"),
    _attr_flag("mkldnn.fp32_precision", "new", lambda: torch.backends.mkldnn, "fp32_precision", "ieee"),
    _attr_flag("mkldnn.matmul.fp32_precision", "new", lambda: torch.backends.mkldnn.matmul, "fp32_precision", "ieee"),
    _attr_flag("mkldnn.conv.fp32_precision", "new", lambda: torch.backends.mkldnn.conv, "fp32_precision", "ieee"),
)


def _exists(flag: _Flag) -> bool:
    try:
        flag.getter()
    except AttributeError:
        return False
    except Exception:  # exists, but unreadable right now (mixed API state)
        return True
    return True


_FLAGS: Tuple[_Flag, ...] = tuple(f for f in _ALL_FLAGS if _exists(f))


def _read(flag: _Flag) -> Any:
    try:
        return flag.getter()
    except AttributeError:
        return _MISSING
    except Exception:
        return _UNREADABLE


def read_flags() -> Dict[str, Any]:
    """Every guard-relevant torch flag this torch has, by name; "<unreadable>" where a read raises."""
    out: Dict[str, Any] = {}
    for flag in _FLAGS:
        value = _read(flag)
        out[flag.name] = "<unreadable>" if value is _UNREADABLE else value
    return out


def restore_flags(snapshot: Dict[str, Any]) -> None:
    """Set every flag back to a :func:`read_flags` snapshot: legacy booleans first, then the
    fp32_precision strings wherever torch keeps the legacy reads clean (as the guard restores).

    For code that changes the process's flags on purpose for a while (the A/B run emulates a
    service that turns TF32 on) and must leave them as it found them.
    """
    values = {f.name: (_UNREADABLE if snapshot.get(f.name) == "<unreadable>" else snapshot.get(f.name, _MISSING)) for f in _FLAGS}
    with _STATE.lock:
        legacy_readable = all(values[f.name] not in (_UNREADABLE, _MISSING) for f in _by_family("legacy"))
        families = ("common", "legacy") if legacy_readable else ("common", "new")
        for family in families:
            for flag in _by_family(family):
                if values[flag.name] not in (_UNREADABLE, _MISSING) and _read(flag) != values[flag.name]:
                    flag.setter(values[flag.name])
        if legacy_readable:
            _restore_new_strings_exactly(values)


def flag_api() -> str:
    """Which TF32 flag API this torch has: "legacy", "fp32_precision" or "both"."""
    families = {f.family for f in _FLAGS}
    if "legacy" in families and "new" in families:
        return "both"
    return "fp32_precision" if "new" in families else "legacy"


def _by_family(family: str) -> List[_Flag]:
    return [f for f in _FLAGS if f.family == family]


class _GuardState:
    """Process-wide bookkeeping: one snapshot for however many guards are active at once."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.snapshot: Dict[str, Any] = {}
        self.applied: List[Tuple[_Flag, Any]] = []  # (flag, value we set), in order of setting
        self.mode = ""


_STATE = _GuardState()


def guard_depth() -> int:
    """How many precision guards are active right now, over all threads."""
    return _STATE.depth


def _choose_mode(snapshot: Dict[str, Any]) -> str:
    """Drive the legacy API while the process reads it cleanly; otherwise the fp32_precision API.

    Setting an fp32_precision string makes later legacy reads raise, and the WebUI plus many
    extensions read the legacy booleans, so the new API is used only where the legacy one is absent
    or already unreadable.
    """
    legacy = _by_family("legacy")
    if legacy and all(snapshot[f.name] is not _UNREADABLE for f in legacy):
        return "legacy"
    return "new"


def _apply(mode: str, snapshot: Dict[str, Any]) -> List[Tuple[_Flag, Any]]:
    applied: List[Tuple[_Flag, Any]] = []
    targets = _by_family("common") + _by_family(mode)
    for flag in targets:
        if mode == "new" and flag.name in ("fp32_precision", "cudnn.fp32_precision", "mkldnn.fp32_precision"):
            # Parent settings: leaves are set explicitly; touch a parent only if it asks for less.
            if snapshot[flag.name] not in _REDUCED:
                continue
        if mode == "new" and flag.name.startswith("mkldnn.") and snapshot[flag.name] not in _REDUCED:
            continue  # oneDNN defaults to full precision; leave it alone unless someone lowered it
        if snapshot[flag.name] == flag.guarded:
            continue
        flag.setter(flag.guarded)
        applied.append((flag, flag.guarded))
    return applied


def _restore(state: _GuardState) -> None:
    """Put back every flag we changed, unless someone else changed it while we were active."""
    # Read everything before writing anything: some flags are linked (allow_tf32 and the matmul
    # precision), so restoring one changes the other.
    currents = [(flag, ours, _read(flag)) for flag, ours in state.applied]
    for flag, ours, current in reversed(currents):
        if current is not _UNREADABLE and current != ours:
            continue  # another piece of code set it deliberately while guarded: keep its value
        previous = state.snapshot[flag.name]
        if previous in (_UNREADABLE, _MISSING):
            continue
        flag.setter(previous)
    if state.mode == "legacy":
        _restore_new_strings_exactly(state.snapshot)


def _legacy_consistent(snapshot: Dict[str, Any]) -> bool:
    return all(_read(f) == snapshot[f.name] for f in _by_family("legacy"))


def _restore_new_strings_exactly(snapshot: Dict[str, Any]) -> None:
    """After a legacy-API restore, bring the fp32_precision strings back too where torch allows it.

    A legacy setter writes "ieee" where the string was "none" before (same numerics); writing "none"
    back is only kept if every legacy flag still reads cleanly and unchanged afterwards.
    """
    for flag in _by_family("new"):
        before = snapshot[flag.name]
        if before in (_UNREADABLE, _MISSING) or _read(flag) == before:
            continue
        flag.setter(before)
        if not _legacy_consistent(snapshot):
            for legacy in _by_family("legacy"):
                legacy.setter(snapshot[legacy.name])


class precision_guard(contextlib.ContextDecorator):
    """Context manager / decorator: no TF32, no cuDNN autotuning, "highest" matmul precision inside.

    Re-entrant and safe across threads: flags are process-global, so the first guard to enter
    snapshots them and the last to leave restores them.  Exceptions and KeyboardInterrupt restore too.
    """

    def __enter__(self) -> "precision_guard":
        with _STATE.lock:
            if _STATE.depth == 0:
                snapshot = {f.name: _read(f) for f in _FLAGS}
                mode = _choose_mode(snapshot)
                _STATE.snapshot, _STATE.mode = snapshot, mode
                _STATE.applied = []
                try:
                    _STATE.applied = _apply(mode, snapshot)
                except BaseException:
                    _STATE.applied = [(f, f.guarded) for f in _FLAGS if _read(f) == f.guarded]
                    _restore(_STATE)
                    raise
            _STATE.depth += 1
        return self

    def __exit__(self, *exc: Any) -> bool:
        with _STATE.lock:
            _STATE.depth -= 1
            if _STATE.depth == 0:
                try:
                    _restore(_STATE)
                finally:
                    _STATE.applied, _STATE.snapshot, _STATE.mode = [], {}, ""
        return False


def precision_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :class:`precision_guard` that keeps the function's name and docstring."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with precision_guard():
            return fn(*args, **kwargs)

    return wrapper


# --- fp32 VAE -----------------------------------------------------------------------------------

_UPCAST_LOCK = threading.RLock()
_UPCAST_COUNT: Dict[int, int] = {}
_UPCAST_ORIGINAL: Dict[int, Tuple[List[Tuple[torch.Tensor, torch.dtype]], List[Tuple[Any, Any]]]] = {}


def _low_precision_tensors(module: torch.nn.Module) -> List[Tuple[torch.Tensor, torch.dtype]]:
    tensors = list(module.parameters()) + list(module.buffers())
    return [(t, t.dtype) for t in tensors if t.is_floating_point() and t.dtype != torch.float32]


def _cached_dtypes(module: torch.nn.Module) -> List[Tuple[Any, Any]]:
    """Modules that cache their dtype (PyTorch Lightning's ``_dtype``, behind ``.dtype``; the ldm VAE
    is one): code inside the VAE reads it to cast its inputs, so it must follow the weights."""
    return [(m, m._dtype) for m in module.modules() if isinstance(getattr(m, "_dtype", None), torch.dtype)]


def vae_weight_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype the VAE's weights have right now (a cached ``.dtype`` can lag behind in-place casts)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@contextlib.contextmanager
def vae_in_fp32(module: Optional[torch.nn.Module]) -> Iterator[None]:
    """Run the block with ``module``'s floating weights in fp32, then give them their dtype back.

    fp16/bf16 -> fp32 -> fp16/bf16 is exact, so the weights come back bit-identical; casting in
    place costs no second VAE in memory.  Reference-counted per module: concurrent users of one VAE
    keep it in fp32 until the last one leaves.
    """
    if module is None:
        yield
        return
    key = id(module)
    with _UPCAST_LOCK:
        count = _UPCAST_COUNT.get(key, 0)
        if count == 0:
            tensors, cached = _low_precision_tensors(module), _cached_dtypes(module)
            done = 0
            try:
                for tensor, _ in tensors:
                    tensor.data = tensor.data.to(torch.float32)
                    done += 1
            except BaseException:
                # Out of memory half-way (a big VAE on a full GPU): never leave a half-cast VAE behind.
                for tensor, dtype in tensors[:done]:
                    tensor.data = tensor.data.to(dtype)
                raise
            if tensors:
                for owner, _ in cached:
                    owner._dtype = torch.float32
            _UPCAST_ORIGINAL[key] = (tensors, cached if tensors else [])
        _UPCAST_COUNT[key] = count + 1
    try:
        yield
    finally:
        with _UPCAST_LOCK:
            _UPCAST_COUNT[key] -= 1
            if _UPCAST_COUNT[key] == 0:
                del _UPCAST_COUNT[key]
                tensors, cached = _UPCAST_ORIGINAL.pop(key, ([], []))
                for tensor, dtype in tensors:
                    tensor.data = tensor.data.to(dtype)
                for owner, dtype in cached:
                    owner._dtype = dtype


@contextlib.contextmanager
def autocast_disabled() -> Iterator[None]:
    """Autocast off on the CPU and, where present, CUDA, so nothing casts the VAE math back to half."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.to(torch.float32)
    return value


def guarded_vae_call(
    fn: Callable[..., Any],
    vae: Optional[torch.nn.Module],
    *args: Any,
    upcast: bool = True,
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)`` -- a VAE decode or encode -- under the full precision guard.

    Flags guarded; with ``upcast`` the VAE runs in fp32 with autocast off and floating tensor
    arguments (the latent, the image) are upcast to fp32 (never cast down).  The result is what
    ``fn`` returns, in fp32.
    """
    with precision_guard():
        if not upcast:
            return fn(*args, **kwargs)
        with vae_in_fp32(vae), autocast_disabled():
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)
