"""The Hires pass (one float resize, guarded encode/decode, the given sampler) and the late refine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lib_sdfix.resize as core_resize
from lib_sdfix.comfy.hires import hires_pass, resize_float, target_size
from lib_sdfix.comfy.inputs import InputError
from lib_sdfix.comfy.nodes import SDFixHiresPass, SDFixLateRefine
from lib_sdfix.comfy.refine import late_refine
from lib_sdfix.refine import refine_seed

from .fakes import FakeModel, FakeUpscaleModel, FakeVAE


@pytest.mark.parametrize("size, scale, width, height, expected", [
    ((64, 48), 2.0, 0, 0, (128, 96)), ((64, 48), 1.5, 0, 0, (96, 72)), ((64, 48), 2.0, 200, 0, (200, 152)),
    ((64, 48), 2.0, 0, 100, (136, 104)), ((64, 48), 2.0, 80, 80, (80, 80)), ((64, 64), 0.25, 0, 0, (16, 16)),
])
def test_target_size(size, scale, width, height, expected):
    assert target_size(size, scale, width, height) == expected


def test_target_size_refuses_huge_sizes_naming_the_input():
    with pytest.raises(InputError, match="^scale_by: "):
        target_size((4096, 4096), 8.0, 0, 0)


def test_resize_float_is_one_lanczos_pass_on_float_planes(monkeypatch):
    calls = []
    original = core_resize.resize_after_upscale

    def spy(image, size, filter_name="LANCZOS"):
        calls.append((image.mode, image.size, tuple(size), filter_name))
        return original(image, size, filter_name)

    monkeypatch.setattr(core_resize, "resize_after_upscale", spy)
    images = torch.rand(2, 20, 30, 3, generator=torch.manual_seed(0))
    out = resize_float(images, 45, 30)
    assert out.shape == (2, 30, 45, 3) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert calls == [("F", (30, 20), (45, 30), "LANCZOS")] * 6
    plane = Image.fromarray(images[1, :, :, 2].numpy()).resize((45, 30), Image.Resampling.LANCZOS)
    assert np.allclose(out[1, :, :, 2].numpy(), np.clip(np.asarray(plane), 0, 1))
    assert not np.allclose(out.numpy() * 255, np.round(out.numpy() * 255))  # never went through 8 bits
    assert resize_float(images, 30, 20) is images


def _cond():
    return [[torch.zeros(1, 2, 4), {}]]


def _run(comfy, **kw):
    args = dict(model=FakeModel(), positive=_cond(), negative=_cond(), vae=FakeVAE(), seed=7, steps=6, cfg=5.0,
                sampler_name="dpmpp_2m", scheduler="karras", denoise=0.4, scale_by=2.0, width=0, height=0,
                resize_filter="LANCZOS")
    args.update(kw)
    return hires_pass(**args)


def test_hires_pass_from_a_latent(comfy, monkeypatch):
    resizes = []
    original = core_resize.resize_after_upscale
    monkeypatch.setattr(core_resize, "resize_after_upscale",
                        lambda im, size, f="LANCZOS": resizes.append((im.mode, im.size, size)) or original(im, size, f))
    vae = FakeVAE()
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.manual_seed(1)), "batch_index": [3]}
    result = _run(comfy, vae=vae, latent=latent)
    assert [c["kind"] for c in vae.calls] == ["decode", "encode", "decode"]
    assert all(c["vae_dtype"] == torch.float32 for c in vae.calls)  # every VAE call guarded
    assert resizes == [("F", (32, 32), (64, 64))] * 3  # once per plane, first pass -> target
    [sampling] = comfy.SAMPLINGS
    assert (sampling["sampler"], sampling["scheduler"], sampling["seed"], sampling["steps"], sampling["denoise"]) == \
        ("dpmpp_2m", "karras", 7, 6, 0.4)
    assert sampling["shape"] == (1, 4, 16, 16)
    assert result.latent["batch_index"] == [3] and result.image.shape == (1, 64, 64, 3)
    assert "resized once, 32x32 -> 64x64, LANCZOS on float32" in result.report
    assert result.report.count("precision_guard: applied") == 2 and "guard_encode: applied" in result.report


def test_hires_pass_with_an_upscale_model_resizes_once_from_its_native_output(comfy, monkeypatch):
    resizes = []
    original = core_resize.resize_after_upscale
    monkeypatch.setattr(core_resize, "resize_after_upscale",
                        lambda im, size, f="LANCZOS": resizes.append((im.size, size)) or original(im, size, f))
    image = torch.rand(1, 32, 32, 3, generator=torch.manual_seed(4))
    result = _run(comfy, image=image, scale_by=1.5, upscale_model=FakeUpscaleModel(2))
    assert comfy.UPSCALES == [(1, 32, 32, 3)]
    assert resizes == [((64, 64), (48, 48))] * 3
    assert result.image.shape == (1, 48, 48, 3)
    exact = _run(comfy, image=image, scale_by=4.0, upscale_model=FakeUpscaleModel(2))  # two model passes, no resize
    assert comfy.UPSCALES[1:] == [(1, 32, 32, 3), (1, 64, 64, 3)] and "no resize" in exact.report


@pytest.mark.parametrize("given", [{}, {"both": True}])
def test_hires_pass_needs_exactly_one_of_latent_and_image(comfy, given):
    kw = {"latent": {"samples": torch.zeros(1, 4, 8, 8)}, "image": torch.zeros(1, 32, 32, 3)} if given else {}
    with pytest.raises(InputError, match="^latent: "):
        _run(comfy, **kw)


def test_hires_node_names_bad_inputs(comfy):
    node = SDFixHiresPass()
    args = dict(model=FakeModel(), positive=_cond(), negative=_cond(), vae=FakeVAE(), seed=1, steps=4, cfg=5.0,
                sampler_name="euler", scheduler="simple", denoise=0.5, scale_by=2.0, width=0, height=0,
                resize_filter="LANCZOS", image=torch.zeros(1, 32, 32, 3))
    for key, value, name in [("sampler_name", "Euler a", "sampler_name"), ("scheduler", "Karras", "scheduler"),
                             ("denoise", 1.5, "denoise"), ("resize_filter", "NEAREST", "resize_filter"),
                             ("steps", 0, "steps"), ("image", torch.zeros(32, 32, 3), "image")]:
        with pytest.raises(InputError, match=f"^{name}: "):
            node.run(**{**args, key: value})


def test_late_refine_reruns_the_tail_of_the_pass_schedule(comfy):
    from .fakes import FakeKSampler

    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.manual_seed(5))}
    out, report = late_refine(FakeModel(), _cond(), _cond(), latent, 1234, 20, 6.0, "euler", "karras", 1.0, 0.3)
    [sampling] = comfy.SAMPLINGS
    pass_sigmas = FakeKSampler(None, 20, None, "euler", "karras", 1.0).sigmas
    assert sampling["start_step"] == 14 and sampling["seed"] == refine_seed(1234)
    assert sampling["sigmas"] == pass_sigmas[14:].tolist() and len(sampling["sigmas"]) == 7  # the last 6 steps
    assert (sampling["sampler"], sampling["scheduler"], sampling["cfg"], sampling["steps"]) == ("euler", "karras", 6.0, 20)
    assert "re-ran the last 6 of 20 steps (strength 0.3)" in report and f"noise seed {refine_seed(1234)}" in report
    again, _ = late_refine(FakeModel(), _cond(), _cond(), latent, 1234, 20, 6.0, "euler", "karras", 1.0, 0.3)
    assert torch.equal(out["samples"], again["samples"])  # repeatable by seed


def test_late_refine_with_the_pass_denoise_uses_its_shortened_schedule(comfy):
    from .fakes import FakeKSampler

    latent = {"samples": torch.randn(1, 4, 8, 8)}
    late_refine(FakeModel(), _cond(), _cond(), latent, 3, 10, 6.0, "euler", "normal", 0.5, 0.5)
    pass_sigmas = FakeKSampler(None, 10, None, "euler", "normal", 0.5).sigmas
    assert comfy.SAMPLINGS[0]["sigmas"] == pass_sigmas[5:].tolist() and comfy.SAMPLINGS[0]["denoise"] == 0.5


def test_late_refine_rounding_to_no_step_leaves_the_latent(comfy):
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    out, report = late_refine(FakeModel(), _cond(), _cond(), latent, 3, 4, 6.0, "euler", "normal", 1.0, 0.1)
    assert out is latent and not comfy.SAMPLINGS and "rounds to 0 steps" in report


def test_late_refine_node_checks_its_strength(comfy):
    node = SDFixLateRefine()
    args = dict(model=FakeModel(), positive=_cond(), negative=_cond(), latent={"samples": torch.zeros(1, 4, 8, 8)},
                seed=1, steps=10, cfg=5.0, sampler_name="euler", scheduler="simple", denoise=1.0)
    for value in (0.8, 0.01, float("nan"), True):
        with pytest.raises(InputError, match="^late_refine_strength: "):
            node.refine(**args, late_refine_strength=value)
    with pytest.raises(InputError, match="^latent: "):
        node.refine(**{**args, "latent": torch.zeros(1, 4, 8, 8)}, late_refine_strength=0.3)
