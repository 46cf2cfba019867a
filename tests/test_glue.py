"""scripts/sdfix.py against a stand-in of the WebUI's modules (tests/webui_fakes.py)."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from lib_sdfix.settings import SDFixSettings

from .webui_fakes import FakeP, install

ALL_PATCHED = [("processing", "decode_first_stage"), ("processing", "images_tensor_to_samples"),
               ("sd_samplers_common", "decode_first_stage"), ("sd_samplers_common", "samples_to_images_tensor"),
               ("sd_samplers_common", "images_tensor_to_samples"), ("images", "resize_image")]


@pytest.fixture
def webui(monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    env = install(monkeypatch)
    env.originals = {(mod, attr): getattr(getattr(env, mod), attr) for mod, attr in ALL_PATCHED}
    env.originals[("upscaler", "Upscaler.upscale")] = env.upscaler.Upscaler.__dict__["upscale"]
    yield env
    env.glue.on_script_unloaded()


def untouched(env) -> bool:
    same = all(getattr(getattr(env, mod), attr) is fn for (mod, attr), fn in env.originals.items() if mod != "upscaler")
    return same and env.upscaler.Upscaler.__dict__["upscale"] is env.originals[("upscaler", "Upscaler.upscale")]


def run(env, p, *args):
    script = env.glue.SDFixScript()
    script.process(p, *args)
    return script


def test_decode_is_guarded_in_fp32_and_all_is_restored(webui):
    p = FakeP()
    script = run(webui, p, *SDFixSettings().as_args())
    assert not untouched(webui)
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    out = webui.processing.decode_first_stage(webui.shared.sd_model, latent)
    seen = webui.shared.sd_model.first_stage_model.seen[-1]
    assert seen == {"part": "decoder", "input": torch.float32, "weight": torch.float32,
                    "cudnn_tf32": False, "matmul_tf32": False, "benchmark": False}
    assert out.dtype == torch.float32
    assert webui.shared.sd_model.first_stage_model.dtype == torch.float16
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
    script.postprocess(p, None, *SDFixSettings().as_args())
    assert untouched(webui)
    assert p.extra_generation_params["SDFix"] == SDFixSettings().to_infotext()
    assert p.extra_generation_params["SDFix notes"]() is None


def test_encode_is_guarded_and_returns_the_webui_dtype(webui):
    p = FakeP()
    run(webui, p)
    image = torch.rand(1, 3, 8, 8, dtype=torch.float16)
    latent = webui.processing.images_tensor_to_samples(image, None, webui.shared.sd_model)
    seen = webui.shared.sd_model.first_stage_model.seen[-1]
    assert (seen["part"], seen["input"], seen["weight"], seen["cudnn_tf32"]) == ("encoder", torch.float32, torch.float32, False)
    assert latent.dtype == torch.float16
    p.close()
    assert untouched(webui) and p.closed


def test_previews_are_left_alone_but_save_before_hires_decode_is_guarded(webui):
    p = FakeP()
    run(webui, p)
    webui.shared.opts.show_progress_type = "Full"
    vae = webui.shared.sd_model.first_stage_model
    webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4))  # live preview
    assert vae.seen[-1]["cudnn_tf32"] is True
    webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4), 0)  # before-highres-fix save
    assert vae.seen[-1]["cudnn_tf32"] is False and vae.seen[-1]["input"] == torch.float32
    p.close()


def test_guard_previews_option(webui):
    p = FakeP()
    run(webui, p, *SDFixSettings(guard_previews=True).as_args())
    webui.shared.opts.show_progress_type = "Full"
    webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4))
    assert webui.shared.sd_model.first_stage_model.seen[-1]["cudnn_tf32"] is False
    p.close()


def test_decode_dtype_auto_keeps_the_webui_dtype_but_guards_flags(webui):
    p = FakeP()
    run(webui, p, {"decode_dtype": "auto"})
    webui.processing.decode_first_stage(webui.shared.sd_model, torch.randn(1, 4, 4, 4))
    seen = webui.shared.sd_model.first_stage_model.seen[-1]
    assert (seen["weight"], seen["input"], seen["cudnn_tf32"]) == (torch.float16, torch.float16, False)
    p.close()


def test_disabled_touches_nothing_and_writes_no_infotext(webui):
    p = FakeP(extra_generation_params={"Steps": 2})
    before = dict(p.__dict__)
    run(webui, p, {"enabled": False})
    assert untouched(webui)
    assert p.__dict__ == before
    webui.processing.decode_first_stage(webui.shared.sd_model, torch.randn(1, 4, 4, 4))
    assert webui.shared.sd_model.first_stage_model.seen[-1]["cudnn_tf32"] is True


def test_every_toggle_off_installs_no_patch(webui):
    p = FakeP()
    run(webui, p, {"precision_guard": False, "guard_encode": False, "hires_parity": False, "post_resize": False})
    assert untouched(webui)
    p.close()


def test_sdfix_disable_flag(webui):
    webui.shared.cmd_opts.sdfix_disable = True
    script = webui.glue.SDFixScript()
    assert script.show(False) is False
    p = FakeP()
    script.process(p)
    assert untouched(webui) and p.extra_generation_params == {}


@pytest.mark.parametrize("args,field", [
    ([{"precision_guard": "yes"}], "precision_guard"),
    ([{"nope": 1}], "nope"),
    ([True, 3], "precision_guard"),
    ([{"latent_denoise_warning": -1}], "latent_denoise_warning"),
])
def test_bad_args_make_the_request_fail_with_422(webui, args, field):
    fastapi = pytest.importorskip("fastapi")
    p = FakeP()
    run(webui, p, *args)
    assert untouched(webui)
    with pytest.raises(fastapi.HTTPException) as err:
        p.init([], [], [])
    assert err.value.status_code == 422
    assert field in err.value.detail and field in str(err.value)


def test_parity_resolves_the_hires_pass(webui):
    p = FakeP(enable_hr=True, sampler_name="DPM++ 2M", scheduler="Karras", hr_sampler_name="Euler",
              hr_scheduler="uniform", hr_upscaler="Fake 4x")
    run(webui, p)
    assert (p.hr_sampler_name, p.hr_scheduler) == (None, "Karras")
    notes = p.extra_generation_params["SDFix notes"]()
    assert "Hires sampler Euler -> DPM++ 2M" in notes and "Hires schedule Uniform -> Karras" in notes
    p.close()

    q = FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_sampler_name="Euler", hr_upscaler="Fake 4x")
    run(webui, q, {"hires_parity": False})
    assert q.hr_sampler_name == "Euler"
    q.close()


def test_latent_upscaler_note(webui):
    p = FakeP(enable_hr=True, hr_upscaler="Latent", denoising_strength=0.3)
    run(webui, p)
    assert "bilinear" in p.extra_generation_params["SDFix notes"]()
    p.close()
    q = FakeP(enable_hr=True, hr_upscaler="Latent (nearest)", denoising_strength=0.3)
    run(webui, q)
    assert q.extra_generation_params["SDFix notes"]() is None
    q.close()


def _recording_resize(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, tuple(size), resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return calls


def test_one_resize_from_the_native_upscale(webui, monkeypatch):
    calls = _recording_resize(monkeypatch)
    image = Image.new("RGB", (64, 64), "white")
    webui.images.resize_image(0, image, 100, 100, "Fake 4x")
    assert [c[1] for c in calls[1:]] == [(96, 96), (100, 100)]  # the WebUI: two resamples
    calls.clear()

    p = FakeP()
    run(webui, p, {"resize_filter": "BICUBIC"})
    out = webui.images.resize_image(0, image, 100, 100, "Fake 4x")
    assert out.size == (100, 100)
    assert calls == [((64, 64), (256, 256), Image.NEAREST), ((256, 256), (100, 100), Image.BICUBIC)]
    p.close()


def test_sd_upscale_path_uses_the_filter(webui, monkeypatch):
    calls = _recording_resize(monkeypatch)
    p = FakeP()
    run(webui, p, {"resize_filter": "BOX"})
    data = webui.shared.sd_upscalers[1]
    out = data.scaler.upscale(Image.new("RGB", (64, 64)), 1.5, data.data_path)
    assert out.size == (96, 96) and calls[-1] == ((256, 256), (96, 96), Image.BOX)
    p.close()


def test_a_failing_guard_falls_back_and_is_reported(webui, monkeypatch):
    import lib_sdfix.precision as precision

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(precision, "guarded_vae_call", broken)
    p = FakeP()
    run(webui, p)
    out = webui.processing.decode_first_stage(webui.shared.sd_model, torch.randn(1, 4, 4, 4))
    assert out.shape == (1, 3, 4, 4)
    assert "not applied: guard (RuntimeError: boom)" in p.extra_generation_params["SDFix notes"]()
    p.close()
    assert untouched(webui)


def test_stale_session_of_a_cell_that_raised_is_dropped(webui):
    p = FakeP()
    run(webui, p)  # never closed, never postprocessed
    q = FakeP()
    run(webui, q, {"enabled": False})
    assert untouched(webui)
    webui.processing.decode_first_stage(webui.shared.sd_model, torch.randn(1, 4, 4, 4))
    assert webui.shared.sd_model.first_stage_model.seen[-1]["cudnn_tf32"] is True


def test_nested_generation_keeps_the_outer_session(webui):
    """An extension may run a second generation from inside a hook of the first (ADetailer does):
    the outer generation is still running, so its session must survive the inner one's start."""
    outer, inner = FakeP(), FakeP()

    def process_images_inner(p):  # stands for the WebUI frame of the running outer generation
        run(webui, p)
        run(webui, inner, {"post_resize": False})
        assert webui.glue.current_session().owner is inner
        inner.close()
        return webui.glue.current_session()

    assert process_images_inner(outer).owner is outer
    assert not untouched(webui)
    outer.close()
    assert untouched(webui)
    assert webui.glue.current_session() is None


