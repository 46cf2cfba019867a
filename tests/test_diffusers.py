"""The diffusers front on tiny random-weight pipelines: each of the five causes reproduced on an
unhardened txt2img/img2img pair, then gone after ``harden`` -- observed from inside the modules."""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lib_sdfix.diffusers import (  # noqa: E402
    CAUSES, audit, fix_report, harden, hires_fix, load_upscaler, unharden, UpscalerUnavailable,
)
from lib_sdfix.precision import read_flags  # noqa: E402
from lib_sdfix.settings import SDFixSettings  # noqa: E402
from .tiny_pipelines import (  # noqa: E402,F401 -- one_thread is an autouse fixture
    HALF, enable_offload_like_diffusers_0_27, enable_sequential_offload, one_thread, probe, sd15_pair, sdxl_pair,
    set_service_flags,
)

STEPS = 3


@pytest.fixture(autouse=True)
def service_flags():
    before = read_flags()
    set_service_flags()
    yield
    from lib_sdfix.precision import restore_flags

    restore_flags(before)


@pytest.fixture(scope="module")
def upscaler_file(tmp_path_factory):
    import safetensors.torch

    from lib_sdfix.diffusers_ab import tiny_esrgan_state_dict

    path = tmp_path_factory.mktemp("upscaler") / "tiny-realesrgan-x4.safetensors"
    safetensors.torch.save_file(tiny_esrgan_state_dict(), str(path))
    return path


def _embeds(pipe):
    """What Compel hands over with an fp32 text encoder: raw fp32 embeddings."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt="a face", device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=True, negative_prompt="blur")[:2]


def _txt2img(pipe, size=64, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("negative_prompt", "blur")
    return pipe(height=size, width=size, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="pil", **kwargs).images[0]


def _img2img(img2img, image, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("negative_prompt", "blur")
    return img2img(image=image, strength=0.6, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                   output_type="pil", **kwargs).images[0]


# --- 1. VAE precision -------------------------------------------------------------------------


def test_vae_runs_unguarded_in_half_with_tf32_on_until_hardened():
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    with probe(decoder=vae.decoder, encoder=vae.encoder) as seen:
        image = _txt2img(pipe)
        _img2img(img2img, image)
    for record in seen.of("decoder") + seen.of("encoder"):
        assert record["weight"] == HALF and record["input"] == HALF
        assert record["cudnn_tf32"] and record["matmul_tf32"] and record["benchmark"]
    found = audit(pipe, img2img)["vae_precision"]
    assert found.present and "bfloat16" in found.detail and "cudnn.allow_tf32" in found.detail

    harden(pipe, img2img)
    flags_before = read_flags()
    with probe(decoder=vae.decoder, encoder=vae.encoder) as seen:
        image = _txt2img(pipe)
        _img2img(img2img, image)
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
        _txt2img(pipe)
    assert seen.of("decoder")[0]["autocast"] is True
    harden(pipe)
    with probe(decoder=pipe.vae.decoder) as seen, torch.autocast("cpu", dtype=HALF):
        _txt2img(pipe)
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


def test_fp32_decode_out_of_memory_falls_back_to_tiles_then_to_half(monkeypatch):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    vae = pipe.vae
    report = harden(pipe, img2img)
    latent = torch.randn(1, 4, 32, 32, dtype=HALF)  # twice the VAE's tile (16 latents)
    decoder_forward = vae.decoder.forward
    sizes = []

    def short_of_memory(z, *args, **kwargs):
        sizes.append((z.shape[-1], z.dtype))
        if z.dtype == torch.float32 and z.shape[-1] > 16:
            raise _oom("CUDA out of memory (simulated)")
        return decoder_forward(z, *args, **kwargs)

    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    flags = read_flags()
    out = vae.decode(latent).sample
    assert out.shape[-1] == 256 and out.dtype == torch.float32
    assert sizes[0] == (32, torch.float32) and all(s <= 16 and d == torch.float32 for s, d in sizes[1:]) and len(sizes) > 2
    assert "ran tiled in fp32" in "; ".join(fix_report(pipe).notes)
    assert vae.use_tiling is False and read_flags() == flags and all(p.dtype == HALF for p in vae.parameters())

    def always_short_in_fp32(z, *args, **kwargs):
        sizes.append((z.shape[-1], z.dtype))
        if z.dtype == torch.float32:
            raise _oom("CUDA out of memory (simulated)")
        return decoder_forward(z, *args, **kwargs)

    monkeypatch.setattr(vae.decoder, "forward", always_short_in_fp32)
    with probe(decoder=vae.decoder) as seen:
        out = vae.decode(latent).sample
    assert out.shape[-1] == 256
    last = seen.of("decoder")[-1]
    assert last["input"] == HALF and not last["cudnn_tf32"], "half decode, flags still guarded"
    assert "ran in the VAE's own dtype" in "; ".join(fix_report(pipe).notes)
    assert all(p.dtype == HALF for p in vae.parameters()) and report.failed == {}


# --- the VAE after a guarded call: exactly as it was, offloaded or not ------------------------------


def _vae_snapshot(vae):
    """Everything about the VAE that a guarded call must leave as it was: each parameter and buffer
    object held by each submodule with its dtype and device, each accelerate hook, and what every
    offload hook's weights map holds (the tensor objects and their values)."""
    from lib_sdfix.diffusers import _hooks_on

    tensors, hooks, weights = {}, {}, {}
    for name, module in vae.named_modules():
        for kind in ("_parameters", "_buffers"):
            for leaf, tensor in getattr(module, kind).items():
                if tensor is not None:
                    tensors[f"{name}.{leaf}"] = (tensor, tensor.dtype, tensor.device)
        hooks[name] = (getattr(module, "_hf_hook", None), *_hooks_on(module), module.__dict__.get("forward"))
        for hook in _hooks_on(module):
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

    first, second = _txt2img(pipe), _txt2img(pipe)  # decodes inside the pipeline, as a service runs them
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert fix_report(pipe).failed == {}
    if offload == "model":  # the pipeline re-registers its offload hooks after every call: diffusers' own doing
        before = (before[0], _vae_snapshot(vae)[1], before[2])
    _assert_same_vae(before, _vae_snapshot(vae))


