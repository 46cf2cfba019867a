"""The fp32 VAE context (lib_sdfix.vae.fp32): weights and dtype attributes fp32 inside, exactly as
before after (same Parameter objects, same storages, same bits), under nesting, threads and failures."""
from __future__ import annotations

import threading
import time
import types

import pytest
import torch

from lib_sdfix.vae.fp32 import dtype_attributes, fp32_vae, vae_weight_dtype

from .support import assert_as_before, conv_vae, floating, same_bits, snapshot, tiny


class Lightningish(torch.nn.Module):
    """A submodule that caches its dtype the way PyTorch Lightning does (``_dtype`` behind ``.dtype``)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self._dtype = dtype


# --- weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weights_are_fp32_inside_and_exactly_restored_after(dtype):
    module = tiny().to(dtype)
    before = snapshot(module)
    params = {name: p for name, p in module.named_parameters()}
    with fp32_vae(module) as mode:
        assert mode == "upcast"
        for name, t in floating(module).items():
            assert t.dtype == torch.float32, name
            assert torch.equal(t.detach(), before[name][4].float()), name  # the upcast values
        for name, p in module.named_parameters():
            assert p is params[name] and isinstance(p, torch.nn.Parameter)
        assert module.steps.dtype == torch.int64 and module.steps.data_ptr() == before["steps"][1]
        out = module(torch.randn(1, 3, 5, 5))
        assert out.dtype == torch.float32
    assert_as_before(module, before)
    assert vae_weight_dtype(module) == dtype


def test_fp32_module_is_untouched():
    module = tiny()
    before = snapshot(module)
    with fp32_vae(module) as mode:
        assert mode == "fp32"
        assert_as_before(module, before)
    assert_as_before(module, before)


def test_mixed_module_only_casts_the_low_precision_tensors():
    module = tiny()
    module.conv.to(torch.float16)
    before = snapshot(module)
    with fp32_vae(module) as mode:
        assert mode == "upcast"
        assert module.proj.weight.data_ptr() == before["proj.weight"][1]  # already fp32: not copied
        assert module.conv.weight.dtype == torch.float32
    assert_as_before(module, before)


def test_no_module_still_sets_the_attributes():
    owner = types.SimpleNamespace(dtype_vae=torch.float16)
    with fp32_vae(None, [(owner, "dtype_vae")]) as mode:
        assert mode == "fp32" and owner.dtype_vae is torch.float32
    assert owner.dtype_vae is torch.float16


def test_host_recasting_inside_gets_its_tensors_back_in_the_original_dtype():
    """``module.to(float64)`` inside the host's call: what the module holds now goes back to bf16 with
    the bits of the original values (bf16 -> fp32 -> fp64 -> bf16 is lossless), not the stale
    original storages.  Parameters keep their objects; ``module.to`` registers new buffer objects."""
    module = tiny().to(torch.bfloat16)
    before = snapshot(module)
    with fp32_vae(module):
        module.to(torch.float64)
        assert module.conv.weight.dtype == torch.float64 and module.scale.dtype == torch.float64
    for name, t in floating(module).items():
        assert t.dtype == torch.bfloat16, name
        assert same_bits(t.detach(), before[name][4]), name
        assert t.data_ptr() != before[name][1], name  # the tensor the host made, cast where it is
    for name, p in module.named_parameters():
        assert p is before[name][0], name
    assert module.scale is not before["scale"][0]  # the buffer the host registered, not ours
    assert module.steps.dtype == torch.int64


def test_host_moving_inside_leaves_the_tensors_where_they_now_are():
    """The host's model manager moves the VAE inside the call (to the GPU; the meta device here): its
    tensors are cast back to their dtype on the new device, never swapped back to the old one."""
    module = tiny().to(torch.float16)
    with fp32_vae(module):
        module.to("meta")  # new Parameter objects too: CPU and meta tensors are not interchangeable
    assert len(floating(module)) == 7
    for name, t in floating(module).items():
        assert t.device.type == "meta" and t.dtype == torch.float16, name
    assert module.steps.device.type == "meta" and module.steps.dtype == torch.int64


def test_host_replacing_data_inside_keeps_its_values_in_the_original_dtype():
    module = tiny().to(torch.bfloat16)
    before = snapshot(module)
    replacement = torch.full_like(module.conv.weight, 0.3, dtype=torch.float32)
    with fp32_vae(module):
        module.conv.weight.data = replacement
    assert module.conv.weight.dtype == torch.bfloat16
    assert torch.equal(module.conv.weight.detach(), replacement.to(torch.bfloat16))
    rest = {k: v for k, v in before.items() if k != "conv.weight"}
    assert_as_before_subset(module, rest)


def test_host_casting_back_to_its_own_dtype_inside_is_kept():
    """The host re-cast the VAE to its own dtype inside (its NaN fallback's reverse): nothing to undo."""
    module = tiny().to(torch.float16)
    with fp32_vae(module):
        module.to(torch.float16)
        made = {name: t.data_ptr() for name, t in floating(module).items()}
    assert {name: t.data_ptr() for name, t in floating(module).items()} == made
    assert vae_weight_dtype(module) == torch.float16


def assert_as_before_subset(module, before) -> None:
    now = dict(list(module.named_parameters()) + list(module.named_buffers()))
    for name, (obj, ptr, _dtype, _device, values) in before.items():
        assert now[name] is obj and now[name].data_ptr() == ptr and same_bits(now[name].detach(), values), name


# --- dtype attributes -------------------------------------------------------------------------------


def test_object_and_module_level_attributes_are_fp32_inside_and_restored():
    devices = types.ModuleType("fake_devices")
    devices.dtype_vae = torch.float16
    wrapper = types.SimpleNamespace(vae_dtype=torch.bfloat16, name="vae", device=torch.device("cpu"))
    module = tiny().to(torch.float16)
    with fp32_vae(module, [(wrapper, "vae_dtype"), (devices, "dtype_vae")]):
        assert wrapper.vae_dtype is torch.float32 and devices.dtype_vae is torch.float32
        assert wrapper.name == "vae" and wrapper.device == torch.device("cpu")
    assert wrapper.vae_dtype is torch.bfloat16 and devices.dtype_vae is torch.float16


def test_lightning_dtype_cache_in_the_module_tree_is_found_and_restored():
    module = torch.nn.Module()
    module.inner = Lightningish(torch.bfloat16).to(torch.bfloat16)
    assert dtype_attributes(module) == [(module.inner, "_dtype")]
    with fp32_vae(module):
        assert module.inner._dtype is torch.float32
        assert module.inner.lin.weight.dtype == torch.float32
    assert module.inner._dtype is torch.bfloat16
    assert module.inner.lin.weight.dtype == torch.bfloat16


def test_attribute_the_host_changes_deliberately_inside_is_kept():
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    with fp32_vae(tiny().to(torch.float16), [(devices, "dtype_vae")]):
        devices.dtype_vae = torch.bfloat16
    assert devices.dtype_vae is torch.bfloat16


def test_attribute_changed_inside_a_nested_call_is_kept_after_both():
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    module = tiny().to(torch.float16)
    with fp32_vae(module, [(devices, "dtype_vae")]):
        with fp32_vae(module, [(devices, "dtype_vae")]):
            devices.dtype_vae = torch.bfloat16
        assert devices.dtype_vae is torch.bfloat16
    assert devices.dtype_vae is torch.bfloat16


def test_fp32_attribute_is_left_alone_and_a_change_inside_kept():
    devices = types.SimpleNamespace(dtype_vae=torch.float32)
    with fp32_vae(None, [(devices, "dtype_vae")]):
        assert devices.dtype_vae is torch.float32
        devices.dtype_vae = torch.float16
    assert devices.dtype_vae is torch.float16


def test_non_dtype_attributes_are_never_touched():
    """Only dtypes are set, so only dtypes are restored: a non-dtype value the host replaced with
    ``torch.float32`` inside stays as the host left it."""
    marker = object()
    owner = types.SimpleNamespace(name="float16", none=None, obj=marker, count=3)
    attrs = [(owner, "name"), (owner, "none"), (owner, "obj"), (owner, "count")]
    with fp32_vae(None, attrs):
        assert (owner.name, owner.none, owner.obj, owner.count) == ("float16", None, marker, 3)
    assert (owner.name, owner.none, owner.obj, owner.count) == ("float16", None, marker, 3)
    with fp32_vae(None, attrs):
        owner.name = torch.float32
        owner.none = torch.float32
    assert owner.name is torch.float32 and owner.none is torch.float32


def test_attribute_deleted_inside_does_not_break_the_exit():
    """The host removed the attribute inside the call: the exit still restores the weights."""
    module = tiny().to(torch.float16)
    before = snapshot(module)
    owner = types.SimpleNamespace(dtype_vae=torch.float16)
    with fp32_vae(module, [(owner, "dtype_vae")]):
        del owner.dtype_vae
    assert not hasattr(owner, "dtype_vae")
    assert_as_before(module, before)


# --- reference counts, threads, failures ------------------------------------------------------------


def test_nested_contexts_restore_only_when_the_outermost_leaves():
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    module = tiny().to(torch.float16)
    before = snapshot(module)
    with fp32_vae(module, [(devices, "dtype_vae")]) as outer:
        inside = {name: t.data_ptr() for name, t in floating(module).items()}
        with fp32_vae(module, [(devices, "dtype_vae")]) as inner:
            assert outer == inner == "upcast"
            assert {name: t.data_ptr() for name, t in floating(module).items()} == inside  # no second copy
        assert vae_weight_dtype(module) == torch.float32 and devices.dtype_vae is torch.float32
        assert {name: t.data_ptr() for name, t in floating(module).items()} == inside
    assert devices.dtype_vae is torch.float16
    assert_as_before(module, before)


def test_threads_share_one_fp32_state_until_the_last_leaves():
    n = 6
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    module = tiny().to(torch.float16)
    before = snapshot(module)
    all_in = threading.Barrier(n + 1)
    go = [threading.Event() for _ in range(n)]
    out = [threading.Event() for _ in range(n)]
    modes, errors = [None] * n, []

    def worker(i: int) -> None:
        try:
            with fp32_vae(module, [(devices, "dtype_vae")]) as mode:
                modes[i] = mode
                all_in.wait(10)
                go[i].wait(10)
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            errors.append(exc)
        finally:
            out[i].set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    all_in.wait(10)
    assert modes == ["upcast"] * n
    for i in range(n - 1):
        go[i].set()
        assert out[i].wait(10)
        assert vae_weight_dtype(module) == torch.float32 and devices.dtype_vae is torch.float32, i
        assert all(t.dtype == torch.float32 for t in floating(module).values())
    go[-1].set()
    for t in threads:
        t.join(10)
    assert not errors
    assert devices.dtype_vae is torch.float16
    assert_as_before(module, before)


def test_threads_entering_and_leaving_at_random_always_see_fp32():
    n, rounds = 8, 150
    devices = types.SimpleNamespace(dtype_vae=torch.bfloat16)
    module = tiny().to(torch.bfloat16)
    before = snapshot(module)
    start = threading.Barrier(n)
    bad = []

    def worker(seed: int) -> None:
        start.wait(10)
        for r in range(rounds):
            with fp32_vae(module, [(devices, "dtype_vae")]):
                if vae_weight_dtype(module) != torch.float32 or devices.dtype_vae is not torch.float32:
                    bad.append((seed, r))
                if (seed + r) % 3 == 0:
                    with fp32_vae(module, [(devices, "dtype_vae")]):
                        if module.norm.weight.dtype != torch.float32:
                            bad.append((seed, r, "nested"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not bad
    assert devices.dtype_vae is torch.bfloat16
    assert_as_before(module, before)


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_failure_half_way_through_the_swap_restores_what_was_swapped(monkeypatch, error):
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    module = tiny().to(torch.float16)
    before = snapshot(module)
    real_to = torch.Tensor.to
    calls = []

    def failing_to(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(type(error)):
        with fp32_vae(module, [(devices, "dtype_vae")]):
            pytest.fail("the block must not run")
    monkeypatch.undo()
    assert len(calls) == 3  # two tensors were already fp32 when it failed
    assert devices.dtype_vae is torch.float16
    assert_as_before(module, before)
    with fp32_vae(module) as mode:  # and the next call works
        assert mode == "upcast" and vae_weight_dtype(module) == torch.float32
    assert_as_before(module, before)


class ReadOnly:
    @property
    def vae_dtype(self):
        return torch.float16


@pytest.mark.parametrize("broken", [types.SimpleNamespace(), ReadOnly()], ids=["unreadable", "read-only"])
def test_failure_half_way_through_the_attributes_restores_everything(broken):
    """The second attribute cannot be read or set: the first one and the weights are put back."""
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    module = tiny().to(torch.float16)
    before = snapshot(module)
    with pytest.raises(AttributeError):
        with fp32_vae(module, [(devices, "dtype_vae"), (broken, "vae_dtype")]):
            pytest.fail("the block must not run")
    assert devices.dtype_vae is torch.float16
    assert_as_before(module, before)
    with fp32_vae(module, [(devices, "dtype_vae")]):  # and the next call works
        assert devices.dtype_vae is torch.float32
    assert devices.dtype_vae is torch.float16


@pytest.mark.parametrize("error", [ValueError("host failed"), KeyboardInterrupt()])
def test_exception_inside_the_block_restores(error):
    devices = types.SimpleNamespace(dtype_vae=torch.bfloat16)
    module = torch.nn.Module()
    module.inner = Lightningish(torch.bfloat16).to(torch.bfloat16)
    before = snapshot(module)
    with pytest.raises(type(error)):
        with fp32_vae(module, [(devices, "dtype_vae")]):
            with fp32_vae(module, [(devices, "dtype_vae")]):
                raise error
    assert devices.dtype_vae is torch.bfloat16 and module.inner._dtype is torch.bfloat16
    assert_as_before(module, before)


# --- one state for every caller -------------------------------------------------------------------


def test_shared_vae_stays_fp32_until_the_last_thread_leaves():
    vae = conv_vae(torch.float16)
    barrier = threading.Barrier(8)
    problems = []

    def worker(i):
        with fp32_vae(vae):
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
    vae = conv_vae(torch.float16)
    vae._dtype = torch.float16
    with fp32_vae(vae):
        assert vae._dtype == torch.float32
        assert vae_weight_dtype(vae) == torch.float32
    assert vae._dtype == torch.float16 and vae_weight_dtype(vae) == torch.float16
    fp32 = conv_vae(torch.float32)
    fp32._dtype = torch.float32
    with fp32_vae(fp32):
        assert fp32._dtype == torch.float32
