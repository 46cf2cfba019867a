"""The precision guard: flags off inside, restored exactly after, under every kind of exit and thread."""
from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import torch

from lib_sdfix import precision
from lib_sdfix.precision import (
    effective_tf32,
    precision_guard,
    precision_guarded,
    read_flags,
    restore_flags,
)

from .flags import set_webui_flags

LEGACY = hasattr(torch.backends.cuda.matmul, "allow_tf32")
try:
    torch.backends.cudnn.conv.fp32_precision  # noqa: B018
    NEW_API = True
except AttributeError:
    NEW_API = False
MATMUL = torch.backends.cuda.matmul
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


@pytest.fixture(autouse=True)
def webui_flags():
    _torch_defaults()
    set_webui_flags()
    yield
    assert precision.guard_depth() == 0, "a guard leaked"
    _torch_defaults()
    set_webui_flags()


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


def test_guard_turns_off_matmul_and_cudnn_tf32_and_benchmark_then_restores():
    before = _read_both_apis()
    assert before["cudnn.allow_tf32"] is True and before["benchmark"] is True
    with precision_guard():
        _assert_guarded()
    assert _read_both_apis() == before
    assert read_flags() == read_flags()  # readable twice, no mixed-API error


def test_guard_from_torch_defaults_restores_every_string_exactly():
    """A fresh process (no WebUI): cuDNN TF32 is on by PyTorch's default; after the guard every
    flag of both APIs reads back exactly as before, and legacy reads still work."""
    code = textwrap.dedent(
        """
        import torch, json
        from lib_sdfix.precision import precision_guard, read_flags
        before = read_flags()
        assert torch.backends.cudnn.allow_tf32 is True   # PyTorch's own default
        with precision_guard():
            assert torch.backends.cudnn.allow_tf32 is False
            inside = read_flags()
        after = read_flags()
        torch.backends.cuda.matmul.allow_tf32; torch.backends.cudnn.allow_tf32
        print(json.dumps([before == after, "<unreadable>" in inside.values(), before, after]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    equal, unreadable_inside, before, after = __import__("json").loads(out)
    assert equal, (before, after)
    assert not unreadable_inside


@pytest.mark.skipif(not NEW_API, reason="torch without the fp32_precision API")
def test_guard_on_a_process_already_using_the_new_api():
    """Another extension set fp32_precision strings: the guard drives the new API, never the legacy
    one, and every string is back afterwards; new-API reads never raise."""
    code = textwrap.dedent(
        """
        import torch, json
        from lib_sdfix.precision import precision_guard, read_flags
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
        torch.backends.cudnn.benchmark = True
        before = read_flags()
        with precision_guard():
            inside = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                      torch.backends.cudnn.rnn.fp32_precision, torch.backends.cudnn.benchmark)
        after = read_flags()
        print(json.dumps([before, inside, after]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, inside, after = __import__("json").loads(out)
    assert inside == ["ieee", "ieee", "ieee", False]
    assert after == before


def test_restores_on_exception_and_keyboard_interrupt():
    before = _read_both_apis()
    with pytest.raises(RuntimeError):
        with precision_guard():
            raise RuntimeError("VAE exploded")
    assert _read_both_apis() == before
    with pytest.raises(KeyboardInterrupt):
        with precision_guard():
            raise KeyboardInterrupt
    assert _read_both_apis() == before


def test_nested_guards_restore_only_at_the_outermost_exit():
    before = _read_both_apis()
    with precision_guard():
        with precision_guard():
            _assert_guarded()
        _assert_guarded()  # the inner exit must not restore while the outer guard is active
        assert precision.guard_depth() == 1
    assert _read_both_apis() == before


def test_decorator_form_keeps_name_and_guards():
    @precision_guarded
    def decode():
        """doc"""
        _assert_guarded()
        return 7

    assert decode() == 7 and decode.__name__ == "decode" and decode.__doc__ == "doc"
    assert torch.backends.cudnn.allow_tf32 is True


def test_a_flag_set_by_other_code_while_guarded_is_kept():
    with precision_guard():
        torch.backends.cudnn.benchmark = True  # e.g. the UNet thread re-enabling autotuning on purpose
    assert torch.backends.cudnn.benchmark is True
    torch.backends.cudnn.benchmark = False
    with precision_guard():
        pass
    assert torch.backends.cudnn.benchmark is False


def test_many_threads_with_failures_leave_every_flag_as_before():
    before = read_flags()
    errors = []
    rng = random.Random(1234)
    plans = [(rng.random() * 0.003, rng.random() < 0.3, rng.random() < 0.3) for _ in range(64)]

    def worker(delay, fail, nest):
        try:
            with precision_guard():
                time.sleep(delay)
                _assert_guarded()  # at the moment "the VAE runs", whatever other threads did
                if nest:
                    with precision_guard():
                        _assert_guarded()
                if fail:
                    raise ValueError("injected")
                time.sleep(delay)
                _assert_guarded()
        except ValueError:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=plan) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert precision.guard_depth() == 0
    assert read_flags() == before


new_api = pytest.mark.skipif(not NEW_API, reason="torch without the fp32_precision API")


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