def test_offloaded_vae_copy_is_built_once_follows_the_vae_and_has_a_fallback(monkeypatch):
    import lib_sdfix.diffusers as front
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_module

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    enable_sequential_offload(pipe)
    vae = pipe.vae
    harden(pipe, img2img)
    built = []
    monkeypatch.setattr(front._Fp32Vae, "_build", staticmethod(
        lambda *a, _build=front._Fp32Vae._build: built.append(1) or _build(*a)))
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

    monkeypatch.setattr(front._Fp32Vae, "_build", staticmethod(
        lambda *a: (_ for _ in ()).throw(front._NoFp32Copy("no config"))))
    guard.fp32 = None
    with _convolutions_seen() as seen, torch.no_grad():
        out = vae.decode(latent).sample
    assert out.dtype == HALF and set(seen) == {(HALF, HALF, False, False)}, "own dtype, flags still guarded"
    assert all(p.dtype == HALF and p.device.type == "meta" for p in vae.parameters())
    assert "no config: ran in the VAE's own dtype" in "; ".join(fix_report(pipe).notes)
    assert fix_report(pipe).failed == {}


# --- 2. prompt embeddings ----------------------------------------------------------------------


def test_fp32_embeddings_reach_the_half_unet_until_hardened():
    pipe, img2img = sd15_pair(text_encoder_dtype=torch.float32, scheduler_mismatch=False)
    embeds, negative = _embeds(pipe)
    assert embeds.dtype == torch.float32
    init = Image.new("RGB", (64, 64), (120, 90, 70))
    with probe(unet=pipe.unet) as seen, pytest.raises(RuntimeError, match="dtype|BFloat16"):
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=64, width=64, num_inference_steps=STEPS)
    assert seen.of("unet")[0]["encoder_hidden_states"] == torch.float32 and seen.of("unet")[0]["input"] == torch.float32
    with pytest.raises(RuntimeError, match="dtype|BFloat16"):  # the init image follows the embeddings' dtype too
        _img2img(img2img, init, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert audit(pipe, img2img)["embeds_dtype"].present is True

    harden(pipe, img2img)
    with probe(unet=pipe.unet) as seen:
        image = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=64, width=64,
                     num_inference_steps=STEPS, output_type="pil").images[0]
        _img2img(img2img, image, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
        _img2img(img2img, image)  # the pipeline's own fp32 text encoder
    assert len(seen.of("unet")) == STEPS + 2 * int(STEPS * 0.6)
    for record in seen.of("unet"):
        assert record["encoder_hidden_states"] == HALF and record["input"] == HALF
    assert audit(pipe, img2img)["embeds_dtype"].present is False
    assert "prompt embeddings cast float32 -> bfloat16" in fix_report(pipe).notes


def test_embeddings_also_move_to_the_execution_device():
    """Compel on a CPU text encoder hands over CPU tensors; the UNet runs elsewhere ("meta" stands
    in for the GPU here)."""
    from lib_sdfix.diffusers import cast_prompt_embeds
    from lib_sdfix.failsafe import FixReport

    class Pipe:
        def __init__(self):
            self.unet = torch.nn.Linear(2, 2).to(HALF)
            self._execution_device = torch.device("meta")

        def encode_prompt(self, prompt):
            return torch.ones(1, 3), None, torch.ones(1, 2, dtype=HALF, device="meta")

    pipe, report = Pipe(), FixReport()
    assert cast_prompt_embeds(pipe, report) is True and cast_prompt_embeds(pipe, report) is False
    embeds, missing, pooled = pipe.encode_prompt("a face")
    assert (embeds.device.type, embeds.dtype) == ("meta", HALF) and missing is None and pooled.device.type == "meta"
    assert report.notes == ["prompt embeddings cast float32 -> bfloat16 (moved cpu -> meta)"]


def test_sdxl_pair_is_hardened_end_to_end():
    pipe, img2img = sdxl_pair(text_encoder_dtype=torch.float32)
    before = audit(pipe, img2img)
    assert before["embeds_dtype"].present and "text_encoder_2 float32" in before["embeds_dtype"].detail
    assert before["scheduler_mismatch"].present is False  # shares the checkpoint's Euler
    harden(pipe, img2img)
    with probe(unet=pipe.unet, decoder=pipe.vae.decoder, encoder=pipe.vae.encoder) as seen:
        image = pipe(prompt="a face", height=64, width=64, num_inference_steps=STEPS, output_type="pil",
                     generator=torch.Generator().manual_seed(0)).images[0]
        out = img2img(prompt="a face", image=image, strength=0.6, num_inference_steps=STEPS, output_type="pil").images[0]
    assert out.size == (64, 64)
    for record in seen.of("unet"):
        assert record["encoder_hidden_states"] == HALF
        assert set(record["added_cond_kwargs"].values()) == {HALF}
    for record in seen.of("decoder") + seen.of("encoder"):
        assert record["weight"] == torch.float32 and not record["cudnn_tf32"]
    assert all(p.dtype == HALF for p in pipe.vae.parameters())
    assert audit(pipe, img2img).present == []


# --- 3. CPU-offload hooks ------------------------------------------------------------------------


def _offload_hooks(module):
    from lib_sdfix.diffusers import _offload_hooks_on

    return _offload_hooks_on(module)


def _assert_one_shared_chain(pipe, img2img):
    hooks = pipe._all_hooks
    assert img2img._all_hooks is hooks
    by_module = {id(h.model): h for h in hooks}
    for name in ("text_encoder", "unet", "vae"):
        module = getattr(pipe, name)
        attached = _offload_hooks(module)
        assert len(attached) == 1 and attached[0] is by_module[id(module)].hook, name
    assert by_module[id(pipe.unet)].hook.prev_module_hook is by_module[id(pipe.text_encoder)]
    assert by_module[id(pipe.vae)].hook.prev_module_hook is by_module[id(pipe.unet)]


@pytest.fixture
def pre_forward_counter(monkeypatch):
    from accelerate.hooks import CpuOffload

    counts = {}
    original = CpuOffload.pre_forward

    def counting(self, module, *args, **kwargs):
        counts[id(module)] = counts.get(id(module), 0) + 1
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", counting)
    return counts


def _diffusers_version():
    import diffusers

    return tuple(int(part) for part in diffusers.__version__.split(".")[:2])


def test_two_enable_model_cpu_offload_calls_compete_until_hardened(pre_forward_counter):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False, offload=True)
    found = audit(pipe, img2img)["offload_hooks"]
    assert found.present and "both pipelines called enable_model_cpu_offload() on the shared" in found.detail
    if _diffusers_version() >= (0, 28):  # the second call removed the first pipeline's hooks
        assert "txt2img pipeline's hooks are no longer attached" in found.detail
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in pipe._all_hooks)
        _txt2img(pipe)  # diffusers' cleanup re-registers txt2img's hooks: now img2img's are stale
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in img2img._all_hooks)
    else:  # up to 0.27 it stacked a second hook on every shared module
        assert "unet has 2 CPU-offload hooks stacked" in found.detail
        _txt2img(pipe)  # txt2img's cleanup removed both hooks and put back only its own
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in img2img._all_hooks)
    assert audit(pipe, img2img)["offload_hooks"].present

    report = harden(pipe, img2img)
    assert "offload_hooks" in report.changed and report.after["offload_hooks"].present is False
    _assert_one_shared_chain(pipe, img2img)
    pre_forward_counter.clear()
    image = _txt2img(pipe)
    assert pre_forward_counter[id(pipe.unet)] == STEPS and pre_forward_counter[id(pipe.text_encoder)] == 2
    _assert_one_shared_chain(pipe, img2img)
    _img2img(img2img, image)
    _assert_one_shared_chain(pipe, img2img)
    assert audit(pipe, img2img)["offload_hooks"].present is False


