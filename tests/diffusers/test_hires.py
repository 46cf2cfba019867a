"""Cause hires_resize: hires_fix resizes the upscaler's output with BILINEAR until hardened, then once
with LANCZOS."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from PIL import Image

from lib_sdfix.diffusers import audit, harden, hires_fix, load_upscaler
from lib_sdfix.settings import SDFixSettings

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    STEPS,
    one_thread,
    sd15_pair,
    service_flags,
    upscaler_file,
)

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
