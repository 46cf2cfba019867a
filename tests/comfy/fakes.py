"""A small fake of the ComfyUI objects the ComfyUI front uses, written from ComfyUI v0.21.0's behaviour.

* :class:`FakeVAE` behaves as ``comfy.sd.VAE`` does for an SD1.x/SDXL VAE: ``vae_dtype`` (bf16 as on an
  NVIDIA card of compute capability >= 8) decides what each batch is cast to inside ``decode``/``encode``
  and sizes the batches (``memory_used_decode(shape, vae_dtype)``, ``load_models_gpu``, the patcher's free
  memory); the output goes to the intermediate device in fp32; out of memory inside the batch loop falls
  back to ``decode_tiled_``/``encode_tiled_`` (three overlapping passes, averaged: recorded here).
  ``first_stage_model`` is :class:`tests.ldm_vae.LdmVAE` (the ldm layout ComfyUI's AutoencoderKL has).
* ``comfy.samplers.KSampler`` (SAMPLERS, SCHEDULERS, ``sigmas`` with ComfyUI's denoise rule) and
  ``nodes.common_ksampler`` (seeded noise, ``start_step`` slicing the pass's sigmas); each sampling is
  recorded in :data:`SAMPLINGS`.
* ``comfy_extras.nodes_upscale_model.ImageUpscaleWithModel`` (nearest x``scale``), ``folder_paths`` and
  ``comfy.model_management`` (``InterruptProcessingException`` is a BaseException, as in ComfyUI).

The e2e suite (tests/e2e/test_comfy.py) checks the same behaviour against the real ComfyUI.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Dict, List, Optional

import torch

from tests.ldm_vae import LdmVAE

SAMPLINGS: List[Dict[str, Any]] = []
UPSCALES: List[Any] = []
FILES: Dict[str, Dict[str, str]] = {"checkpoints": {}, "vae": {}}


# --- comfy.model_management -----------------------------------------------------------------------


class InterruptProcessingException(BaseException):
    pass


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower()


def _raise_non_oom(exc: BaseException) -> None:
    if not _is_oom(exc):
        raise exc


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


LOADS: List[Dict[str, Any]] = []


def _load_models_gpu(models: List[Any], memory_required: float = 0, force_full_load: bool = False) -> None:
    LOADS.append({"memory_required": memory_required, "models": len(models)})


def _model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.is_oom, mm.raise_non_oom, mm.dtype_size = _is_oom, _raise_non_oom, _dtype_size
    mm.load_models_gpu = _load_models_gpu
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.intermediate_dtype = lambda: torch.float32
    mm.soft_empty_cache = lambda *a, **k: None
    return mm


# --- comfy.sd.VAE ----------------------------------------------------------------------------------


class FakePatcher:
    def __init__(self, model: torch.nn.Module, free: float = 64 * 2**30) -> None:
        self.model, self.free = model, free

    def get_free_memory(self, device: Any) -> float:
        return self.free


class FakeVAE:
    """``comfy.sd.VAE`` for an SD VAE: decode/encode as v0.21.0 runs them (see the module docstring)."""

    def __init__(self, first_stage_model: Optional[torch.nn.Module] = None, dtype: torch.dtype = torch.bfloat16,
                 free: float = 64 * 2**30) -> None:
        self.first_stage_model = (first_stage_model if first_stage_model is not None else LdmVAE()).eval()
        self.vae_dtype = dtype
        self.first_stage_model.to(dtype)
        self.device = self.output_device = torch.device("cpu")
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.downscale_ratio = self.upscale_ratio = 4  # LdmVAE's (1, 2, 2): two resamplings
        self.patcher = FakePatcher(self.first_stage_model, free)
        self.memory_used_decode = lambda shape, dtype: 2178 * shape[2] * shape[3] * 64 * _dtype_size(dtype)
        self.memory_used_encode = lambda shape, dtype: 1767 * shape[2] * shape[3] * _dtype_size(dtype)
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: image.add_(1.0).div_(2.0).clamp_(0.0, 1.0)
        self.calls: List[Dict[str, Any]] = []

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        mm = sys.modules["comfy.model_management"]
        pixel_samples = None
        do_tile = False
        try:
            memory_used = self.memory_used_decode(samples_in.shape, self.vae_dtype)
            mm.load_models_gpu([self.patcher], memory_required=memory_used)
            batch = max(1, int(self.patcher.get_free_memory(self.device) / memory_used))
            for x in range(0, samples_in.shape[0], batch):
                samples = samples_in[x:x + batch].to(device=self.device, dtype=self.vae_dtype)
                self.calls.append({"kind": "decode", "vae_dtype": self.vae_dtype, "input": samples.dtype,
                                   "memory_used": memory_used})
                out = self.first_stage_model.decode(samples).to(device=self.output_device, dtype=torch.float32, copy=True)
                if pixel_samples is None:
                    pixel_samples = torch.empty((samples_in.shape[0],) + tuple(out.shape[1:]), dtype=torch.float32)
                pixel_samples[x:x + batch].copy_(out)
                self.process_output(pixel_samples[x:x + batch])
        except Exception as exc:  # noqa: BLE001 -- as ComfyUI's decode/encode: anything but out-of-memory re-raised
            mm.raise_non_oom(exc)
            do_tile = True
        if do_tile:
            pixel_samples = self.decode_tiled_(samples_in)
        return pixel_samples.to(self.output_device).movedim(1, -1)

    def decode_tiled_(self, samples: torch.Tensor) -> torch.Tensor:
        """ComfyUI's blended fallback (three overlapping tile passes averaged): recorded, run untiled here."""
        self.calls.append({"kind": "decode_tiled_", "vae_dtype": self.vae_dtype})
        out = self.first_stage_model.decode(samples.to(self.vae_dtype)).float()
        return self.process_output(out)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        mm = sys.modules["comfy.model_management"]
        h = pixel_samples.shape[1] // self.downscale_ratio * self.downscale_ratio
        w = pixel_samples.shape[2] // self.downscale_ratio * self.downscale_ratio
        pixel_samples = pixel_samples[:, :h, :w, :3].movedim(-1, 1)
        samples = None
        do_tile = False
        try:
            memory_used = self.memory_used_encode(pixel_samples.shape, self.vae_dtype)
            mm.load_models_gpu([self.patcher], memory_required=memory_used)
            batch = max(1, int(self.patcher.get_free_memory(self.device) / max(1, memory_used)))
            for x in range(0, pixel_samples.shape[0], batch):
                pixels_in = self.process_input(pixel_samples[x:x + batch]).to(self.vae_dtype).to(self.device)
                self.calls.append({"kind": "encode", "vae_dtype": self.vae_dtype, "input": pixels_in.dtype})
                out = self.first_stage_model.encode(pixels_in).to(self.output_device).to(dtype=torch.float32)
                if samples is None:
                    samples = torch.empty((pixel_samples.shape[0],) + tuple(out.shape[1:]), dtype=torch.float32)
                samples[x:x + batch] = out
        except Exception as exc:  # noqa: BLE001 -- as ComfyUI's decode/encode: anything but out-of-memory re-raised
            mm.raise_non_oom(exc)
            do_tile = True
        if do_tile:
            samples = self.encode_tiled_(pixel_samples)
        return samples

    def encode_tiled_(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        self.calls.append({"kind": "encode_tiled_", "vae_dtype": self.vae_dtype})
        return self.first_stage_model.encode(self.process_input(pixel_samples).to(self.vae_dtype)).float()


# --- sampling ------------------------------------------------------------------------------------

SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "ddim", "uni_pc"]
SCHEDULERS = ["simple", "normal", "karras"]


