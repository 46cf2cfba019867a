"""The guard over torch's legacy switches and fp32_precision levels mixed, getters that raise included."""
from __future__ import annotations

import contextlib
import random

import pytest
import torch

from lib_sdfix.precision import (
    precision_guard,
)

from .support import (
    ACCUMULATION,
    LEVELS,
    MATMUL,
    REDUCTIONS,
    SPLIT_K,
    _assert_full_precision_inside,
    _public_reads,
    _torch_defaults,
    new_api,
)


def _guard_keeps_reads(inside=_assert_full_precision_inside) -> dict:
    """Run one guard; full precision inside; every read as before after (raising where it raised)."""
    before = _public_reads()
    with precision_guard():
        inside()
    after = _public_reads()
    assert after == before
    return after


def test_matmul_precision_medium_reads_cleanly_after_a_guard():
    """Libraries call set_float32_matmul_precision("medium"); one guard must not leave the getter raising."""
    torch.set_float32_matmul_precision("medium")
    after = _guard_keeps_reads()
    assert after["matmul_precision"] == "medium" and torch.get_float32_matmul_precision() == "medium"


@new_api
@pytest.mark.parametrize("level", ["cudnn", "generic"])
def test_a_new_api_parent_level_over_legacy_flags_gets_no_tf32_inside(level):
    """WebUI-style legacy flags, then a library sets a parent fp32_precision level to tf32: the
    legacy getters still read cleanly, yet the guard must not trust them -- cuDNN conv inherits tf32."""
    if level == "cudnn":
        torch.backends.cudnn.fp32_precision = "tf32"
    else:
        torch.backends.fp32_precision = "tf32"
    _guard_keeps_reads()


@new_api
def test_inheriting_levels_still_inherit_after_a_guard():
    """A level at "none" reads its parent's value; writing that value back would cut it off its parent."""
    torch.backends.cudnn.allow_tf32 = False  # conv and rnn at "none"
    torch.backends.cudnn.fp32_precision = "tf32"  # ... so they read tf32 through cuDNN's level
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    _guard_keeps_reads(lambda: None)
    torch.backends.cudnn.fp32_precision = "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cudnn.rnn.fp32_precision == "ieee"


@new_api
def test_mixed_state_with_raising_getters_is_restored_with_the_same_raises():
    """A process that mixed the APIs has getters that raise; inside they read cleanly, after they
    raise again (the same state), and the ones that were clean stay clean."""
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # legacy matmul getters now raise
    torch.backends.cudnn.conv.fp32_precision = "ieee"  # cuDNN's legacy getter now raises
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    before = _guard_keeps_reads()
    assert before["matmul.allow_tf32"] == before["cudnn.allow_tf32"] == "<raises>"
    assert before["matmul_precision"] == "medium"  # the oneDNN level still agrees with "medium"


@new_api
def test_random_mixes_of_every_api_and_level():
    """A small in-test version of bench/guard_reliability.py."""
    rng = random.Random(7)
    for _ in range(150):
        _torch_defaults()
        for _ in range(rng.randint(0, 8)):
            kind = rng.randrange(4)
            if kind == 0:
                rng.choice((MATMUL, torch.backends.cudnn)).allow_tf32 = rng.random() < 0.6
            elif kind == 1:
                torch.set_float32_matmul_precision(rng.choice(("highest", "high", "medium")))
            else:
                level = rng.choice(LEVELS)
                values = ["none", "ieee", "tf32"] + ([] if level[0] == "cuda" else ["bf16"])
                torch._C._set_fp32_precision_setter(*level, rng.choice(values))
        with contextlib.suppress(ValueError):
            _guard_keeps_reads(lambda: (_assert_full_precision_inside(), _raise_sometimes(rng)))


def _raise_sometimes(rng):
    if rng.random() < 0.3:
        raise ValueError("injected")


@pytest.mark.skipif(not REDUCTIONS, reason="torch without the reduced-precision reduction switches")
def test_reduced_precision_reductions_and_fp16_accumulation_are_off_inside_and_restored_exactly():
    if SPLIT_K:
        MATMUL.allow_fp16_reduced_precision_reduction = (False, False)  # split-k off too: must survive
    if ACCUMULATION:
        MATMUL.allow_fp16_accumulation = True
    before = _public_reads()

    def inside():
        assert all(getattr(MATMUL, name) is False for name in REDUCTIONS)
        assert not ACCUMULATION or MATMUL.allow_fp16_accumulation is False

    with precision_guard():
        inside()
        with pytest.raises(KeyboardInterrupt), precision_guard():
            raise KeyboardInterrupt
        inside()
    assert _public_reads() == before
    if SPLIT_K:
        assert MATMUL.allow_fp16_reduced_precision_reduction_split_k is False


@new_api
def test_new_api_level_set_by_other_code_while_guarded_is_kept():
    before = _public_reads()
    with precision_guard():
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # another thread's deliberate choice
    after = _public_reads()
    assert after["conv.fp32"] == "tf32"
    assert {k: v for k, v in after.items() if k not in ("conv.fp32", "cudnn.allow_tf32")} == {
        k: v for k, v in before.items() if k not in ("conv.fp32", "cudnn.allow_tf32")}
