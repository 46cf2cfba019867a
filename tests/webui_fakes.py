"""A minimal stand-in for the WebUI's ``modules`` package, written for SDFix's glue tests.

Only the names ``scripts/sdfix.py`` touches, with the same signatures and call structure as
WebUI v1.10.1 (decode casts to ``devices.dtype_vae`` before the VAE, the upscaler resizes to a
multiple of 8 and ``resize_image`` resizes again, ...), so the glue can be exercised in CI where no
WebUI exists.  The real thing is covered by tests/e2e.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, List

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


class Namespace(types.SimpleNamespace):
    pass


class FakeVAE(torch.nn.Module):
    """A conv "VAE" that records what it sees when it runs.

    Like the ldm AutoencoderKL (a PyTorch Lightning module) it caches its dtype: ``.dtype`` is only
    updated by ``.to()``, not by casting the weights in place.
    """

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)
        self._dtype = torch.float32
        self.to(dtype)
        self.seen: List[Dict[str, Any]] = []

    def to(self, *args, **kwargs):
        dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
        if dtype is not None:
            self._dtype = dtype
        return super().to(*args, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _record(self, part: str, x: torch.Tensor) -> None:
        self.seen.append({
            "part": part, "input": x.dtype, "weight": self.conv.weight.dtype,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark,
        })

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._record("decoder", z)
        return self.conv(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._record("encoder", x)
        return self.enc(x)


class FakeSDModel:
    def __init__(self, dtype: torch.dtype):
        self.first_stage_model = FakeVAE(dtype)
        self.is_sdxl = False

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, z):
        return z * 0.18215


def build(dtype: torch.dtype = torch.float16) -> Dict[str, types.ModuleType]:
    """Fresh fake ``modules.*`` modules; returns them by short name."""
    m: Dict[str, types.ModuleType] = {}

    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(f"modules.{name}")
        m[name] = mod
        return mod

    pkg = types.ModuleType("modules")
    pkg.__path__ = []

    # devices
    devices = module("devices")
    devices.dtype_vae = dtype
    devices.cpu = torch.device("cpu")
    devices.without_autocast = lambda disable=False: contextlib.nullcontext()

    # shared
    shared = module("shared")
    shared.cmd_opts = Namespace(sdfix_disable=False, sdfix_decode_dtype=None)
    shared.opts = Namespace(sd_vae_decode_method="Full", sd_vae_encode_method="Full", show_progress_type="Approx NN",
                            live_preview_fast_interrupt=False, live_preview_allow_lowvram_full=False,
                            upscaler_for_img2img=None)
    shared.state = Namespace(interrupted=False)
    shared.sd_model = FakeSDModel(dtype)
    shared.device = torch.device("cpu")
    shared.latent_upscale_default_mode = "Latent"
    shared.latent_upscale_modes = {"Latent": {"mode": "bilinear", "antialias": False},
                                   "Latent (nearest)": {"mode": "nearest", "antialias": False}}

    class OptionInfo:
        def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                     section=None, refresh=None, category_id=None, **_):
            self.default, self.label, self.component, self.component_args = default, label, component, component_args
            self.section, self.category_id, self.comment_after = section, category_id, ""

        def info(self, text):
            self.comment_after += text
            return self

    shared.OptionInfo = OptionInfo
    shared.registered_options = {}

    def add_option(key, info):
        shared.registered_options[key] = info

    shared.opts.add_option = add_option

    # sd_samplers_common: full decode casts to dtype_vae first, as the WebUI does
    ssc = module("sd_samplers_common")
    ssc.approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}

    def samples_to_images_tensor(sample, approximation=None, model=None):
        if approximation is None:
            approximation = ssc.approximation_indexes.get(shared.opts.show_progress_type, 0)
        if approximation != 0:
            return torch.zeros(sample.shape[0], 3, *sample.shape[2:])  # a preview approximation
        model = model or shared.sd_model
        with torch.no_grad():
            return model.decode_first_stage(sample.to(model.first_stage_model.dtype))

    def decode_first_stage(model, x):
        x = x.to(devices.dtype_vae)
        return ssc.samples_to_images_tensor(x, ssc.approximation_indexes.get(shared.opts.sd_vae_decode_method, 0), model)

    def images_tensor_to_samples(image, approximation=None, model=None):
        model = model or shared.sd_model
        model.first_stage_model.to(devices.dtype_vae)
        image = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1
        with torch.no_grad():
            return model.get_first_stage_encoding(model.encode_first_stage(image))

    ssc.samples_to_images_tensor = samples_to_images_tensor
    ssc.decode_first_stage = decode_first_stage
    ssc.images_tensor_to_samples = images_tensor_to_samples

    # processing imports the two functions by name, as v1.10.1 does
    processing = module("processing")
    processing.decode_first_stage = decode_first_stage
    processing.images_tensor_to_samples = images_tensor_to_samples

    # upscaler + images: native passes, a resize to a multiple of 8, then resize_image resizes again
    upscaler = module("upscaler")

    class Upscaler:
        scale = 1

        def do_upscale(self, img, selected_model):
            raise NotImplementedError

        def upscale(self, img, scale, selected_model=None):
            self.scale = scale
            dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
            for i in range(3):
                if img.width >= dest_w and img.height >= dest_h and (i > 0 or scale != 1):
                    break
                shape = img.size
                img = self.do_upscale(img, selected_model)
                if shape == img.size:
                    break
            if img.size != (dest_w, dest_h):
                img = img.resize((dest_w, dest_h), resample=Image.LANCZOS)
            return img

    class Nearest4x(Upscaler):
        def do_upscale(self, img, selected_model):
            return img.resize((img.width * 4, img.height * 4), resample=Image.NEAREST)

    upscaler.Upscaler = Upscaler
    shared.sd_upscalers = [Namespace(name="None", scaler=None, data_path=None),
                           Namespace(name="Fake 4x", scaler=Nearest4x(), data_path="fake.pth")]

    images = module("images")

    def resize_image(resize_mode, im, width, height, upscaler_name=None):
        upscaler_name = upscaler_name or shared.opts.upscaler_for_img2img
        if upscaler_name not in (None, "None") and max(width / im.width, height / im.height) > 1:
            data = next(x for x in shared.sd_upscalers if x.name == upscaler_name)
            im = data.scaler.upscale(im, max(width / im.width, height / im.height), data.data_path)
        if im.size != (width, height):
            im = im.resize((width, height), resample=Image.LANCZOS)
        return im

    images.resize_image = resize_image

    # samplers / schedulers
    sd_samplers = module("sd_samplers")
    sd_samplers.all_samplers_map = {n: Namespace(name=n) for n in ("Euler", "Euler a", "DPM++ 2M")}
    sd_schedulers = module("sd_schedulers")
    sd_schedulers.schedulers_map = {}
    for name, label in (("automatic", "Automatic"), ("karras", "Karras"), ("uniform", "Uniform")):
        sd_schedulers.schedulers_map[name] = sd_schedulers.schedulers_map[label] = Namespace(name=name, label=label)

    call_queue = module("call_queue")
    import threading as _threading

    call_queue.queue_lock = _threading.Lock()
    shared.state.begin = lambda job=None: None
    shared.state.end = lambda: None
    shared.opts.hires_fix_show_sampler = False
    shared.cmd_opts.api_auth = None

    lowvram = module("lowvram")
    lowvram.is_enabled = lambda model: False

    # scripts + callbacks
    scripts = module("scripts")

    class Script:
        def elem_id(self, item_id):
            return f"script_sdfix_{item_id}"

    scripts.Script = Script
    scripts.AlwaysVisible = object()
    scripts.scripts_data = []
    scripts.basedir = lambda: str(ROOT)

    callbacks = module("script_callbacks")
    callbacks.registered = {}
    for name in ("on_ui_settings", "on_before_ui", "on_script_unloaded", "on_app_started", "on_ui_tabs",
                 "on_infotext_pasted", "on_model_loaded"):
        setattr(callbacks, name, (lambda n: lambda fn, **kw: callbacks.registered.setdefault(n, []).append(fn))(name))

    for name, mod in m.items():
        setattr(pkg, name, mod)
    m["__package__"] = pkg
    return m


def install(monkeypatch, dtype: torch.dtype = torch.float16):
    """Put the fakes into sys.modules and import scripts/sdfix.py against them."""
    fakes = build(dtype)
    monkeypatch.setitem(sys.modules, "modules", fakes.pop("__package__"))
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, f"modules.{name}", mod)
    spec = importlib.util.spec_from_file_location("sdfix_glue_under_test", ROOT / "scripts" / "sdfix.py")
    glue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue)
    return Namespace(glue=glue, **fakes)


class FakeP:
    """The fields of StableDiffusionProcessing the glue reads."""

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
