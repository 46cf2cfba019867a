"""Exact weights (lib_sdfix.vae.exact): a half-precision VAE's fp32 values matched by content from
higher-precision safetensors files, cached while the module and the files stay the same."""
from __future__ import annotations

import os
import types

import pytest
import torch

from lib_sdfix.vae import exact as ex
from lib_sdfix.vae.exact import exact_weights
from lib_sdfix.vae.fp32 import fp32_vae

from .support import assert_as_before, floating, same_bits, snapshot, tiny

PREFIX = "first_stage_model."


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
            _ = next(module.parameters())._version
        result = exact_weights(module, [path])
        assert result.mode == "exact"
        assert exact_weights(module, [path]) is result  # cached
        x = torch.randn(1, 3, 6, 6)
        with fp32_vae(module, exact=result.tensors) as mode:
            assert mode == "exact" and same_bits(module(x), reference(x))
