"""Late-step refine, the rules both fronts share: how many steps run again, which noise, which samplers.

Why: a wrong texture or a malformed small shape survives any upscaler (it only sharpens what is
there).  Re-noising the finished latent to a late point of the schedule it was sampled on and running
only the remaining steps again (SDEdit) lets the model repaint it -- a higher strength reaches back
to where shapes form, a lower one only to where texture forms.  Done by hand with img2img at low
denoising, the image goes through a VAE round trip and is re-scheduled from scratch (a new, shorter
schedule, often another sampler); here the tail of the pass's own schedule runs again on its latent,
with its sampler, CFG and conditioning.
"""
from __future__ import annotations

from typing import Dict, Optional

__all__ = ["refine_steps", "refine_seed", "UNSUPPORTED_SAMPLERS", "skip_reason", "describe"]

_MASK = 2**32 - 1
# An odd multiplier makes the mix a bijection of the 32-bit seeds: two images never share refine noise.
_MULTIPLIER = 0x9E3779B1
_SALT = 0x5DF12EF1

#: Samplers the refine leaves alone, and why: each needs a whole schedule it lays out itself.
UNSUPPORTED_SAMPLERS: Dict[str, str] = {
    "UniPC": "UniPC lays out its own steps between the start and the end of sampling from the step count, "
             "so it cannot be started at a point of the pass's schedule",
    "DPM fast": "DPM fast lays out its own steps between two noise levels and takes no schedule",
    "DPM adaptive": "DPM adaptive chooses its own step sizes and takes no schedule",
}


def refine_steps(strength: float, steps: int) -> int:
    """How many of a pass's ``steps`` run again: ``round(strength * steps)`` (Python's round, halves to
    even), within 0..steps.  0 means the latent is left exactly as it is."""
    if steps <= 0:
        return 0
    return max(0, min(int(steps), round(float(strength) * int(steps))))


def refine_seed(seed: int) -> int:
    """The seed of the noise that re-noises the image made with ``seed``.

    Derived from the image's own seed (so the result is repeatable, per image in a batch) but not equal
    to it: the seed itself would draw exactly the noise the image started from.
    """
    return (((int(seed) & _MASK) ^ _SALT) * _MULTIPLIER) & _MASK


def skip_reason(sampler: Optional[str]) -> Optional[str]:
    """Why the refine skips ``sampler`` (a WebUI sampler name), or None when it runs."""
    return UNSUPPORTED_SAMPLERS.get(sampler or "")


def describe(strength: float, steps: int) -> str:
    """``re-ran the last 6 of 20 steps (strength 0.3)`` -- or why nothing ran."""
    count = refine_steps(strength, steps)
    if count == 0:
        return f"strength {strength:g} x {steps} steps rounds to 0 steps: the latent is left as it was"
    return f"re-ran the last {count} of {steps} steps (strength {strength:g})"
