"""Reading the flags as other code sees them, restoring a snapshot, and where fp32 math may run reduced."""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List

from lib_sdfix.precision import flags
from lib_sdfix.precision.flags import (
    CUDNN_TF32,
    LEVELS,
    LOCK,
    MATMUL_PRECISION,
    REDUCED,
    ROOT,
    UNREADABLE,
    as_seen_by,
    capabilities,
    capture_state,
    get_attr,
    level_get,
    parent_level,
    readable,
    write_state,
)

__all__ = ["read_flags", "restore_flags", "effective_tf32", "flag_api"]


def _public_reads() -> Dict[str, Any]:
    caps = capabilities()
    out: Dict[str, Any] = {}

    def put(name: str, read: Callable[[], Any]) -> None:
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = UNREADABLE

    for switch in caps.switches:
        put(switch.name, functools.partial(get_attr, switch.name))
        if switch.split_k:
            put(switch.name + "_split_k", functools.partial(get_attr, switch.name + "_split_k"))
    if readable(lambda: get_attr("cuda.matmul.allow_tf32")):
        put("cuda.matmul.allow_tf32", lambda: get_attr("cuda.matmul.allow_tf32"))
    if caps.cudnn_tf32:
        put(CUDNN_TF32, lambda: get_attr("cudnn.allow_tf32"))
    if caps.matmul_precision:
        put(MATMUL_PRECISION, flags._torch.get_float32_matmul_precision)
    for level in caps.levels:
        put(LEVELS[level], functools.partial(level_get, level))
    return out


def read_flags() -> Dict[str, Any]:
    """Every guard-relevant torch flag this torch has, by public name, as other code reads it;
    "<unreadable>" where torch's getter raises (legacy and new API mixed).  Only reads."""
    with LOCK:
        return _public_reads()


def _state_from_reads(snapshot: Dict[str, Any]) -> Dict[Any, Any]:
    """A state that reads as ``snapshot``; None for stored values the snapshot could not read."""
    caps = capabilities()
    state: Dict[Any, Any] = {}
    for switch in caps.switches:
        value = snapshot.get(switch.name)
        if switch.split_k and value is not None:
            value = (value, snapshot.get(switch.name + "_split_k", True))
        state[switch.name] = value
    for key in (MATMUL_PRECISION, CUDNN_TF32):
        value = snapshot.get(key)
        state[key] = None if value == UNREADABLE else value
    reads = {level: snapshot.get(LEVELS[level]) for level in caps.levels}
    for level in caps.levels:
        value, parent = reads[level], parent_level(level)
        if value is None:
            state[level] = None
        elif level != ROOT and value != "none" and reads.get(parent) is not None and value == as_seen_by(level, reads[parent]):
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
    with LOCK:
        target = _state_from_reads(snapshot)
        now = capture_state()
        write_state(target, now)
        unknown = [key for key in (MATMUL_PRECISION, CUDNN_TF32) if key in target and target[key] is None]
        wanted = dict(snapshot)
        if not unknown or _public_reads() == wanted:
            return
        options = {MATMUL_PRECISION: ("highest", "high", "medium"), CUDNN_TF32: (True, False)}
        tried: List[Dict[Any, Any]] = [{}]
        for key in unknown:
            tried = [dict(t, **{key: option}) for t in tried for option in options[key]]
        for choice in tried:
            write_state(dict(target, **choice), capture_state())
            if _public_reads() == wanted:
                return
        write_state(dict(target, **{k: now[k] for k in unknown}), capture_state())


def effective_tf32() -> Dict[str, bool]:
    """Where fp32 math may run in reduced precision right now, by what torch's kernels consult.

    ``conv``, ``rnn``, ``matmul``: cuDNN/cuBLAS TF32 or oneDNN TF32/bf16 for that kind of op, a
    matmul precision other than "highest" (what compilers and oneDNN follow), or oneDNN's legacy TF32
    switch; ``generic``: a reduced setting on a catch-all level (``torch.backends``, ``cudnn`` or
    ``mkldnn`` ``fp32_precision``) that children left at "none" would inherit.  Only reads; a getter
    that raises is read around (the levels never raise).
    """
    caps = capabilities()
    out = {"conv": False, "matmul": False, "rnn": False, "generic": False}
    with LOCK:
        if caps.levels:
            reads = {level: level_get(level) for level in caps.levels}
            for op in ("conv", "matmul", "rnn"):
                out[op] = reads.get(("cuda", op)) == "tf32" or reads.get(("mkldnn", op)) in REDUCED
            out["generic"] = any(reads.get(lv) in REDUCED for lv in (ROOT, ("cuda", "all"), ("mkldnn", "all")))
        elif caps.cudnn_tf32:  # legacy torch: one cuDNN switch for conv and rnn
            try:
                out["conv"] = out["rnn"] = bool(get_attr("cudnn.allow_tf32"))
            except RuntimeError:
                out["conv"] = out["rnn"] = True
        if caps.matmul_precision:
            try:
                out["matmul"] = out["matmul"] or flags._torch.get_float32_matmul_precision() != "highest"
            except RuntimeError:  # it disagrees with a matmul level that is reduced: matmul is reduced
                out["matmul"] = True
        if any(switch.name == "mkldnn.allow_tf32" and switch.get() for switch in caps.switches):
            out["conv"] = out["matmul"] = out["rnn"] = True
    return out


def flag_api() -> str:
    """Which TF32 flag API this torch has: "legacy", "fp32_precision" or "both"."""
    caps = capabilities()
    legacy = caps.matmul_precision or caps.cudnn_tf32
    if legacy and caps.levels:
        return "both"
    return "fp32_precision" if caps.levels else "legacy"
