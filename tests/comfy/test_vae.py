"""The guarded ComfyUI VAE call (lib_sdfix.comfy.vae) against the fake comfy.sd.VAE."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from lib_sdfix.comfy.vae import guarded_decode, guarded_encode
from lib_sdfix.precision import read_flags

from ..ldm_vae import LdmVAE
from . import fakes
from .fakes import FakeVAE

LATENT = (2, 4, 8, 8)


def _latent(seed=1):
    return torch.randn(LATENT, generator=torch.manual_seed(seed))


def _reference(module_fp32, latent):
    """The same VAE built in fp32 (ComfyUI started with --fp32-vae): its own decode."""
    return FakeVAE(module_fp32, torch.float32).decode(latent)


def _state(vae):
    return [(n, p.data_ptr(), p.dtype, p.detach().clone()) for n, p in vae.first_stage_model.named_parameters()]


def _same_state(before, vae):
    after = _state(vae)
    return all(a[:3] == b[:3] and torch.equal(a[3], b[3]) for a, b in zip(before, after)) and len(before) == len(after)


@pytest.fixture
def tf32_on():
    """The flags as ComfyUI leaves them on an Ampere+ GPU with --fast (and PyTorch's cuDNN default)."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def _spy(module):
    seen = []

    def hook(mod, args):
        seen.append({"input": args[0].dtype, "weight": next(mod.parameters()).dtype,
                     "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "benchmark": torch.backends.cudnn.benchmark, "autocast": torch.is_autocast_enabled("cpu")})

    handles = [module.decoder.register_forward_pre_hook(hook), module.encoder.register_forward_pre_hook(hook)]
    return seen, handles


@pytest.mark.parametrize("inference", [True, False], ids=["inference_mode", "no_grad"])
def test_decode_runs_fp32_with_flags_off_and_restores_everything(comfy, tf32_on, inference):
    # ComfyUI loads and runs everything inside torch.inference_mode (execution.py): inference tensors
    with torch.inference_mode(inference), torch.no_grad():
        vae = FakeVAE()
    dtype_object = vae.vae_dtype
    before, flags = _state(vae), read_flags()
    seen, _ = _spy(vae.first_stage_model)
    with torch.inference_mode(inference), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        run = guarded_decode(vae, _latent().to(torch.bfloat16))
    assert run.guarded and run.weights == "upcast" and run.native == "bf16"
    assert seen == [{"input": torch.float32, "weight": torch.float32, "cudnn_tf32": False, "matmul_tf32": False,
                     "benchmark": False, "autocast": False}]
    # ComfyUI saw fp32 inside: it cast the batch to fp32 and sized memory for fp32
    assert [c["vae_dtype"] for c in vae.calls] == [torch.float32] and vae.calls[0]["input"] == torch.float32
    assert comfy.LOADS[-1]["memory_required"] == vae.memory_used_decode(LATENT, torch.float32)
    assert vae.vae_dtype is dtype_object and _same_state(before, vae) and read_flags() == flags
    assert "decode_tiled_" not in vars(vae)
    assert run.result.shape == (2, 32, 32, 3) and run.result.dtype == torch.float32
    # fp32 weights upcast from bf16: the decode of that fp32 VAE, not the bf16 decode
    upcast = LdmVAE()
    upcast.load_state_dict({k: v.float() for k, v in vae.first_stage_model.state_dict().items()})
    with torch.no_grad():
        latent = _latent().to(torch.bfloat16).float()
        assert torch.equal(run.result, _reference(upcast, latent))
        assert not torch.equal(run.result, vae.decode(latent))
    assert "precision_guard: applied" in run.describe() and "weights=upcast" in run.describe()


def test_exact_weights_from_the_checkpoint_file(comfy, tmp_path):
    """A bf16 VAE loaded from an fp32 checkpoint decodes bit-identically to the VAE loaded in fp32."""
    source = LdmVAE(seed=3)
    path = tmp_path / "model.safetensors"
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in source.state_dict().items()}
              | {"model.diffusion_model.x": torch.zeros(3)}, str(path))
    comfy.FILES["checkpoints"]["model.safetensors"] = str(path)
    comfy.FILES["vae"]["other.safetensors"] = str(tmp_path / "missing.safetensors")
    loaded = LdmVAE(seed=3)
    vae = FakeVAE(loaded, torch.bfloat16)
    run = guarded_decode(vae, _latent())
    assert run.weights == "exact" and "model.safetensors" in run.describe()
    assert torch.equal(run.result, _reference(LdmVAE(seed=3), _latent()))
    assert all(p.dtype == torch.bfloat16 for p in vae.first_stage_model.parameters())


def test_a_failing_guard_falls_back_to_comfyuis_own_decode(comfy, monkeypatch, caplog):
    import lib_sdfix.vae.call as call

    vae = FakeVAE()
    expected = vae.decode(_latent())
    vae.calls.clear()

    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(call, "fp32_vae", broken)
    with caplog.at_level(logging.WARNING, logger="sdfix"):
        run = guarded_decode(vae, _latent())
    assert not run.guarded and torch.equal(run.result, expected)
    assert [c["vae_dtype"] for c in vae.calls] == [torch.bfloat16]
    text = run.describe()
    assert "precision_guard: not applied (RuntimeError: injected)" in text and "ComfyUI's own decode ran (VAE bf16)" in text


def test_cancel_is_never_swallowed(comfy):
    vae = FakeVAE()

    def cancel(module, args):
        raise fakes.InterruptProcessingException()

    vae.first_stage_model.decoder.register_forward_pre_hook(cancel)
    with pytest.raises(fakes.InterruptProcessingException):
        guarded_decode(vae, _latent())
    assert vae.vae_dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in vae.first_stage_model.parameters())


