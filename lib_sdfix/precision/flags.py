"""The model of torch's fp32 math flags: the ``fp32_precision`` levels, the legacy switches, what this
torch has, the complete flag state, and how to write one back exactly (see the package docstring)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch

#: Every read and write of the flags holds this lock (the guard's bookkeeping too).
LOCK = threading.RLock()

_torch: Any = torch  # every flag is reached through this name, so tests can stand in an older torch

REDUCED = frozenset({"tf32", "bf16"})
UNREADABLE = "<unreadable>"
MATMUL_PRECISION = "float32_matmul_precision"  # key of the stored matmul precision
CUDNN_TF32 = "cudnn.allow_tf32"  # key of the stored cuDNN flag

Level = Tuple[str, str]
ROOT: Level = ("generic", "all")
# (backend, op) -> the public attribute (under torch.backends) that reads it; parents before children.
LEVELS: Dict[Level, str] = {
    ROOT: "fp32_precision",
    ("cuda", "all"): "cudnn.fp32_precision",
    ("mkldnn", "all"): "mkldnn.fp32_precision",
    ("cuda", "matmul"): "cuda.matmul.fp32_precision",
    ("cuda", "conv"): "cudnn.conv.fp32_precision",
    ("cuda", "rnn"): "cudnn.rnn.fp32_precision",
    ("mkldnn", "matmul"): "mkldnn.matmul.fp32_precision",
    ("mkldnn", "conv"): "mkldnn.conv.fp32_precision",
    ("mkldnn", "rnn"): "mkldnn.rnn.fp32_precision",
}


def parent_level(level: Level) -> Level:
    return ROOT if level[1] == "all" else (level[0], "all")


def as_seen_by(level: Level, value: str) -> str:
    """What a level inheriting ``value`` reads: the cuda levels have no bf16 and read "none" for it."""
    return "none" if level[0] == "cuda" and value == "bf16" else value


def _obj(path: str) -> Any:
    """``torch.backends.<path>``; AttributeError where this torch lacks it."""
    obj = _torch.backends
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def get_attr(path: str) -> Any:
    owner, _, name = path.rpartition(".")
    return getattr(_obj(owner), name)


def _set_attr(path: str, value: Any) -> None:
    owner, _, name = path.rpartition(".")
    setattr(_obj(owner), name, value)


def level_get(level: Level) -> str:
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


def readable(read: Callable[[], Any]) -> bool:
    try:
        read()
    except AttributeError:
        return False
    except RuntimeError:  # present, but unreadable in the current mixed state
        return True
    return True


def _is_level(level: Level) -> bool:
    try:
        return isinstance(level_get(level), str)
    except (RuntimeError, TypeError, ValueError):  # a (backend, op) pair this torch does not know
        return False


def capabilities() -> _Caps:
    if _CAPS[0] is _torch:
        return _CAPS[1]
    switches = []
    for name in _SWITCHES:
        try:
            value = get_attr(name)
        except AttributeError:
            continue
        if isinstance(value, bool):
            split_k = readable(lambda n=name: get_attr(n + "_split_k"))
            owner, _, attr = name.rpartition(".")
            switches.append(_Switch(name, _obj(owner), attr, split_k))
    C = getattr(_torch, "_C", None)
    levels: Tuple[Level, ...] = ()
    if callable(getattr(C, "_get_fp32_precision_getter", None)) and callable(getattr(C, "_set_fp32_precision_setter", None)):
        levels = tuple(level for level in LEVELS if _is_level(level))
        if ROOT not in levels:
            levels = ()
    caps = _Caps(
        tuple(switches),
        levels,
        readable(lambda: _torch.get_float32_matmul_precision()),
        readable(lambda: get_attr("cudnn.allow_tf32")),
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
    reads = {level: level_get(level) for level in levels}
    raw: Dict[Level, str] = {}
    open_: List[Level] = []
    for level in levels:
        value, parent = reads[level], parent_level(level)
        if level == ROOT or value == "none" or parent not in reads or value != as_seen_by(level, reads[parent]):
            raw[level] = value
        else:
            open_.append(level)
    if not open_ or not probe:
        raw.update({level: "none" for level in open_})
        return raw
    undo: List[Tuple[Level, str]] = []
    try:
        # With every ancestor at "none", an inheriting level reads "none" and one holding a value reads it.
        undo.append((ROOT, raw[ROOT]))
        _level_set(ROOT, "none")
        for level in open_:
            if parent_level(level) == ROOT:
                raw[level] = _held(level, reads[level])
        for parent in [lv for lv in levels if lv[1] == "all" and lv != ROOT]:
            children = [lv for lv in open_ if parent_level(lv) == parent]
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
    alone = level_get(level)
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


def capture_state(probe: bool = True) -> Dict[Any, Any]:
    """The complete flag state.  Call with ``LOCK`` held when ``probe`` (it writes briefly)."""
    caps = capabilities()
    state: Dict[Any, Any] = {switch.name: switch.get() for switch in caps.switches}
    raw = _raw_levels(caps.levels, probe)
    state.update(raw)
    if caps.matmul_precision:
        # Checked against the matmul levels; with both at "ieee" the getter never raises.
        matmul = {lv: raw[lv] for lv in (("cuda", "matmul"), ("mkldnn", "matmul")) if lv in raw}
        state[MATMUL_PRECISION] = _stored_with(matmul, _torch.get_float32_matmul_precision, probe, None)
    if caps.cudnn_tf32:
        # Checked against conv and rnn; with both at "ieee" the getter raises exactly when it holds True.
        cudnn = {lv: raw[lv] for lv in (("cuda", "conv"), ("cuda", "rnn")) if lv in raw}
        state[CUDNN_TF32] = _stored_with(cudnn, lambda: get_attr("cudnn.allow_tf32"), probe, True)
    return state


def write_state(target: Dict[Any, Any], now: Dict[Any, Any]) -> None:
    """Make torch hold ``target`` (None: leave that value alone), given that it holds ``now``."""
    caps = capabilities()
    for switch in caps.switches:
        if target.get(switch.name) is not None and target[switch.name] != now.get(switch.name):
            switch.set(target[switch.name])
    # The legacy setters write levels too, so they go first and every level is written after them.
    legacy_wrote = False
    if target.get(MATMUL_PRECISION) is not None and target[MATMUL_PRECISION] != now.get(MATMUL_PRECISION):
        _torch.set_float32_matmul_precision(target[MATMUL_PRECISION])
        legacy_wrote = True
    if target.get(CUDNN_TF32) is not None and target[CUDNN_TF32] != now.get(CUDNN_TF32):
        _set_attr("cudnn.allow_tf32", target[CUDNN_TF32])
        legacy_wrote = True
    for level in caps.levels:
        if target.get(level) is not None and (legacy_wrote or target[level] != now.get(level)):
            _level_set(level, target[level])


def guarded_state(before: Dict[Any, Any]) -> Dict[Any, Any]:
    """``before`` with full precision everywhere: what a guard holds."""
    caps = capabilities()
    inside = dict(before)
    for switch in caps.switches:
        inside[switch.name] = switch.inside(before[switch.name])
    if caps.matmul_precision:
        inside[MATMUL_PRECISION] = "highest"
    if caps.cudnn_tf32:
        inside[CUDNN_TF32] = False  # with conv and rnn at "ieee" below, the legacy getters read cleanly
    for level in caps.levels:
        if level[1] != "all":
            inside[level] = "ieee"  # explicit, so a parent changed meanwhile cannot reach the VAE
        elif before[level] in REDUCED:
            inside[level] = "ieee"
    return inside
