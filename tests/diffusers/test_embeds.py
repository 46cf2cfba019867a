"""Cause embeds_dtype: fp32 prompt embeddings reach a half UNet until hardened; then they arrive in the
UNet's dtype, on the execution device."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch
from PIL import Image

from lib_sdfix.diffusers import audit, fix_report, harden

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    STEPS,
    one_thread,
    probe,
    prompt_embeds_of,
    run_img2img,
    sd15_pair,
    service_flags,
)

# --- 2. prompt embeddings ----------------------------------------------------------------------


def test_fp32_embeddings_reach_the_half_unet_until_hardened():
    pipe, img2img = sd15_pair(text_encoder_dtype=torch.float32, scheduler_mismatch=False)
    embeds, negative = prompt_embeds_of(pipe)
    assert embeds.dtype == torch.float32
    init = Image.new("RGB", (64, 64), (120, 90, 70))
    with probe(unet=pipe.unet) as seen, pytest.raises(RuntimeError, match="dtype|BFloat16"):
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=64, width=64, num_inference_steps=STEPS)
    assert seen.of("unet")[0]["encoder_hidden_states"] == torch.float32 and seen.of("unet")[0]["input"] == torch.float32
    with pytest.raises(RuntimeError, match="dtype|BFloat16"):  # the init image follows the embeddings' dtype too
        run_img2img(img2img, init, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert audit(pipe, img2img)["embeds_dtype"].present is True

    harden(pipe, img2img)
    with probe(unet=pipe.unet) as seen:
        image = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=64, width=64,
                     num_inference_steps=STEPS, output_type="pil").images[0]
        run_img2img(img2img, image, prompt=None, negative_prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
        run_img2img(img2img, image)  # the pipeline's own fp32 text encoder
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
