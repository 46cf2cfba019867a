"""Cause ``hires_resize`` and the Hires.fix pass: txt2img -> upscaler -> one resize -> img2img.

Why: a super-resolution upscaler restores detail at its native scale (x4); a BILINEAR resize to the
Hires target (x2) blends it away again.  The resize is caller code in a diffusers service, so the
audit can only report the last resize :func:`hires_fix` made for a pipeline.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from lib_sdfix.diffusers.causes import Finding, cause_on
from lib_sdfix.diffusers.refine import refine, refine_generators, refine_steps_for
from lib_sdfix.diffusers.scheduler import share_scheduler
from lib_sdfix.diffusers.state import HiresResize, last_hires_resize, record_hires_resize, state_of
from lib_sdfix.diffusers.upscaler import Upscaler
from lib_sdfix.refine import describe
from lib_sdfix.resize import RESIZE_FILTERS, resize_after_upscale, upscaler_passes
from lib_sdfix.settings import SDFixSettings

__all__ = ["HiresResult", "hires_fix", "find_hires_resize", "UNFIXED_RESIZE_FILTER"]

#: The filter :func:`hires_fix` uses when the post-resize fix is off: what hand-written Hires code
#: does, kept so that an A/B run can show the difference.
UNFIXED_RESIZE_FILTER = "BILINEAR"


@dataclass
class HiresResult:
    """The Hires.fix result and every intermediate, with timings in seconds."""

    image: Image.Image
    first_pass: Image.Image
    upscaled: Image.Image
    resized: Image.Image
    resize: Dict[str, Any]
    timings: Dict[str, float]
    notes: List[str]


def _hires_target(width: int, height: int, scale: float) -> Tuple[int, int]:
    """``scale`` x the first pass, rounded to the nearest multiple of 8 (at least 8)."""
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def _generator(seed: Optional[int]) -> Any:
    import torch

    return None if seed is None else torch.Generator("cpu").manual_seed(int(seed))


def hires_fix(
    pipe: Any,
    img2img_pipe: Any,
    prompt: Any = None,
    *,
    negative_prompt: Any = None,
    prompt_embeds: Any = None,
    negative_prompt_embeds: Any = None,
    width: int = 512,
    height: int = 512,
    scale: float = 2.0,
    strength: float = 0.35,
    num_inference_steps: int = 25,
    hires_steps: Optional[int] = None,
    guidance_scale: float = 7.0,
    seed: Optional[int] = None,
    upscaler: Optional[Upscaler] = None,
    options: Optional[SDFixSettings] = None,
    refine_strength: Optional[float] = None,
    **call_kwargs: Any,
) -> HiresResult:
    """txt2img -> super-resolution upscaler -> one resize to the target -> img2img, all timed.

    The resize goes straight from the upscaler's native output to the target, once, with
    ``options.resize_filter`` (LANCZOS); with the post-resize fix off it is the BILINEAR resize
    hand-written Hires code does.  With Hires parity on, the img2img pipeline gets the txt2img
    scheduler again right before its pass (a scheduler swapped after hardening is followed).
    Without an upscaler the first pass is resized directly.  Both passes use ``seed``.
    ``refine_strength`` adds the late refine to the Hires pass (:func:`lib_sdfix.diffusers.refine`,
    noise from ``seed``), before its latents are decoded.
    """
    steps = hires_steps or num_inference_steps
    if int(steps * strength) < 1:  # diffusers' img2img would fail on an empty schedule
        raise ValueError(f"the Hires pass would run {int(steps * strength)} steps ({steps} steps x strength {strength}); "
                         "raise the steps or the strength")
    state = state_of(pipe)
    options = options or (state.options if state is not None else SDFixSettings())

    def working(cause: str) -> bool:  # chosen for this pipeline (all causes when it is not hardened) and on
        return (state is None or cause in state.fixes) and cause_on(options, cause)

    notes: List[str] = []
    timings: Dict[str, float] = {}
    common = dict(prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                  negative_prompt_embeds=negative_prompt_embeds, guidance_scale=guidance_scale, **call_kwargs)

    start = time.perf_counter()
    first = pipe(width=width, height=height, num_inference_steps=num_inference_steps, generator=_generator(seed),
                 output_type="pil", **common).images[0]
    timings["txt2img"] = time.perf_counter() - start

    target = _hires_target(width, height, scale)
    start = time.perf_counter()
    native = first
    if upscaler is not None:
        for _ in range(upscaler_passes(first.size, target, upscaler.scale)):
            native = upscaler(native)
    timings["upscale"] = time.perf_counter() - start

    start = time.perf_counter()
    if working("hires_resize"):
        filter_name = options.resize_filter
        resized = resize_after_upscale(native, target, filter_name)
    else:
        filter_name = UNFIXED_RESIZE_FILTER
        resized = native if native.size == target else native.resize(target, Image.BILINEAR)
    timings["resize"] = time.perf_counter() - start
    resize = HiresResize(filter_name, native.size, target, 0 if native.size == target else 1)
    record_hires_resize(pipe, resize)

    if working("scheduler_mismatch"):
        report = state.report if state is not None else None
        if share_scheduler(pipe, img2img_pipe, report):
            notes.append("img2img scheduler aligned with txt2img")

    start = time.perf_counter()
    count = refine_steps_for(refine_strength, steps, strength) if refine_strength else 0
    hires = img2img_pipe(image=resized, strength=strength, num_inference_steps=steps, generator=_generator(seed),
                         output_type="latent" if count else "pil", **common).images
    timings["img2img"] = time.perf_counter() - start
    if refine_strength:
        notes.append("late_refine: " + describe(refine_strength, min(int(steps * strength), steps)))
    if count:
        start = time.perf_counter()
        generator = None if seed is None else refine_generators([seed])[0]
        hires = refine(img2img_pipe, hires, refine_strength, generator=generator, num_inference_steps=steps,
                       denoise=strength, output_type="pil", **common)
        timings["refine"] = time.perf_counter() - start
    return HiresResult(hires[0], first, native, resized, resize.as_dict(), timings, notes)


def find_hires_resize(pipe: Any) -> Finding:
    last = last_hires_resize(pipe)
    if last is None:
        return Finding("hires_resize", None, "the resize is caller code; no Hires pass through hires_fix() seen yet")
    (from_w, from_h), (to_w, to_h) = last.source, last.target
    text = f"last Hires resize: {last.passes} x {last.filter} {from_w}x{from_h} -> {to_w}x{to_h}"
    bad = last.filter not in RESIZE_FILTERS or last.passes > 1
    return Finding("hires_resize", bad, text)