def test_hooks_stacked_by_old_diffusers_are_collapsed_to_one(pre_forward_counter):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    enable_offload_like_diffusers_0_27(pipe)
    enable_offload_like_diffusers_0_27(img2img)
    assert len(_offload_hooks(pipe.unet)) == 2
    found = audit(pipe, img2img)["offload_hooks"]
    assert found.present and "unet has 2 CPU-offload hooks stacked" in found.detail
    with torch.no_grad():
        pipe.unet(torch.randn(2, 4, 8, 8, dtype=HALF), 10, encoder_hidden_states=torch.randn(2, 77, 32, dtype=HALF))
    assert pre_forward_counter[id(pipe.unet)] == 2, "each forward ran two offload hooks"

    harden(pipe, img2img)
    _assert_one_shared_chain(pipe, img2img)
    pre_forward_counter.clear()
    with torch.no_grad():
        pipe.unet(torch.randn(2, 4, 8, 8, dtype=HALF), 10, encoder_hidden_states=torch.randn(2, 77, 32, dtype=HALF))
    assert pre_forward_counter[id(pipe.unet)] == 1
    assert audit(pipe, img2img)["offload_hooks"].present is False


def test_sequential_offload_is_left_alone():
    from accelerate import cpu_offload

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    cpu_offload(pipe.unet, execution_device="cpu")
    hooks_before = {name: getattr(m, "_hf_hook", None) for name, m in pipe.unet.named_modules()}
    report = harden(pipe, img2img)
    assert "offload_hooks" not in report.changed
    assert {name: getattr(m, "_hf_hook", None) for name, m in pipe.unet.named_modules()} == hooks_before


