"""The fp32 VAE context: weights and dtype attributes fp32 inside, exactly as before after (same
Parameter objects, same storages, same bits), under nesting, threads and failures; exact weights
matched by content from higher-precision safetensors files."""
from __future__ import annotations

import os
import threading
import time
import types

import pytest
import torch

from lib_sdfix.vae import exact as ex
from lib_sdfix.vae import fp32 as fv
from lib_sdfix.vae.exact import exact_weights
from lib_sdfix.vae.call import guarded_call
from lib_sdfix.vae.fp32 import dtype_attributes, fp32_vae, vae_weight_dtype

PREFIX = "first_stage_model."


class Lightningish(torch.nn.Module):
    """A submodule that caches its dtype the way PyTorch Lightning does (``_dtype`` behind ``.dtype``)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self._dtype = dtype


class Tiny(torch.nn.Module):
    """Convolutions (one 1x1, stored as a matrix in other layouts), a norm, a floating and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.proj = torch.nn.Conv2d(4, 4, 1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.register_buffer("scale", torch.randn(4))
        self.register_buffer("steps", torch.arange(5))

    def forward(self, x):
        return self.norm(self.proj(self.conv(x))) * self.scale.view(1, -1, 1, 1)


def tiny(seed: int = 0) -> Tiny:
    """Random values everywhere (no two tensors alike, none exactly representable in half precision)."""
    torch.manual_seed(seed)
    module = Tiny()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module.eval()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern: equality here is bit for bit (-0.0 != 0.0, NaN == NaN)."""
    t = t.detach().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def snapshot(module: torch.nn.Module):
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: (t, t.data_ptr(), t.dtype, t.device, t.detach().clone()) for name, t in named}


def assert_as_before(module: torch.nn.Module, before) -> None:
    """Same tensor objects, same storages, same dtypes and devices, same bits."""
    now = dict(list(module.named_parameters()) + list(module.named_buffers()))
    assert now.keys() == before.keys()
    for name, (obj, ptr, dtype, device, values) in before.items():
        t = now[name]
        assert t is obj, name
        assert t.data_ptr() == ptr, name
        assert t.dtype == dtype and t.device == device, name
        assert same_bits(t.detach(), values), name


def floating(module: torch.nn.Module):
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: t for name, t in named if t.is_floating_point()}


@pytest.fixture(autouse=True)
def no_state_left():
    """Every test leaves no reference count behind (a leak would keep some VAE fp32 for good)."""
    ex._CACHE.clear()
    yield
    assert fv._MODULES == {} and fv._ATTRS == {}
    ex._CACHE.clear()


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
    for name, (obj, ptr, dtype, device, values) in before.items():
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


# --- exact weights -----------------------------------------------------------------------------------


try:
    import safetensors.torch as safetensors_torch
except ImportError:  # the [diffusers] extra
    safetensors_torch = None


def save(tensors, path) -> str:
    if safetensors_torch is None:
        pytest.skip("safetensors is not installed")
    safetensors_torch.save_file(tensors, str(path))
    return str(path)


def checkpoint(path, state, dtype=torch.float32, rename=True, matrix_1x1=True, extra=True):
    """A checkpoint: the VAE under ``first_stage_model.`` in ``dtype`` (other key names than the
    module's unless ``rename``=False, the 1x1 conv as a matrix), plus tensors that are not the VAE."""
    tensors = {}
    for i, (name, t) in enumerate(state.items()):
        key = f"{PREFIX}t{i:02d}.{name.split('.')[-1]}" if rename else PREFIX + name
        value = t.to(dtype) if t.is_floating_point() else t
        if matrix_1x1 and name == "proj.weight":
            value = value.reshape(4, 4)
        tensors[key] = value.contiguous()
    if extra:
        tensors["model.diffusion_model.x"] = torch.randn(4, 4)
        tensors["cond_stage_model.y"] = torch.randn(36)
    return save(tensors, path)


def reference_and_low(dtype=torch.bfloat16, seed=0):
    """The fp32 VAE as trained, and the same VAE loaded in ``dtype``."""
    reference = tiny(seed)
    low = tiny(seed).to(dtype)
    return reference, low


def test_exact_weights_use_the_files_fp32_values_bit_for_bit(tmp_path):
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "model.safetensors", reference.state_dict())
    before = snapshot(module)
    result = exact_weights(module, [path])
    assert result.mode == "exact" and result.source == "model.safetensors"
    assert result.reason == "fp32 weights from model.safetensors"
    assert set(result.tensors) == set(floating(module))
    assert result.nbytes == sum(t.numel() * 4 for t in floating(module).values())
    x = torch.randn(1, 3, 6, 6)
    expected = reference(x)
    with fp32_vae(module, exact=result.tensors) as mode:
        assert mode == "exact"
        ref = floating(reference)
        for name, t in floating(module).items():
            assert same_bits(t.detach(), ref[name].detach()), name
        assert same_bits(module(x), expected)
    with fp32_vae(module) as mode:  # the in-place upcast keeps the bf16 rounding
        assert mode == "upcast" and not torch.equal(module(x), expected)
    assert_as_before(module, before)


@pytest.mark.parametrize("cache_built_in_inference_mode", [False, True])
def test_a_vae_loaded_under_inference_mode_runs_exact_and_upcast(tmp_path, cache_built_in_inference_mode):
    """Forge and reForge load the VAE under inference_mode and decode inside it; the exact-weights cache
    may be built outside it (the status route).  An inference parameter holding a normal tensor fails
    in every conv ("Inference tensors do not track version counter"): the fp32 tensors are of its kind."""
    reference = tiny()
    path = checkpoint(tmp_path / "model.safetensors", reference.state_dict())
    with torch.inference_mode():
        module = tiny().to(torch.bfloat16)
    before = snapshot(module)
    with torch.inference_mode(cache_built_in_inference_mode):
        exact_weights(module, [path])
    x = torch.randn(1, 3, 6, 6)
    with torch.inference_mode():
        with fp32_vae(module, exact=exact_weights(module, [path]).tensors) as mode:
            assert mode == "exact" and same_bits(module(x), reference(x))
        with fp32_vae(module) as mode:
            assert mode == "upcast" and module(x).dtype == torch.float32
    assert all(t.is_inference() for t in floating(module).values())
    assert_as_before(module, before)


def test_fp16_file_is_exact_for_a_bf16_module(tmp_path):
    """fp16 has 10 mantissa bits, bf16 7: an fp16 file holds what a bf16 VAE lost."""
    reference = tiny()
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.5)  # inside fp16's range with room to spare
    fp16_state = {k: (v.half() if v.is_floating_point() else v) for k, v in reference.state_dict().items()}
    module = tiny()
    module.load_state_dict(fp16_state)
    module.to(torch.bfloat16)
    path = checkpoint(tmp_path / "half.safetensors", fp16_state, dtype=torch.float16)
    result = exact_weights(module, [path])
    assert result.mode == "exact", result.reason
    with fp32_vae(module, exact=result.tensors) as mode:
        assert mode == "exact"
        for name, t in floating(module).items():
            assert same_bits(t.detach(), fp16_state[name].float()), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_file_in_the_precision_the_module_runs_in_is_upcast(tmp_path, dtype):
    reference, module = reference_and_low(dtype)
    path = checkpoint(tmp_path / "same.safetensors", reference.state_dict(), dtype=dtype)
    result = exact_weights(module, [path])
    assert result.mode == "upcast" and result.tensors is None
    assert result.reason == "same.safetensors: the file holds them in the precision they run in"


