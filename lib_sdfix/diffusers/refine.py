"""Late-step refine for diffusers pipelines: the tail of the schedule the latents were sampled on, again.

Why: SDEdit by hand -- ``img2img(image=decoded, strength=0.3)`` -- decodes and re-encodes the image and
often runs another scheduler (the img2img pipeline's own, the checkpoint's PNDM) or another step count.
:func:`refine` re-noises the *latents* with the scheduler's own ``add_noise`` at the point of the
schedule ``round(strength x steps)`` steps before its end, and runs only those last steps with the
pipeline's UNet, CFG and scheduler (class and config).  The work itself is diffusers' img2img
pipeline over the same components (latents given as the image are used as they are; its
``strength`` selects the tail of ``set_timesteps(num_inference_steps)``), so SD and SDXL each run
their own conditioning code.
"""
from __future__ import annotations

import inspect
from typing import Any, List, Optional, Sequence

from lib_sdfix.diffusers.embeds import cast_prompt_embeds
from lib_sdfix.diffusers.pipelines import IMG2IMG_FOR
from lib_sdfix.diffusers.state import set_state, state_of
from lib_sdfix.refine import refine_seed, refine_steps
from lib_sdfix.settings import SettingsError, option

__all__ = ["refine", "refine_generators", "refine_steps_for", "refine_pipeline"]

_OWN_ARGS = ("image", "strength", "num_inference_steps", "generator", "output_type", "denoising_start",
             "denoising_end", "latents")


def refine_steps_for(strength: float, num_inference_steps: int, denoise: float = 1.0) -> int:
    """Steps :func:`refine` runs again: round(strength x the steps the latents' pass ran); that pass ran
    all ``num_inference_steps`` (txt2img, ``denoise`` 1) or diffusers img2img's
    ``int(num_inference_steps * denoise)`` of them."""
    ran = num_inference_steps if denoise >= 1.0 else min(int(num_inference_steps * denoise), num_inference_steps)
    return refine_steps(strength, ran)


def refine_generators(seeds: Sequence[int], device: Any = "cpu") -> List[Any]:
    """One generator per image, seeded from that image's seed (:func:`lib_sdfix.refine.refine_seed`): the
    refine noise of an image is its own, repeatable, and not the noise its generation started from."""
    import torch

    return [torch.Generator(device).manual_seed(refine_seed(seed)) for seed in seeds]


def refine_pipeline(pipe: Any) -> Any:
    """diffusers' img2img pipeline over ``pipe``'s components (nothing is copied or cast), with a fresh
    scheduler of ``pipe``'s scheduler class and config."""
    import diffusers

    name = type(pipe).__name__
    target = IMG2IMG_FOR.get(name, name if name in IMG2IMG_FOR.values() else None)
    if target is None:
        raise TypeError(f"refine supports {sorted(IMG2IMG_FOR)} and their img2img pipelines, got {name}")
    cls = getattr(diffusers, target)
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in pipe.components.items() if k in accepted}
    components["scheduler"] = type(pipe.scheduler).from_config(pipe.scheduler.config)
    config = {k: v for k, v in dict(pipe.config).items()
              if k in accepted and k not in components and not k.startswith("_")}
    if "add_watermarker" in accepted:  # not in SDXL's config: the twin watermarks only if ``pipe`` does
        config["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    twin = cls(**components, **config)
    twin.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    state = state_of(pipe)
    if state is not None:  # a hardened pipeline's twin casts the prompt embeddings as it does
        set_state(twin, state)
        cast_prompt_embeds(twin, state.report)
    return twin


def refine(pipe: Any, latents: Any, strength: float, *, generator: Any = None,
           num_inference_steps: Optional[int] = None, denoise: float = 1.0, output_type: str = "latent",
           **call_kwargs: Any) -> Any:
    """Run the last ``round(strength x steps)`` steps of the latents' schedule again (SDEdit on its own
    schedule) and return the refined latents.

    ``pipe`` is the StableDiffusion / StableDiffusionXL pipeline (txt2img or img2img) whose call made
    ``latents`` (``output_type="latent"``); ``num_inference_steps`` that call's steps (default: what its
    scheduler was last set to); ``denoise`` that call's img2img strength (1 for txt2img);
    ``call_kwargs`` the prompt arguments that call had (``prompt``/``negative_prompt`` or the
    embeddings, ``guidance_scale``, ...).  ``generator`` makes the noise: one per image for a batch
    (:func:`refine_generators` derives them from the images' seeds).  ``strength`` is 0.05-0.75
    (texture: about 0.2-0.3; wrong shapes: 0.5 and more).  When it rounds to no step the latents
    come back as they are.  ``output_type`` other than "latent" returns the pipeline's decoded images.
    """
    try:
        strength = option("late_refine_strength").validate(strength)
    except ValueError as err:
        raise SettingsError({"strength": str(err)}) from None
    clash = sorted(set(call_kwargs) & set(_OWN_ARGS))
    if clash:
        raise TypeError(f"refine sets {clash} itself")
    steps = num_inference_steps or getattr(pipe.scheduler, "num_inference_steps", None)
    if not steps:
        raise ValueError("pass num_inference_steps: the steps the latents were sampled with")
    count = refine_steps_for(strength, int(steps), denoise)
    if count == 0:
        if output_type != "latent":
            raise ValueError(f"strength {strength:g} runs no step of {steps}: decode the latents as they are")
        return latents
    twin = refine_pipeline(pipe)
    # img2img runs the last int(steps * s) steps of set_timesteps(steps): (count + 0.5) / steps gives count.
    result = twin(image=latents, strength=min(1.0, (count + 0.5) / int(steps)), num_inference_steps=int(steps),
                  generator=generator, output_type=output_type, **call_kwargs)
    return result.images
