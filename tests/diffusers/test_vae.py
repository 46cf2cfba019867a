"""Cause vae_precision on tiny random-weight pipelines: the VAE unguarded in half precision with TF32
on until hardened; after a guarded call the VAE is exactly as it was, offloaded or not."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch

from lib_sdfix.diffusers import audit, fix_report, harden
from lib_sdfix.precision import read_flags
from lib_sdfix.settings import SDFixSettings

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    enable_sequential_offload,
    one_thread,
    probe,
    run_img2img,
    run_txt2img,
    sd15_pair,
    service_flags,
)

# --- 1. VAE precision -------------------------------------------------------------------------


def test_vae_runs_unguarded_in_half_with_tf32_on_until_hardened():
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    with probe(decoder=vae.decoder, encoder=vae.encoder) as seen:
        image = run_txt2img(pipe)
        run_img2img(img2img, image)
    for record in seen.of("decoder") + seen.of("encoder"):
        assert record["weight"] == HALF and record["input"] == HALF
        assert record["cudnn_tf32"] and record["matmul_tf32"] and record["benchmark"]
    found = audit(pipe, img2img)["vae_precision"]
    assert found.present and "bfloat16" in found.detail and "cudnn.allow_tf32" in found.detail

    harden(pipe, img2img)
    flags_before = read_flags()
    with probe(decoder=vae.decoder, encoder=vae.encoder) as seen:
        image = run_txt2img(pipe)
        run_img2img(img2img, image)
    assert len(seen.of("decoder")) == 2 and len(seen.of("encoder")) == 1
    for record in seen.seen:
        assert record["weight"] == torch.float32 and record["input"] == torch.float32
        assert not (record["cudnn_tf32"] or record["matmul_tf32"] or record["benchmark"])
        assert not record["autocast"]
    assert read_flags() == flags_before, "flags restored after every VAE call"
    assert all(p.dtype == HALF for p in vae.parameters()), "VAE weights back in half, no second copy kept"
    assert audit(pipe, img2img)["vae_precision"].present is False


def test_vae_guard_also_turns_autocast_off_inside():
    pipe, _ = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    with probe(decoder=pipe.vae.decoder) as seen, torch.autocast("cpu", dtype=HALF):
        run_txt2img(pipe)
    assert seen.of("decoder")[0]["autocast"] is True
    harden(pipe)
    with probe(decoder=pipe.vae.decoder) as seen, torch.autocast("cpu", dtype=HALF):
        run_txt2img(pipe)
    assert seen.of("decoder")[0]["autocast"] is False and seen.of("decoder")[0]["weight"] == torch.float32


def test_vae_options_are_followed_and_can_change_by_hardening_again():
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    latent = torch.randn(1, 4, 8, 8, dtype=HALF)
    image = torch.rand(1, 3, 64, 64, dtype=HALF) * 2 - 1

    def observe(options):
        harden(pipe, img2img, options=options)
        with probe(decoder=vae.decoder, encoder=vae.encoder) as seen:
            decoded = vae.decode(latent).sample
            encoded = vae.encode(image).latent_dist.mean
        return seen.of("decoder")[0], seen.of("encoder")[0], decoded, encoded

    decoder, encoder, decoded, encoded = observe(SDFixSettings(vae_dtype="auto"))
    assert decoder["weight"] == HALF and not decoder["cudnn_tf32"] and not decoder["benchmark"]
    assert audit(pipe, img2img)["vae_precision"].present is True  # auto keeps the half VAE

    decoder, encoder, decoded, encoded = observe(SDFixSettings(guard_encode=False))
    assert decoder["weight"] == torch.float32 and decoded.dtype == torch.float32
    assert encoder["weight"] == HALF and encoder["cudnn_tf32"]

    decoder, encoder, decoded, encoded = observe(SDFixSettings())
    assert encoder["weight"] == torch.float32 and not encoder["cudnn_tf32"]
    assert encoded.dtype == HALF, "the pipeline goes on in the dtype it passed in"

    decoder, encoder, decoded, encoded = observe(SDFixSettings(precision_guard=False))
    assert decoder["weight"] == HALF and decoder["cudnn_tf32"] and decoded.dtype == HALF


def _oom(*args):
    error = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return error(*args)


def test_fp32_decode_out_of_memory_runs_tiled_then_in_half(monkeypatch):
    from lib_sdfix.vae import call as vae_call

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    report = harden(pipe, img2img)
    latent = torch.randn(1, 4, 32, 32, dtype=HALF)
    decoder_forward = vae.decoder.forward
    sizes = []

    def short_of_memory(z, *args, **kwargs):
        sizes.append((z.shape[-1], z.dtype))
        if z.dtype == torch.float32:
            raise _oom("CUDA out of memory (simulated)")
        return decoder_forward(z, *args, **kwargs)

    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    flags = read_flags()
    with torch.no_grad():
        out = vae.decode(latent).sample
    assert out.shape[-1] == 256 and out.dtype == torch.float32
    assert sizes == [(32, torch.float32)], "the whole latent once in fp32, then the tiled executor"
    notes = "; ".join(fix_report(pipe).notes)
    assert "VAE decode 256x256: tiled in fp32 (out of memory untiled" in notes
    assert fix_report(pipe).facts["tiled"] == "decode"
    assert read_flags() == flags and all(p.dtype == HALF for p in vae.parameters())
    monkeypatch.setattr(vae.decoder, "forward", decoder_forward)
    with torch.no_grad():
        unguarded = vae.decode(latent).sample  # the guard's untiled fp32 decode (it fits now)
    assert (out - unguarded).abs().max() < 1e-4, "tiled is the untiled result"

    def no_memory_at_all(*args, **kwargs):
        raise _oom("CUDA out of memory (simulated, tiled)")

    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    monkeypatch.setattr(vae_call, "run_network", no_memory_at_all)
    with probe(decoder=vae.decoder) as seen, torch.no_grad():
        out = vae.decode(latent).sample
    assert out.shape[-1] == 256
    last = seen.of("decoder")[-1]
    assert last["input"] == HALF and not last["cudnn_tf32"], "half decode, flags still guarded"
    assert "out of memory in fp32 (tiled too), ran in the VAE's own dtype" in "; ".join(fix_report(pipe).notes)
    assert all(p.dtype == HALF for p in vae.parameters()) and report.failed == {}


# --- the VAE after a guarded call: exactly as it was, offloaded or not ------------------------------


def _vae_snapshot(vae):
    """Everything about the VAE that a guarded call must leave as it was: each parameter and buffer
    object held by each submodule with its dtype and device, each accelerate hook, and what every
    offload hook's weights map holds (the tensor objects and their values)."""
    from lib_sdfix.diffusers.offload import hooks_on

    tensors, hooks, weights = {}, {}, {}
    for name, module in vae.named_modules():
        for kind in ("_parameters", "_buffers"):
            for leaf, tensor in getattr(module, kind).items():
                if tensor is not None:
                    tensors[f"{name}.{leaf}"] = (tensor, tensor.dtype, tensor.device)
        hooks[name] = (getattr(module, "_hf_hook", None), *hooks_on(module), module.__dict__.get("forward"))
        for hook in hooks_on(module):
            if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
                from accelerate.utils import named_module_tensors

                for leaf, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                    recurse=hook.place_submodules, remove_non_persistent=True):
                    value = hook.weights_map[leaf]
                    weights[f"{name}.{leaf}"] = (value, value.dtype, value.device, value.clone())
    return tensors, hooks, weights


