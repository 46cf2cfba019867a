"""Precision guard for VAE work: full fp32 math while the VAE runs, the process's flags untouched after.

(Longer than the project's usual ~400 lines on purpose: it is one model of torch's three flag APIs,
their levels and the getters that raise, and splitting it would scatter rules that only hold together.)

Why: the WebUI (and PyTorch's own default for cuDNN) leaves TF32 on for convolutions, and the VAE is
almost all convolutions.  TF32 keeps a 10-bit mantissa, which flattens the fine colour gradients of
skin and hair into the "oil painting" look.  Turning TF32 off only for matmul is not enough.

:class:`precision_guard`: no TF32 (nor oneDNN bf16) for convolutions, RNNs and matmul at any level,
fp32 matmul precision "highest", no reduced-precision fp16/bf16 reductions or fp16 accumulation,
``cudnn.benchmark`` off; afterwards every flag holds exactly what it held before.  Every switch is
feature-detected, so torch 2.1-2.8 (``allow_tf32`` booleans only) and torch >= 2.9 (the
``fp32_precision`` tree as well) both work.  Re-entrant and thread-safe: one process-wide depth
counter; the first entrant snapshots and applies, the last one restores.  The VAE itself in fp32 for
the call is :mod:`lib_sdfix.vae.fp32`; :func:`lib_sdfix.vae.call.guarded_call` combines both.

How torch >= 2.9 keeps these flags (what the guard must respect):

* ``fp32_precision`` is a tree ``generic -> {cuda, mkldnn} -> {matmul, conv, rnn}``; a level set to
  "none" inherits its parent, and every getter returns the *inherited* value, so the raw setting of a
  level is only visible by changing its parent.  Restoring the value a level read as before would
  silently cut it off from later changes of its parent, so the guard works out the raw settings.
* The legacy switches are separate stored values that their setters tie to levels:
  ``cuda.matmul.allow_tf32 = b`` and ``set_float32_matmul_precision`` store the matmul precision and
  write the matmul levels; ``cudnn.allow_tf32 = b`` stores a flag and writes the conv and rnn levels
  ("tf32" or "none").  A legacy getter raises when its stored value disagrees with the levels.
* ``torch.backends.mkldnn.fp32_precision = x`` writes the *generic* level; the guard writes levels
  through ``torch._C``'s setter, which the public attributes wrap.
* In a fresh process (torch 2.13) cuDNN conv and rnn start at a default that reads "tf32" but follows
  a parent level once one is set.  No setter recreates it, and the guard has to write those levels
  (``cudnn.allow_tf32 = False`` inside keeps the legacy getter readable, which compiled code reads),
  so afterwards they hold "tf32" themselves: every read is the same, only a parent set later no
  longer reaches them (as in torch 2.9, where that default was a plain "tf32").
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

__all__ = [
    "precision_guard",
    "precision_guarded",
    "autocast_disabled",
    "read_flags",
    "restore_flags",
    "effective_tf32",
    "flag_api",
    "guard_depth",
]

_torch: Any = torch  # every flag is reached through this name, so tests can stand in an older torch

_REDUCED = frozenset({"tf32", "bf16"})
_UNREADABLE = "<unreadable>"
_MATMUL_PRECISION = "float32_matmul_precision"  # key of the stored matmul precision
_CUDNN_TF32 = "cudnn.allow_tf32"  # key of the stored cuDNN flag

Level = Tuple[str, str]
_ROOT: Level = ("generic", "all")
# (backend, op) -> the public attribute (under torch.backends) that reads it; parents before children.
_LEVELS: Dict[Level, str] = {
    _ROOT: "fp32_precision",
    ("cuda", "all"): "cudnn.fp32_precision",
    ("mkldnn", "all"): "mkldnn.fp32_precision",
    ("cuda", "matmul"): "cuda.matmul.fp32_precision",
    ("cuda", "conv"): "cudnn.conv.fp32_precision",
    ("cuda", "rnn"): "cudnn.rnn.fp32_precision",
    ("mkldnn", "matmul"): "mkldnn.matmul.fp32_precision",
    ("mkldnn", "conv"): "mkldnn.conv.fp32_precision",
    ("mkldnn", "rnn"): "mkldnn.rnn.fp32_precision",
}


def _parent(level: Level) -> Level:
    return _ROOT if level[1] == "all" else (level[0], "all")


def _as_seen_by(level: Level, value: str) -> str:
    """What a level inheriting ``value`` reads: the cuda levels have no bf16 and read "none" for it."""
    return "none" if level[0] == "cuda" and value == "bf16" else value


def _obj(path: str) -> Any:
    """``torch.backends.<path>``; AttributeError where this torch lacks it."""
    obj = _torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _get_attr(path: str) -> Any:
    owner, _, name = path.rpartition(".")
    return getattr(_obj(owner), name)


def _set_attr(path: str, value: Any) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_obj(owner), name, value)


def _level_get(level: Level) -> str:
    return _torch._C._get_fp32_precision_getter(*level)


def _level_set(level: Level, value: str) -> None:
    _torch._C._set_fp32_precision_setter(*level, value)


@dataclass(frozen=True)
class _Switch:
    """A plain stored switch (no inheritance, no links to other switches)."""

    name: str  # public attribute under torch.backends
    owner: Any  # the object holding it, looked up once
    attr: str  # its name there
    split_k: bool = False  # reduced-precision reduction whose companion ``<name>_split_k`` exists

    def get(self) -> Any:
        value = getattr(self.owner, self.attr)
        return (value, getattr(self.owner, self.attr + "_split_k")) if self.split_k else value

    def set(self, value: Any) -> None:
        setattr(self.owner, self.attr, value)  # torch takes (allow, allow_split_k) as one tuple

    def inside(self, before: Any) -> Any:
        """The guarded value: off; a split-k companion stays as it was (off needs no split-k change)."""
        return (False, before[1]) if self.split_k else False


_SWITCHES = (
    "cudnn.benchmark",
    "cuda.matmul.allow_fp16_reduced_precision_reduction",
    "cuda.matmul.allow_bf16_reduced_precision_reduction",
    "cuda.matmul.allow_fp16_accumulation",
    "mkldnn.allow_tf32",  # oneDNN TF32 on Intel GPUs; reads None on builds without them
)


@dataclass(frozen=True)
class _Caps:
    """What this torch has."""

    switches: Tuple[_Switch, ...]
    levels: Tuple[Level, ...]
    matmul_precision: bool
    cudnn_tf32: bool


_CAPS: List[Any] = [None, None]  # [torch object the capabilities were detected on, _Caps]


def _readable(read: Callable[[], Any]) -> bool:
    try:
        read()
    except AttributeError:
        return False
    except RuntimeError:  # present, but unreadable in the current mixed state
        return True
    return True


def _is_level(level: Level) -> bool:
    try:
        return isinstance(_level_get(level), str)
    except (RuntimeError, TypeError, ValueError):  # a (backend, op) pair this torch does not know
        return False


def _caps() -> _Caps:
    if _CAPS[0] is _torch:
        return _CAPS[1]
    switches = []
    for name in _SWITCHES:
        try:
            value = _get_attr(name)
        except AttributeError:
            continue
        if isinstance(value, bool):
            split_k = _readable(lambda n=name: _get_attr(n + "_split_k"))
            owner, _, attr = name.rpartition(".")
            switches.append(_Switch(name, _obj(owner), attr, split_k))
    C = getattr(_torch, "_C", None)
    levels: Tuple[Level, ...] = ()
    if callable(getattr(C, "_get_fp32_precision_getter", None)) and callable(getattr(C, "_set_fp32_precision_setter", None)):
        levels = tuple(level for level in _LEVELS if _is_level(level))
        if _ROOT not in levels:
            levels = ()
    caps = _Caps(
        tuple(switches),
        levels,
        _readable(lambda: _torch.get_float32_matmul_precision()),
        _readable(lambda: _get_attr("cudnn.allow_tf32")),
    )
    _CAPS[:] = [_torch, caps]
    return caps


# --- the complete flag state ---------------------------------------------------------------------
#
# A state is a dict: each switch by name, the stored matmul precision and cuDNN flag (None where it
# could not be determined), and each fp32_precision level by (backend, op) with its *raw* setting.


def _raw_levels(levels: Tuple[Level, ...], probe: bool) -> Dict[Level, str]:
    """The raw setting of every level.

    A level reading "none", or anything its parent does not pass down, holds that value itself.  One
    reading the same as its parent may hold it or inherit it; with ``probe`` its ancestors are set to
    "none" for a moment to tell (undone at once; other threads may see it, as they see the guard's own
    writes), otherwise inheriting is assumed (it reads the same).
    """
    reads = {level: _level_get(level) for level in levels}
    raw: Dict[Level, str] = {}
    open_: List[Level] = []
    for level in levels:
        value, parent = reads[level], _parent(level)
        if level == _ROOT or value == "none" or parent not in reads or value != _as_seen_by(level, reads[parent]):
            raw[level] = value
        else:
            open_.append(level)
    if not open_ or not probe:
        raw.update({level: "none" for level in open_})
        return raw
    undo: List[Tuple[Level, str]] = []
    try:
        # With every ancestor at "none", an inheriting level reads "none" and one holding a value reads it.
        undo.append((_ROOT, raw[_ROOT]))
        _level_set(_ROOT, "none")
        for level in open_:
            if _parent(level) == _ROOT:
                raw[level] = _held(level, reads[level])
        for parent in [lv for lv in levels if lv[1] == "all" and lv != _ROOT]:
            children = [lv for lv in open_ if _parent(lv) == parent]
            if not children:
                continue
            if raw[parent] != "none":
                undo.append((parent, raw[parent]))
                _level_set(parent, "none")
            for level in children:
                raw[level] = _held(level, reads[level])
        return raw
    finally:
        for level, value in reversed(undo):
            _level_set(level, value)


def _held(level: Level, read: str) -> str:
    """The raw setting of a level that read ``read``, now that every ancestor is "none"."""
    alone = _level_get(level)
    # Reading "none" it inherits; reading what it read before it holds that.  Reading something else
    # it is a fresh process's cuDNN default, which follows a parent that is set and is tf32 otherwise:
    # no setter recreates it, and "none" keeps the following.
    return read if alone == read else "none"


def _stored_with(levels: Dict[Level, str], read: Callable[[], Any], probe: bool, on_raise: Any) -> Any:
    """A legacy stored value, which its getter refuses to show while it disagrees with the levels.

    With ``probe``, ``levels`` (those it is checked against) are set to "ieee" for a moment; then the
    getter answers, or raises, which means ``on_raise``.  None where it cannot be told.
    """
    try:
        return read()
    except RuntimeError:
        if not probe or not levels:
            return None
    try:
        for level in levels:
            _level_set(level, "ieee")
        try:
            return read()
        except RuntimeError:
            return on_raise
    finally:
        for level, value in levels.items():
            _level_set(level, value)


def _capture(probe: bool = True) -> Dict[Any, Any]:
    """The complete flag state.  Call with ``_STATE.lock`` held when ``probe`` (it writes briefly)."""
    caps = _caps()
    state: Dict[Any, Any] = {switch.name: switch.get() for switch in caps.switches}
    raw = _raw_levels(caps.levels, probe)
    state.update(raw)
    if caps.matmul_precision:
        # Checked against the matmul levels; with both at "ieee" the getter never raises.
        matmul = {lv: raw[lv] for lv in (("cuda", "matmul"), ("mkldnn", "matmul")) if lv in raw}
        state[_MATMUL_PRECISION] = _stored_with(matmul, _torch.get_float32_matmul_precision, probe, None)
    if caps.cudnn_tf32:
        # Checked against conv and rnn; with both at "ieee" the getter raises exactly when it holds True.
        cudnn = {lv: raw[lv] for lv in (("cuda", "conv"), ("cuda", "rnn")) if lv in raw}
        state[_CUDNN_TF32] = _stored_with(cudnn, lambda: _get_attr("cudnn.allow_tf32"), probe, True)
    return state


def _write_state(target: Dict[Any, Any], now: Dict[Any, Any]) -> None:
    """Make torch hold ``target`` (None: leave that value alone), given that it holds ``now``."""
    caps = _caps()
    for switch in caps.switches:
        if target.get(switch.name) is not None and target[switch.name] != now.get(switch.name):
            switch.set(target[switch.name])
    # The legacy setters write levels too, so they go first and every level is written after them.
    legacy_wrote = False
    if target.get(_MATMUL_PRECISION) is not None and target[_MATMUL_PRECISION] != now.get(_MATMUL_PRECISION):
        _torch.set_float32_matmul_precision(target[_MATMUL_PRECISION])
        legacy_wrote = True
    if target.get(_CUDNN_TF32) is not None and target[_CUDNN_TF32] != now.get(_CUDNN_TF32):
        _set_attr("cudnn.allow_tf32", target[_CUDNN_TF32])
        legacy_wrote = True
    for level in caps.levels:
        if target.get(level) is not None and (legacy_wrote or target[level] != now.get(level)):
            _level_set(level, target[level])


def _guarded_state(before: Dict[Any, Any]) -> Dict[Any, Any]:
    """``before`` with full precision everywhere: what a guard holds."""
    caps = _caps()
    inside = dict(before)
    for switch in caps.switches:
        inside[switch.name] = switch.inside(before[switch.name])
    if caps.matmul_precision:
        inside[_MATMUL_PRECISION] = "highest"
    if caps.cudnn_tf32:
        inside[_CUDNN_TF32] = False  # with conv and rnn at "ieee" below, the legacy getters read cleanly
    for level in caps.levels:
        if level[1] != "all":
            inside[level] = "ieee"  # explicit, so a parent changed meanwhile cannot reach the VAE
        elif before[level] in _REDUCED:
            inside[level] = "ieee"
    return inside


# --- public reads --------------------------------------------------------------------------------


def _public_reads() -> Dict[str, Any]:
    caps = _caps()
    out: Dict[str, Any] = {}

    def put(name: str, read: Callable[[], Any]) -> None:
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = _UNREADABLE

    for switch in caps.switches:
        put(switch.name, functools.partial(_get_attr, switch.name))
        if switch.split_k:
            put(switch.name + "_split_k", functools.partial(_get_attr, switch.name + "_split_k"))
    if _readable(lambda: _get_attr("cuda.matmul.allow_tf32")):
        put("cuda.matmul.allow_tf32", lambda: _get_attr("cuda.matmul.allow_tf32"))
    if caps.cudnn_tf32:
        put(_CUDNN_TF32, lambda: _get_attr("cudnn.allow_tf32"))
    if caps.matmul_precision:
        put(_MATMUL_PRECISION, _torch.get_float32_matmul_precision)
    for level in caps.levels:
        put(_LEVELS[level], functools.partial(_level_get, level))
    return out


def read_flags() -> Dict[str, Any]:
    """Every guard-relevant torch flag this torch has, by public name, as other code reads it;
    "<unreadable>" where torch's getter raises (legacy and new API mixed).  Only reads."""
    with _STATE.lock:
        return _public_reads()


