"""The replaced host functions: VAE decode/encode under the guard on every host, the resize after an upscaler."""
from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from lib_sdfix.settings import SDFixSettings

from .fakes import FakeP
from .support import decode, flags_on, grad_mode, make_env, recording_resize, run, same


def test_decode_is_guarded_in_fp32_and_all_is_restored(webui):
    p = FakeP()
    script = run(webui, p, *SDFixSettings().as_args())
    assert not same(webui, webui.before)
    out = decode(webui)
    seen = webui.vae.seen[-1]
    assert seen["part"] == "decoder" and (seen["input"], seen["weight"]) == (torch.float32, torch.float32)
    assert (seen["cudnn_tf32"], seen["matmul_tf32"], seen["benchmark"]) == (False, False, False)
    assert out.dtype == (torch.float32 if webui.host == "a1111" else torch.float16)  # forks: the latent's dtype
    assert flags_on()
    script.postprocess(p, None)
    assert same(webui, webui.before)
    assert p.extra_generation_params["SDFix"]() == SDFixSettings().to_infotext() + " weights=upcast"
    assert p.extra_generation_params["SDFix notes"]() is None


def test_without_sdfix_the_host_decode_runs_in_its_dtype(webui):
    p = FakeP()
    run(webui, p, {"enabled": False})
    decode(webui)
    assert webui.vae.seen[-1]["weight"] == torch.float16 and webui.vae.seen[-1]["cudnn_tf32"] is True
    assert same(webui, webui.before)


def test_encode_is_guarded_and_returns_the_host_dtype(webui):
    p = FakeP()
    run(webui, p)
    with grad_mode(webui):
        latent = webui.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, webui.shared.sd_model)
    seen = webui.vae.seen[-1]
    assert (seen["part"], seen["input"], seen["weight"], seen["cudnn_tf32"]) == ("encoder", torch.float32, torch.float32, False)
    assert latent.dtype == torch.float16
    p.close()
    assert same(webui, webui.before) and p.closed


def test_upcast_sampling_decode_and_encode_are_guarded(monkeypatch):
    """--upcast-sampling: the host's hijack casts to devices.dtype_vae inside decode_first_stage."""
    env = make_env(monkeypatch, "a1111", upcast=True)
    p = FakeP()
    run(env, p)
    decode(env)
    latent = env.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, env.shared.sd_model)
    decoded, encoded = env.vae.seen[-2], env.vae.seen[-1]
    for seen in (decoded, encoded):
        assert (seen["input"], seen["weight"], seen["cudnn_tf32"]) == (torch.float32, torch.float32, False)
    assert latent.dtype == torch.float32  # what the upcast hijack returns
    assert p.extra_generation_params["SDFix notes"]() is None
    p.close()
    assert same(env, env.before)


def test_reforge_with_a_wrapper_dtype_unlike_the_webui_setting(monkeypatch):
    """reForge on a recent GPU: the VAE object is bf16 while devices.dtype_vae says fp32."""
    env = make_env(monkeypatch, "reforge", dtype=torch.bfloat16, dtype_vae=torch.float32)
    p = FakeP()
    run(env, p)
    decode(env)
    with grad_mode(env):
        env.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, env.shared.sd_model)
    assert all((s["input"], s["weight"]) == (torch.float32, torch.float32) for s in env.vae.seen[-2:])
    assert p.extra_generation_params["SDFix notes"]() is None
    p.close()
    assert same(env, env.before)
    plain = FakeP()
    run(env, plain, {"enabled": False})
    out = decode(env, torch.ones(1, 4, 4, 4))
    assert env.vae.seen[-1]["weight"] == torch.bfloat16 and out.shape == (1, 3, 4, 4)


def test_previews_are_left_alone_but_the_save_before_hires_decode_is_guarded(webui):
    p = FakeP()
    run(webui, p)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4))))
    thread.start()
    thread.join()
    assert all(s["thread"] != thread.name or s["cudnn_tf32"] for s in webui.vae.seen)
    webui.shared.opts.sd_vae_decode_method = "TAESD"
    with grad_mode(webui):
        webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4), 0)  # before-highres-fix save
    assert webui.vae.seen[-1]["cudnn_tf32"] is False and webui.vae.seen[-1]["input"] == torch.float32
    p.close()


