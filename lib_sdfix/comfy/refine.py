"""SDFix Late Refine for ComfyUI: the SDEdit tail of a pass's own schedule, as the WebUI front does it.

Why: see :mod:`lib_sdfix.refine` -- a wrong texture or small shape survives any upscaler; re-noising the
finished latent to a late point of the schedule it was sampled on and running only the remaining steps
again, with the same sampler, scheduler, CFG and conditioning, lets the model repaint it.  By hand in
ComfyUI that is a second KSampler at low denoise, which lays out a new, shorter schedule.

How: the node takes the pass's settings (the same strings and numbers its KSampler took).  The pass's
schedule is ComfyUI's own (``comfy.samplers.KSampler(...).sigmas``, ``steps + 1`` sigmas, with its
denoise); ``k = round(strength x steps)`` (:func:`lib_sdfix.refine.refine_steps`) of its steps run again
through the KSampler node's code with ``start_step = steps - k``: ComfyUI adds the noise at that step's
sigma to the latent and runs the schedule's last ``k`` steps -- KSamplerAdvanced's "start at step" on the
pass's own schedule.  The noise comes from :func:`lib_sdfix.refine.refine_seed` of the pass's seed (a
batch draws it as ComfyUI draws a batch's noise, by batch index), so the result repeats with the seed.
"""
from __future__ import annotations

from typing import Any, Tuple

from lib_sdfix.comfy import host

__all__ = ["late_refine"]


def late_refine(model: Any, positive: Any, negative: Any, latent: dict, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, denoise: float, strength: float) -> Tuple[dict, str]:
    """(the refined latent, the report); the latent as it was when no step runs again."""
    from lib_sdfix.refine import describe, refine_seed, refine_steps

    count = refine_steps(strength, steps)
    title = f"SDFix Late Refine ({sampler_name}, {scheduler}): "
    if count == 0:
        return latent, title + describe(strength, steps)
    sigmas = host.pass_sigmas(model, steps, sampler_name, scheduler, denoise)
    intervals = len(sigmas) - 1
    if intervals <= 0:
        return latent, title + f"the pass's schedule ({steps} steps, denoise {denoise:g}) leaves no step to run again"
    count = min(count, intervals)
    start = intervals - count
    noise_seed = refine_seed(seed)
    out = host.common_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=denoise, start_step=start)
    report = (title + describe(strength, steps) + f": steps {start + 1}-{intervals} of the pass's schedule, sigma "
              f"{float(sigmas[start]):.4g} -> {float(sigmas[-1]):.4g}; noise seed {noise_seed} (from seed {seed})")
    return out, report