def _state_from_reads(snapshot: Dict[str, Any]) -> Dict[Any, Any]:
    """A state that reads as ``snapshot``; None for stored values the snapshot could not read."""
    caps = _caps()
    state: Dict[Any, Any] = {}
    for switch in caps.switches:
        value = snapshot.get(switch.name)
        if switch.split_k and value is not None:
            value = (value, snapshot.get(switch.name + "_split_k", True))
        state[switch.name] = value
    for key in (_MATMUL_PRECISION, _CUDNN_TF32):
        value = snapshot.get(key)
        state[key] = None if value == _UNREADABLE else value
    reads = {level: snapshot.get(_LEVELS[level]) for level in caps.levels}
    for level in caps.levels:
        value, parent = reads[level], _parent(level)
        if value is None:
            state[level] = None
        elif level != _ROOT and value != "none" and reads.get(parent) is not None and value == _as_seen_by(level, reads[parent]):
            state[level] = "none"  # reads the same whether held or inherited
        else:
            state[level] = value
    return state


def restore_flags(snapshot: Dict[str, Any]) -> None:
    """Set every flag back so that :func:`read_flags` reads ``snapshot`` again.

    For code that changes the process's flags on purpose for a while (the A/B run emulates a service
    that turns TF32 on) and must leave them as it found them.  A snapshot holds what the getters
    showed, so where one was unreadable the stored value it hid is found by trying each candidate.
    """
    with _STATE.lock:
        target = _state_from_reads(snapshot)
        now = _capture()
        _write_state(target, now)
        unknown = [key for key in (_MATMUL_PRECISION, _CUDNN_TF32) if key in target and target[key] is None]
        wanted = dict(snapshot)
        if not unknown or _public_reads() == wanted:
            return
        options = {_MATMUL_PRECISION: ("highest", "high", "medium"), _CUDNN_TF32: (True, False)}
        tried: List[Dict[Any, Any]] = [{}]
        for key in unknown:
            tried = [dict(t, **{key: option}) for t in tried for option in options[key]]
        for choice in tried:
            _write_state(dict(target, **choice), _capture())
            if _public_reads() == wanted:
                return
        _write_state(dict(target, **{k: now[k] for k in unknown}), _capture())


