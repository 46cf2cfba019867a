"""SDFix A/B Compare and VAE Round Trip nodes on the fake ComfyUI."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.comfy.inputs import InputError
from lib_sdfix.comfy.nodes import SDFixABCompare, SDFixVAERoundTrip

from .fakes import FakeVAE


def _image(seed, size=(32, 32), batch=1):
    return torch.rand(batch, size[1], size[0], 3, generator=torch.manual_seed(seed))


def test_ab_of_identical_images():
    heat, table, text = SDFixABCompare().compare(_image(1), _image(1), 4.0, "ComfyUI", "SDFix")
    assert heat.shape == (1, 32, 32, 3) and float(heat.max()) < 0.2  # no difference: the colormap's floor
    assert table.ndim == 4 and table.shape[-1] == 3
    assert "PSNR dB" in text and "SSIM" in text and "HF ratio" in text and "SDFix is identical to ComfyUI." in text
    assert "ComfyUI (reference)" in text


def test_ab_of_different_images_in_a_batch():
    heat, _, text = SDFixABCompare().compare(_image(1, batch=2), _image(2, batch=2), 8.0)
    assert heat.shape == (2, 32, 32, 3)
    assert "#0 A (reference)" in text and "#1 B" in text and "identical" not in text


def test_ab_names_the_bad_input():
    node = SDFixABCompare()
    with pytest.raises(InputError, match="^image_b: 16x32, but image_a is 32x32"):
        node.compare(_image(1), _image(2, (16, 32)), 4.0)
    with pytest.raises(InputError, match="^image_a: "):
        node.compare(torch.zeros(3, 32, 32), _image(2), 4.0)
    with pytest.raises(InputError, match="^heatmap_gain: "):
        node.compare(_image(1), _image(2), 100.0)


def test_vae_round_trip_in_each_precision(comfy):
    vae = FakeVAE()
    before = [p.data_ptr() for p in vae.first_stage_model.parameters()]
    grid, heat, table, text = SDFixVAERoundTrip().round_trip(_image(3, (36, 32)), vae, "comfyui, precision_guard, fp32, bf16", 4.0)
    assert grid.ndim == 4 and heat.ndim == 4 and table.ndim == 4
    for label in ("as loaded by ComfyUI (bf16)", "precision_guard + guard_encode", "fp32", "bf16", "original (reference)"):
        assert label in text
    assert "image cropped from 36x32 to 32x32" in text
    assert "finding " in text  # a random VAE cannot reproduce anything: vae_capacity at least
    assert vae.vae_dtype == torch.bfloat16 and [p.data_ptr() for p in vae.first_stage_model.parameters()] == before
    assert all(p.dtype == torch.bfloat16 for p in vae.first_stage_model.parameters())


def test_vae_round_trip_names_unknown_precisions(comfy):
    with pytest.raises(InputError, match="^precisions: unknown precision 'fp8'"):
        SDFixVAERoundTrip().round_trip(_image(3), FakeVAE(), "fp32,fp8", 4.0)


def test_vae_round_trip_default_precisions(comfy):
    *_, text = SDFixVAERoundTrip().round_trip(_image(3), FakeVAE(), "", 4.0)
    assert "as loaded by ComfyUI (bf16)" in text and "precision_guard + guard_encode" in text
