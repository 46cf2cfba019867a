"""Stand-ins for the three hosts' ``modules`` (and Forge's ``backend``, reForge's ``ldm_patched``).

Only what ``lib_sdfix.webui`` touches, with the same signatures and, where it matters, the same call
structure and casts as the real hosts (read from their source):

* AUTOMATIC1111 v1.10: ``decode_first_stage`` casts the latent to ``devices.dtype_vae`` and the full
  decode casts it again to the VAE's cached ``.dtype``; with ``--upcast-sampling`` the model's own
  ``decode_first_stage``/``encode_first_stage`` are hijacked to cast their input to ``devices.dtype_vae``;
  the full encode moves the VAE to ``devices.dtype_vae`` first; ``Upscaler.upscale`` resizes to a
  multiple of 8 and ``resize_image`` resizes again; live previews decode on another thread.
* Forge: ``sd_model.first_stage_model`` is None; ``forge_objects.vae`` is a wrapper whose
  ``decode_inner``/``encode_inner`` cast to the wrapper's own ``vae_dtype``; ``resize_image`` takes
  ``force_RGBA`` and converts RGBA to RGB.
* reForge: a wrapper whose ``decode``/``encode`` cast to its ``vae_dtype``, which can differ from
  ``devices.dtype_vae``; its Upscaler loop stops earlier.

The real hosts are covered by tests/e2e.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any, Dict, List

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("a1111", "forge", "reforge")


class Namespace(types.SimpleNamespace):
    pass


def _flags() -> Dict[str, Any]:
    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark}


class FakeVAE(torch.nn.Module):
    """A conv "VAE" that records what it sees when it runs.

    Like the ldm AutoencoderKL (a PyTorch Lightning module) it caches its dtype: ``.dtype`` is only
    updated by ``.to()``, not by casting the weights in place.  Like torch, a conv whose input dtype
    differs from its weight dtype raises.
    """

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
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

    def _run(self, part: str, layer: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"part": part, "input": x.dtype, "weight": layer.weight.dtype,
                          "thread": threading.current_thread().name, **_flags()})
        if x.dtype != layer.weight.dtype:
            raise RuntimeError(f"Input type ({x.dtype}) and bias type ({layer.weight.dtype}) should be the same")
        return layer(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run("decoder", self.conv, z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", self.enc, x)


def _module(name: str, package: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    return mod


def build(host: str = "a1111", dtype: torch.dtype = torch.float16, *, upcast: bool = False,
          dtype_vae: torch.dtype = None) -> Dict[str, types.ModuleType]:
    """Fresh fake modules for ``host``; returns {"modules.x": module, ...} plus Forge/reForge packages."""
    assert host in HOSTS
    out: Dict[str, types.ModuleType] = {}

    def module(name: str, package: bool = False) -> types.ModuleType:
        mod = _module(name, package)
        out[name] = mod
        return mod

    pkg = module("modules", package=True)

    # devices
    devices = module("modules.devices")
    devices.dtype_vae = dtype if dtype_vae is None else dtype_vae
    devices.dtype = dtype
    devices.unet_needs_upcast = upcast
    devices.cpu = torch.device("cpu")
    devices.device = torch.device("cpu")
    devices.without_autocast = lambda disable=False: contextlib.nullcontext()

    # shared
    shared = module("modules.shared")
    shared.cmd_opts = Namespace(sdfix_disable=False, sdfix_decode_dtype=None, api=True, nowebui=False, api_auth=None,
                                no_half_vae=False, no_half=False, upcast_sampling=upcast, precision="half")
    shared.opts = Namespace(sd_vae_decode_method="Full", sd_vae_encode_method="Full", show_progress_type="Full",
                            live_preview_fast_interrupt=False, live_preview_allow_lowvram_full=False,
                            upscaler_for_img2img=None, hires_fix_show_sampler=False)
    shared.state = Namespace(interrupted=False, begin=lambda job=None: None, end=lambda: None)
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
    shared.opts.add_option = lambda key, info: shared.registered_options.__setitem__(key, info)

    sd_vae = module("modules.sd_vae")
    sd_vae.loaded_vae_file = None

    # the model and its VAE, per host
    vae = FakeVAE(dtype)
    model = Namespace(is_sdxl=False, sd_checkpoint_info=Namespace(filename=None))
    model.get_first_stage_encoding = lambda z: z * 0.18215
    wrapper = None
    if host == "a1111":
        model.first_stage_model = vae

        def model_decode(z):
            if devices.unet_needs_upcast:  # sd_hijack_unet's first_stage_sub
                z = z.to(devices.dtype_vae)
            return model.first_stage_model.decode(z)

        def model_encode(x):
            if devices.unet_needs_upcast:
                x = x.to(devices.dtype_vae)
            return model.first_stage_model.encode(x)

        model.decode_first_stage, model.encode_first_stage = model_decode, model_encode
    else:
        class Wrapper:
            def __init__(self, module, vae_dtype):
                self.first_stage_model, self.vae_dtype = module, vae_dtype

            def _decode(self, samples):
                return (self.first_stage_model.decode(samples.to(self.vae_dtype)).float() + 1.0) / 2.0

            def _encode(self, pixels):
                return self.first_stage_model.encode((2.0 * pixels - 1.0).to(self.vae_dtype)).float()

        if host == "forge":
            class VAE(Wrapper):
                def decode_inner(self, samples):
                    return self._decode(samples)

                def decode(self, samples):
                    return self.decode_inner(samples)

                def encode_inner(self, pixels):
                    return self._encode(pixels)

                def encode(self, pixels):
                    return self.encode_inner(pixels)

            module("backend", package=True)
            module("backend.patcher", package=True)
            module("backend.patcher.vae").VAE = VAE
            model.first_stage_model = None
        else:
            class VAE(Wrapper):
                def decode(self, samples, vae_options={}):  # noqa: B006 -- reForge's signature
                    return self._decode(samples)

                def encode(self, pixels):
                    return self._encode(pixels)

            module("ldm_patched", package=True)
            module("ldm_patched.modules", package=True)
            module("ldm_patched.modules.sd").VAE = VAE
            model.first_stage_model = vae
        module("modules_forge", package=True)
        wrapper = VAE(vae, dtype)
        model.forge_objects = Namespace(vae=wrapper)
        model.decode_first_stage = lambda x: (model.forge_objects.vae.decode(x) * 2.0 - 1.0).to(x)
        model.encode_first_stage = lambda x: model.forge_objects.vae.encode(x * 0.5 + 0.5).to(x)
        model.get_first_stage_encoding = lambda z: z
    shared.sd_model = model

    # sd_samplers_common: the decode/encode entry points, with each host's casts
    ssc = module("modules.sd_samplers_common")
    ssc.approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}

    def samples_to_images_tensor(sample, approximation=None, model=None):
        if approximation is None or (shared.state.interrupted and shared.opts.live_preview_fast_interrupt):
            approximation = ssc.approximation_indexes.get(shared.opts.show_progress_type, 0)
            if host != "a1111" and approximation == 0:
                approximation = 1
        if approximation != 0:
            return torch.zeros(sample.shape[0], 3, *sample.shape[2:])  # a preview approximation
        model = model or shared.sd_model
        with torch.no_grad():
            if host == "a1111":
                return model.decode_first_stage(sample.to(model.first_stage_model.dtype))
            return model.decode_first_stage(sample)

    def decode_first_stage(model, x):
        if host == "a1111":
            x = x.to(devices.dtype_vae)
        return ssc.samples_to_images_tensor(x, ssc.approximation_indexes.get(shared.opts.sd_vae_decode_method, 0), model)

    def images_tensor_to_samples(image, approximation=None, model=None):
        if approximation is None:
            approximation = ssc.approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
        if approximation == 3:
            return torch.zeros(image.shape[0], 4, image.shape[2] // 8 or 1, image.shape[3] // 8 or 1)
        model = model or shared.sd_model
        if host == "a1111":
            model.first_stage_model.to(devices.dtype_vae)
        image = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1
        with torch.no_grad():
            latent = model.get_first_stage_encoding(model.encode_first_stage(image))
        return latent.float() if host == "a1111" and devices.unet_needs_upcast else latent

    ssc.samples_to_images_tensor = samples_to_images_tensor
    ssc.decode_first_stage = decode_first_stage
    ssc.images_tensor_to_samples = images_tensor_to_samples

    # processing imports the two functions by name, as the hosts do
    processing = module("modules.processing")
    processing.decode_first_stage = decode_first_stage
    processing.images_tensor_to_samples = images_tensor_to_samples

    # upscaler + images
    upscaler = module("modules.upscaler")

    class Upscaler:
        scale = 1

        def do_upscale(self, img, selected_model):
            raise NotImplementedError

        def upscale(self, img, scale, selected_model=None):
            self.scale = scale
            dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
            for i in range(3):
                if host == "reforge":
                    if img.width > dest_w and img.height > dest_h and scale != 1:
                        break
                elif img.width >= dest_w and img.height >= dest_h and (i > 0 or scale != 1):
                    break
                shape = img.size
                img = self.do_upscale(img, selected_model)
                if shape == img.size:
                    break
                if host == "reforge" and img.width >= dest_w and img.height >= dest_h:
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

    images = module("modules.images")

    def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
        if host != "a1111" and not force_RGBA and im.mode == "RGBA":
            im = im.convert("RGB")
        upscaler_name = upscaler_name or shared.opts.upscaler_for_img2img
        if (upscaler_name not in (None, "None") and im.mode != "L" and not force_RGBA
                and max(width / im.width, height / im.height) > 1):
            data = next(x for x in shared.sd_upscalers if x.name == upscaler_name)
            im = data.scaler.upscale(im, max(width / im.width, height / im.height), data.data_path)
        if im.size != (width, height):
            im = im.resize((width, height), resample=Image.LANCZOS)
        return im

    if host == "a1111":
        def resize_image_a1111(resize_mode, im, width, height, upscaler_name=None):
            return resize_image(resize_mode, im, width, height, upscaler_name)

        images.resize_image = resize_image_a1111
    else:
        images.resize_image = resize_image

    # samplers / schedulers
    sd_samplers = module("modules.sd_samplers")
    sd_samplers.all_samplers_map = {n: Namespace(name=n) for n in ("Euler", "Euler a", "DPM++ 2M")}
    sd_samplers.create_sampler = lambda name, model: Namespace(name=name)
    sd_schedulers = module("modules.sd_schedulers")
    sd_schedulers.schedulers_map = {}
    for name, label in (("automatic", "Automatic"), ("karras", "Karras"), ("uniform", "Uniform")):
        sd_schedulers.schedulers_map[name] = sd_schedulers.schedulers_map[label] = Namespace(name=name, label=label)

    call_queue = module("modules.call_queue")
    call_queue.queue_lock = threading.Lock()

    lowvram = module("modules.lowvram")
    lowvram.is_enabled = lambda model: False

    # scripts + callbacks
    scripts = module("modules.scripts")

    class Script:
        def elem_id(self, item_id):
            return f"script_sdfix_{item_id}"

    scripts.Script = Script
    scripts.AlwaysVisible = object()
    scripts.scripts_data = []
    scripts.basedir = lambda: str(ROOT)

    callbacks = module("modules.script_callbacks")
    callbacks.callback_map = {}
    for name in ("ui_settings", "before_ui", "script_unloaded", "app_started", "ui_tabs", "model_loaded"):
        key = f"callbacks_{name}"
        callbacks.callback_map[key] = []

        def register(fn, *, name=None, _key=key):
            callbacks.callback_map[_key].append(Namespace(callback=fn, name=name))

        setattr(callbacks, f"on_{name}", register)

    for name, mod in list(out.items()):
        if name.startswith("modules."):
            setattr(pkg, name.split(".", 1)[1], mod)
    return out


def install(monkeypatch, host: str = "a1111", dtype: torch.dtype = torch.float16, **options):
    """Put the fakes into sys.modules, pick the host, and import scripts/sdfix.py against them."""
    from lib_sdfix.webui import comparison, host as host_module

    fakes = build(host, dtype, **options)
    for name in [n for n in sys.modules if n.split(".")[0] in ("modules", "backend", "ldm_patched", "modules_forge")]:
        monkeypatch.delitem(sys.modules, name)
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    host_module.detect.cache_clear()
    comparison._DEFAULTS.clear()
    spec = importlib.util.spec_from_file_location("sdfix_script_under_test", ROOT / "scripts" / "sdfix.py")
    glue = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue)
    short = {name.split(".", 1)[1]: mod for name, mod in fakes.items() if name.startswith("modules.")}
    env = Namespace(glue=glue, host=host, **short)
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
