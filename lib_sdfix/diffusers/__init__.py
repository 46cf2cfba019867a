"""diffusers front: find and fix the five "oil painting" causes of a txt2img + img2img service.

Why: many people run Stable Diffusion through diffusers rather than the WebUI, typically as a
service whose txt2img and img2img pipelines share their components (half-precision UNet and VAE,
CPU offload, Hires.fix through a super-resolution upscaler).  The same core that protects the
WebUI protects them:

====================  =====================================================================
cause                 what :func:`harden` does
====================  =====================================================================
vae_precision         VAE decode/encode under the precision guard, VAE in fp32 for the call
                      (cast in place, no second VAE; with sequential/disk offload an fp32 copy
                      built from accelerate's weights map), tiled fp32 decode/encode when the
                      memory estimate says it does not fit or it runs out of memory (lib_sdfix.vae.call)
embeds_dtype          prompt embeddings (also Compel's, also from an fp32 text encoder) cast
                      to the UNet's dtype and the pipeline's execution device
offload_hooks         one CPU-offload hook chain shared by both pipelines instead of two
                      competing (diffusers >= 0.28) or stacked (<= 0.27) ones
scheduler_mismatch    the img2img pipeline gets the txt2img scheduler's class and config
hires_resize          :func:`hires_fix` resizes the upscaler's output once, with LANCZOS
====================  =====================================================================

Beyond the causes, :func:`refine` is the late-step refine (the WebUI's ``late_refine`` fix): the
last steps of the schedule the latents were sampled on, run again on them.  Nothing is
misconfigured without it, so the audit has no cause for it; it runs when called.

One module per concern: ``causes`` (the causes, which option turns each on, the audit's findings),
``vae`` / ``vae_copy``, ``embeds``, ``offload``, ``scheduler``, ``hires`` and ``upscaler`` (one per
cause: its finding and its fix), ``refine``, ``pipelines`` (the supported pipeline classes),
``state`` (what SDFix keeps on a hardened object, and the last Hires resize), ``hardening``
(:func:`audit`, :func:`harden`, :func:`unharden`).  The command line that runs them on an embedded
demo service (``python -m lib_sdfix ab`` / ``diagnose``) is :mod:`lib_sdfix.cli`.

Everything heavy (torch, diffusers, accelerate, spandrel) is imported inside functions, so
importing this package costs nothing.
"""
from lib_sdfix.diffusers.causes import CAUSE_TITLES, CAUSES, Audit, Finding
from lib_sdfix.diffusers.embeds import cast_prompt_embeds
from lib_sdfix.diffusers.hardening import HardenReport, audit, fix_report, harden, unharden
from lib_sdfix.diffusers.hires import HiresResult, hires_fix
from lib_sdfix.diffusers.offload import share_offload_chain
from lib_sdfix.diffusers.refine import refine, refine_generators
from lib_sdfix.diffusers.scheduler import share_scheduler
from lib_sdfix.diffusers.upscaler import Upscaler, UpscalerUnavailable, load_upscaler
from lib_sdfix.diffusers.vae import guard_vae

__all__ = [
    "CAUSES",
    "CAUSE_TITLES",
    "Finding",
    "Audit",
    "HardenReport",
    "audit",
    "harden",
    "unharden",
    "fix_report",
    "guard_vae",
    "cast_prompt_embeds",
    "share_offload_chain",
    "share_scheduler",
    "HiresResult",
    "hires_fix",
    "Upscaler",
    "UpscalerUnavailable",
    "load_upscaler",
    "refine",
    "refine_generators",
]