class FakeModel:
    """The MODEL a KSampler takes: what the front reads of it."""

    load_device = torch.device("cpu")
    model_options: Dict[str, Any] = {}


def _schedule(steps: int, scheduler: str) -> torch.Tensor:
    rho = {"simple": 1.0, "normal": 1.5, "karras": 7.0}[scheduler]
    ramp = torch.linspace(0, 1, steps)
    high, low = 14.6 ** (1 / rho), 0.03 ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1)])


class FakeKSampler:
    SAMPLERS = SAMPLERS
    SCHEDULERS = SCHEDULERS

    def __init__(self, model: Any, steps: int, device: Any, sampler: Optional[str] = None, scheduler: Optional[str] = None,
                 denoise: Optional[float] = None, model_options: Optional[dict] = None) -> None:
        self.sampler = sampler if sampler in SAMPLERS else SAMPLERS[0]  # ComfyUI replaces unknown names silently
        self.scheduler = scheduler if scheduler in SCHEDULERS else SCHEDULERS[0]
        if denoise is None or denoise > 0.9999:
            self.sigmas = _schedule(steps, self.scheduler)
        elif denoise <= 0.0:
            self.sigmas = torch.FloatTensor([])
        else:
            self.sigmas = _schedule(int(steps / denoise), self.scheduler)[-(steps + 1):]


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: Any,
                    negative: Any, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: Optional[int] = None, last_step: Optional[int] = None,
                    force_full_denoise: bool = False) -> tuple:
    """nodes.common_ksampler: noise from the seed, the pass's sigmas from ``start_step``; a stand-in
    'denoiser' that is deterministic in (latent, noise, sigmas)."""
    image = latent["samples"]
    noise = torch.randn(image.shape, generator=torch.manual_seed(seed), dtype=torch.float32)
    sigmas = FakeKSampler(model, steps, None, sampler_name, scheduler, denoise).sigmas
    if start_step is not None:
        sigmas = sigmas[start_step:]
    SAMPLINGS.append({"seed": seed, "steps": steps, "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler,
                      "denoise": denoise, "start_step": start_step, "sigmas": sigmas.tolist(), "shape": tuple(image.shape),
                      "positive": positive, "negative": negative, "noise": noise})
    x = image + noise * float(sigmas[0]) if len(sigmas) else image
    for sigma in sigmas[1:]:
        x = x * 0.9 + float(sigma) * 0.01
    out = dict(latent)
    out["samples"] = x
    return (out,)


