"""Helpers for the host-layer tests: a snapshot of everything SDFix may touch, a generation driver, the
A/B and diagnosis routes' runs and what must be clean after them, an X/Y/Z cell as the plot runs it,
and a spy on PIL's resize."""
from __future__ import annotations

import torch
from PIL import Image

from ..flags import current_flags, flags_on, set_webui_flags  # noqa: F401 -- flags_on: re-exported for the tests
from .fakes import Namespace, install

A1111_PATCHED = [("processing", "decode_first_stage"), ("processing", "images_tensor_to_samples"),
                 ("sd_samplers_common", "decode_first_stage"), ("sd_samplers_common", "samples_to_images_tensor"),
                 ("sd_samplers_common", "images_tensor_to_samples"), ("images", "resize_image"),
                 ("sd_samplers", "create_sampler")]


def snapshot(env):
    """Everything SDFix may touch: functions, VAE weights (objects and data), dtype attributes, flags."""
    functions = {(mod, attr): getattr(getattr(env, mod), attr) for mod, attr in A1111_PATCHED}
    functions["Upscaler.upscale"] = env.upscaler.Upscaler.__dict__["upscale"]
    if env.wrapper is not None:
        cls = type(env.wrapper)
        functions["VAE"] = dict(vars(cls))
    params = [(t, t.data_ptr(), t.dtype) for t in list(env.vae.parameters())]
    attrs = (env.devices.dtype_vae, env.vae._dtype, getattr(env.wrapper, "vae_dtype", None))
    return functions, params, attrs, current_flags()


def same(env, before) -> bool:
    functions, params, attrs, flags = snapshot(env)
    b_functions, b_params, b_attrs, b_flags = before
    same_functions = all(functions[k] is v if k != "VAE" else functions[k] == v for k, v in b_functions.items())
    same_params = [(id(t), p, d) for t, p, d in params] == [(id(t), p, d) for t, p, d in b_params]
    return same_functions and same_params and attrs == b_attrs and flags == b_flags


def make_env(monkeypatch, host="a1111", **options):
    """The fakes of ``host`` installed, TF32 flags on as on an Ampere+ GPU, and what SDFix may touch recorded."""
    set_webui_flags()
    env = install(monkeypatch, host, **options)
    env.before = snapshot(env)
    return env


def run(env, p, *args):
    script = env.glue.SDFixScript()
    script.setup(p, *args)
    script.process(p, *args)
    return script


def grad_mode(env):
    """The mode process_images runs the VAE in: A1111 no_grad, Forge/reForge inference_mode (their VAE
    weights fail outside it, see fakes.FakeVAE)."""
    return torch.no_grad() if env.host == "a1111" else torch.inference_mode()


def decode(env, latent=None):
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float16) if latent is None else latent
    with grad_mode(env):
        return env.processing.decode_first_stage(env.shared.sd_model, latent)


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


def xyz_cell(x_label, apply, generate):
    namespace = {}
    exec(compile(_XYZ_SOURCE, "/webui/scripts/xyz_grid.py", "exec"), namespace)

    class Axis:
        def __init__(self, label, fn):
            self.label, self.apply = label, fn

    return namespace["make_cell"](Axis(x_label, apply), Axis("Nothing", None), Axis("Nothing", None), generate)


def install_xyz_script(env):
    """The X/Y/Z plot script's module as the host lists it (``scripts_data``, module ``xyz_grid.py``),
    with its AxisOption signature and an empty ``axis_options``; returns that module."""
    class AxisOption:
        def __init__(self, label, type, apply, confirm=None, choices=None, **_):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz = type("xyz", (), {"AxisOption": AxisOption, "axis_options": []})
    env.scripts.scripts_data.append(type("D", (), {"module": xyz, "script_class": type("S", (), {"__module__": "xyz_grid.py"})}))
    return xyz


def recording_resize(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, tuple(size), resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return calls


# --- plain generations, to compare A/B variants and diagnosis cells with -------------------------------


def plain(env, payload, settings, **alwayson):
    """The same payload through the WebUI's txt2img API, SDFix's args = ``settings``."""
    from lib_sdfix.settings import SDFixSettings
    from lib_sdfix.webui.hosts import current

    env.shared.sd_model.unet_calls.clear()
    env.vae.seen.clear()
    if isinstance(settings, SDFixSettings):
        settings = settings.as_dict()
    body = {**current().txt2img_defaults(), **payload}  # what a client of this host's API has to send
    processed = env.api.api.text2imgapi({**body, "alwayson_scripts": {"SDFix": {"args": [settings]}, **alwayson}})
    assert len(processed.images) == 1
    return Namespace(image=processed.images[0], infotext=processed.infotexts[0],
                     unet=list(env.shared.sd_model.unet_calls), vae=list(env.vae.seen))


def _route_run(env, job, parse, run, body):
    """A route's run as the WebUI runs it, in a job; the result plus the UNet calls and VAE runs it made."""
    env.shared.sd_model.unet_calls.clear()
    env.vae.seen.clear()
    request = parse(body)
    env.shared.state.begin(job=job)
    try:
        result = run(request)
    finally:
        env.shared.state.end()
    return Namespace(result=result, unet=list(env.shared.sd_model.unet_calls), vae=list(env.vae.seen), request=request)


def compare(env, payload, variants="ab", **body):
    """POST /sdfix/v1/ab as the route runs it."""
    from lib_sdfix.webui.ab.request import request_from_body
    from lib_sdfix.webui.ab.runner import run_comparison

    return _route_run(env, "sdfix_ab", request_from_body, run_comparison,
                      {"payload": payload, "variants": variants, **body})


def diagnose(env, **body):
    """POST /sdfix/v1/diagnose as the route runs it."""
    from lib_sdfix.webui.diagnose import runner

    return _route_run(env, "sdfix_diagnose", runner.request_from_body, runner.run_diagnosis, body)


def assert_clean(env):
    """Nothing of a comparison or diagnosis outlives it: the functions, VAE, dtype attributes and flags
    (as ``make_env`` found them), no session, no patch, no run's thread state, no script hook failure."""
    from lib_sdfix.webui import patches
    from lib_sdfix.webui.ab import sampling
    from lib_sdfix.webui.diagnose import nan_watch
    from lib_sdfix.webui.session import thread_sessions

    assert same(env, env.before)
    assert thread_sessions() == [] and patches.active() == []
    assert not sampling.in_progress() and nan_watch.active_watch() is None
    assert env.runner.errors == []  # no script hook failed (the runner would only have reported it)


def pixels(image):
    return image.convert("RGB").tobytes()


def decodes(records):
    return [(r["input"], r["weight"], r["cudnn_tf32"]) for r in records if r["part"] == "decoder"]