def test_out_of_memory_runs_tiled_fp32_never_comfyuis_blended_tiles(comfy):
    vae = FakeVAE()
    untiled = guarded_decode(vae, _latent()).result
    failures = []

    def oom_once(module, args):
        if not failures:
            failures.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = vae.first_stage_model.post_quant_conv.register_forward_pre_hook(oom_once)
    vae.calls.clear()
    run = guarded_decode(vae, _latent())
    handle.remove()
    assert run.guarded and failures
    assert "decode_tiled_" not in [c["kind"] for c in vae.calls]  # ComfyUI's blended tiles never ran
    assert "tiled in fp32" in run.describe()
    assert torch.allclose(run.result, untiled, atol=1e-5)


def test_small_memory_budget_decodes_tiled_in_fp32(comfy, monkeypatch):
    vae = FakeVAE()
    untiled = guarded_decode(vae, _latent()).result
    monkeypatch.setenv("SDFIX_VAE_MEMORY_GB", "0.0001")
    run = guarded_decode(vae, _latent())
    assert run.guarded and "tiled in fp32" in run.describe()
    assert torch.allclose(run.result, untiled, atol=1e-5)


def test_encode_is_guarded_and_restores(comfy, tf32_on):
    vae = FakeVAE()
    before, flags = _state(vae), read_flags()
    seen, _ = _spy(vae.first_stage_model)
    pixels = torch.rand(1, 32, 32, 3, generator=torch.manual_seed(2))
    run = guarded_encode(vae, pixels)
    assert run.guarded and seen and all(s["input"] == torch.float32 and s["weight"] == torch.float32
                                        and not s["cudnn_tf32"] and not s["benchmark"] for s in seen)
    upcast = LdmVAE()
    upcast.load_state_dict({k: v.float() for k, v in vae.first_stage_model.state_dict().items()})
    assert torch.equal(run.result, FakeVAE(upcast, torch.float32).encode(pixels))
    assert _same_state(before, vae) and read_flags() == flags and vae.vae_dtype == torch.bfloat16


def test_not_a_vae_is_reported_and_decoded_by_comfyui_if_it_can(comfy):
    class Odd:
        vae_dtype = torch.float32
        first_stage_model = None

        def decode(self, latent):
            return torch.zeros(1, 8, 8, 3)

    run = guarded_decode(Odd(), _latent())
    assert not run.guarded and "vae: expected a ComfyUI VAE" in run.describe()