# --- 4. scheduler parity -------------------------------------------------------------------------


def test_img2img_falls_back_to_pndm_until_hardened(monkeypatch):
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF)
    stepped = []
    for cls in (PNDMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler):
        original = cls.step
        monkeypatch.setattr(cls, "step", lambda self, *a, _o=original, **k: (stepped.append(self), _o(self, *a, **k))[1])
    found = audit(pipe, img2img)["scheduler_mismatch"]
    assert found.present and found.detail == (
        "Hires sampler PNDMScheduler -> DPMSolverMultistepScheduler(dpmsolver++); Hires schedule Automatic -> Karras")
    _img2img(img2img, Image.new("RGB", (64, 64)))
    assert {type(s) for s in stepped} == {PNDMScheduler}

    harden(pipe, img2img)
    theirs, ours = img2img.scheduler, pipe.scheduler
    assert type(theirs) is DPMSolverMultistepScheduler and theirs is not ours
    assert theirs.config.use_karras_sigmas is True and theirs.config.final_sigmas_type == "sigma_min"
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == \
        {k: v for k, v in ours.config.items() if not k.startswith("_")}
    stepped.clear()
    _img2img(img2img, Image.new("RGB", (64, 64)))
    assert stepped and all(s is theirs for s in stepped)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert torch.equal(ours.sigmas, theirs.sigmas), "the same Karras sigmas"
    assert audit(pipe, img2img)["scheduler_mismatch"].present is False

    # A scheduler swapped after harden() is followed by the next Hires pass.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    assert audit(pipe, img2img)["scheduler_mismatch"].present is True
    hires_fix(pipe, img2img, prompt="a face", width=64, height=64, scale=1.5, num_inference_steps=STEPS, seed=1)
    assert type(img2img.scheduler) is EulerDiscreteScheduler


