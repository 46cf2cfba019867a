"""lib_sdfix.webui and scripts/sdfix.py against stand-ins of the three hosts (tests/webui_fakes.py)."""
from __future__ import annotations

import gc
import sys
import threading

import pytest
import torch
from PIL import Image

from lib_sdfix.settings import SDFixSettings

from .webui_fakes import HOSTS, FakeP, install

A1111_PATCHED = [("processing", "decode_first_stage"), ("processing", "images_tensor_to_samples"),
                 ("sd_samplers_common", "decode_first_stage"), ("sd_samplers_common", "samples_to_images_tensor"),
                 ("sd_samplers_common", "images_tensor_to_samples"), ("images", "resize_image"),
                 ("sd_samplers", "create_sampler")]


def _snapshot(env):
    """Everything SDFix may touch: functions, VAE weights (objects and data), dtype attributes, flags."""
    functions = {(mod, attr): getattr(getattr(env, mod), attr) for mod, attr in A1111_PATCHED}
    functions["Upscaler.upscale"] = env.upscaler.Upscaler.__dict__["upscale"]
    if env.wrapper is not None:
        cls = type(env.wrapper)
        functions["VAE"] = dict(vars(cls))
    params = [(t, t.data_ptr(), t.dtype) for t in list(env.vae.parameters())]
    attrs = (env.devices.dtype_vae, env.vae._dtype, getattr(env.wrapper, "vae_dtype", None))
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    return functions, params, attrs, flags


def _same(env, before) -> bool:
    functions, params, attrs, flags = _snapshot(env)
    b_functions, b_params, b_attrs, b_flags = before
    same_functions = all(functions[k] is v if k != "VAE" else functions[k] == v for k, v in b_functions.items())
    same_params = [(id(t), p, d) for t, p, d in params] == [(id(t), p, d) for t, p, d in b_params]
    return same_functions and same_params and attrs == b_attrs and flags == b_flags


@pytest.fixture(params=HOSTS)
def host(request):
    return request.param


def _env(monkeypatch, host="a1111", **options):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    env = install(monkeypatch, host, **options)
    env.before = _snapshot(env)
    return env


@pytest.fixture
def webui(monkeypatch, host):
    env = _env(monkeypatch, host)
    yield env
    from lib_sdfix.webui import unload

    unload()


def run(env, p, *args):
    script = env.glue.SDFixScript()
    script.setup(p, *args)
    script.process(p, *args)
    return script


def decode(env, latent=None):
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float16) if latent is None else latent
    return env.processing.decode_first_stage(env.shared.sd_model, latent)


def test_decode_is_guarded_in_fp32_and_all_is_restored(webui):
    p = FakeP()
    script = run(webui, p, *SDFixSettings().as_args())
    assert not _same(webui, webui.before)
    out = decode(webui)
    seen = webui.vae.seen[-1]
    assert seen["part"] == "decoder" and (seen["input"], seen["weight"]) == (torch.float32, torch.float32)
    assert (seen["cudnn_tf32"], seen["matmul_tf32"], seen["benchmark"]) == (False, False, False)
    assert out.dtype == (torch.float32 if webui.host == "a1111" else torch.float16)  # forks: the latent's dtype
    assert _flags_on()
    script.postprocess(p, None)
    assert _same(webui, webui.before)
    assert p.extra_generation_params["SDFix"]() == SDFixSettings().to_infotext() + " weights=upcast"
    assert p.extra_generation_params["SDFix notes"]() is None


def _flags_on():
    return torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


def test_without_sdfix_the_host_decode_runs_in_its_dtype(webui):
    p = FakeP()
    run(webui, p, {"enabled": False})
    decode(webui)
    assert webui.vae.seen[-1]["weight"] == torch.float16 and webui.vae.seen[-1]["cudnn_tf32"] is True
    assert _same(webui, webui.before)


def test_encode_is_guarded_and_returns_the_host_dtype(webui):
    p = FakeP()
    run(webui, p)
    latent = webui.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, webui.shared.sd_model)
    seen = webui.vae.seen[-1]
    assert (seen["part"], seen["input"], seen["weight"], seen["cudnn_tf32"]) == ("encoder", torch.float32, torch.float32, False)
    assert latent.dtype == torch.float16
    p.close()
    assert _same(webui, webui.before) and p.closed


def test_upcast_sampling_decode_and_encode_are_guarded(monkeypatch):
    """--upcast-sampling: the host's hijack casts to devices.dtype_vae inside decode_first_stage."""
    env = _env(monkeypatch, "a1111", upcast=True)
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
    assert _same(env, env.before)


