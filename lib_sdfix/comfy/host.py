"""The few ComfyUI objects the front uses, reached only here and only when a node runs.

Why one module: the front must import no ComfyUI module at import time (the unit tests run without
ComfyUI, against ``tests/comfy/fakes.py``, which installs stand-ins under the same module names), and
every ComfyUI API it touches should be visible in one place.  What is used, read from ComfyUI v0.21.0:

* ``comfy.samplers.KSampler``: ``SAMPLERS``/``SCHEDULERS`` (the strings the KSampler node takes) and
  the schedule a pass computes (``KSampler(model, steps, device, sampler, scheduler, denoise).sigmas``).
* ``nodes.common_ksampler``: the KSampler node's own sampling (noise from the seed, the latent's
  batch indices and mask, the preview callback), with ``start_step`` for the late refine.
* ``comfy.model_management.InterruptProcessingException``: a cancelled prompt (never swallowed).
* ``comfy_extras.nodes_upscale_model.ImageUpscaleWithModel``: the upscale model node's own run.
* ``folder_paths``: the checkpoint and VAE files (where exact fp32 weights may come from).
"""
from __future__ import annotations

import importlib
from typing import Any, List, Sequence, Tuple

__all__ = ["module", "sampler_names", "scheduler_names", "pass_sigmas", "common_ksampler", "is_interrupt",
           "upscale_with_model", "model_files"]


def module(name: str) -> Any:
    """A ComfyUI module by name (imported by ComfyUI itself long before any node runs)."""
    return importlib.import_module(name)


def sampler_names() -> List[str]:
    return list(module("comfy.samplers").KSampler.SAMPLERS)


def scheduler_names() -> List[str]:
    return list(module("comfy.samplers").KSampler.SCHEDULERS)


def pass_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float) -> Any:
    """The schedule a KSampler pass with these settings runs (``steps + 1`` sigmas), computed by ComfyUI."""
    samplers = module("comfy.samplers")
    sampler = samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    return sampler.sigmas


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    positive: Any, negative: Any, latent: dict, denoise: float = 1.0, start_step: Any = None) -> dict:
    """The KSampler node's sampling; returns the output latent dict."""
    return module("nodes").common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                           denoise=denoise, start_step=start_step)[0]


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is ComfyUI's cancel (it must reach ComfyUI, never a fallback)."""
    try:
        kind = module("comfy.model_management").InterruptProcessingException
    except (ImportError, AttributeError):
        return False
    return isinstance(exc, kind)


def upscale_with_model(upscale_model: Any, image: Any) -> Any:
    """The upscale model's native output (IMAGE, float), run by ComfyUI's own ImageUpscaleWithModel node."""
    node = module("comfy_extras.nodes_upscale_model").ImageUpscaleWithModel
    run = getattr(node, "execute", None) or node.upscale
    out = run(upscale_model, image)
    result = getattr(out, "result", out)  # io.NodeOutput (v0.3.4x and later) or the V1 tuple
    return result[0]


def model_files(kinds: Sequence[str] = ("vae", "checkpoints")) -> List[Tuple[str, str]]:
    """(kind, full path) of every file in ComfyUI's model folders of these kinds."""
    folder_paths = module("folder_paths")
    found: List[Tuple[str, str]] = []
    for kind in kinds:
        try:
            names = folder_paths.get_filename_list(kind)
        except Exception:  # noqa: BLE001 -- a folder kind this ComfyUI does not know
            continue
        for name in names:
            path = folder_paths.get_full_path(kind, name)
            if path:
                found.append((kind, path))
    return found