def effective_tf32() -> Dict[str, bool]:
    """Where fp32 math may run in reduced precision right now, by what torch's kernels consult.

    ``conv``, ``rnn``, ``matmul``: cuDNN/cuBLAS TF32 or oneDNN TF32/bf16 for that kind of op, a
    matmul precision other than "highest" (what compilers and oneDNN follow), or oneDNN's legacy TF32
    switch; ``generic``: a reduced setting on a catch-all level (``torch.backends``, ``cudnn`` or
    ``mkldnn`` ``fp32_precision``) that children left at "none" would inherit.  Only reads; a getter
    that raises is read around (the levels never raise).
    """
    caps = _caps()
    out = {"conv": False, "matmul": False, "rnn": False, "generic": False}
    with _STATE.lock:
        if caps.levels:
            reads = {level: _level_get(level) for level in caps.levels}
            for op in ("conv", "matmul", "rnn"):
                out[op] = reads.get(("cuda", op)) == "tf32" or reads.get(("mkldnn", op)) in _REDUCED
            out["generic"] = any(reads.get(lv) in _REDUCED for lv in (_ROOT, ("cuda", "all"), ("mkldnn", "all")))
        elif caps.cudnn_tf32:  # legacy torch: one cuDNN switch for conv and rnn
            try:
                out["conv"] = out["rnn"] = bool(_get_attr("cudnn.allow_tf32"))
            except RuntimeError:
                out["conv"] = out["rnn"] = True
        if caps.matmul_precision:
            try:
                out["matmul"] = out["matmul"] or _torch.get_float32_matmul_precision() != "highest"
            except RuntimeError:  # it disagrees with a matmul level that is reduced: matmul is reduced
                out["matmul"] = True
        if any(switch.name == "mkldnn.allow_tf32" and switch.get() for switch in caps.switches):
            out["conv"] = out["matmul"] = out["rnn"] = True
    return out


