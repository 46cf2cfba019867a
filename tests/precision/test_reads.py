"""Reading, summarising and restoring the flags."""
from __future__ import annotations

import torch

from lib_sdfix.precision import (
    effective_tf32,
    read_flags,
    restore_flags,
)

from .support import NEW_API, _torch_defaults


def test_effective_tf32_follows_every_api():
    _torch_defaults()
    assert effective_tf32() == {"conv": True, "matmul": False, "rnn": True, "generic": False}  # PyTorch's defaults
    torch.set_float32_matmul_precision("high")
    assert effective_tf32()["matmul"] is True
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    assert effective_tf32() == {"conv": False, "matmul": False, "rnn": False, "generic": False}
    if NEW_API:
        torch.backends.cudnn.fp32_precision = "tf32"  # conv and rnn at "none" inherit it; matmul holds "ieee"
        assert effective_tf32() == {"conv": True, "matmul": False, "rnn": True, "generic": True}
        torch.backends.cudnn.fp32_precision = "none"
        torch.backends.mkldnn.conv.fp32_precision = "bf16"  # oneDNN's bf16 is reduced precision too
        assert effective_tf32()["conv"] is True


def test_restore_flags_brings_back_a_snapshot_even_where_getters_raised():
    if NEW_API:
        torch.set_float32_matmul_precision("medium")
        torch.backends.cuda.matmul.fp32_precision = "ieee"  # mixed: legacy matmul getters raise
    snapshot = read_flags()
    assert read_flags() == snapshot  # reading twice changes nothing
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    restore_flags(snapshot)
    assert read_flags() == snapshot