def test_reforge_with_a_wrapper_dtype_unlike_the_webui_setting(monkeypatch):
    """reForge on a recent GPU: the VAE object is bf16 while devices.dtype_vae says fp32."""
    env = _env(monkeypatch, "reforge", dtype=torch.bfloat16, dtype_vae=torch.float32)
    p = FakeP()
    run(env, p)
    decode(env)
    env.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, env.shared.sd_model)
    assert all((s["input"], s["weight"]) == (torch.float32, torch.float32) for s in env.vae.seen[-2:])
    assert p.extra_generation_params["SDFix notes"]() is None
    p.close()
    assert _same(env, env.before)
    plain = FakeP()
    run(env, plain, {"enabled": False})
    out = decode(env, torch.ones(1, 4, 4, 4))
    assert env.vae.seen[-1]["weight"] == torch.bfloat16 and out.shape == (1, 3, 4, 4)


def test_previews_are_left_alone_but_the_save_before_hires_decode_is_guarded(webui):
    p = FakeP()
    run(webui, p)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(webui.sd_samplers_common.samples_to_images_tensor(torch.randn(1, 4, 4, 4))))
    thread.start(); thread.join()
    assert all(s["thread"] != thread.name or s["cudnn_tf32"] for s in webui.vae.seen)
    webui.shared.opts.sd_vae_decode_method = "TAESD"
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
    webui.processing.images_tensor_to_samples(torch.rand(1, 3, 8, 8), None, webui.shared.sd_model)
    assert len(webui.vae.seen) == count  # the VAE never ran
    notes = p.extra_generation_params["SDFix notes"]()
    assert "skipped: precision_guard (VAE decode method TAESD does not run the VAE)" in notes
    assert "guard_encode (VAE encode method TAESD does not run the VAE)" in notes
    p.close()


def test_decode_dtype_auto_keeps_the_host_dtype_but_guards_flags(webui):
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
    assert _same(webui, webui.before) and p.__dict__ == before


def test_every_toggle_off_installs_no_patch(webui):
    p = FakeP()
    run(webui, p, {"precision_guard": False, "guard_encode": False, "hires_parity": False, "post_resize": False})
    assert _same(webui, webui.before)
    p.close()


def test_sdfix_disable_flag(monkeypatch):
    env = _env(monkeypatch)
    env.shared.cmd_opts.sdfix_disable = True
    script = env.glue.SDFixScript()
    assert script.show(False) is False
    p = FakeP()
    script.setup(p)
    script.process(p)
    assert _same(env, env.before) and p.extra_generation_params == {}


@pytest.mark.parametrize("args,field", [
    ([{"precision_guard": "yes"}], "precision_guard"),
    ([{"nope": 1}], "nope"),
    ([True, 3], "precision_guard"),
    ([{"latent_denoise_warning": -1}], "latent_denoise_warning"),
    ([{"guard_previews": True}], "guard_previews"),
])
def test_bad_args_make_the_request_fail_with_422(webui, args, field):
    fastapi = pytest.importorskip("fastapi")
    p = FakeP()
    run(webui, p, *args)
    assert _same(webui, webui.before)
    with pytest.raises(fastapi.HTTPException) as err:
        p.init([], [], [])
    assert err.value.status_code == 422
    assert field in err.value.detail and field in str(err.value)


def test_missing_args_mean_the_settings_defaults(webui):
    """Forge/reForge sometimes hand the first job after start no script args at all."""
    p = FakeP()
    run(webui, p)
    assert "guard=1" in p.extra_generation_params["SDFix"]()
    p.close()


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


# An X/Y/Z cell as the plot script runs it: a function named "cell" in xyz_grid.py whose closure holds
# the axes; the plot swallows the cell's exception.
_XYZ_SOURCE = '''
def make_cell(x_opt, y_opt, z_opt, generate):
    def cell(pc):
        x_opt.apply(pc); y_opt, z_opt
        try:
            return generate(pc)
        except Exception as exc:
            return exc
    return cell
'''


def _xyz_cell(x_label, apply, generate):
    namespace = {}
    exec(compile(_XYZ_SOURCE, "/webui/scripts/xyz_grid.py", "exec"), namespace)

    class Axis:
        def __init__(self, label, fn):
            self.label, self.apply = label, fn

    return namespace["make_cell"](Axis(x_label, apply), Axis("Nothing", None), Axis("Nothing", None), generate)