def test_bf16_file_for_an_fp16_module_is_not_exact(tmp_path):
    """bf16 has fewer mantissa bits than fp16: even a tensor whose bits agree is no source."""
    module = tiny()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16))  # representable in both
    state = module.state_dict()
    module.to(torch.float16)
    result = exact_weights(module, [checkpoint(tmp_path / "b.safetensors", state, dtype=torch.bfloat16)])
    assert result.mode == "upcast" and "precision they run in" in result.reason


def test_one_differing_tensor_means_upcast_naming_how_many(tmp_path):
    reference, module = reference_and_low(torch.bfloat16)
    state = reference.state_dict()
    state["norm.bias"] = state["norm.bias"] + 0.5  # another VAE's tensor, beyond bf16's rounding
    result = exact_weights(module, [checkpoint(tmp_path / "other.safetensors", state)])
    n = len(floating(module))
    assert result.mode == "upcast" and result.tensors is None
    assert result.reason == f"other.safetensors: 1 of {n} weights not found in higher precision"


def test_reshaped_layout_and_other_key_names_still_match(tmp_path):
    """The 1x1 conv stored as a 2-D matrix, every key named differently: matched by content."""
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "diffusers_layout.safetensors", reference.state_dict(), rename=True, matrix_1x1=True)
    result = exact_weights(module, [path])
    assert result.mode == "exact"
    assert result.tensors["proj.weight"].shape == (4, 4, 1, 1)
    assert same_bits(result.tensors["proj.weight"], reference.proj.weight.detach())


