"""A torch with the legacy switches only (2.1-2.4): the guard and the reads still work."""
from __future__ import annotations

import contextlib
import types

import pytest

from lib_sdfix import precision
from lib_sdfix.precision import (
    effective_tf32,
    precision_guard,
    read_flags,
    restore_flags,
)


class _FakeMatmul:
    """torch 2.4's cuda.matmul: allow_tf32 is the matmul precision seen as a bool; no split-k, no
    fp16 accumulation, no fp32_precision."""

    def __init__(self, owner):
        self._owner = owner
        self.allow_fp16_reduced_precision_reduction = True
        self.allow_bf16_reduced_precision_reduction = True

    @property
    def allow_tf32(self):
        return self._owner.precision != "highest"

    @allow_tf32.setter
    def allow_tf32(self, value):
        self._owner.precision = "high" if value else "highest"


class _FakeTorch24:
    def __init__(self):
        self.precision = "highest"
        cudnn = types.SimpleNamespace(allow_tf32=True, benchmark=False)
        self.backends = types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=_FakeMatmul(self)), cudnn=cudnn,
                                              mkldnn=types.SimpleNamespace())
        self._C = types.SimpleNamespace()

    def get_float32_matmul_precision(self):
        return self.precision

    def set_float32_matmul_precision(self, value):
        self.precision = value

    def flags(self):
        m, c = self.backends.cuda.matmul, self.backends.cudnn
        return (self.precision, m.allow_tf32, c.allow_tf32, c.benchmark,
                m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction)


@pytest.mark.parametrize("matmul_precision", ["high", "medium"])
def test_legacy_only_torch_is_supported(monkeypatch, matmul_precision):
    """torch 2.1-2.8 have only the legacy switches (2.4: no split-k, no fp16 accumulation)."""
    fake = _FakeTorch24()
    fake.backends.cudnn.benchmark = True
    fake.set_float32_matmul_precision(matmul_precision)
    monkeypatch.setattr(precision.flags, "_torch", fake)
    assert precision.flag_api() == "legacy"
    assert effective_tf32() == {"conv": True, "matmul": True, "rnn": True, "generic": False}
    before = fake.flags()
    snapshot = read_flags()
    assert "fp32_precision" not in snapshot and "cuda.matmul.allow_fp16_accumulation" not in snapshot
    for exit_with in (None, KeyboardInterrupt):
        with contextlib.suppress(KeyboardInterrupt), precision_guard():
            with precision_guard():
                assert fake.flags() == ("highest", False, False, False, False, False)
                assert effective_tf32() == {"conv": False, "matmul": False, "rnn": False, "generic": False}
            if exit_with:
                raise exit_with
        assert fake.flags() == before
    fake.backends.cudnn.allow_tf32 = False
    restore_flags(snapshot)
    assert fake.flags() == before and read_flags() == snapshot