def flag_api() -> str:
    """Which TF32 flag API this torch has: "legacy", "fp32_precision" or "both"."""
    caps = _caps()
    legacy = caps.matmul_precision or caps.cudnn_tf32
    if legacy and caps.levels:
        return "both"
    return "fp32_precision" if caps.levels else "legacy"


class _GuardState:
    """Process-wide bookkeeping: one snapshot for however many guards are active at once."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.before: Dict[Any, Any] = {}
        self.inside: Dict[Any, Any] = {}


_STATE = _GuardState()


def guard_depth() -> int:
    """How many precision guards are active right now, over all threads."""
    return _STATE.depth


def _leave(before: Dict[Any, Any], inside: Dict[Any, Any]) -> None:
    """Put back what the guard changed; a value someone else set meanwhile (differs from ours) stays."""
    now = _capture()
    final = {key: (before[key] if now.get(key) == inside.get(key) else now.get(key)) for key in before}
    _write_state(final, now)


class precision_guard(contextlib.ContextDecorator):
    """Context manager / decorator: no TF32 or other reduced fp32 math, no reduced-precision fp16/bf16
    reductions, no cuDNN autotuning, "highest" matmul precision inside.

    Re-entrant and safe across threads: flags are process-global, so the first guard to enter
    snapshots them and the last to leave restores them.  Exceptions and KeyboardInterrupt restore too.
    """

    def __enter__(self) -> "precision_guard":
        with _STATE.lock:
            if _STATE.depth == 0:
                before = _capture()
                try:
                    _write_state(_guarded_state(before), before)
                    inside = _capture()
                except BaseException:
                    with contextlib.suppress(Exception):
                        _write_state(before, _capture())
                    raise
                _STATE.before, _STATE.inside = before, inside
            _STATE.depth += 1
        return self

    def __exit__(self, *exc: Any) -> bool:
        with _STATE.lock:
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