def test_an_approximate_decode_or_encode_method_is_reported_not_claimed(webui):
    webui.shared.opts.sd_vae_decode_method = "TAESD"
    webui.shared.opts.sd_vae_encode_method = "TAESD"
    p = FakeP()
    run(webui, p)
    count = len(webui.vae.seen)
    decode(webui)
    with grad_mode(webui):
        webui.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, webui.shared.sd_model)
    assert len(webui.vae.seen) == count  # the VAE never ran
    notes = p.extra_generation_params["SDFix notes"]()
    assert "skipped: precision_guard (VAE decode method TAESD does not run the VAE)" in notes
    assert "guard_encode (VAE encode method TAESD does not run the VAE)" in notes
    p.close()


def test_vae_dtype_auto_keeps_the_host_dtype_but_guards_flags(webui):
    p = FakeP()
    run(webui, p, {"vae_dtype": "auto"})
    decode(webui)
    seen = webui.vae.seen[-1]
    assert (seen["weight"], seen["input"], seen["cudnn_tf32"]) == (torch.float16, torch.float16, False)
    p.close()


def test_disabled_touches_nothing_and_writes_no_infotext(webui):
    p = FakeP(extra_generation_params={"Steps": 2})
    before = dict(p.__dict__)
    run(webui, p, {"enabled": False})
    assert same(webui, webui.before) and p.__dict__ == before


def test_every_toggle_off_installs_no_patch(webui):
    p = FakeP()
    run(webui, p, {"precision_guard": False, "guard_encode": False, "hires_parity": False, "post_resize": False})
    assert same(webui, webui.before)
    p.close()


def test_latent_upscaler_note(webui):
    p = FakeP(enable_hr=True, hr_upscaler="Latent", denoising_strength=0.3)
    run(webui, p)
    assert "bilinear" in p.extra_generation_params["SDFix notes"]()
    p.close()
    q = FakeP(enable_hr=True, hr_upscaler="Latent (nearest)", denoising_strength=0.3)
    run(webui, q)
    assert q.extra_generation_params["SDFix notes"]() is None
    q.close()


def test_one_resize_from_the_native_upscale(webui, monkeypatch):
    calls = recording_resize(monkeypatch)
    image = Image.new("RGB", (64, 64), "white")
    webui.images.resize_image(0, image, 100, 100, "Fake 4x")
    assert [c[1] for c in calls[1:]] == [(96, 96), (100, 100)]  # the host: two resamples
    calls.clear()
    p = FakeP()
    run(webui, p, {"resize_filter": "BICUBIC"})
    out = webui.images.resize_image(0, image, 100, 100, "Fake 4x")
    assert out.size == (100, 100)
    assert calls == [((64, 64), (256, 256), Image.NEAREST), ((256, 256), (100, 100), Image.BICUBIC)]
    p.close()


@pytest.mark.parametrize("mode,upscaler,size", [("L", "Fake 4x", (100, 100)), ("P", None, (100, 100)),
                                                ("RGB", "Fake 4x", (32, 32)), ("1", "None", (80, 80))])
def test_resizes_without_an_upscaler_are_the_hosts_own(webui, mode, upscaler, size):
    """Masks, palette images, downscales: no upscaler runs, so the filter choice does not apply."""
    image = Image.effect_noise((64, 64), 40).convert(mode)
    expected = webui.images.resize_image(0, image, *size, upscaler)
    p = FakeP()
    run(webui, p, {"resize_filter": "BOX"})
    got = webui.images.resize_image(0, image, *size, upscaler)
    assert got.mode == expected.mode and got.tobytes() == expected.tobytes()
    p.close()


def test_resize_keywords_of_the_forks_pass_through(monkeypatch):
    env = make_env(monkeypatch, "forge")
    image = Image.new("RGBA", (64, 64), (10, 20, 30, 40))
    expected = env.images.resize_image(0, image, 100, 100, "Fake 4x", force_RGBA=True)
    p = FakeP()
    run(env, p, {"resize_filter": "BOX"})
    got = env.images.resize_image(0, image, 100, 100, "Fake 4x", force_RGBA=True)
    assert got.mode == "RGBA" and got.tobytes() == expected.tobytes()
    rgb = env.images.resize_image(0, image, 100, 100, "Fake 4x")
    assert rgb.mode == "RGB" and rgb.size == (100, 100)
    p.close()


