"""What the precision tests share: the flag APIs this torch has, torch's defaults, and reads of every flag."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.precision import (
    effective_tf32,
)

LEGACY = hasattr(torch.backends.cuda.matmul, "allow_tf32")
try:
    torch.backends.cudnn.conv.fp32_precision  # noqa: B018
    NEW_API = True
except AttributeError:
    NEW_API = False
MATMUL = torch.backends.cuda.matmul
#: Marks a test that needs torch's fp32_precision API.
new_api = pytest.mark.skipif(not NEW_API, reason="torch without the fp32_precision API")
LEVELS = [("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
          ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn")]


def _has(owner, name: str) -> bool:
    try:
        getattr(owner, name)
    except AttributeError:
        return False
    return True


REDUCTIONS = [n for n in ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction") if _has(MATMUL, n)]
SPLIT_K = _has(MATMUL, "allow_fp16_reduced_precision_reduction_split_k")
ACCUMULATION = _has(MATMUL, "allow_fp16_accumulation")


def _torch_defaults() -> None:
    """Every flag as a fresh process reads it, whatever mix of APIs the previous test left behind."""
    torch.backends.cudnn.benchmark = False
    for name in REDUCTIONS:
        setattr(MATMUL, name, True)
    if ACCUMULATION:
        MATMUL.allow_fp16_accumulation = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    if NEW_API:
        for level in LEVELS:
            torch._C._set_fp32_precision_setter(*level, "tf32" if level in (("cuda", "conv"), ("cuda", "rnn")) else "none")


def _public_reads() -> dict:
    """Every flag read the way other code reads it, "<raises>" where torch's getter raises."""
    reads = {
        "matmul.allow_tf32": lambda: MATMUL.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "benchmark": lambda: torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision,
    }
    for name in REDUCTIONS + (["allow_fp16_accumulation"] if ACCUMULATION else []):
        reads[name] = lambda n=name: getattr(MATMUL, n)
        if SPLIT_K and name in REDUCTIONS:
            reads[name + "_split_k"] = lambda n=name: getattr(MATMUL, n + "_split_k")
    if NEW_API:
        b = torch.backends
        reads.update({
            "fp32": lambda: b.fp32_precision,
            "cudnn.fp32": lambda: b.cudnn.fp32_precision,
            "matmul.fp32": lambda: b.cuda.matmul.fp32_precision,
            "conv.fp32": lambda: b.cudnn.conv.fp32_precision,
            "rnn.fp32": lambda: b.cudnn.rnn.fp32_precision,
            "mkldnn.fp32": lambda: b.mkldnn.fp32_precision,
            "mkldnn.matmul.fp32": lambda: b.mkldnn.matmul.fp32_precision,
            "mkldnn.conv.fp32": lambda: b.mkldnn.conv.fp32_precision,
            "mkldnn.rnn.fp32": lambda: b.mkldnn.rnn.fp32_precision,
        })
    out = {}
    for name, read in reads.items():
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = "<raises>"
    return out


def _assert_full_precision_inside() -> None:
    assert effective_tf32() == {"conv": False, "matmul": False, "rnn": False, "generic": False}
    assert torch.get_float32_matmul_precision() == "highest"  # readable, and highest
    assert MATMUL.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False  # legacy getters clean


def _read_both_apis() -> dict:
    """Read every flag through plain attribute access, as other code would; raises if torch does."""
    values = {
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "benchmark": torch.backends.cudnn.benchmark,
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if NEW_API:
        values.update(
            {
                "fp32": torch.backends.fp32_precision,
                "matmul.fp32": torch.backends.cuda.matmul.fp32_precision,
                "conv.fp32": torch.backends.cudnn.conv.fp32_precision,
                "rnn.fp32": torch.backends.cudnn.rnn.fp32_precision,
            }
        )
    return values


def _assert_guarded() -> None:
    v = _read_both_apis()
    assert v["matmul.allow_tf32"] is False
    assert v["cudnn.allow_tf32"] is False
    assert v["benchmark"] is False
    assert v["matmul_precision"] == "highest"
    if NEW_API:
        assert v["matmul.fp32"] != "tf32"
        assert v["conv.fp32"] != "tf32" and v["rnn.fp32"] != "tf32"