def _assert_same_vae(before, after):
    (tensors, hooks, weights), (tensors_now, hooks_now, weights_now) = before, after
    assert tensors_now.keys() == tensors.keys()
    for name, (tensor, dtype, device) in tensors.items():
        now, dtype_now, device_now = tensors_now[name]
        assert now is tensor, f"{name}: another parameter object"
        assert (dtype_now, device_now) == (dtype, device), f"{name}: {dtype}/{device} -> {dtype_now}/{device_now}"
    for name, held in hooks.items():
        assert len(hooks_now[name]) == len(held) and all(a is b for a, b in zip(held, hooks_now[name])), name
    assert weights_now.keys() == weights.keys()
    for name, (value, dtype, device, data) in weights.items():
        now, dtype_now, device_now, _ = weights_now[name]
        assert now is value and (dtype_now, device_now) == (dtype, device) and torch.equal(now, data), name


@contextlib.contextmanager
def _convolutions_seen():
    """Every convolution that runs, anywhere: weight dtype, input dtype, flags (a copy of the VAE
    has none of the original's per-module hooks, so this watches all modules)."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    seen = []

    def hook(module, args):
        if isinstance(module, torch.nn.Conv2d):
            seen.append((module.weight.dtype, args[0].dtype, torch.backends.cudnn.allow_tf32,
                         torch.backends.cudnn.benchmark))

    handle = register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_guarded_vae_is_left_exactly_as_it_was_with_any_offload(offload):
    """Sequential offload keeps the weights in accelerate's weights map and swaps the parameter
    objects at every forward: casting them in place left a half-cast VAE that could not decode again."""
    import copy

    from lib_sdfix.precision import precision_guard

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    reference = copy.deepcopy(pipe.vae).float()  # the same weights in fp32, never offloaded
    if offload == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    elif offload == "sequential":
        enable_sequential_offload(pipe)
    vae = pipe.vae
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(HALF)
    with torch.no_grad(), precision_guard():
        expected = reference.decode(latent.float()).sample

    report = harden(pipe, img2img)
    assert report.failed == {}
    before = _vae_snapshot(vae)
    results = []
    for _ in range(3):
        with _convolutions_seen() as seen, torch.no_grad():
            results.append(vae.decode(latent).sample)
        assert seen and all(s == (torch.float32, torch.float32, False, False) for s in seen), set(seen)
        _assert_same_vae(before, _vae_snapshot(vae))
    assert all(r.dtype == torch.float32 and r.device.type == "cpu" for r in results)
    assert torch.equal(results[0], expected), "fp32 weights, fp32 latent: the fp32 VAE's own result"
    assert all(torch.equal(r, results[0]) for r in results[1:])

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(HALF) * 2 - 1
    with torch.no_grad():
        encoded = [vae.encode(image).latent_dist.mean for _ in range(2)]
    assert encoded[0].dtype == HALF and torch.equal(encoded[0], encoded[1])
    _assert_same_vae(before, _vae_snapshot(vae))

    first, second = run_txt2img(pipe), run_txt2img(pipe)  # decodes inside the pipeline, as a service runs them
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert fix_report(pipe).failed == {}
    if offload == "model":  # the pipeline re-registers its offload hooks after every call: diffusers' own doing
        before = (before[0], _vae_snapshot(vae)[1], before[2])
    _assert_same_vae(before, _vae_snapshot(vae))


def test_offloaded_vae_copy_is_built_once_follows_the_vae_and_has_a_fallback(monkeypatch):
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_module

    from lib_sdfix.diffusers import vae_copy as front

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    enable_sequential_offload(pipe)
    vae = pipe.vae
    harden(pipe, img2img)
    built = []
    monkeypatch.setattr(front.Fp32Copy, "_build", staticmethod(
        lambda *a, _build=front.Fp32Copy._build: built.append(1) or _build(*a)))
    latent = torch.randn(1, 4, 8, 8, dtype=HALF)
    with torch.no_grad():
        first = [vae.decode(latent).sample for _ in range(2)]
        vae.enable_tiling()
        vae.decode(latent)
    guard = vae._sdfix_vae_guard
    assert len(built) == 1 and guard.fp32.module.use_tiling is True, "cached, and it follows the VAE's settings"
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in guard.fp32.module.parameters())
    assert "fp32 copy" in "; ".join(fix_report(pipe).notes)

    remove_hook_from_module(vae, recurse=True)  # offload taken off and put on again: new weights map
    assert all(p.device.type == "cpu" and p.dtype == HALF for p in vae.parameters())
    vae.disable_tiling()
    cpu_offload(vae, torch.device("cpu"), offload_buffers=True)
    with torch.no_grad():
        assert torch.equal(vae.decode(latent).sample, first[0]) and len(built) == 2

    monkeypatch.setattr(front.Fp32Copy, "_build", staticmethod(
        lambda *a: (_ for _ in ()).throw(front.NoFp32Copy("no config"))))
    guard.fp32 = None
    with _convolutions_seen() as seen, torch.no_grad():
        out = vae.decode(latent).sample
    assert out.dtype == HALF and set(seen) == {(HALF, HALF, False, False)}, "own dtype, flags still guarded"
    assert all(p.dtype == HALF and p.device.type == "meta" for p in vae.parameters())
    assert "no config: ran in the VAE's own dtype" in "; ".join(fix_report(pipe).notes)
    assert fix_report(pipe).failed == {}


def test_audit_reports_the_fp32_peak_at_the_hires_size_and_whether_it_tiles(monkeypatch):
    from lib_sdfix.diffusers.state import HiresResize, record_hires_resize
    from lib_sdfix.vae.estimate import BUDGET_ENV

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    found = audit(pipe, img2img)["vae_precision"]
    memory = found.extra["fp32_memory"]
    side = 2 * pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert memory["available"] and memory["size"] == [side, side] and memory["tiled"] is False
    assert memory["fp32_bytes"] > memory["native_bytes"] and memory["size_source"].startswith("Hires 2x")
    assert f"fp32 decode at {side}x{side}" in found.detail and found.detail.endswith("untiled")
    again = audit(pipe, img2img).as_dict()["vae_precision"]["fp32_memory"]
    assert {k: v for k, v in again.items() if k != "available_bytes"} == \
        {k: v for k, v in memory.items() if k != "available_bytes"}  # the free memory moves

    record_hires_resize(pipe, HiresResize("LANCZOS", (64, 64), (96, 128), 1))
    monkeypatch.setenv(BUDGET_ENV, "0.0001")
    found = audit(pipe, img2img)["vae_precision"]
    memory = found.extra["fp32_memory"]
    assert (memory["size"], memory["size_source"], memory["tiled"]) == ([96, 128], "last Hires pass", True)
    assert found.detail.endswith(", tiled")


def test_a_guarded_decode_that_does_not_fit_runs_tiled_and_the_report_says_so(monkeypatch):
    from lib_sdfix.vae.estimate import BUDGET_ENV

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    harden(pipe, img2img)
    latent = torch.randn(2, 4, 16, 16, dtype=HALF)
    with torch.no_grad():
        untiled = vae.decode(latent).sample
        monkeypatch.setenv(BUDGET_ENV, "0.0001")
        tiled = vae.decode(latent).sample
    assert (tiled - untiled).abs().max() < 1e-4
    assert fix_report(pipe).facts["tiled"] == "decode"
    assert any(n.startswith("VAE decode 128x128: tiled in fp32") for n in fix_report(pipe).notes)
    assert all(p.dtype == HALF for p in vae.parameters()) and "forward" not in vars(vae.decoder)