def test_parity_steps_aside_for_an_xyz_hires_sampler_axis(webui):
    script = webui.glue.SDFixScript()

    def generate(pc):
        script.process(pc)
        notes = pc.extra_generation_params["SDFix notes"]()
        script.postprocess(pc, None)
        return pc.hr_sampler_name, notes

    cell = _xyz_cell("Hires sampler", lambda pc: setattr(pc, "hr_sampler_name", "Euler a"), generate)
    sampler, notes = cell(FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_upscaler="Fake 4x"))
    assert sampler == "Euler a" and "Hires sampler Euler a set by the X/Y/Z plot, kept" in notes
    other = _xyz_cell("Steps", lambda pc: None, generate)
    sampler, _ = other(FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_sampler_name="Euler a", hr_upscaler="Fake 4x"))
    assert sampler is None  # an explicit UI choice is still overridden by parity (and noted)


def test_a_dead_xyz_cell_leaves_nothing_behind(webui, monkeypatch):
    """The plot swallows a cell's exception and never closes the cell's p: no patch, no session may
    outlive it -- a later upscale (Extras) must run exactly as the host's own."""
    script = webui.glue.SDFixScript()

    def generate(pc):
        script.process(pc, {"resize_filter": "BOX"})
        raise RuntimeError("cell failed")

    cell = _xyz_cell("Steps", lambda pc: None, generate)
    assert isinstance(cell(FakeP()), RuntimeError)
    gc.collect()
    calls = _recording_resize(monkeypatch)
    data = webui.shared.sd_upscalers[1]
    data.scaler.upscale(Image.new("RGB", (64, 64)), 1.5, data.data_path)  # Extras, after the plot
    assert all(call[2] != Image.BOX for call in calls)
    assert _same(webui, webui.before)


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
    env = _env(monkeypatch, "forge")
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
    calls = _recording_resize(monkeypatch)
    p = FakeP()
    webui.glue.SDFixScript().setup(p, {"resize_filter": "BOX"})
    data = webui.shared.sd_upscalers[1]
    out = data.scaler.upscale(Image.new("RGB", (64, 64)), 1.5, data.data_path)
    assert out.size == (96, 96) and calls[-1] == ((256, 256), (96, 96), Image.BOX)
    p.close()
    assert _same(webui, webui.before)


def test_a_failing_guard_falls_back_leaves_the_vae_as_it_was_and_is_reported(webui, monkeypatch):
    import lib_sdfix.fp32_vae as fp32_vae

    p = FakeP()
    run(webui, p)

    def half_way(attrs):  # the weights are already fp32 when this fails
        raise RuntimeError("boom")

    monkeypatch.setattr(fp32_vae, "_attrs_enter", half_way)
    latent = torch.randn(1, 4, 8, 8)
    out = decode(webui, latent)
    assert out.shape[:2] == (1, 3) and webui.vae.seen[-1]["weight"] == torch.float16
    assert "not applied: precision_guard (RuntimeError: boom)" in p.extra_generation_params["SDFix notes"]()
    p.close()
    assert _same(webui, webui.before)
    q = FakeP()
    run(webui, q, {"enabled": False})
    assert torch.equal(decode(webui, latent), out)  # the host's own decode, bit for bit
    q.close()


def test_nested_generation_keeps_the_outer_session(webui):
    """An extension may run a second generation from inside a hook of the first (ADetailer does)."""
    from lib_sdfix.webui.session import current_session

    outer, inner = FakeP(), FakeP()
    run(webui, outer)
    run(webui, inner, {"post_resize": False})
    assert current_session().owner is inner
    inner.close()
    assert current_session().owner is outer
    outer.close()
    assert current_session() is None and _same(webui, webui.before)


def test_a_copy_of_p_gets_its_own_session_and_closes_only_itself(webui):
    import copy

    from lib_sdfix.webui.session import session_of

    p = FakeP()
    run(webui, p)
    pc = copy.copy(p)
    run(webui, pc, {"resize_filter": "BOX"})
    assert session_of(pc) is not session_of(p)
    pc.close()
    assert session_of(p) is not None and not p.closed
    p.close()
    assert p.closed and _same(webui, webui.before)


def test_another_extensions_patch_on_top_never_nests_or_loses_the_original(webui):
    """It wraps SDFix's replacement at the start of a generation and puts back what it saw at the end."""
    original = webui.images.resize_image
    for _ in range(3):
        p = FakeP()
        run(webui, p)
        theirs_saw = webui.images.resize_image
        webui.images.resize_image = lambda *a, _inner=theirs_saw, **k: _inner(*a, **k)
        p.close()
        webui.images.resize_image = theirs_saw  # their cleanup
    q = FakeP()
    run(webui, q)
    q.close()
    assert webui.images.resize_image is original