def test_standalone_vae_file_without_prefix_matches(tmp_path):
    reference, module = reference_and_low(torch.float16)
    state = {k: v for k, v in reference.state_dict().items()}
    save({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vae.safetensors"))
    result = exact_weights(module, [str(tmp_path / "vae.safetensors")])
    assert result.mode == "exact"


def test_tensors_outside_the_vae_prefix_are_never_used(tmp_path):
    """A checkpoint's UNet may hold a tensor with the same content: only ``first_stage_model.`` counts."""
    reference, module = reference_and_low(torch.bfloat16)
    state = reference.state_dict()
    tensors = {PREFIX + k: v.contiguous() for k, v in state.items() if k != "norm.bias"}
    tensors["model.diffusion_model.norm.bias"] = state["norm.bias"].contiguous()
    save(tensors, str(tmp_path / "ckpt.safetensors"))
    result = exact_weights(module, [str(tmp_path / "ckpt.safetensors")])
    assert result.mode == "upcast" and "1 of" in result.reason


def test_ckpt_and_missing_files_are_upcast_with_a_reason(tmp_path):
    reference, module = reference_and_low(torch.bfloat16)
    ckpt = tmp_path / "model.ckpt"
    torch.save(reference.state_dict(), ckpt)
    for files in ([str(ckpt)], [str(tmp_path / "gone.safetensors")], [], [None, ""]):
        result = exact_weights(module, files)
        assert result.mode == "upcast" and result.tensors is None
        assert result.reason == "no safetensors source file for the VAE's weights"


def test_unreadable_safetensors_file_is_upcast_with_a_reason(tmp_path):
    """A damaged file (or one being rewritten) must cost the exact values only, not the whole fix."""
    _, module = reference_and_low(torch.bfloat16)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 64)
    result = exact_weights(module, [str(bad)])
    assert result.mode == "upcast" and result.tensors is None
    assert result.reason.startswith("broken.safetensors: not readable")


def test_first_file_that_matches_wins(tmp_path):
    """An external VAE file in the precision the VAE runs in, then the checkpoint in fp32."""
    reference, module = reference_and_low(torch.bfloat16)
    same = checkpoint(tmp_path / "vae.safetensors", reference.state_dict(), dtype=torch.bfloat16)
    full = checkpoint(tmp_path / "model.safetensors", reference.state_dict())
    assert exact_weights(module, [same, full]).source == "model.safetensors"
    assert exact_weights(module, [full, same]).source == "model.safetensors"


def test_fp32_module_needs_no_exact_weights(tmp_path):
    reference = tiny()
    result = exact_weights(reference, [checkpoint(tmp_path / "m.safetensors", reference.state_dict())])
    assert result.mode == "upcast" and result.tensors is None
    assert result.reason == "the VAE already runs in fp32"
    assert exact_weights(None, []).reason == "no VAE module"


def test_tensors_with_equal_low_precision_values_get_their_own_fp32_values(tmp_path):
    """Two tensors that differ in fp32 but round to the same bf16: the file tensor stored under the
    parameter's own name is used; where names do not tell them apart nothing is guessed."""
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    module.b = torch.nn.Parameter(torch.tensor([1.0 + 2 ** -12, 2.0, 3.0]))
    module.c = torch.nn.Parameter(torch.tensor([5.0, 6.0]))
    reference = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.to(torch.bfloat16)
    assert torch.equal(module.a, module.b)

    named = tmp_path / "named.safetensors"
    save({"first_stage_model.b": reference["b"], "first_stage_model.a": reference["a"],
                                 "first_stage_model.c": reference["c"]}, str(named))
    result = exact_weights(module, [str(named)])
    assert result.mode == "exact"
    for name in "abc":
        assert same_bits(result.tensors[name], reference[name]), name

    renamed = tmp_path / "renamed.safetensors"
    save({"first_stage_model.x": reference["b"], "first_stage_model.y": reference["a"],
                                 "first_stage_model.z": reference["c"]}, str(renamed))
    result = exact_weights(module, [str(renamed)])
    assert result.mode == "upcast" and result.reason == "renamed.safetensors: 2 of 3 weights not found in higher precision"


def test_equal_tensors_in_the_file_are_not_ambiguous(tmp_path):
    """Norm weights all 1, biases all 0 (a fresh VAE): equal in the file too, so any copy is right."""
    module = torch.nn.Module()
    module.n1 = torch.nn.GroupNorm(2, 8)
    module.n2 = torch.nn.GroupNorm(2, 8)
    module.conv = torch.nn.Conv2d(8, 8, 1)
    reference = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.to(torch.bfloat16)
    path = tmp_path / "fresh.safetensors"
    save({f"{PREFIX}k{i}": v for i, v in enumerate(reference.values())}, str(path))
    result = exact_weights(module, [str(path)])
    assert result.mode == "exact", result.reason
    for name, t in reference.items():
        assert same_bits(result.tensors[name], t), name


def test_the_module_is_exactly_as_before_after_exact_mode(tmp_path):
    reference, module = reference_and_low(torch.float16)
    before = snapshot(module)
    result = exact_weights(module, [checkpoint(tmp_path / "m.safetensors", reference.state_dict())])
    devices = types.SimpleNamespace(dtype_vae=torch.float16)
    for _ in range(2):
        with fp32_vae(module, [(devices, "dtype_vae")], result.tensors) as mode:
            assert mode == "exact" and devices.dtype_vae is torch.float32
            module(torch.randn(1, 3, 4, 4))
        assert devices.dtype_vae is torch.float16
        assert_as_before(module, before)
    # the cache is not changed by the call either
    assert exact_weights(module, [str(tmp_path / "m.safetensors")]) is result
    for name, t in floating(reference).items():
        assert same_bits(result.tensors[name], t.detach()), name


def test_exact_weights_keep_a_channels_last_layout(tmp_path):
    """A channels-last VAE (a host's channels-last option): the file's values are laid out as the
    weights were, so the convolutions run the kernels an fp32 channels-last VAE runs, bit for bit."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1))
    path = save({PREFIX + k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "m.safetensors")
    reference = reference.to(memory_format=torch.channels_last).eval()
    module = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1))
    module.load_state_dict(reference.state_dict())
    module = module.to(torch.bfloat16).to(memory_format=torch.channels_last).eval()
    strides = {name: t.stride() for name, t in floating(module).items()}
    result = exact_weights(module, [path])
    x = torch.randn(1, 64, 24, 24)
    with torch.no_grad():
        expected = reference(x)
        with fp32_vae(module, exact=result.tensors) as mode:
            assert mode == "exact"
            assert {name: t.stride() for name, t in floating(module).items()} == strides
            assert same_bits(module(x), expected)
    assert {name: t.stride() for name, t in floating(module).items()} == strides


def test_host_moving_the_module_in_exact_mode_gets_the_file_values_cast_back(tmp_path):
    """Moved inside an exact call: the tensors end in the module's dtype where they now are, holding
    its own low-precision values (the file's fp32 values round to them)."""
    reference, module = reference_and_low(torch.bfloat16)
    before = snapshot(module)
    result = exact_weights(module, [checkpoint(tmp_path / "m.safetensors", reference.state_dict())])
    with fp32_vae(module, exact=result.tensors):
        module.to(torch.float64)
    assert len(floating(module)) == 7
    for name, t in floating(module).items():
        assert t.dtype == torch.bfloat16 and same_bits(t.detach(), before[name][4]), name
    for name, t in floating(reference).items():  # and the cached fp32 values are untouched
        assert same_bits(result.tensors[name], t.detach()), name


# --- the cache ---------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = ex._match_file

    def match_file(low, path):
        calls.append(path)
        return real(low, path)

    monkeypatch.setattr(ex, "_match_file", match_file)
    return calls


def test_cache_is_reused_while_nothing_changes(tmp_path, counted):
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "m.safetensors", reference.state_dict())
    first = exact_weights(module, [path])
    for _ in range(3):
        assert exact_weights(module, [path]) is first
        with fp32_vae(module, exact=first.tensors):
            pass
    assert counted == [path]
    upcast = exact_weights(module, [str(tmp_path / "missing.safetensors")])  # other files: recomputed
    assert upcast.mode == "upcast" and len(counted) == 1


def test_cache_is_recomputed_when_the_file_changes(tmp_path, counted):
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "m.safetensors", reference.state_dict())
    first = exact_weights(module, [path])
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: same size, new mtime
    second = exact_weights(module, [path])
    assert second is not first and second.mode == "exact" and len(counted) == 2
    # rewritten with another VAE (new size), its mtime set back: the size alone tells
    touched = os.stat(path)
    other = reference.state_dict()
    other["conv.bias"] = other["conv.bias"] + 1.0
    checkpoint(path, other, extra=False)
    os.utime(path, ns=(touched.st_atime_ns, touched.st_mtime_ns))
    assert os.stat(path).st_size != st.st_size and os.stat(path).st_mtime_ns == touched.st_mtime_ns
    third = exact_weights(module, [path])
    assert third.mode == "upcast" and "1 of" in third.reason and len(counted) == 3


