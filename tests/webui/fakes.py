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

The generation itself (for the A/B runner) follows AUTOMATIC1111 v1.10.1's call order -- see the
"generation pipeline" section: ``process_images`` with the script runner's hooks, txt2img sampling
through ``create_sampler``/``get_sigmas``/``launch_sampling`` with a counting "UNet", the Hires pass
(latent interpolate, or decode -> ``resize_image`` -> ``images_tensor_to_samples``) returning decoded
samples, ``create_infotext``, the txt2img API model and ``text2imgapi``.  Samplers: k-diffusion ones
taking a sigma schedule (Euler, Euler a, DPM++ 2M) or two noise levels (DPM fast), and timestep ones
(DDIM walking ``get_timesteps`` down, UniPC laying out its own grid) over ``sd_model.alphas_cumprod``.
img2img (no mask) encodes its init image in ``init`` and runs ``sample_img2img``.  ``shared.state``
keeps every progress value the WebUI would show.  ``install`` builds
``scripts.scripts_txt2img`` with a UI-only built-in script, another extension's AlwaysOn script and
SDFix's own script from scripts/sdfix.py.

The real hosts are covered by tests/e2e.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import math
import random
import re
import sys
import threading
import types
import typing
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from .fake_registries import install_registries

ROOT = Path(__file__).resolve().parents[2]
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
        self.half_overflow = False  # decoding in fp16 overflows to NaN, as a real fp16 VAE can on some latents
        # Forge/reForge load the VAE under inference_mode: its weights are inference tensors, and their
        # layers fail outside inference_mode (what a real Forge VAE raised when called under no_grad)
        self.needs_inference_mode = False

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
        if self.needs_inference_mode and not torch.is_inference_mode_enabled():
            raise RuntimeError("Inference tensors do not track version counter.")
        if x.dtype != layer.weight.dtype:
            raise RuntimeError(f"Input type ({x.dtype}) and bias type ({layer.weight.dtype}) should be the same")
        return layer(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self._run("decoder", self.conv, z)
        if self.half_overflow and self.conv.weight.dtype == torch.float16:
            out = out * float("nan")
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", self.enc, x)


class FakeLdmVAE(FakeVAE):
    """A FakeVAE whose decode/encode run a small real ldm-layout network (``tests/ldm_vae.py``), so the
    tiled fp32 path (:mod:`lib_sdfix.tiling`) has a decoder and an encoder to plan and run."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        torch.nn.Module.__init__(self)
        from tests.ldm_vae import LdmVAE

        net = LdmVAE(seed=seed)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.quant_conv, self.post_quant_conv = net.quant_conv, net.post_quant_conv
        self._dtype = torch.float32
        self.to(dtype)
        self.seen = []
        self.half_overflow = False
        self.needs_inference_mode = False

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._run("decoder", self.post_quant_conv, z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", self.quant_conv, self.encoder(x)).chunk(2, dim=1)[0]


def _module(name: str, package: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    return mod


def build(host: str = "a1111", dtype: torch.dtype = torch.float16, *, upcast: bool = False,
          dtype_vae: torch.dtype = None, ldm_vae: bool = False) -> Dict[str, types.ModuleType]:
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

    class NansException(Exception):
        pass

    def test_for_nans(x, where):
        """AUTOMATIC1111 looks at the first element only; Forge and reForge's is a no-op."""
        if host != "a1111" or shared.cmd_opts.disable_nan_check:
            return
        if not torch.isnan(x[(0,) * len(x.shape)]):
            return
        raise NansException(f"A tensor with NaNs was produced in {'VAE' if where == 'vae' else 'Unet'}.")

    devices.NansException = NansException
    devices.test_for_nans = test_for_nans

    # shared
    shared = module("modules.shared")
    shared.cmd_opts = Namespace(sdfix_disable=False, sdfix_vae_dtype=None, api=True, nowebui=False, api_auth=None,
                                no_half_vae=False, no_half=False, upcast_sampling=upcast, precision="half",
                                disable_nan_check=False)
    shared.opts = Namespace(sd_vae_decode_method="Full", sd_vae_encode_method="Full", show_progress_type="Full",
                            live_preview_fast_interrupt=False, live_preview_allow_lowvram_full=False,
                            upscaler_for_img2img=None, hires_fix_show_sampler=False, auto_vae_precision=True,
                            img2img_extra_noise=0.0)
    shared.state = State()
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
    sd_models = install_registries(module, host, shared, sd_vae)  # checkpoints, styles, VAE files, Forge's modules

    # the model and its VAE, per host
    vae = FakeLdmVAE(dtype) if ldm_vae else FakeVAE(dtype)
    vae.needs_inference_mode = host != "a1111"
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

    def get_next_sequence_number(path, basename):
        """images.py: one more than the largest leading number of the files in ``path`` (0 for none)."""
        import os

        result = -1
        basename = f"{basename}-" if basename != "" else basename
        for name in os.listdir(path):
            if name.startswith(basename):
                parts = os.path.splitext(name[len(basename):])[0].split("-")
                try:
                    result = max(int(parts[0]), result)
                except ValueError:
                    pass
        return result + 1

    images.get_next_sequence_number = get_next_sequence_number
    module("modules.paths_internal").default_output_dir = "outputs"

    call_queue = module("modules.call_queue")
    call_queue.queue_lock = threading.Lock()

    def wrap_gradio_gpu_call(func, extra_outputs=None):
        """call_queue.py: the queue lock and job state around ``func``; an exception becomes
        ``extra_outputs`` plus an error box; the job flags are reset afterwards; the last output gets stats."""

        def f(*args, **kwargs):
            id_task = args[0] if args and isinstance(args[0], str) and args[0].startswith("task(") else None
            try:
                with call_queue.queue_lock:
                    shared.state.begin(job=id_task)
                    try:
                        res = list(func(*args, **kwargs))
                    finally:
                        shared.state.end()
            except Exception as exc:  # noqa: BLE001 -- errors.report
                res = list(extra_outputs if extra_outputs is not None else [None, ""]) + [
                    f"<div class='error'>{type(exc).__name__}: {exc}</div>"]
            finally:
                shared.state.skipped = shared.state.interrupted = shared.state.stopping_generation = False
                shared.state.job_count, shared.state.job = 0, ""
            res[-1] += "<div class='performance'></div>"
            return tuple(res)

        return f

    call_queue.wrap_gradio_gpu_call = wrap_gradio_gpu_call

    lowvram = module("modules.lowvram")
    lowvram.is_enabled = lambda model: False

    # the generation: samplers, schedulers, processing, scripts, the txt2img API
    _pipeline(module, host, shared, devices, ssc, processing, images, sd_models)

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


# --- the generation pipeline ------------------------------------------------------------------------
#
# AUTOMATIC1111 v1.10.1's modules/processing.py, sd_samplers*.py, scripts.py and api/ in their call
# order, cut down to what a txt2img generation does with one image:
#
#   process_images(p): scripts.before_process -> override_settings -> fix_p_invalid_sampler_and_scheduler
#     -> process_images_inner(p): seed -> prompts -> scripts.process -> p.init -> per batch:
#        rng -> scripts.before_process_batch/process_batch -> conds -> p.sample -> scripts.post_sample
#        -> decode_latent_batch (unless already decoded) -> scripts.postprocess_batch(_list)
#        -> per image: scripts.postprocess_image -> ..._after_composite -> create_infotext
#     -> Processed -> scripts.postprocess
#   txt2img p.sample: create_sampler -> rng.next -> scripts.process_before_every_sampling
#     -> sampler.sample (get_sigmas writes "Schedule type", initialize(p), launch_sampling(steps, func))
#     -> with Hires: decode_latent_batch -> resize_image -> images_tensor_to_samples (non-latent upscaler)
#        or latent interpolate -> sample_hr_pass: create_sampler -> scripts.before_hr
#        -> sampler.sample_img2img -> launch_sampling -> decode_latent_batch -> DecodedSamples
#
# The "UNet" is ``shared.sd_model.apply_model``: a cheap deterministic function that records every call
# in ``shared.sd_model.unet_calls``.  The fake VAE keeps the spatial size, so latents are as large as
# their image (OPT_F = 1).  Host differences kept: Forge's ``hr_additional_modules`` (its Hires pass
# raises TypeError unless it is a list) and extra API fields, Forge's float32 Hires encode input,
# ``decode_latent_batch`` (AUTOMATIC1111: one decode per image, ``devices.test_for_nans`` on the latent
# and each image with the fp32 retry of "Automatically revert VAE to 32-bit floats"; Forge/reForge: the
# batch in one decode, no check).  Module-level functions are called through ``processing.`` as the
# hosts' own module globals are, so a patched one is seen.

OPT_F = 1
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6


class State:
    """``shared.state``: the job flags a generation checks, and the progress the WebUI shows from them
    (``progress()``: modules/progress.py's formula; every value it took is kept in ``shown``)."""

    def __init__(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.job_count, self.job_no = "", 0, 0
        self.sampling_step = self.sampling_steps = 0
        self.processing_has_refined_job_count = False
        self.shown = []

    def progress(self):
        value = 0.0
        if self.job_count > 0:
            value += self.job_no / self.job_count
        if self.sampling_steps > 0 and self.job_count > 0:
            value += 1 / self.job_count * self.sampling_step / self.sampling_steps
        return value

    def show(self):
        self.shown.append(self.progress())

    def begin(self, job="(unknown)"):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.job_count, self.job_no = job, -1, 0
        self.processing_has_refined_job_count = False

    def end(self):
        self.job, self.job_count = "", 0

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0
        self.show()

    def interrupt(self):
        self.interrupted = True


def fake_gradio() -> types.ModuleType:
    """Enough of gradio for scripts' ``ui()``: components keep their ``value``; layouts are contexts."""
    gr = _module("gradio")

    class Component:
        def __init__(self, *args, value=None, label=None, **kwargs):
            self.value, self.label, self.kwargs = value, label, kwargs

    class Layout(contextlib.ContextDecorator):
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    for name in ("Checkbox", "Slider", "Radio", "Dropdown", "Textbox", "Number"):
        setattr(gr, name, type(name, (Component,), {}))
    for name in ("Blocks", "Accordion", "Row", "Column", "Group"):
        setattr(gr, name, type(name, (Layout,), {}))
    return gr


@contextlib.contextmanager
def gradio_for_ui():
    """The fake gradio as ``gradio`` for the block (where the UI is built), whatever was there before."""
    before = sys.modules.get("gradio")
    sys.modules["gradio"] = fake_gradio()
    try:
        yield
    finally:
        if before is None:
            sys.modules.pop("gradio", None)
        else:
            sys.modules["gradio"] = before


def _sigmas(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values, values.new_zeros(1)])


def sigmas_automatic(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    return _sigmas(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def sigmas_karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _sigmas((hi + ramp * (lo - hi)) ** rho)


def sigmas_uniform(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    return _sigmas(torch.linspace(sigma_max, sigma_min, n))


def _euler(model, x, sigmas, extra_args, callback, noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _euler_ancestral(model, x, sigmas, extra_args, callback, noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        up = min(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
        down = (s_next ** 2 - up ** 2) ** 0.5
        x = x + (x - denoised) / s * (down - s)
        if s_next > 0:
            x = x + noise() * up
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _dpmpp_2m(model, x, sigmas, extra_args, callback, noise):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            d = denoised
            if old is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
            h_last = h
        old = denoised
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _dpm_fast(model, x, sigma_min, sigma_max, n, extra_args, callback, noise):
    """Like k-diffusion's sample_dpm_fast: no schedule taken, its own steps between two noise levels."""
    sigmas = _sigmas(torch.exp(torch.linspace(math.log(float(sigma_max)), math.log(float(sigma_min)), int(n))))
    return _euler(model, x, sigmas, extra_args, callback, noise)


SAMPLER_FUNCS = {"euler": _euler, "euler_ancestral": _euler_ancestral, "dpmpp_2m": _dpmpp_2m, "dpm_fast": _dpm_fast}


def alphas_cumprod_sd() -> torch.Tensor:
    """SD's 1000-step scaled-linear noise schedule (what ``sd_model.alphas_cumprod`` holds)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """sd_samplers_timesteps_impl.ddim's walk: timesteps ascend; the model runs at timesteps[len-1] .. [1]."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))]
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item(), **extra_args)
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
        callback({"x": x, "i": i, "denoised": pred_x0})
    return x


def _unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    """Like sd_samplers_timesteps_impl.unipc: takes the timesteps only for their count (and, in img2img,
    the last one as its start) and lays out its own time grid between start and end."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    start = float(timesteps[-1]) / 1000 + 1 / 1000 if is_img2img else 1.0
    grid = torch.linspace(start, 1 / 1000, len(timesteps) + 1)
    for i in range(len(timesteps)):
        t, t_next = int(float(grid[i]) * 1000) - 1, int(float(grid[i + 1]) * 1000) - 1
        e_t = model(x, float(t), **extra_args)
        a_t, a_next = float(alphas_cumprod[max(t, 0)]), float(alphas_cumprod[max(t_next, 0)])
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_next ** 0.5 * pred_x0 + (1 - a_next) ** 0.5 * e_t
        callback({"x": x, "i": i, "denoised": pred_x0})
    return x


TIMESTEP_FUNCS = {"ddim": _ddim, "unipc": _unipc}


def _conditioning(texts) -> torch.Tensor:
    """The "text encoder": a small tensor per prompt, determined by that prompt alone."""
    def encode(text):
        g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
        return 0.3 * torch.randn((1, 4, 1, 1), generator=g)

    return torch.cat([encode(text) for text in texts])


_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text):
    """infotext_utils.parse_generation_parameters, for the parameter line: key -> text (quoted values unquoted)."""
    lines = text.strip().split("\n")
    params = {}
    prompt = [line for line in lines[:-1] if not line.startswith("Negative prompt:")]
    negative = [line[len("Negative prompt:"):].strip() for line in lines[:-1] if line.startswith("Negative prompt:")]
    params["Prompt"], params["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    for key, value in _RE_PARAM.findall(lines[-1]):
        params[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return params


def _quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _pipeline(module, host, shared, devices, ssc, processing, images, sd_models) -> None:
    opts = shared.opts
    for key, value in dict(outdir_samples="", outdir_txt2img_samples="outputs/txt2img-images",
                           outdir_txt2img_grids="outputs/txt2img-grids", samples_filename_pattern="",
                           samples_save=True, face_restoration=False, tiling=False, img2img_fix_steps=False,
                           inpainting_mask_weight=1.0, enable_pnginfo=True, CLIP_stop_at_last_layers=1,
                           eta_noise_seed_delta=0).items():
        setattr(opts, key, value)
    state = shared.state
    model = shared.sd_model
    model.unet_calls = []
    model.unet_hook = None  # called with the call count after each UNet call (tests interrupt or fail there)
    model.alphas_cumprod = alphas_cumprod_sd()
    model.unet_output = None  # (call count, output) -> output: tests put NaN or detail into the prediction

    def apply_model(x, sigma, cond):
        model.unet_calls.append({"shape": tuple(x.shape), "sigma": float(sigma), "thread": threading.current_thread().name})
        if model.unet_hook is not None:
            model.unet_hook(len(model.unet_calls))
        out = torch.tanh(x / (float(sigma) ** 2 + 1) ** 0.5 + cond) * 0.9
        return out if model.unet_output is None else model.unet_output(len(model.unet_calls), out)

    model.apply_model = apply_model

    infotext_utils = module("modules.infotext_utils")
    infotext_utils.quote = _quote
    infotext_utils.parse_generation_parameters = parse_generation_parameters

    # rng
    rng = module("modules.rng")

    class ImageRNG:
        def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
            self.shape, self.seeds, self.subseeds, self.subseed_strength = tuple(shape), seeds, subseeds, subseed_strength
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
            self.sub_generators = [torch.Generator().manual_seed(int(s)) for s in (subseeds or seeds)]

        def next(self):
            xs = []
            for g, sg in zip(self.generators, self.sub_generators):
                noise = torch.randn(self.shape, generator=g)
                if self.subseed_strength:
                    sub = torch.randn(self.shape, generator=sg)
                    noise = (1 - self.subseed_strength) * noise + self.subseed_strength * sub
                xs.append(noise)
            return torch.stack(xs)

    rng.ImageRNG = ImageRNG

    # samplers
    class InterruptedException(BaseException):
        pass

    def setup_img2img_steps(p, steps=None):
        if opts.img2img_fix_steps or steps is not None:
            requested = steps or p.steps
            steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
            t_enc = requested - 1
        else:
            steps = p.steps
            t_enc = int(min(p.denoising_strength, 0.999) * steps)
        return steps, t_enc

    class CFGDenoiser:
        def __init__(self, sampler):
            self.sampler, self.steps, self.p = sampler, None, None
            self.step, self.total_steps = 0, None  # the hosts' prompt-editing step counter and its total

        def __call__(self, x, sigma, cond, uncond, cond_scale):
            if state.interrupted or state.skipped:
                raise InterruptedException
            out = shared.sd_model.apply_model(torch.cat([x, x]), sigma, torch.cat([cond, uncond]))
            shared.sd_model.unet_calls[-1].update(step=self.step, total_steps=self.total_steps)
            self.step += 1
            cond_out, uncond_out = out.chunk(2)  # the batch's conditional halves, then its unconditional ones
            denoised = uncond_out + cond_scale * (cond_out - uncond_out)
            self.sampler.last_latent = denoised
            return denoised

    class Sampler:
        def __init__(self, funcname):
            self.funcname, self.config, self.p = funcname, None, None
            self.last_latent = None
            self.stop_at = None
            self.model_wrap_cfg = CFGDenoiser(self)
            self.sampler_extra_args = {}

        def callback_state(self, d):
            if self.stop_at is not None and d["i"] > self.stop_at:
                raise InterruptedException
            state.sampling_step = d["i"]
            state.show()

        def launch_sampling(self, steps, func):
            self.model_wrap_cfg.steps = steps
            self.model_wrap_cfg.total_steps = steps  # config.total_steps(steps) of a first-order sampler
            state.sampling_steps, state.sampling_step = steps, 0
            try:
                return func()
            except InterruptedException:
                return self.last_latent

        def initialize(self, p):
            self.p = p
            self.model_wrap_cfg.p = p
            self.model_wrap_cfg.step = 0
            return {}

    ssc.InterruptedException = InterruptedException
    ssc.setup_img2img_steps = setup_img2img_steps
    ssc.Sampler = Sampler

    sd_schedulers = module("modules.sd_schedulers")

    @dataclasses.dataclass
    class Scheduler:
        name: str
        label: str
        function: Any
        default_rho: float = -1
        need_inner_model: bool = False
        aliases: list = None

    sd_schedulers.Scheduler = Scheduler
    sd_schedulers.schedulers = [Scheduler("automatic", "Automatic", None), Scheduler("uniform", "Uniform", sigmas_uniform),
                                Scheduler("karras", "Karras", sigmas_karras, default_rho=7.0),
                                Scheduler("sgm_uniform", "SGM Uniform", sigmas_uniform, aliases=["SGMUniform"])]
    sd_schedulers.schedulers_map = {**{x.name: x for x in sd_schedulers.schedulers},
                                    **{x.label: x for x in sd_schedulers.schedulers}}

    kdiffusion = module("modules.sd_samplers_kdiffusion")

    class KDiffusionSampler(Sampler):
        def __init__(self, funcname, sd_model, options=None):
            super().__init__(funcname)
            self.func = SAMPLER_FUNCS[funcname]
            self.model = sd_model

        def get_sigmas(self, p, steps):  # sd_samplers_kdiffusion.py: the schedule, and its infotext entries
            scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
            if scheduler_name == "Automatic":
                scheduler_name = self.config.options.get("scheduler", None)
            scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
            if scheduler is None or scheduler.function is None:
                return sigmas_automatic(steps)
            if scheduler.label != "Automatic" and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            return scheduler.function(steps)

        def _launch(self, p, steps, x, schedule, conditioning, unconditional_conditioning):
            """schedule: what the function's parameters take (``sigmas``, or ``sigma_min``/``sigma_max``/``n``)."""
            self.initialize(p)
            self.sampler_extra_args = {"cond": conditioning, "uncond": unconditional_conditioning,
                                       "cond_scale": p.cfg_scale}
            self.last_latent = x
            parameters = inspect.signature(self.func).parameters
            kwargs = {k: v for k, v in schedule.items() if k in parameters}
            return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                                 callback=self.callback_state, noise=p.rng.next,
                                                                 **kwargs))

        def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps = steps or p.steps
            sigmas = self.get_sigmas(p, steps)
            schedule = {"sigmas": sigmas, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "n": steps}
            return self._launch(p, steps, x * sigmas[0], schedule, conditioning, unconditional_conditioning)

        def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps, t_enc = setup_img2img_steps(p, steps)
            sigmas = self.get_sigmas(p, steps)
            sigma_sched = sigmas[steps - t_enc - 1:]
            schedule = {"sigmas": sigma_sched, "sigma_min": sigma_sched[-2], "sigma_max": sigma_sched[0],
                        "n": len(sigma_sched) - 1}
            xi = x + noise * sigma_sched[0]
            if opts.img2img_extra_noise > 0:  # the host's "Extra noise" setting
                p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
                xi = xi + noise * opts.img2img_extra_noise
            return self._launch(p, t_enc + 1, xi, schedule, conditioning, unconditional_conditioning)

    kdiffusion.KDiffusionSampler = KDiffusionSampler

    timesteps_module = module("modules.sd_samplers_timesteps")

    class CompVisSampler(Sampler):
        """sd_samplers_timesteps.CompVisSampler: DDIM/UniPC over 1000-step timesteps; the denoiser's
        inner model is the SD model (its ``alphas_cumprod``)."""

        def __init__(self, funcname, sd_model):
            super().__init__(funcname)
            self.func = TIMESTEP_FUNCS[funcname]
            self.model_wrap = Namespace(inner_model=sd_model)
            self.model_wrap_cfg.inner_model = self.model_wrap

        def get_timesteps(self, p, steps):
            return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

        def _launch(self, p, steps, x, timesteps, conditioning, unconditional_conditioning, **extra):
            self.initialize(p)
            self.sampler_extra_args = {"cond": conditioning, "uncond": unconditional_conditioning,
                                       "cond_scale": p.cfg_scale}
            self.last_latent = x
            if "is_img2img" not in inspect.signature(self.func).parameters:
                extra.pop("is_img2img", None)
            return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, timesteps=timesteps,
                                                                 extra_args=self.sampler_extra_args,
                                                                 callback=self.callback_state, **extra))

        def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps, t_enc = setup_img2img_steps(p, steps)
            timesteps = self.get_timesteps(p, steps)
            alpha = self.model_wrap.inner_model.alphas_cumprod[timesteps[t_enc]]
            xi = x * alpha.sqrt() + noise * (1 - alpha).sqrt()
            return self._launch(p, t_enc + 1, xi, timesteps[:t_enc], conditioning, unconditional_conditioning,
                                is_img2img=True)

        def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps = steps or p.steps
            return self._launch(p, steps, x, self.get_timesteps(p, steps), conditioning, unconditional_conditioning)

    timesteps_module.CompVisSampler = CompVisSampler

    sd_samplers = module("modules.sd_samplers")

    @dataclasses.dataclass
    class SamplerData:
        name: str
        constructor: Any
        aliases: list
        options: dict

    def sampler_data(name, funcname, aliases, options, cls=KDiffusionSampler):
        if cls is CompVisSampler:
            return SamplerData(name, lambda m: CompVisSampler(funcname, m), aliases, options)
        return SamplerData(name, lambda m: KDiffusionSampler(funcname, m, options), aliases, options)

    # the hosts' registries: names with their aliases (only the lowercased samplers_map and the UI read those)
    sd_samplers.all_samplers = [sampler_data("Euler", "euler", ["k_euler"], {}),
                                sampler_data("Euler a", "euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {}),
                                sampler_data("DPM++ 2M", "dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
                                sampler_data("DPM fast", "dpm_fast", ["k_dpm_fast"], {}),
                                sampler_data("DDIM", "ddim", ["ddim"], {}, CompVisSampler),
                                sampler_data("UniPC", "unipc", ["unipc"], {}, CompVisSampler)]
    alter = []
    if host == "reforge":  # modules_forge/forge_alter_samplers.py: reForge's own samplers, in the same registry
        alter = [sampler_data("Euler CFG++", "euler", ["euler_cfg_pp"], {})]
        module("modules_forge.forge_alter_samplers").samplers_data_alter = alter
        sd_samplers.all_samplers += alter
    sd_samplers.samplers = sd_samplers.all_samplers
    sd_samplers.all_samplers_map = {x.name: x for x in sd_samplers.all_samplers}
    sd_samplers.samplers_map = {alias.lower(): x.name for x in sd_samplers.all_samplers for alias in [x.name, *x.aliases]}
    sd_samplers.visible_sampler_names = lambda: [x.name for x in sd_samplers.samplers]

    def create_sampler(name, model):
        config = sd_samplers.all_samplers_map.get(name)
        assert config is not None, f"bad sampler name: {name}"
        sampler = config.constructor(model)
        sampler.config = config
        return sampler

    def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
        """Exact registry names, a schedule type's label/name/alias appended; anything else: the first
        sampler.  reForge: suffixes in any case, its own samplers by name in any case (their schedule
        lookup, which falls back to "Normal", is not modelled)."""
        default_sampler = sd_samplers.samplers[0]
        found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
        name = sampler_name or default_sampler.name
        own = next((x for x in alter if x.name.lower() == name.lower()), None)
        if own is not None:
            return own.name, found_scheduler.label
        for scheduler in sd_schedulers.schedulers:
            for option in [scheduler.label, scheduler.name, *(scheduler.aliases or [])]:
                if name.lower().endswith(" " + option.lower()) if host == "reforge" else name.endswith(" " + option):
                    found_scheduler = scheduler
                    name = name[0:-(len(option) + 1)]
                    break
        sampler = sd_samplers.all_samplers_map.get(name, default_sampler)
        if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
            found_scheduler = sd_schedulers.schedulers[0]
        return sampler.name, found_scheduler.label

    def fix_p_invalid_sampler_and_scheduler(p):
        p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)

    sd_samplers.create_sampler = create_sampler
    sd_samplers.get_sampler_and_scheduler = get_sampler_and_scheduler
    sd_samplers.fix_p_invalid_sampler_and_scheduler = fix_p_invalid_sampler_and_scheduler

    # scripts
    scripts = module("modules.scripts")
    _scripts_module(scripts)

    # processing
    class DecodedSamples(list):
        already_decoded = True

    def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
        samples = DecodedSamples()
        if host != "a1111":  # Forge/reForge: the batch in one decode, check_for_nans ignored
            for sample in processing.decode_first_stage(model, batch).to(target_device or batch.device):
                samples.append(sample)
            return samples
        if check_for_nans:
            devices.test_for_nans(batch, "unet")
        for i in range(batch.shape[0]):
            sample = processing.decode_first_stage(model, batch[i:i + 1])[0]  # the module's name, as patched
            if check_for_nans:
                try:
                    devices.test_for_nans(sample, "vae")
                except devices.NansException:
                    # "Automatically revert VAE to 32-bit floats": for good, then decode again
                    if not opts.auto_vae_precision or devices.dtype_vae == torch.float32:
                        raise
                    devices.dtype_vae = torch.float32
                    model.first_stage_model.to(devices.dtype_vae)
                    batch = batch.to(devices.dtype_vae)
                    sample = processing.decode_first_stage(model, batch[i:i + 1])[0]
            samples.append(sample.to(target_device) if target_device is not None else sample)
        return samples

    def get_fixed_seed(seed):
        if seed == "" or seed is None:
            seed = -1
        elif isinstance(seed, str):
            try:
                seed = int(seed)
            except Exception:
                seed = -1
        if seed == -1:
            return int(random.randrange(4294967294))
        return seed

    def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                        use_main_prompt=False, index=None, all_negative_prompts=None):
        if use_main_prompt:
            index = 0
        elif index is None:
            index = position_in_batch + iteration * p.batch_size
        if all_negative_prompts is None:
            all_negative_prompts = p.all_negative_prompts
        prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
        negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
        generation_params = {
            "Steps": p.steps,
            "Sampler": p.sampler_name,
            "Schedule type": p.scheduler,
            "CFG scale": p.cfg_scale,
            "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
            "Size": f"{p.width}x{p.height}",
            "Variation seed": None if p.subseed_strength == 0 else all_subseeds[index],
            "Clip skip": None if opts.CLIP_stop_at_last_layers <= 1 else opts.CLIP_stop_at_last_layers,
            "Denoising strength": p.extra_generation_params.get("Denoising strength"),
            "Tiling": "True" if p.tiling else None,
            **p.extra_generation_params,
        }
        for key, value in generation_params.items():
            try:
                if isinstance(value, list):
                    generation_params[key] = value[index]
                elif callable(value):
                    generation_params[key] = value(**locals())
            except Exception as exc:  # errors.report
                processing.infotext_errors.append((key, exc))
                generation_params[key] = None
        text = ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in generation_params.items() if v is not None)
        negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
        return f"{prompt_text}{negative}\n{text}".strip()

    class Processed:
        def __init__(self, p, images_list, seed=-1, info="", subseed=None, index_of_first_image=0, infotexts=None):
            self.images, self.seed, self.subseed, self.info = images_list, seed, subseed, info
            self.prompt, self.negative_prompt, self.steps = p.prompt, p.negative_prompt, p.steps
            self.sampler_name, self.width, self.height = p.sampler_name, p.width, p.height
            self.batch_size, self.extra_generation_params = p.batch_size, p.extra_generation_params
            self.all_prompts, self.all_negative_prompts = p.all_prompts, p.all_negative_prompts
            self.all_seeds, self.all_subseeds = p.all_seeds, p.all_subseeds
            self.index_of_first_image = index_of_first_image
            self.infotexts = infotexts or [info] * len(images_list)

        def infotext(self, p, index):
            return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                                   position_in_batch=index % self.batch_size, iteration=index // self.batch_size)

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessing:
        sd_model: object = None
        outpath_samples: str = None
        outpath_grids: str = None
        prompt: str = ""
        prompt_for_display: str = None
        negative_prompt: str = ""
        styles: list = None
        seed: int = -1
        subseed: int = -1
        subseed_strength: float = 0
        seed_resize_from_h: int = -1
        seed_resize_from_w: int = -1
        seed_enable_extras: bool = True
        sampler_name: str = None
        scheduler: str = None
        batch_size: int = 1
        n_iter: int = 1
        steps: int = 50
        cfg_scale: float = 7.0
        if host == "forge":
            distilled_cfg_scale: float = 3.5
        width: int = 512
        height: int = 512
        restore_faces: bool = None
        tiling: bool = None
        do_not_save_samples: bool = False
        do_not_save_grid: bool = False
        extra_generation_params: dict = None
        overlay_images: list = None
        eta: float = None
        do_not_reload_embeddings: bool = False
        denoising_strength: float = None
        ddim_discretize: str = None
        s_min_uncond: float = None
        s_churn: float = None
        s_tmax: float = None
        s_tmin: float = None
        s_noise: float = None
        override_settings: dict = None
        override_settings_restore_afterwards: bool = True
        sampler_index: int = None
        refiner_checkpoint: str = None
        refiner_switch_at: float = None
        disable_extra_networks: bool = False
        firstpass_image: object = None
        comments: dict = None

        scripts_value: object = dataclasses.field(default=None, init=False)
        script_args_value: list = dataclasses.field(default=None, init=False)
        scripts_setup_complete: bool = dataclasses.field(default=False, init=False)
        is_api: bool = dataclasses.field(default=False, init=False)
        is_hr_pass: bool = dataclasses.field(default=False, init=False)
        sampler: object = dataclasses.field(default=None, init=False)
        closed: bool = dataclasses.field(default=False, init=False)

        def __post_init__(self):
            self.comments = {}
            self.styles = self.styles or []
            self.extra_generation_params = self.extra_generation_params or {}
            self.override_settings = self.override_settings or {}
            self.script_args = self.script_args or {}
            self.c = self.uc = None
            self.rng = None
            self.all_prompts = self.all_negative_prompts = self.all_seeds = self.all_subseeds = None
            self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
            self.iteration = 0

        @property
        def scripts(self):
            return self.scripts_value

        @scripts.setter
        def scripts(self, value):
            self.scripts_value = value
            if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
                self.setup_scripts()

        @property
        def script_args(self):
            return self.script_args_value

        @script_args.setter
        def script_args(self, value):
            self.script_args_value = value
            if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
                self.setup_scripts()

        def setup_scripts(self):
            self.scripts_setup_complete = True
            self.scripts.setup_scrips(self, is_ui=not self.is_api)

        def save_samples(self):
            return opts.samples_save and not self.do_not_save_samples

        def setup_prompts(self):
            size = self.batch_size * self.n_iter
            self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(self.prompt, self.styles)] * size
            self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(self.negative_prompt,
                                                                                              self.styles)] * size
            self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

        def setup_conds(self):
            self.c = _conditioning(self.prompts)
            self.uc = _conditioning(self.negative_prompts)

        def txt2img_image_conditioning(self, x, width=None, height=None):
            return x.new_zeros(x.shape[0], 5, 1, 1)

        def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
            return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

        def init(self, all_prompts, all_seeds, all_subseeds):
            pass

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            raise NotImplementedError

        def close(self):
            self.sampler = None
            self.c = self.uc = None
            self.closed = True

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
        enable_hr: bool = False
        denoising_strength: float = 0.75
        firstphase_width: int = 0
        firstphase_height: int = 0
        hr_scale: float = 2.0
        hr_upscaler: str = None
        hr_second_pass_steps: int = 0
        hr_resize_x: int = 0
        hr_resize_y: int = 0
        hr_checkpoint_name: str = None
        if host == "forge":
            hr_additional_modules: list = None
        hr_sampler_name: str = None
        hr_scheduler: str = None
        hr_prompt: str = ""
        hr_negative_prompt: str = ""
        if host == "forge":
            hr_cfg: float = 1.0
            hr_distilled_cfg: float = 3.5
        force_task_id: str = None

        def __post_init__(self):
            super().__post_init__()
            self.hr_upscale_to_x = self.hr_upscale_to_y = self.truncate_x = self.truncate_y = 0
            self.latent_scale_mode = None
            self.hr_c = self.hr_uc = None
            if self.firstphase_width != 0 or self.firstphase_height != 0:
                self.hr_upscale_to_x, self.hr_upscale_to_y = self.width, self.height
                self.width, self.height = self.firstphase_width, self.firstphase_height

        def calculate_target_resolution(self):
            if self.hr_resize_x == 0 and self.hr_resize_y == 0:
                self.extra_generation_params["Hires upscale"] = self.hr_scale
                self.hr_upscale_to_x = int(self.width * self.hr_scale)
                self.hr_upscale_to_y = int(self.height * self.hr_scale)
            else:
                self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
                if self.hr_resize_y == 0:
                    self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
                elif self.hr_resize_x == 0:
                    self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
                else:
                    if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                        self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
                    else:
                        self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
                    self.truncate_x = (self.hr_upscale_to_x - self.hr_resize_x) // OPT_F
                    self.truncate_y = (self.hr_upscale_to_y - self.hr_resize_y) // OPT_F

        def setup_prompts(self):
            super().setup_prompts()
            if not self.enable_hr:
                return
            size = self.batch_size * self.n_iter
            self.all_hr_prompts = [self.hr_prompt or self.prompt] * size
            self.all_hr_negative_prompts = [self.hr_negative_prompt or self.negative_prompt] * size

        def setup_conds(self):
            super().setup_conds()
            if self.enable_hr:
                n = self.iteration * self.batch_size
                self.hr_prompts = self.all_hr_prompts[n:n + self.batch_size]
                self.hr_negative_prompts = self.all_hr_negative_prompts[n:n + self.batch_size]

        def calculate_hr_conds(self):
            self.hr_c = _conditioning(self.hr_prompts)
            self.hr_uc = _conditioning(self.hr_negative_prompts)

        def init(self, all_prompts, all_seeds, all_subseeds):
            if not self.enable_hr:
                return
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
                info = sd_models.get_closet_checkpoint_match(self.hr_checkpoint_name)
                if info is None:
                    raise Exception(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
                self.extra_generation_params["Hires checkpoint"] = info.short_title  # (the model switch is not modelled)
            if host == "forge" and isinstance(self.hr_additional_modules, list):
                if self.hr_additional_modules == []:
                    self.extra_generation_params["Hires Module 1"] = "Built-in"
                elif "Use same choices" in self.hr_additional_modules:
                    self.extra_generation_params["Hires Module 1"] = "Use same choices"
            if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
                self.extra_generation_params["Hires sampler"] = self.hr_sampler_name

            def get_hr_prompt(p, index, prompt_text, **kwargs):
                hr_prompt = p.all_hr_prompts[index]
                return hr_prompt if hr_prompt != prompt_text else None

            def get_hr_negative_prompt(p, index, negative_prompt, **kwargs):
                hr_negative_prompt = p.all_hr_negative_prompts[index]
                return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

            self.extra_generation_params["Hires prompt"] = get_hr_prompt
            self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt
            self.extra_generation_params["Hires schedule type"] = None  # set by get_sigmas
            if self.hr_scheduler is None:
                self.hr_scheduler = self.scheduler
            if self.hr_upscaler is not None:
                self.latent_scale_mode = shared.latent_upscale_modes.get(self.hr_upscaler, None)
            else:
                self.latent_scale_mode = shared.latent_upscale_modes.get(shared.latent_upscale_default_mode, "nearest")
            if self.latent_scale_mode is None and not any(x.name == self.hr_upscaler for x in shared.sd_upscalers):
                raise Exception(f"could not find upscaler named {self.hr_upscaler}")
            self.calculate_target_resolution()
            if not state.processing_has_refined_job_count:
                if state.job_count == -1:
                    state.job_count = self.n_iter
                state.job_count = state.job_count * 2
                state.processing_has_refined_job_count = True
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
            if self.hr_upscaler is not None:
                self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            x = self.rng.next()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
            samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                          image_conditioning=self.txt2img_image_conditioning(x))
            if not self.enable_hr:
                return samples
            if self.latent_scale_mode is None:
                decoded_samples = torch.stack(processing.decode_latent_batch(self.sd_model, samples, target_device=devices.cpu,
                                                                  check_for_nans=True)).to(dtype=torch.float32)
            else:
                decoded_samples = None
            if host == "forge" and "Use same choices" not in self.hr_additional_modules:  # TypeError for None
                pass  # a module change would reload the model here
            return self.sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)

        def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
            if state.interrupted:
                return samples
            self.is_hr_pass = True
            target_width, target_height = self.hr_upscale_to_x, self.hr_upscale_to_y
            self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
            if self.latent_scale_mode is not None:
                samples = torch.nn.functional.interpolate(samples, size=(target_height // OPT_F, target_width // OPT_F),
                                                          mode=self.latent_scale_mode["mode"],
                                                          antialias=self.latent_scale_mode["antialias"])
                if getattr(self, "inpainting_mask_weight", opts.inpainting_mask_weight) < 1.0:
                    image_conditioning = self.img2img_image_conditioning(processing.decode_first_stage(self.sd_model, samples), samples)
                else:
                    image_conditioning = self.txt2img_image_conditioning(samples)
            else:
                lowres_samples = torch.clamp((decoded_samples + 1.0) / 2.0, min=0.0, max=1.0)
                batch_images = []
                for x_sample in lowres_samples:
                    x_sample = (255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                    image = Image.fromarray(x_sample)
                    image = images.resize_image(0, image, target_width, target_height, upscaler_name=self.hr_upscaler)
                    batch_images.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))
                decoded_samples = torch.from_numpy(np.array(batch_images))
                decoded_samples = decoded_samples.to(shared.device, dtype=devices.dtype_vae if host == "a1111" else torch.float32)
                samples = processing.images_tensor_to_samples(decoded_samples, ssc.approximation_indexes.get(opts.sd_vae_encode_method))
                image_conditioning = self.img2img_image_conditioning(decoded_samples, samples)
            state.nextjob()
            samples = samples[:, :, self.truncate_y // 2:samples.shape[2] - (self.truncate_y + 1) // 2,
                              self.truncate_x // 2:samples.shape[3] - (self.truncate_x + 1) // 2]
            self.rng = rng.ImageRNG(samples.shape[1:], self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength)
            noise = self.rng.next()
            self.calculate_hr_conds()
            if self.scripts is not None:
                self.scripts.before_hr(self)
                self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
            samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                                  steps=self.hr_second_pass_steps or self.steps,
                                                  image_conditioning=image_conditioning)
            self.sampler = None
            decoded_samples = processing.decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            self.is_hr_pass = False
            return decoded_samples

        def close(self):
            super().close()
            self.hr_c = self.hr_uc = None

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
        """img2img without a mask: init creates the sampler and encodes the init image; sample runs
        ``sample_img2img`` from it with the batch's noise."""

        init_images: list = None
        resize_mode: int = 0
        denoising_strength: float = 0.75
        image_cfg_scale: float = None
        mask: object = None

        def __post_init__(self):
            super().__post_init__()
            self.init_latent = self.image_conditioning = None

        def init(self, all_prompts, all_seeds, all_subseeds):
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            image = images.resize_image(self.resize_mode, self.init_images[0].convert("RGB"), self.width, self.height)
            array = np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0)
            batch = torch.from_numpy(np.stack([array] * self.batch_size)).to(shared.device, dtype=devices.dtype_vae)
            self.init_latent = processing.images_tensor_to_samples(batch, ssc.approximation_indexes.get(opts.sd_vae_encode_method),
                                                                   self.sd_model)
            self.image_conditioning = self.img2img_image_conditioning(batch * 2 - 1, self.init_latent)

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            x = self.rng.next()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                           uc=unconditional_conditioning)
            return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                               image_conditioning=self.image_conditioning)

    def process_images(p):
        if p.scripts is not None:
            p.scripts.before_process(p)
        stored_opts = {k: getattr(opts, k) for k in p.override_settings if hasattr(opts, k)}
        try:
            if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
                p.override_settings.pop("sd_model_checkpoint", None)  # silently: the loaded model runs
            for k, v in p.override_settings.items():
                setattr(opts, k, v)
            sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
            res = processing.process_images_inner(p)
        finally:
            if p.override_settings_restore_afterwards:
                for k, v in stored_opts.items():
                    setattr(opts, k, v)
        return res

    def process_images_inner(p):
        seed = get_fixed_seed(p.seed)
        subseed = get_fixed_seed(p.subseed)
        if p.restore_faces is None:
            p.restore_faces = opts.face_restoration
        if p.tiling is None:
            p.tiling = opts.tiling
        if p.refiner_checkpoint not in (None, "", "None", "none"):
            if sd_models.get_closet_checkpoint_match(p.refiner_checkpoint) is None:
                raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")
        p.setup_prompts()
        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
        p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
        if p.scripts is not None:
            p.scripts.process(p)
        infotexts, output_images = [], []
        # A1111: no_grad and ema_scope; Forge and reForge: inference_mode (modules/processing.py)
        with torch.no_grad() if host == "a1111" else torch.inference_mode():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
            if state.job_count == -1:
                state.job_count = p.n_iter
            for n in range(p.n_iter):
                p.iteration = n
                if state.skipped:
                    state.skipped = False
                if state.interrupted or state.stopping_generation:
                    break
                p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
                p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
                p.rng = rng.ImageRNG((4, p.height // OPT_F, p.width // OPT_F), p.seeds, subseeds=p.subseeds,
                                     subseed_strength=p.subseed_strength)
                if p.scripts is not None:
                    p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                if p.scripts is not None:
                    p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.setup_conds()
                with devices.without_autocast() if devices.unet_needs_upcast else contextlib.nullcontext():
                    samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                                            subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
                if p.scripts is not None:
                    ps = scripts.PostSampleArgs(samples_ddim)
                    p.scripts.post_sample(p, ps)
                    samples_ddim = ps.samples
                if getattr(samples_ddim, "already_decoded", False):
                    x_samples_ddim = samples_ddim
                else:
                    devices.test_for_nans(samples_ddim, "unet")
                    if opts.sd_vae_decode_method != "Full":
                        p.extra_generation_params["VAE Decoder"] = opts.sd_vae_decode_method
                    x_samples_ddim = processing.decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu, check_for_nans=True)
                x_samples_ddim = torch.stack(x_samples_ddim).float()
                x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
                state.nextjob()
                if p.scripts is not None:
                    p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                    batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                    p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                    x_samples_ddim = batch_params.images

                def infotext(index=0, use_main_prompt=False):
                    return processing.create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt,
                                                      index=index, all_negative_prompts=p.negative_prompts)

                for i, x_sample in enumerate(x_samples_ddim):
                    p.batch_index = i
                    x_sample = (255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                    image = Image.fromarray(x_sample)
                    if p.scripts is not None:
                        pp = scripts.PostprocessImageArgs(image)
                        p.scripts.postprocess_image(p, pp)
                        image = pp.image
                    if p.scripts is not None:
                        pp = scripts.PostprocessImageArgs(image)
                        p.scripts.postprocess_image_after_composite(p, pp)
                        image = pp.image
                    text = infotext(i)
                    infotexts.append(text)
                    if opts.enable_pnginfo:
                        image.info["parameters"] = text
                    output_images.append(image)
            if not infotexts:
                infotexts.append(Processed(p, []).infotext(p, 0))
        res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0],
                        subseed=p.all_subseeds[0], index_of_first_image=0, infotexts=infotexts)
        if p.scripts is not None:
            p.scripts.postprocess(p, res)
        return res

    processing.opt_f = OPT_F
    processing.DecodedSamples = DecodedSamples
    processing.decode_latent_batch = decode_latent_batch
    processing.get_fixed_seed = get_fixed_seed
    processing.create_infotext = create_infotext
    processing.infotext_errors = []
    processing.Processed = Processed
    processing.StableDiffusionProcessing = StableDiffusionProcessing
    processing.StableDiffusionProcessingTxt2Img = StableDiffusionProcessingTxt2Img
    processing.StableDiffusionProcessingImg2Img = StableDiffusionProcessingImg2Img
    processing.process_images = process_images
    processing.process_images_inner = process_images_inner

    _api(module, shared, sd_samplers, scripts, processing, host)


