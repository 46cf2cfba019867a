"""The precision guard: flags off inside, restored exactly after, under every kind of exit and thread."""
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
from lib_sdfix.precision import guarded_vae_call, precision_guard, precision_guarded, read_flags, vae_in_fp32

LEGACY = hasattr(torch.backends.cuda.matmul, "allow_tf32")
try:
    torch.backends.cudnn.conv.fp32_precision  # noqa: B018
    NEW_API = True
except AttributeError:
    NEW_API = False


def _set_webui_flags() -> None:
    """What modules/devices.py: enable_tf32 does at WebUI start on Ampere+."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


@pytest.fixture(autouse=True)
def webui_flags():
    _set_webui_flags()
    yield
    assert precision.guard_depth() == 0, "a guard leaked"
    _set_webui_flags()


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


class _FakeNamespace:
    pass


def test_legacy_only_torch_is_supported(monkeypatch):
    """torch 2.1-2.8 have only the allow_tf32 booleans: the guard must work with exactly those."""
    cuda_matmul, cudnn = _FakeNamespace(), _FakeNamespace()
    cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = True, True, True
    state = {"precision": "high"}
    flags = (
        precision._attr_flag("cudnn.benchmark", "common", lambda: cudnn, "benchmark", False),
        precision._attr_flag("cuda.matmul.allow_tf32", "legacy", lambda: cuda_matmul, "allow_tf32", False),
        precision._attr_flag("cudnn.allow_tf32", "legacy", lambda: cudnn, "allow_tf32", False),
        precision._Flag("float32_matmul_precision", "legacy", lambda: state["precision"],
                        lambda v: state.__setitem__("precision", v), "highest"),
    )
    monkeypatch.setattr(precision, "_FLAGS", flags)
    assert precision.flag_api() == "legacy"
    with precision_guard():
        assert (cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, state["precision"]) == (False, False, False, "highest")
    assert (cuda_matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, state["precision"]) == (True, True, True, "high")


def _conv(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vae_runs_in_fp32_and_weights_come_back_bit_identical(dtype):
    vae = _conv(dtype)
    weights_before = [p.detach().clone() for p in vae.parameters()]
    seen = {}

    def decode(latent):
        seen["latent"] = latent.dtype
        seen["weights"] = {p.dtype for p in vae.parameters()}
        seen["flags"] = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
        return vae(latent)

    latent = torch.randn(1, 4, 8, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast must not reach the VAE
        out = guarded_vae_call(decode, vae, latent)
    assert seen == {"latent": torch.float32, "weights": {torch.float32}, "flags": (False, False)}
    assert out.dtype == torch.float32
    assert all(p.dtype == dtype for p in vae.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights_before, vae.parameters()))
    reference = _conv(torch.float32)(latent)
    # fp32 math on weights that were rounded to `dtype`: close to the fp32 model, far closer than half math
    assert torch.allclose(out, reference, atol=0.1)


def test_low_precision_latent_is_upcast_never_downcast():
    vae = _conv(torch.float16)
    got = []
    guarded_vae_call(lambda z: got.append(z.dtype) or vae(z), vae, torch.randn(1, 4, 4, 4, dtype=torch.float16))
    assert got == [torch.float32]


def test_upcast_off_leaves_dtypes_alone_but_still_guards_flags():
    vae = _conv(torch.float16)
    seen = []
    guarded_vae_call(lambda z: seen.append((z.dtype, next(vae.parameters()).dtype, torch.backends.cudnn.allow_tf32)),
                     vae, torch.randn(1, 4, 4, 4, dtype=torch.float16), upcast=False)
    assert seen == [(torch.float16, torch.float16, False)]


def test_vae_weights_restored_on_keyboard_interrupt():
    vae = _conv(torch.float16)

    def interrupted(z):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        guarded_vae_call(interrupted, vae, torch.randn(1, 4, 4, 4))
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    assert torch.backends.cudnn.allow_tf32 is True


def test_shared_vae_stays_fp32_until_the_last_thread_leaves():
    vae = _conv(torch.float16)
    barrier = threading.Barrier(8)
    problems = []

    def worker(i):
        with vae_in_fp32(vae):
            barrier.wait()
            time.sleep(0.001 * (i % 3))
            if {p.dtype for p in vae.parameters()} != {torch.float32}:
                problems.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems
    assert {p.dtype for p in vae.parameters()} == {torch.float16}


def test_cached_module_dtype_follows_the_upcast():
    """PyTorch Lightning modules (the ldm VAE) cache their dtype behind .dtype; code inside reads it."""
    vae = _conv(torch.float16)
    vae._dtype = torch.float16
    with vae_in_fp32(vae):
        assert vae._dtype == torch.float32
        assert precision.vae_weight_dtype(vae) == torch.float32
    assert vae._dtype == torch.float16 and precision.vae_weight_dtype(vae) == torch.float16
    fp32 = _conv(torch.float32)
    fp32._dtype = torch.float32
    with vae_in_fp32(fp32):
        assert fp32._dtype == torch.float32