def test_cache_is_recomputed_when_a_parameter_is_replaced(tmp_path, counted):
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "m.safetensors", reference.state_dict())
    assert exact_weights(module, [path]).mode == "exact"
    module.conv.bias.data = torch.zeros_like(module.conv.bias.data)  # another VAE's weights
    result = exact_weights(module, [path])
    assert len(counted) == 2 and result.mode == "upcast" and "1 of" in result.reason


def test_cache_is_recomputed_when_weights_are_loaded_in_place(tmp_path, counted):
    """``load_state_dict`` copies into the same storages (a host switching VAEs on the loaded model):
    same pointers, same dtypes and shapes, other values -- the old fp32 values must not be used."""
    reference, module = reference_and_low(torch.bfloat16)
    path = checkpoint(tmp_path / "m.safetensors", reference.state_dict())
    first = exact_weights(module, [path])
    assert first.mode == "exact"
    ptrs = {name: t.data_ptr() for name, t in floating(module).items()}
    module.load_state_dict(tiny(seed=1).to(torch.bfloat16).state_dict())
    assert {name: t.data_ptr() for name, t in floating(module).items()} == ptrs
    result = exact_weights(module, [path])
    assert len(counted) == 2 and result.mode == "upcast"


def test_inference_mode_weights_without_a_version_counter(tmp_path):
    """Forge loads its weights under torch.inference_mode(): such tensors have no version counter."""
    reference = tiny()
    path = checkpoint(tmp_path / "model.safetensors", reference.state_dict())
    with torch.inference_mode():
        module = tiny().to(torch.bfloat16)
        with pytest.raises(RuntimeError):
            next(module.parameters())._version
        result = exact_weights(module, [path])
        assert result.mode == "exact"
        assert exact_weights(module, [path]) is result  # cached
        x = torch.randn(1, 3, 6, 6)
        with fp32_vae(module, exact=result.tensors) as mode:
            assert mode == "exact" and same_bits(module(x), reference(x))


