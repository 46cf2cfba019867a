"""A fake host as a whole: ``build`` makes its modules, ``install`` puts them into ``sys.modules`` and
loads scripts/sdfix.py against them; ``FakeP`` is a bare processing object for the hook tests."""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Dict

import torch

from .base import HOSTS, ROOT, Namespace, new_module
from .decode import install_first_stage
from .images import install_images
from .models import install_model
from .pipeline import install_pipeline
from .registries import install_registries
from .scripts import other_scripts
from .shared import install_call_queue, install_callbacks, install_devices_and_shared
from .speed import install_speed_options
from .ui import gradio_for_ui


def build(host: str = "a1111", dtype: torch.dtype = torch.float16, *, upcast: bool = False,
          dtype_vae: torch.dtype = None, ldm_vae: bool = False) -> Dict[str, types.ModuleType]:
    """Fresh fake modules for ``host``; returns {"modules.x": module, ...} plus Forge/reForge packages."""
    assert host in HOSTS
    out: Dict[str, types.ModuleType] = {}

    def module(name: str, package: bool = False) -> types.ModuleType:
        mod = new_module(name, package)
        out[name] = mod
        return mod

    pkg = module("modules", package=True)

    devices, shared = install_devices_and_shared(module, host, dtype, upcast, dtype_vae)
    install_speed_options(module, host, shared)

    sd_vae = module("modules.sd_vae")
    sd_vae.loaded_vae_file = None
    sd_models = install_registries(module, host, shared, sd_vae)  # checkpoints, styles, VAE files, Forge's modules

    install_model(module, host, dtype, devices, shared, ldm_vae)
    ssc, processing = install_first_stage(module, host, devices, shared)
    images = install_images(module, host, shared)
    install_call_queue(module, shared)

    lowvram = module("modules.lowvram")
    lowvram.is_enabled = lambda model: False

    # the generation: samplers, schedulers, processing, scripts, the txt2img API
    install_pipeline(module, host, shared, devices, ssc, processing, images, sd_models)

    install_callbacks(module)

    for name, mod in list(out.items()):
        if name.startswith("modules."):
            setattr(pkg, name.split(".", 1)[1], mod)
    return out


def install(monkeypatch, host: str = "a1111", dtype: torch.dtype = torch.float16, **options):
    """Put the fakes into sys.modules, pick the host, and import scripts/sdfix.py against them."""
    from lib_sdfix.webui import hosts
    from lib_sdfix.webui.ab import request as ab_request

    fakes = build(host, dtype, **options)
    for name in [n for n in sys.modules if n.split(".")[0] in ("modules", "backend", "ldm_patched", "modules_forge")]:
        monkeypatch.delitem(sys.modules, name)
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    hosts.detect.cache_clear()
    ab_request._DEFAULTS.clear()
    spec = importlib.util.spec_from_file_location("sdfix_script_under_test", ROOT / "scripts" / "sdfix.py")
    glue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue)
    scripts = fakes["modules.scripts"]
    others = other_scripts(scripts)
    for cls in others.values():
        cls.setups, cls.calls = [], []
    runner = scripts.ScriptRunner()
    runner.initialize_scripts([others["builtin"], others["marker"], glue.SDFixScript], is_img2img=False)
    with gradio_for_ui():  # the WebUI builds every script's controls when it builds its UI
        for script in runner.scripts:
            runner.create_script_ui(script)
    scripts.scripts_txt2img = runner
    short = {name.split(".", 1)[1]: mod for name, mod in fakes.items() if name.startswith("modules.")}
    env = Namespace(glue=glue, host=host, runner=runner, **short, **{f"{k}_script": v for k, v in others.items()})
    env.vae = env.shared.sd_model.forge_objects.vae.first_stage_model if host != "a1111" else env.shared.sd_model.first_stage_model
    env.wrapper = getattr(getattr(env.shared.sd_model, "forge_objects", None), "vae", None)
    env.fakes = fakes
    return env


class FakeP:
    """The fields of StableDiffusionProcessing SDFix reads."""

    def __init__(self, **fields):
        self.sampler_name, self.scheduler = "Euler", "Automatic"
        self.enable_hr = False
        self.hr_sampler_name = self.hr_scheduler = self.hr_upscaler = None
        self.denoising_strength = 0.7
        self.extra_generation_params = {}
        self.closed = False
        self.__dict__.update(fields)

    def init(self, *args):
        return "init ran"

    def close(self):
        self.closed = True