def _scripts_module(scripts) -> None:
    """modules/scripts.py: Script, ScriptBuiltinUI and the ScriptRunner's hooks (errors reported, not raised)."""

    class Script:
        filename = None
        args_from = args_to = None
        alwayson = False
        is_txt2img = is_img2img = False
        tabname = None
        setup_for_ui_only = False
        controls = None
        infotext_fields = paste_field_names = None

        def title(self):
            raise NotImplementedError

        def ui(self, is_img2img):
            pass

        def show(self, is_img2img):
            return True

        def elem_id(self, item_id):
            return f"script_sdfix_{item_id}"

        def setup(self, p, *args):
            pass

        def before_process(self, p, *args):
            pass

        def process(self, p, *args):
            pass

        def before_process_batch(self, p, *args, **kwargs):
            pass

        def process_batch(self, p, *args, **kwargs):
            pass

        def process_before_every_sampling(self, p, *args, **kwargs):
            pass

        def post_sample(self, p, ps, *args):
            pass

        def before_hr(self, p, *args):
            pass

        def postprocess_batch(self, p, *args, **kwargs):
            pass

        def postprocess_batch_list(self, p, pp, *args, **kwargs):
            pass

        def postprocess_image(self, p, pp, *args):
            pass

        def postprocess_image_after_composite(self, p, pp, *args):
            pass

        def postprocess(self, p, processed, *args):
            pass

    class ScriptBuiltinUI(Script):
        setup_for_ui_only = True

        def show(self, is_img2img):
            return scripts.AlwaysVisible

    class PostprocessImageArgs:
        def __init__(self, image):
            self.image = image

    class PostSampleArgs:
        def __init__(self, samples):
            self.samples = samples

    class PostprocessBatchListArgs:
        def __init__(self, images):
            self.images = images

    class ScriptRunner:
        def __init__(self):
            self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
            self.inputs = [None]
            self.errors = []  # what errors.report would have printed: (hook, script title, exception)

        def initialize_scripts(self, classes, is_img2img=False):
            for cls in classes:
                script = cls()
                script.filename = getattr(cls, "__module__", cls.__name__)
                script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
                script.tabname = "img2img" if is_img2img else "txt2img"
                visibility = script.show(is_img2img)
                if visibility is scripts.AlwaysVisible:
                    self.scripts.append(script)
                    self.alwayson_scripts.append(script)
                    script.alwayson = True
                elif visibility:
                    self.scripts.append(script)
                    self.selectable_scripts.append(script)

        def create_script_ui(self, script):
            """ui.py builds each script's controls; a ui() that raises is reported and gets no args."""
            script.args_from = script.args_to = len(self.inputs)
            try:
                controls = script.ui(script.is_img2img)
            except Exception as exc:  # noqa: BLE001 -- wrap_call
                self.errors.append(("ui", script.title(), exc))
                controls = None
            script.controls = controls
            if controls is None:
                return
            self.inputs += list(controls)
            script.args_to = len(self.inputs)

        def reload_sources(self):
            """"Reload script bodies": new instances keep their args range; their controls are gone."""
            for i, script in enumerate(list(self.scripts)):
                fresh = type(script)()
                for attr in ("filename", "args_from", "args_to", "alwayson", "is_txt2img", "is_img2img", "tabname"):
                    setattr(fresh, attr, getattr(script, attr))
                self.scripts[i] = fresh
                if script in self.alwayson_scripts:
                    self.alwayson_scripts[self.alwayson_scripts.index(script)] = fresh
                if script in self.selectable_scripts:
                    self.selectable_scripts[self.selectable_scripts.index(script)] = fresh

        def ordered_scripts(self, method_name):
            return [s for s in self.alwayson_scripts
                    if getattr(type(s), method_name, None) is not getattr(Script, method_name, None)]

        def _each(self, method_name, p, *args, **kwargs):
            for script in self.ordered_scripts(method_name):
                try:
                    getattr(script, method_name)(p, *args, *p.script_args[script.args_from:script.args_to], **kwargs)
                except Exception as exc:  # noqa: BLE001 -- errors.report
                    self.errors.append((method_name, script.title(), exc))

        def setup_scrips(self, p, *, is_ui=True):
            for script in self.ordered_scripts("setup"):
                if not is_ui and script.setup_for_ui_only:
                    continue
                try:
                    script.setup(p, *p.script_args[script.args_from:script.args_to])
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(("setup", script.title(), exc))

        def before_process(self, p):
            self._each("before_process", p)

        def process(self, p):
            self._each("process", p)

        def before_process_batch(self, p, **kwargs):
            self._each("before_process_batch", p, **kwargs)

        def process_batch(self, p, **kwargs):
            self._each("process_batch", p, **kwargs)

        def process_before_every_sampling(self, p, **kwargs):
            self._each("process_before_every_sampling", p, **kwargs)

        def post_sample(self, p, ps):
            self._each("post_sample", p, ps)

        def before_hr(self, p):
            self._each("before_hr", p)

        def postprocess_batch(self, p, images, **kwargs):
            for script in self.ordered_scripts("postprocess_batch"):
                try:
                    script.postprocess_batch(p, *p.script_args[script.args_from:script.args_to], images=images, **kwargs)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(("postprocess_batch", script.title(), exc))

        def postprocess_batch_list(self, p, pp, **kwargs):
            self._each("postprocess_batch_list", p, pp, **kwargs)

        def postprocess_image(self, p, pp):
            self._each("postprocess_image", p, pp)

        def postprocess_image_after_composite(self, p, pp):
            self._each("postprocess_image_after_composite", p, pp)

        def postprocess(self, p, processed):
            self._each("postprocess", p, processed)

    scripts.Script = Script
    scripts.ScriptBuiltinUI = ScriptBuiltinUI
    scripts.AlwaysVisible = object()
    scripts.PostprocessImageArgs = PostprocessImageArgs
    scripts.PostSampleArgs = PostSampleArgs
    scripts.PostprocessBatchListArgs = PostprocessBatchListArgs
    scripts.ScriptRunner = ScriptRunner
    scripts.scripts_data = []
    scripts.scripts_txt2img = None
    scripts.basedir = lambda: str(ROOT)


