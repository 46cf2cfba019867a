"""harden as a whole: idempotent, undone by unharden or enabled=False, a failing fix reported while
the rest apply, each fix alone fixing only its cause, an SDXL pair end to end."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch

from lib_sdfix.diffusers import CAUSES, audit, fix_report, harden, hires_fix, unharden
from lib_sdfix.patching import is_replacement
from lib_sdfix.settings import SDFixSettings

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    STEPS,
    one_thread,
    probe,
    run_txt2img,
    sd15_pair,
    sdxl_pair,
    service_flags,
)


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
    image_once = run_txt2img(pipe)
    state = _wrappers(pipe, img2img)  # the call rebuilt the shared chain, as diffusers does
    second = harden(pipe, img2img)
    assert second.changed == () and second.after.present == []
    again = _wrappers(pipe, img2img)
    assert len(again) == len(state) and all(a is b for a, b in zip(again, state))
    assert is_replacement(pipe.vae.decode) and not is_replacement(pipe.vae.decode.__wrapped__), "wrapped once, not twice"
    image_twice = run_txt2img(pipe)
    assert np.array_equal(np.asarray(image_once), np.asarray(image_twice))


def test_disabled_options_and_unharden_give_the_plain_pipeline_back():
    plain, plain_img2img = sd15_pair(text_encoder_dtype=HALF)
    reference = run_txt2img(plain)
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF)
    harden(pipe, img2img)
    report = harden(pipe, img2img, options=SDFixSettings(enabled=False))
    assert "decode" not in pipe.vae.__dict__ and "encode" not in pipe.vae.__dict__
    assert "encode_prompt" not in pipe.__dict__ and "encode_prompt" not in img2img.__dict__
    assert fix_report(pipe) is None and report.after["vae_precision"].present is True
    assert np.array_equal(np.asarray(run_txt2img(pipe)), np.asarray(reference))
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
    from lib_sdfix.diffusers import hardening as front

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