def test_xyz_axes_and_overrides(webui):
    class AxisOption:
        def __init__(self, label, type, apply, confirm=None, choices=None, **_):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz = type("xyz", (), {"AxisOption": AxisOption, "axis_options": []})
    webui.scripts.scripts_data.append(type("D", (), {"module": xyz, "script_class": type("S", (), {"__module__": "xyz_grid.py"})}))
    webui.glue.add_xyz_axes()
    webui.glue.add_xyz_axes()  # idempotent
    labels = [o.label for o in xyz.axis_options]
    assert labels.count("SDFix: enabled") == 1 and "SDFix: resize filter" in labels
    axis = next(o for o in xyz.axis_options if o.label == "SDFix: precision guard")
    assert axis.choices() == ["on", "off"]
    with pytest.raises(ValueError, match="precision_guard"):
        axis.confirm(None, ["on", "maybe"])
    p = FakeP()
    axis.apply(p, "off", ["on", "off"])
    run(webui, p)
    assert "guard=0" in p.extra_generation_params["SDFix"]
    p.close()


def test_settings_panel_registers_every_option(webui, monkeypatch):
    import sys
    import types

    gr = types.ModuleType("gradio")
    gr.Checkbox, gr.Radio, gr.Slider = "Checkbox", "Radio", "Slider"
    monkeypatch.setitem(sys.modules, "gradio", gr)
    webui.glue.on_ui_settings()
    options = webui.shared.registered_options
    assert set(options) >= {"sdfix_enabled", "sdfix_precision_guard", "sdfix_hires_parity", "sdfix_resize_filter",
                            "sdfix_decode_dtype", "sdfix_add_infotext"}
    assert options["sdfix_latent_denoise_warning"].component == "Slider"  # a float needs a component
    assert options["sdfix_resize_filter"].component_args == {"choices": ["LANCZOS", "BICUBIC", "BOX"]}
    assert all(o.section == ("sdfix", "SDFix") for o in options.values())