_API_NOT_ALLOWED = ("self", "kwargs", "sd_model", "outpath_samples", "outpath_grids", "sampler_index",
                    "extra_generation_params", "overlay_images", "do_not_reload_embeddings", "seed_enable_extras",
                    "prompt_for_display", "sampler_noise_scheduler_override", "ddim_discretize")


def _api(module, shared, sd_samplers, scripts, processing, host) -> None:
    """modules/api: the txt2img API model built from the processing class's fields, and text2imgapi."""
    api_pkg = module("modules.api", package=True)
    models = module("modules.api.models")
    api = module("modules.api.api")
    api_pkg.models, api_pkg.api = models, api
    try:
        from pydantic import Field, create_model
    except ImportError:  # the comparison tests skip without pydantic
        return
    cls = processing.StableDiffusionProcessingTxt2Img
    hints = typing.get_type_hints(cls)
    fields: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in _API_NOT_ALLOWED:
            continue
        kind = hints[f.name]
        fields[f.name] = (Optional[Any if kind is object else kind], Field(default=f.default, alias=f.name))
    for key, kind, default in (("sampler_index", str, "Euler"), ("script_name", str, None), ("script_args", list, []),
                               ("send_images", bool, True), ("save_images", bool, False),
                               ("alwayson_scripts", dict, {}), ("force_task_id", str, None), ("infotext", str, None)):
        fields[key] = (kind, Field(default=default, alias=key))
    model = create_model("StableDiffusionProcessingTxt2Img", **fields)
    model.__config__.allow_population_by_field_name = True
    model.__config__.allow_mutation = True
    models.StableDiffusionTxt2ImgProcessingAPI = model

    def default_script_args(runner):
        """init_default_script_args: every script's UI default values."""
        args = [None] * max([1] + [s.args_to for s in runner.scripts])
        args[0] = 0
        for script in runner.scripts:
            if script.controls:
                args[script.args_from:script.args_to] = [c.value for c in script.controls]
        return args

    def text2imgapi(body):
        """Api.text2imgapi for a dict body, without the queue; returns the Processed (not base64 images)."""
        from fastapi import HTTPException

        request = model(**body)
        runner = scripts.scripts_txt2img
        sampler, scheduler = sd_samplers.get_sampler_and_scheduler(request.sampler_name or request.sampler_index,
                                                                   request.scheduler)
        if sampler not in sd_samplers.all_samplers_map:
            raise HTTPException(status_code=400, detail="Sampler not found")
        populate = request.copy(update={"sampler_name": sampler, "do_not_save_samples": not request.save_images,
                                        "do_not_save_grid": not request.save_images})
        if populate.sampler_name:
            populate.sampler_index = None
        if not populate.scheduler and scheduler != "Automatic":
            populate.scheduler = scheduler
        args = dict(vars(populate))
        for key in ("script_name", "script_args", "alwayson_scripts", "infotext", "send_images", "save_images"):
            args.pop(key, None)
        script_args = default_script_args(runner)
        for index, value in infotext_script_args(runner, request.infotext).items():
            script_args[index] = value
        for name, spec in (request.alwayson_scripts or {}).items():
            script = next((s for s in runner.scripts if s.title().lower() == name.lower()), None)
            if script is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            if "args" in spec:
                for i in range(min(script.args_to - script.args_from, len(spec["args"]))):
                    script_args[script.args_from + i] = spec["args"][i]
        with contextlib.closing(processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)) as p:
            p.is_api = True
            p.scripts = runner
            p.outpath_grids = shared.opts.outdir_txt2img_grids
            p.outpath_samples = shared.opts.outdir_txt2img_samples
            shared.state.begin(job="scripts_txt2img")
            try:
                p.script_args = tuple(script_args)
                return processing.process_images(p)
            finally:
                shared.state.end()

    def infotext_script_args(runner, infotext):
        """Api.apply_infotext's script part: each script control's infotext field function, given the parsed
        ``infotext``, sets that control's slot (converted to the type of the control's value)."""
        if not infotext:
            return {}
        params = parse_generation_parameters(infotext)
        indexes = {id(control): i for i, control in enumerate(runner.inputs)}
        found = {}
        for script in runner.scripts:
            for control, function in getattr(script, "infotext_fields", None) or []:
                value = function(params)
                if value is None or id(control) not in indexes:
                    continue
                kind = type(control.value)
                found[indexes[id(control)]] = value if isinstance(value, kind) else kind(value)
        return found

    api.default_script_args = default_script_args
    api.text2imgapi = text2imgapi