def test_reloading_the_script_body_registers_callbacks_once(webui):
    import importlib.util

    from .webui_fakes import ROOT

    for _ in range(2):
        spec = importlib.util.spec_from_file_location("sdfix_reloaded", ROOT / "scripts" / "sdfix.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    for key, callbacks in webui.script_callbacks.callback_map.items():
        names = [c.callback for c in callbacks]
        assert len(names) == len(set(names)), key
    assert len(webui.script_callbacks.callback_map["callbacks_app_started"]) == 1


def test_xyz_axes_and_overrides(webui):
    from lib_sdfix.webui import xyz as xyz_module

    class AxisOption:
        def __init__(self, label, type, apply, confirm=None, choices=None, **_):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz = type("xyz", (), {"AxisOption": AxisOption, "axis_options": []})
    webui.scripts.scripts_data.append(type("D", (), {"module": xyz, "script_class": type("S", (), {"__module__": "xyz_grid.py"})}))
    xyz_module.add_xyz_axes()
    xyz_module.add_xyz_axes()  # idempotent
    labels = [o.label for o in xyz.axis_options]
    assert labels.count("SDFix: enabled") == 1 and "SDFix: resize filter" in labels
    axis = next(o for o in xyz.axis_options if o.label == "SDFix: precision guard")
    assert axis.choices() == ["on", "off"]
    with pytest.raises(ValueError, match="precision_guard"):
        axis.confirm(None, ["on", "maybe"])
    p = FakeP()
    axis.apply(p, "off", ["on", "off"])
    run(webui, p)
    assert "guard=0" in p.extra_generation_params["SDFix"]()
    p.close()


def test_settings_panel_registers_every_option(webui, monkeypatch):
    import types

    from lib_sdfix.webui.panel import on_ui_settings

    gr = types.ModuleType("gradio")
    gr.Checkbox, gr.Radio, gr.Slider = "Checkbox", "Radio", "Slider"
    monkeypatch.setitem(sys.modules, "gradio", gr)
    on_ui_settings()
    options = webui.shared.registered_options
    assert set(options) >= {"sdfix_enabled", "sdfix_precision_guard", "sdfix_hires_parity", "sdfix_resize_filter",
                            "sdfix_vae_dtype", "sdfix_add_infotext"}
    assert "sdfix_guard_previews" not in options
    assert options["sdfix_latent_denoise_warning"].component == "Slider"
    assert options["sdfix_resize_filter"].component_args == {"choices": ["LANCZOS", "BICUBIC", "BOX"]}
    assert all(o.section == ("sdfix", "SDFix") for o in options.values())


def test_settings_defaults_and_cli_override_apply_to_named_args(webui):
    webui.shared.opts.sdfix_resize_filter = "BOX"
    webui.shared.cmd_opts.sdfix_vae_dtype = "auto"
    p = FakeP()
    run(webui, p, {"hires_parity": False})
    s = SDFixSettings.from_infotext(p.extra_generation_params["SDFix"]())
    assert (s.resize_filter, s.vae_dtype, s.hires_parity) == ("BOX", "auto", False)
    p.close()


def test_no_infotext_when_the_panel_option_is_off(webui):
    webui.shared.opts.sdfix_add_infotext = False
    p = FakeP()
    run(webui, p)
    assert "SDFix" not in p.extra_generation_params
    p.close()


@pytest.mark.parametrize("api,auth", [(True, None), (True, "sdfix:secret"), (False, None)])
def test_routes_exist_only_with_the_api_and_behind_its_auth(webui, api, auth):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from lib_sdfix.webui.routes import on_app_started

    webui.shared.cmd_opts.api = api
    webui.shared.cmd_opts.api_auth = auth
    app = fastapi.FastAPI()
    on_app_started(None, app)
    client = testclient.TestClient(app)
    if not api:
        assert client.get("/sdfix/v1/status").status_code == 404
        assert client.post("/sdfix/v1/ab", json={"payload": {}}).status_code == 404
        return
    creds = ("sdfix", "secret") if auth else None
    if auth:
        assert client.get("/sdfix/v1/status").status_code == 401
        assert client.get("/sdfix/v1/status", auth=("sdfix", "wrong")).status_code == 401
        assert client.post("/sdfix/v1/ab", json={"payload": {}}).status_code == 401
    status = client.get("/sdfix/v1/status", auth=creds)
    assert status.status_code == 200
    body = status.json()
    assert body["settings"] == SDFixSettings().as_dict() and body["environment"]["patched_now"] == []
    assert body["environment"]["host"] == webui.host
    bad = client.post("/sdfix/v1/ab", json={"payload": {"prompt": "x"}, "heatmap_gain": 0}, auth=creds)
    assert bad.status_code == 422 and "heatmap_gain" in bad.json()["detail"]


def test_host_detection_by_what_the_host_has(webui):
    from lib_sdfix.webui.host import current

    assert current().name == webui.host