# --- the guarded call ---------------------------------------------------------------------------------


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
        out = guarded_call(decode, vae, latent)
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
    guarded_call(lambda z: got.append(z.dtype) or vae(z), vae, torch.randn(1, 4, 4, 4, dtype=torch.float16))
    assert got == [torch.float32]


def test_upcast_off_leaves_dtypes_alone_but_still_guards_flags():
    vae = _conv(torch.float16)
    seen = []
    guarded_call(lambda z: seen.append((z.dtype, next(vae.parameters()).dtype, torch.backends.cudnn.allow_tf32)),
                 vae, torch.randn(1, 4, 4, 4, dtype=torch.float16), upcast=False)
    assert seen == [(torch.float16, torch.float16, False)]


def test_vae_weights_restored_on_keyboard_interrupt():
    vae = _conv(torch.float16)

    def interrupted(z):
        raise KeyboardInterrupt

    before = torch.backends.cudnn.allow_tf32
    with pytest.raises(KeyboardInterrupt):
        guarded_call(interrupted, vae, torch.randn(1, 4, 4, 4))
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    assert torch.backends.cudnn.allow_tf32 is before


def test_shared_vae_stays_fp32_until_the_last_thread_leaves():
    vae = _conv(torch.float16)
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
    vae = _conv(torch.float16)
    vae._dtype = torch.float16
    with fp32_vae(vae):
        assert vae._dtype == torch.float32
        assert vae_weight_dtype(vae) == torch.float32
    assert vae._dtype == torch.float16 and vae_weight_dtype(vae) == torch.float16
    fp32 = _conv(torch.float32)
    fp32._dtype = torch.float32
    with fp32_vae(fp32):
        assert fp32._dtype == torch.float32