# --- upscale model, folders ------------------------------------------------------------------------


class FakeUpscaleModel:
    def __init__(self, scale: int = 2) -> None:
        self.scale = scale


class _NodeOutput:
    def __init__(self, *args: Any) -> None:
        self.args = args

    @property
    def result(self) -> tuple:
        return self.args


class ImageUpscaleWithModel:
    @classmethod
    def execute(cls, upscale_model: FakeUpscaleModel, image: torch.Tensor) -> _NodeOutput:
        UPSCALES.append(tuple(image.shape))
        s = upscale_model.scale
        out = image.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
        return _NodeOutput(torch.clamp(out, 0, 1))


def _folder_paths() -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.get_filename_list = lambda kind: sorted(FILES.get(kind, {}))
    fp.get_full_path = lambda kind, name: FILES.get(kind, {}).get(name)
    return fp


def install(monkeypatch: Any) -> None:
    """Put the fake ComfyUI modules into sys.modules for one test (monkeypatch undoes it)."""
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSampler = FakeKSampler
    nodes = types.ModuleType("nodes")
    nodes.common_ksampler = common_ksampler
    extras = types.ModuleType("comfy_extras")
    extras.__path__ = []
    upscale = types.ModuleType("comfy_extras.nodes_upscale_model")
    upscale.ImageUpscaleWithModel = ImageUpscaleWithModel
    modules = {"comfy": comfy, "comfy.samplers": samplers, "comfy.model_management": _model_management(),
               "nodes": nodes, "comfy_extras": extras, "comfy_extras.nodes_upscale_model": upscale,
               "folder_paths": _folder_paths()}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    SAMPLINGS.clear()
    UPSCALES.clear()
    LOADS.clear()
    for kind in FILES:
        monkeypatch.setitem(FILES, kind, {})
