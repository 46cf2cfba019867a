"""Cause scheduler_mismatch: the img2img pass runs the checkpoint's PNDM until hardened; then the
txt2img scheduler's class and config, followed by the next Hires pass."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch
from PIL import Image

from lib_sdfix.diffusers import audit, harden, hires_fix

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    STEPS,
    one_thread,
    run_img2img,
    sd15_pair,
    service_flags,
)

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
    run_img2img(img2img, Image.new("RGB", (64, 64)))
    assert {type(s) for s in stepped} == {PNDMScheduler}

    harden(pipe, img2img)
    theirs, ours = img2img.scheduler, pipe.scheduler
    assert type(theirs) is DPMSolverMultistepScheduler and theirs is not ours
    assert theirs.config.use_karras_sigmas is True and theirs.config.final_sigmas_type == "sigma_min"
    assert {k: v for k, v in theirs.config.items() if not k.startswith("_")} == \
        {k: v for k, v in ours.config.items() if not k.startswith("_")}
    stepped.clear()
    run_img2img(img2img, Image.new("RGB", (64, 64)))
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
