"""The guard: flags off inside, restored exactly after, under every kind of exit, nesting and thread."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from lib_sdfix import precision
from lib_sdfix.precision import (
    precision_guard,
    precision_guarded,
    read_flags,
)

from .support import NEW_API, _assert_guarded, _read_both_apis


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