def test_settings_defaults_and_cli_override_apply_to_named_args(webui):
    webui.shared.opts.sdfix_resize_filter = "BOX"
    webui.shared.cmd_opts.sdfix_decode_dtype = "auto"
    p = FakeP()
    run(webui, p, {"hires_parity": False})
    s = SDFixSettings.from_infotext(p.extra_generation_params["SDFix"])
    assert (s.resize_filter, s.decode_dtype, s.hires_parity) == ("BOX", "auto", False)
    p.close()


def test_no_infotext_when_the_panel_option_is_off(webui):
    webui.shared.opts.sdfix_add_infotext = False
    p = FakeP()
    run(webui, p)
    assert "SDFix" not in p.extra_generation_params
    p.close()


@pytest.mark.parametrize("auth", [None, "sdfix:secret"])
def test_routes_status_bad_body_and_auth(webui, auth):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    webui.shared.cmd_opts.api_auth = auth
    app = fastapi.FastAPI()
    webui.glue.on_app_started(None, app)
    client = testclient.TestClient(app)
    creds = ("sdfix", "secret") if auth else None
    if auth:
        assert client.get("/sdfix/v1/status").status_code == 401
        assert client.get("/sdfix/v1/status", auth=("sdfix", "wrong")).status_code == 401
        assert client.post("/sdfix/v1/ab", json={"payload": {}}).status_code == 401
    status = client.get("/sdfix/v1/status", auth=creds)
    assert status.status_code == 200
    body = status.json()
    assert body["settings"] == SDFixSettings().as_dict() and body["environment"]["patched_now"] == []
    bad = client.post("/sdfix/v1/ab", json={"payload": {"prompt": "x"}, "heatmap_gain": 0}, auth=creds)
    assert bad.status_code == 422 and "heatmap_gain" in bad.json()["detail"]