# --- 5. Hires resize ---------------------------------------------------------------------------------


@pytest.fixture
def resizes(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        if tuple(size) != self.size:
            calls.append((self.size, tuple(size), resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return calls


def test_hires_resizes_with_bilinear_until_hardened_then_once_with_lanczos(upscaler_file, resizes):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF)
    upscaler = load_upscaler(upscaler_file, device="cpu")
    assert (upscaler.backend, upscaler.scale) == ("spandrel", 4)
    assert audit(pipe, img2img)["hires_resize"].present is None  # nothing seen yet

    unfixed = hires_fix(pipe, img2img, prompt="a face", width=64, height=64, scale=2, num_inference_steps=STEPS,
                        seed=3, upscaler=upscaler, options=SDFixSettings(enabled=False))
    assert unfixed.upscaled.size == (256, 256) and unfixed.image.size == (128, 128)
    assert resizes == [((256, 256), (128, 128), Image.BILINEAR)]
    assert audit(pipe, img2img)["hires_resize"].present is True

    resizes.clear()
    harden(pipe, img2img)
    fixed = hires_fix(pipe, img2img, prompt="a face", width=64, height=64, scale=2, num_inference_steps=STEPS,
                      seed=3, upscaler=upscaler)
    assert resizes == [((256, 256), (128, 128), Image.LANCZOS)], "one LANCZOS pass from the upscaler's native output"
    assert fixed.resize == {"filter": "LANCZOS", "from": [256, 256], "to": [128, 128], "passes": 1}
    assert audit(pipe, img2img)["hires_resize"].present is False
    assert set(fixed.timings) == {"txt2img", "upscale", "resize", "img2img"}


# --- harden as a whole -------------------------------------------------------------------------------


def _wrappers(pipe, img2img):
    return (pipe.vae.__dict__.get("decode"), pipe.vae.__dict__.get("encode"), pipe.__dict__.get("encode_prompt"),
            img2img.__dict__.get("encode_prompt"), pipe.__dict__.get("enable_model_cpu_offload"),
            img2img.__dict__.get("enable_model_cpu_offload"), pipe._all_hooks, img2img.scheduler, *pipe._all_hooks)


def test_harden_twice_is_harden_once():
    pipe, img2img = sd15_pair(text_encoder_dtype=torch.float32, offload=True)
    first = harden(pipe, img2img)
    assert set(first.before.present) == {"vae_precision", "embeds_dtype", "offload_hooks", "scheduler_mismatch"}
    assert first.after.present == []
    state = _wrappers(pipe, img2img)
    assert all(w is not None for w in state)
    image_once = _txt2img(pipe)
    state = _wrappers(pipe, img2img)  # the call rebuilt the shared chain, as diffusers does
    second = harden(pipe, img2img)
    assert second.changed == () and second.after.present == []
    again = _wrappers(pipe, img2img)
    assert len(again) == len(state) and all(a is b for a, b in zip(again, state))
    assert not hasattr(pipe.vae.decode.__sdfix_wraps__, "__sdfix_wraps__"), "wrapped once, not twice"
    image_twice = _txt2img(pipe)
    assert np.array_equal(np.asarray(image_once), np.asarray(image_twice))


def test_disabled_options_and_unharden_give_the_plain_pipeline_back():
    plain, plain_img2img = sd15_pair(text_encoder_dtype=HALF)
    reference = _txt2img(plain)
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF)
    harden(pipe, img2img)
    report = harden(pipe, img2img, options=SDFixSettings(enabled=False))
    assert "decode" not in pipe.vae.__dict__ and "encode" not in pipe.vae.__dict__
    assert "encode_prompt" not in pipe.__dict__ and "encode_prompt" not in img2img.__dict__
    assert fix_report(pipe) is None and report.after["vae_precision"].present is True
    assert np.array_equal(np.asarray(_txt2img(pipe)), np.asarray(reference))
    harden(pipe, img2img)
    unharden(pipe, img2img)
    assert "decode" not in pipe.vae.__dict__


def test_unknown_fix_names_and_an_empty_hires_pass_are_rejected():
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF)
    with pytest.raises(ValueError, match="unknown fixes"):
        harden(pipe, img2img, fixes=("vae_precision", "sharpen"))
    with pytest.raises(ValueError, match="would run 0 steps"):
        hires_fix(pipe, img2img, prompt="a face", num_inference_steps=2, strength=0.35)


