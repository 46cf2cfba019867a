"""``modules.devices`` and ``modules.shared`` (command-line and settings options, ``shared.state`` with the
progress the WebUI shows), ``modules.call_queue``'s wrapper of a UI call and ``modules.script_callbacks``."""
from __future__ import annotations

import contextlib
import threading
import types
from typing import Any, Callable, Tuple

import torch

from .base import Namespace


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


def install_devices_and_shared(module: Callable[..., types.ModuleType], host: str, dtype: torch.dtype,
                               upcast: bool, dtype_vae: torch.dtype = None) -> Tuple[types.ModuleType, types.ModuleType]:
    """``modules.devices`` and ``modules.shared`` of ``host`` (``test_for_nans`` reads ``shared.cmd_opts``)."""
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
                                disable_nan_check=False, medvram=False, medvram_sdxl=False, lowvram=False,
                                opt_channelslast=False, xformers=False)
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
    return devices, shared


def install_call_queue(module: Callable[..., types.ModuleType], shared: Any) -> None:
    """``modules.call_queue``: the queue lock and ``wrap_gradio_gpu_call``."""
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


def install_callbacks(module: Callable[..., types.ModuleType]) -> None:
    """``modules.script_callbacks``: every ``on_*`` registration SDFix makes, kept in ``callback_map``."""
    callbacks = module("modules.script_callbacks")
    callbacks.callback_map = {}
    for name in ("ui_settings", "before_ui", "script_unloaded", "app_started", "ui_tabs", "model_loaded"):
        key = f"callbacks_{name}"
        callbacks.callback_map[key] = []

        def register(fn, *, name=None, _key=key):
            callbacks.callback_map[_key].append(Namespace(callback=fn, name=name))

        setattr(callbacks, f"on_{name}", register)
