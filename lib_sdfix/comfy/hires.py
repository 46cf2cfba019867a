"""SDFix Hires pass for ComfyUI: one float resize to the target, guarded encode, the second pass with the
first pass's sampler and scheduler, guarded decode.

Why (the fixes ``post_resize``, ``guard_encode``, ``hires_parity``, ``precision_guard``): the usual
ComfyUI Hires graph resizes with ``ImageScale``, whose "lanczos" goes through 8-bit PIL images
(``comfy.utils.lanczos``), often after an upscale model and before another resize; it encodes and
decodes with the VAE in bf16 and TF32 on; and the second KSampler is set up by hand, often with
another sampler or scheduler.  Here:

* the first pass's image (its latent decoded guarded, or an image handed in) goes through the upscale
  model when one is given -- ComfyUI's own ``ImageUpscaleWithModel``, as many times as reaching the
  target takes (:func:`lib_sdfix.resize.upscaler_passes`) -- and is then resized **once**, from that
  native output straight to the target, with LANCZOS on 32-bit float planes (PIL mode "F", through
  :func:`lib_sdfix.resize.resize_after_upscale`): no 8-bit round trip anywhere;
* the resized image is encoded guarded, sampled by ComfyUI's own KSampler code with the sampler and
  scheduler given (the same strings KSampler takes: wire in the first pass's), and decoded guarded.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from lib_sdfix.comfy import host
from lib_sdfix.comfy.inputs import InputError
from lib_sdfix.comfy.vae import VaeRun, guarded_decode, guarded_encode

__all__ = ["target_size", "resize_float", "hires_pass", "HiresResult"]

MAX_SIDE = 16384


def target_size(size: Tuple[int, int], scale_by: float, width: int, height: int) -> Tuple[int, int]:
    """(width, height) of the Hires pass for a first pass of ``size``: ``width``/``height`` when both are
    set; one of them set: the other follows at the same scale; neither: ``scale_by``.  Sides are
    multiples of 8 (the VAE's scale), at least 8."""
    w0, h0 = size

    def snap(value: float) -> int:
        return max(8, int(value / 8.0 + 0.5) * 8)

    if width and height:
        target = (snap(width), snap(height))
    elif width:
        target = (snap(width), snap(h0 * width / w0))
    elif height:
        target = (snap(w0 * height / h0), snap(height))
    else:
        target = (snap(w0 * scale_by), snap(h0 * scale_by))
    if max(target) > MAX_SIDE:
        raise InputError("scale_by" if not (width or height) else "width", f"the Hires size {target[0]}x{target[1]} "
                         f"exceeds {MAX_SIDE} pixels per side")
    return target


def resize_float(images: Any, width: int, height: int, filter_name: str = "LANCZOS") -> Any:
    """``images`` (IMAGE, B x H x W x C float) resized to ``width`` x ``height`` in one resampling pass per
    plane on 32-bit floats, clamped to [0, 1] as an IMAGE is; the same tensor when the size is already it."""
    import numpy as np
    import torch
    from PIL import Image

    from lib_sdfix.resize import resize_after_upscale

    if (images.shape[2], images.shape[1]) == (width, height):
        return images
    planes = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty((planes.shape[0], height, width, planes.shape[3]), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[3]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, :, :, c]))  # mode "F"
            out[b, :, :, c] = np.asarray(resize_after_upscale(plane, (width, height), filter_name), dtype=np.float32)
    result = torch.from_numpy(out).clamp_(0.0, 1.0)
    return result.to(device=images.device, dtype=images.dtype)


def _upscale(upscale_model: Any, image: Any, target: Tuple[int, int]) -> Tuple[Any, List[str]]:
    """The upscale model's native output: as many passes as reaching ``target`` takes (at most three)."""
    from lib_sdfix.resize import upscaler_passes

    size = (image.shape[2], image.shape[1])
    scale = float(getattr(upscale_model, "scale", 0) or 0)
    passes = upscaler_passes(size, target, scale) if scale > 1 else 1
    notes = []
    for _ in range(max(1, passes)):
        image = host.upscale_with_model(upscale_model, image)
    notes.append(f"upscale model x{scale:g}: {passes} pass{'es' if passes != 1 else ''}, {size[0]}x{size[1]} -> "
                 f"{image.shape[2]}x{image.shape[1]}" if scale > 1 else
                 f"upscale model: {size[0]}x{size[1]} -> {image.shape[2]}x{image.shape[1]}")
    return image, notes


class HiresResult:
    def __init__(self, latent: dict, image: Any, report: str) -> None:
        self.latent, self.image, self.report = latent, image, report


def hires_pass(model: Any, positive: Any, negative: Any, vae: Any, seed: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, denoise: float, scale_by: float, width: int, height: int, resize_filter: str,
               latent: Optional[dict] = None, image: Any = None, upscale_model: Any = None) -> HiresResult:
    """The whole pass; ``latent`` or ``image`` is the first pass's output (exactly one of them)."""
    from lib_sdfix.comfy.inputs import image_batch, latent_samples

    if (latent is None) == (image is None):
        raise InputError("latent", "give the Hires pass the first pass's 'latent' or its 'image' (exactly one of them)")
    lines: List[str] = []
    runs: List[Tuple[str, VaeRun]] = []
    extra = {}
    if latent is not None:
        samples = latent_samples(latent, "latent")
        extra = {k: v for k, v in latent.items() if k == "batch_index"}
        first = guarded_decode(vae, samples)
        runs.append(("first-pass decode", first))
        image = first.result
        if image.ndim == 5:
            image = image.reshape(-1, *image.shape[-3:])
    else:
        image = image_batch(image, "image")
    image = image[..., :3]
    size = (image.shape[2], image.shape[1])
    target = target_size(size, scale_by, width, height)
    native = image
    if upscale_model is not None:
        native, notes = _upscale(upscale_model, image, target)
        lines += notes
    before = (native.shape[2], native.shape[1])
    resized = resize_float(native, target[0], target[1], resize_filter)
    if before != target:
        lines.append(f"post_resize: resized once, {before[0]}x{before[1]} -> {target[0]}x{target[1]}, {resize_filter} "
                     f"on float32 (no 8-bit step)")
    else:
        lines.append(f"post_resize: no resize ({before[0]}x{before[1]} is the target)")
    encoded = guarded_encode(vae, resized)
    runs.append(("encode", encoded))
    sampled = host.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                   {"samples": encoded.result, **extra}, denoise=denoise)
    lines.append(f"hires_parity: second pass with sampler {sampler_name}, scheduler {scheduler}, {steps} steps, "
                 f"denoise {denoise:g}")
    final = guarded_decode(vae, sampled["samples"])
    runs.append(("decode", final))
    out_image = final.result
    if out_image.ndim == 5:
        out_image = out_image.reshape(-1, *out_image.shape[-3:])
    lines += [f"{what}: {run.describe()}" for what, run in runs]
    report = f"SDFix Hires pass {size[0]}x{size[1]} -> {target[0]}x{target[1]}\n" + "\n".join(lines)
    return HiresResult(sampled, out_image, report)