def test_a_failing_fix_is_reported_and_the_rest_still_apply(monkeypatch):
    from lib_sdfix import diffusers as front

    pipe, img2img = sd15_pair(text_encoder_dtype=torch.float32, offload=True)
    monkeypatch.setattr(front, "share_offload_chain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no accelerate")))
    report = harden(pipe, img2img)
    assert report.failed == {"offload_hooks": "RuntimeError: no accelerate"}
    assert report.after["offload_hooks"].present is True
    assert report.after["vae_precision"].present is False and report.after["scheduler_mismatch"].present is False


def test_each_fix_alone_fixes_only_its_cause():
    for cause in CAUSES[:4]:
        pipe, img2img = sd15_pair(text_encoder_dtype=torch.float32, offload=True)
        report = harden(pipe, img2img, fixes=(cause,))
        assert cause not in report.after.present
        assert set(report.after.present) == {"vae_precision", "embeds_dtype", "offload_hooks", "scheduler_mismatch"} - {cause}


# --- upscaler loading ------------------------------------------------------------------------------


def test_upscaler_loads_pth_and_safetensors_through_spandrel(tmp_path, upscaler_file):
    from lib_sdfix.diffusers_ab import tiny_esrgan_state_dict

    pth = tmp_path / "tiny.pth"
    torch.save(tiny_esrgan_state_dict(), pth)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8))
    outputs = []
    for path in (pth, upscaler_file):
        upscaler = load_upscaler(path, device="cpu", backend="spandrel")
        assert upscaler.name == "ESRGAN x4" and upscaler.scale == 4
        outputs.append(np.asarray(upscaler(image)))
    assert outputs[0].shape == (96, 80, 3)
    assert np.array_equal(outputs[0], outputs[1]), "same weights, same output, whichever file format"
    assert not np.array_equal(outputs[0], np.asarray(image.resize((80, 96), Image.NEAREST)))


def test_realesrgan_backend_is_optional(monkeypatch, upscaler_file):
    monkeypatch.setitem(sys.modules, "basicsr", None)  # what a torchvision without functional_tensor leaves
    monkeypatch.setitem(sys.modules, "basicsr.archs.rrdbnet_arch", None)
    with pytest.raises(UpscalerUnavailable, match="realesrgan backend does not import"):
        load_upscaler(upscaler_file, device="cpu", backend="realesrgan")
    assert load_upscaler(upscaler_file, device="cpu").backend == "spandrel"
    with pytest.raises(ValueError, match="backend must be"):
        load_upscaler(upscaler_file, backend="opencv")


def test_spandrel_import_leaves_no_torchvision_stand_in_behind(upscaler_file):
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys, importlib.util
        from lib_sdfix.diffusers import load_upscaler
        real = importlib.util.find_spec("torchvision") is not None
        up = load_upscaler({str(upscaler_file)!r}, device="cpu")
        tv = sys.modules.get("torchvision")
        print(up.backend, real, tv is None or getattr(tv, "__file__", None) is not None)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    backend, _, clean = out.stdout.split()
    assert backend == "spandrel" and clean == "True"
