"""The unfixed service the A/B run compares against: a txt2img and an img2img pipeline sharing their
components, wired as such services commonly are, with all five causes.

* UNet and VAE in half precision (fp16 on a GPU, bf16 on a CPU), the text encoder in fp32 (kept on
  the CPU or offloaded), producing the prompt embeddings;
* ``enable_model_cpu_offload()`` called on both pipelines;
* DPM++ 2M Karras set on the txt2img pipeline only (img2img keeps the checkpoint's scheduler);
* TF32 and cuDNN autotuning switched on for the whole process;
* a BILINEAR resize after the upscaler (:data:`lib_sdfix.diffusers.hires.UNFIXED_RESIZE_FILTER`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from lib_sdfix.cli.tiny import tiny_sd15_components
from lib_sdfix.diffusers.pipelines import IMG2IMG_FOR
from lib_sdfix.diffusers.vae import unguard_vae

__all__ = ["Service", "half_dtype", "resolve_device", "load_model"]


class Service:
    """Loaded weights, and fresh pipeline pairs wired as the unfixed service wires them."""

    def __init__(self, model: Any, device: Any, dtype: Any, progress: bool = True) -> None:
        import torch

        self.device, self.dtype, self.show_bars = device, dtype, progress
        self.embedded = model is None
        if self.embedded:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(**tiny_sd15_components())
        else:
            pipe = load_model(model, dtype)
        # The text encoder in fp32 (kept on the CPU / offloaded), the rest in half.
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                encoder.to(dtype=torch.float32)
        for name in ("unet", "vae"):
            getattr(pipe, name).to(dtype=dtype)
        self.txt2img_class = type(pipe)
        self.components = dict(pipe.components)
        self.checkpoint_scheduler = pipe.scheduler

    def pair(self, offload: bool) -> Tuple[Any, Any]:
        import diffusers
        import torch
        from diffusers import DPMSolverMultistepScheduler

        _reset_components(self.components)
        components = dict(self.components)
        components["scheduler"] = type(self.checkpoint_scheduler).from_config(self.checkpoint_scheduler.config)
        pipe = self.txt2img_class(**components)
        img2img_class = getattr(diffusers, IMG2IMG_FOR[self.txt2img_class.__name__])
        extra = {"requires_safety_checker": False} if "safety_checker" in pipe.components else {}
        img2img = img2img_class(**pipe.components, **extra)  # shares every module, and the checkpoint's scheduler
        # DPM++ 2M Karras -- on the txt2img pipeline only.
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", final_sigmas_type="sigma_min"
        )
        if offload:
            pipe.enable_model_cpu_offload(device=self.device)
            img2img.enable_model_cpu_offload(device=self.device)  # the duplicate registration
        else:
            pipe.to(self.device)
        for p in (pipe, img2img):
            p.set_progress_bar_config(disable=not self.show_bars, leave=False)
        # TF32 and cuDNN autotuning for speed on Ampere and newer GPUs, process-wide.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return pipe, img2img


def _reset_components(components: Dict[str, Any]) -> None:
    """Undo what an earlier arm did to the shared modules (SDFix wrappers, offload hooks)."""
    import torch

    for value in components.values():
        if isinstance(value, torch.nn.Module):
            if getattr(value, "_hf_hook", None) is not None or any(
                getattr(m, "_hf_hook", None) is not None for m in value.modules()
            ):
                from accelerate.hooks import remove_hook_from_module

                remove_hook_from_module(value, recurse=True)
            unguard_vae(value)


def load_model(path: str, dtype: Any) -> Any:
    """A Stable Diffusion 1.x/2.x or SDXL txt2img pipeline from a local diffusers folder or single file
    (nothing is downloaded)."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    if os.path.isdir(path):
        index = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))
        extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
        pipe = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **extra)
    else:
        pipe = StableDiffusionPipeline.from_single_file(path, torch_dtype=dtype, local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
    if type(pipe).__name__ not in IMG2IMG_FOR:
        raise SystemExit(f"ab supports Stable Diffusion 1.x/2.x and SDXL pipelines, got {type(pipe).__name__}")
    return pipe


def half_dtype(device: Any) -> Any:
    """What a service runs the UNet/VAE in: fp16 on a GPU; bf16 on a CPU (fp16 CPU kernels are slow)."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.bfloat16


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