def test_sd_upscale_gets_the_fix_before_any_generation_runs(webui, monkeypatch):
    """The SD upscale script upscales in run(), before process_images: setup already opened the session."""
    calls = recording_resize(monkeypatch)
    p = FakeP()
    webui.glue.SDFixScript().setup(p, {"resize_filter": "BOX"})
    data = webui.shared.sd_upscalers[1]
    out = data.scaler.upscale(Image.new("RGB", (64, 64)), 1.5, data.data_path)
    assert out.size == (96, 96) and calls[-1] == ((256, 256), (96, 96), Image.BOX)
    p.close()
    assert same(webui, webui.before)


def test_a_failing_guard_falls_back_leaves_the_vae_as_it_was_and_is_reported(webui, monkeypatch):
    import lib_sdfix.vae.fp32 as vae_fp32

    p = FakeP()
    run(webui, p)

    def half_way(attrs):  # the weights are already fp32 when this fails
        raise RuntimeError("boom")

    monkeypatch.setattr(vae_fp32, "_attrs_enter", half_way)
    latent = torch.randn(1, 4, 8, 8)
    out = decode(webui, latent)
    assert out.shape[:2] == (1, 3) and webui.vae.seen[-1]["weight"] == torch.float16
    assert "not applied: precision_guard (RuntimeError: boom)" in p.extra_generation_params["SDFix notes"]()
    p.close()
    assert same(webui, webui.before)
    q = FakeP()
    run(webui, q, {"enabled": False})
    assert torch.equal(decode(webui, latent), out)  # the host's own decode, bit for bit
    q.close()


@pytest.mark.parametrize("host", ["a1111", "forge", "reforge"])
def test_a_decode_that_does_not_fit_runs_tiled_in_fp32_and_the_infotext_says_so(monkeypatch, host):
    from lib_sdfix.vae.estimate import BUDGET_ENV

    env = make_env(monkeypatch, host, ldm_vae=True)
    latent = torch.randn(1, 4, 24, 16, dtype=torch.float16)
    seen = []  # what another extension's pre-hook on the decoder sees
    handle = env.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(m.conv_in.weight.dtype))
    p = FakeP()
    script = run(env, p)
    untiled = decode(env, latent).float()
    script.postprocess(p, None)
    assert seen == [torch.float32], "planned and cast before the other pre-hooks run"
    assert "tiled" not in p.extra_generation_params["SDFix"]() and p.extra_generation_params["SDFix notes"]() is None

    monkeypatch.setenv(BUDGET_ENV, "0.001")  # 1 MiB for the call: the fp32 decoder does not fit untiled
    p = FakeP()
    script = run(env, p)
    tiled = decode(env, latent).float()
    handle.remove()
    assert seen[-1] == torch.float16, "tiled: the decoder's weights are cast one layer at a time, not all at once"
    assert env.vae.seen[-1]["weight"] == torch.float32 and env.vae.seen[-1]["cudnn_tf32"] is False
    assert (tiled - untiled).abs().max() < 2e-3, "tiled gives the untiled result"
    script.postprocess(p, None)
    assert same(env, env.before) and "forward" not in vars(env.vae.decoder)
    infotext = p.extra_generation_params["SDFix"]()
    assert infotext == SDFixSettings().to_infotext() + " weights=upcast tiled=decode"
    assert SDFixSettings.from_infotext(infotext) == SDFixSettings(), "pasting it restores the settings"
    assert "VAE decode 64x96: tiled in fp32 (fp32 needs ~" in p.extra_generation_params["SDFix notes"]()


def test_an_out_of_memory_decode_retries_tiled_before_the_host_path(monkeypatch):
    from lib_sdfix.vae.call import is_oom

    env = make_env(monkeypatch, "a1111", ldm_vae=True)
    latent = torch.randn(1, 4, 16, 16, dtype=torch.float16)
    forward = env.vae.decoder.forward
    calls = []

    def short_of_memory(z):
        calls.append(z.dtype)
        if z.dtype == torch.float32:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(z)

    monkeypatch.setattr(env.vae.decoder, "forward", short_of_memory)
    assert is_oom(torch.OutOfMemoryError("x"))
    p = FakeP()
    script = run(env, p)
    out = decode(env, latent)
    assert calls == [torch.float32] and out.dtype == torch.float32, "one untiled try, then tiled; not the host's fp16"
    script.postprocess(p, None)
    assert p.extra_generation_params["SDFix"]().endswith("tiled=decode")
    assert "tiled in fp32 (out of memory untiled" in p.extra_generation_params["SDFix notes"]()
    assert vars(env.vae.decoder)["forward"] is short_of_memory