# --- scripts in the txt2img runner besides SDFix's ----------------------------------------------------


def other_scripts(scripts) -> Dict[str, type]:
    """A built-in UI-only script and another extension's AlwaysOn script, as the runner holds them."""

    class BuiltinSampler(scripts.ScriptBuiltinUI):
        """Like processing_scripts/sampler.py + seed.py: setup copies the UI's controls into p (UI only)."""

        setups: List[Any] = []

        def title(self):
            return "Sampler"

        def ui(self, is_img2img):
            import gradio as gr

            return [gr.Slider(minimum=1, maximum=150, step=1, label="Sampling steps", value=20),
                    gr.Radio(label="Sampling method", choices=["Euler", "Euler a", "DPM++ 2M"], value="Euler a"),
                    gr.Number(label="Seed", value=-1)]

        def setup(self, p, steps, sampler_name, seed):
            type(self).setups.append(p)
            p.steps, p.sampler_name, p.seed = steps, sampler_name, seed

    class Marker(scripts.Script):
        """Another extension: marks the image (postprocess_image) and the infotext (process) when enabled;
        ``nested``: first runs a second generation on this thread and pastes a corner of it (as ADetailer
        runs its inpainting from postprocess_image)."""

        calls: List[Any] = []
        fail_ui = False

        def title(self):
            return "Marker"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            if type(self).fail_ui:
                raise RuntimeError("marker ui broke")
            import gradio as gr

            return [gr.Checkbox(label="Mark", value=False), gr.Textbox(label="Tag", value="marked"),
                    gr.Checkbox(label="Nested generation", value=False)]

        def process(self, p, enabled, tag, nested):
            if enabled:
                p.extra_generation_params["Marker"] = tag

        def postprocess_image(self, p, pp, enabled, tag, nested):
            type(self).calls.append({"p": p, "enabled": enabled, "tag": tag})
            if not enabled:
                return
            from modules import processing, shared

            image = pp.image.copy()
            if nested:
                inner = processing.StableDiffusionProcessingTxt2Img(
                    sd_model=shared.sd_model, prompt="a face, detailed", seed=p.seeds[0] + 1, steps=2, width=64,
                    height=64, sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
                with contextlib.closing(inner):
                    face = processing.process_images(inner).images[0]
                image.paste(face.crop((0, 0, 16, 16)), (8, 8))
            for xy in itertools.product(range(4), range(4)):
                image.putpixel(xy, (255, 0, 255))
            pp.image = image

    return {"builtin": BuiltinSampler, "marker": Marker}


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
