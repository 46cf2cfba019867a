"""The A/B run: the same seed through a diffusers service without and with SDFix's fixes.

``python -m lib_sdfix ab`` calls :func:`run_ab`.  The "without" arm is the unfixed service of
:mod:`lib_sdfix.cli.service`; the "with" arm is the same service after
:func:`lib_sdfix.diffusers.harden` (and, with ``refine``, the late refine of its last pass:
:func:`lib_sdfix.diffusers.refine`); ``ablation`` adds one arm per fix alone.  Without a model the
run uses the embedded random-weight model (:mod:`lib_sdfix.cli.tiny`), so it runs on a fresh
CPU-only machine in well under a minute.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from lib_sdfix.cli.ab_report import write_report
from lib_sdfix.cli.service import Service, half_dtype, resolve_device
from lib_sdfix.cli.tiny import EMBEDDED, tiny_esrgan_state_dict
from lib_sdfix.diffusers.causes import CAUSES, dtype_name
from lib_sdfix.diffusers.hardening import audit, fix_report, harden
from lib_sdfix.diffusers.hires import hires_fix
from lib_sdfix.diffusers.refine import refine, refine_generators, refine_steps_for
from lib_sdfix.diffusers.upscaler import load_upscaler
from lib_sdfix.refine import describe as describe_refine
from lib_sdfix.settings import SDFixSettings

__all__ = ["ABConfig", "ABResult", "ArmResult", "RunSizes", "run_ab", "resolve_sizes", "diffusers_warnings_off", "versions",
           "DEFAULT_PROMPT", "DEFAULT_NEGATIVE"]

DEFAULT_PROMPT = "close-up portrait photo, detailed skin texture, individual hair strands, sharp eye highlights"
DEFAULT_NEGATIVE = "blurry, oil painting, smooth plastic skin"


@dataclass
class ABConfig:
    """Everything one A/B run needs; defaults are the embedded model's."""

    out: Path = Path("sdfix-report")
    model: Optional[str] = None
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE
    seed: int = 1234
    steps: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    guidance_scale: float = 7.0
    hires: bool = False
    hires_scale: float = 2.0
    strength: Optional[float] = None
    hires_steps: Optional[int] = None
    upscaler: Optional[str] = None
    ablation: bool = False
    refine: Optional[float] = None  # late refine strength of the "with" arm
    device: str = "auto"
    offload: bool = True
    progress: bool = True


@dataclass(frozen=True)
class RunSizes:
    """What a run uses where its :class:`ABConfig` leaves it open: sizes, steps, Hires strength."""

    width: int
    height: int
    steps: int
    strength: float
    hires_steps: Optional[int]


@dataclass
class ArmResult:
    name: str
    fixes: Tuple[str, ...]
    refine: Optional[float]
    image: Image.Image
    first_pass: Optional[Image.Image]
    upscaled: Optional[Image.Image]
    resized: Optional[Image.Image]
    timings: Dict[str, float]
    resize: Optional[Dict[str, Any]]
    notes: List[str]
    failed: Dict[str, str]
    audit: Dict[str, Any]


@dataclass
class ABResult:
    config: Dict[str, Any]
    environment: Dict[str, Any]
    arms: Dict[str, ArmResult]
    audit_before: Dict[str, Any]
    audit_after: Dict[str, Any]
    report_path: Optional[Path] = None
    notes: List[str] = field(default_factory=list)


def _arms(ablation: bool, refine_strength: Optional[float] = None) -> List[Tuple[str, Tuple[str, ...], Optional[float]]]:
    """(name, causes fixed, late refine strength) of each arm."""
    arms = [("without", (), None), ("with", CAUSES, refine_strength)]
    if ablation:
        arms += [(f"only {cause}", (cause,), None) for cause in CAUSES]
        if refine_strength:
            arms.append(("only late_refine", (), refine_strength))
    return arms


def _prompt_embeddings(service: Service, config: ABConfig) -> Dict[str, Any]:
    import torch

    pipe, _ = service.pair(offload=False)
    with torch.no_grad():
        out = pipe.encode_prompt(prompt=config.prompt, device=service.device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt=config.negative_prompt)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return {name: value for name, value in zip(names, out) if value is not None}


def _run_arm(service: Service, config: ABConfig, name: str, fixes: Tuple[str, ...], refine_strength: Optional[float],
             embeds: Dict[str, Any], upscaler: Any, sizes: RunSizes) -> ArmResult:
    import torch

    pipe, img2img = service.pair(config.offload)
    options = SDFixSettings() if fixes else SDFixSettings(enabled=False)
    failed: Dict[str, str] = {}
    notes: List[str] = []
    if fixes:
        hardened = harden(pipe, img2img, options=options, fixes=fixes)
        failed.update(hardened.failed)
    start = time.perf_counter()
    # Both arms run under autocast, as the WebUI and most services do: without it the unfixed
    # service fails outright (fp32 embeddings into a half UNet).
    with torch.autocast(service.device.type, dtype=service.dtype):
        common = dict(embeds, guidance_scale=config.guidance_scale,
                      width=sizes.width, height=sizes.height, num_inference_steps=sizes.steps, seed=config.seed)
        if config.hires:
            result = hires_fix(pipe, img2img, scale=config.hires_scale, strength=sizes.strength,
                               hires_steps=sizes.hires_steps, upscaler=upscaler, options=options,
                               refine_strength=refine_strength, **common)
            image, first, upscaled, resized = result.image, result.first_pass, result.upscaled, result.resized
            timings, resize = result.timings, result.resize
            notes += result.notes
        else:
            seed = common.pop("seed")
            steps = common["num_inference_steps"]
            refined = bool(refine_strength) and refine_steps_for(refine_strength, steps) > 0
            t0 = time.perf_counter()
            out = pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="latent" if refined else "pil",
                       **common).images
            first = upscaled = resized = resize = None
            timings = {"txt2img": time.perf_counter() - t0}
            if refine_strength:
                notes.append("late_refine: " + describe_refine(refine_strength, steps))
            if refined:
                t0 = time.perf_counter()
                out = refine(pipe, out, refine_strength, generator=refine_generators([seed])[0], num_inference_steps=steps,
                             output_type="pil", guidance_scale=config.guidance_scale, **embeds)
                timings["refine"] = time.perf_counter() - t0
            image = out[0]
    timings["total"] = time.perf_counter() - start
    report = fix_report(pipe)
    if report is not None:
        _, arm_failed, arm_notes = report.items()
        failed.update(arm_failed)
        notes += [n for n in arm_notes if n not in notes]
    found = audit(pipe, img2img).as_dict()
    return ArmResult(name, fixes, refine_strength, image, first, upscaled, resized, timings, resize, notes, failed, found)


def diffusers_warnings_off() -> Any:
    """Silence diffusers' per-construction warnings (disabled safety checker, dtype casts) for the
    run; returns the function that puts the previous verbosity back."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    return lambda: diffusers_logging.set_verbosity(before)


def versions() -> Dict[str, str]:
    """The Python version and those of the packages a diffusers run uses."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "spandrel"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def resolve_sizes(config: ABConfig) -> RunSizes:
    """Width, height, steps and Hires strength the run uses: the config's, else the defaults (small
    for the embedded model, SD-sized with ``--model``)."""
    embedded = config.model is None
    return RunSizes(
        width=config.width or (128 if embedded else 512),
        height=config.height or (128 if embedded else 512),
        steps=config.steps or (12 if embedded else 25),
        strength=config.strength if config.strength is not None else (0.5 if embedded else 0.35),
        hires_steps=config.hires_steps,
    )


def run_ab(config: ABConfig) -> ABResult:
    """Run every arm with the same seed, write the report to ``config.out``, return the results."""
    import torch
    from tqdm.auto import tqdm

    from lib_sdfix.precision import read_flags, restore_flags

    flags_before = read_flags()
    device = resolve_device(config.device)
    dtype = half_dtype(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    embedded = config.model is None
    sizes = resolve_sizes(config)
    arm_plan = _arms(config.ablation, config.refine)
    stages = tqdm(total=2 + len(arm_plan), desc="SDFix A/B", disable=not config.progress, unit="step")
    quiet = diffusers_warnings_off()
    threads = torch.get_num_threads()
    if embedded and device.type == "cpu":
        # The tiny model's ops are too small to split: one thread is as fast, and does not crawl
        # when other processes hold the other cores.
        torch.set_num_threads(1)
    try:
        stages.set_postfix_str("loading model")
        service = Service(config.model, device, dtype, progress=config.progress)
        upscaler = None
        if config.hires:
            path = config.upscaler
            if path is None and embedded:
                import safetensors.torch

                path = str(out / "tiny-realesrgan-x4.safetensors")
                safetensors.torch.save_file(tiny_esrgan_state_dict(), path)
            upscaler = load_upscaler(path, device=device) if path else None
        stages.update()

        # Embeddings as a caller (Compel) hands them over: computed once by the fp32 text encoder, passed in raw.
        stages.set_postfix_str("prompt embeddings")
        embeds = _prompt_embeddings(service, config)
        stages.update()

        arms: Dict[str, ArmResult] = {}
        for name, fixes, refine_strength in arm_plan:
            stages.set_postfix_str(name)
            arms[name] = _run_arm(service, config, name, fixes, refine_strength, embeds, upscaler, sizes)
            stages.update()
    finally:
        environment_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        stages.close()
        quiet()
        restore_flags(flags_before)

    environment = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dtype": dtype_name(dtype),
        "torch_threads": environment_threads,
        "model": config.model or EMBEDDED,
        "upscaler": (upscaler.name + f" via {upscaler.backend}" + (" (random weights)" if config.upscaler is None else ""))
        if upscaler is not None else ("none: the first pass is resized directly" if config.hires else "no Hires pass"),
        "flags_after_run_equal_before": read_flags() == flags_before,
        **versions(),
    }
    record = dict(vars(config), out=str(config.out), **asdict(sizes))
    result = ABResult(record, environment, arms, arms["without"].audit, arms["with"].audit)
    if embedded:
        result.notes.append("Embedded default model: random weights, so the images are noise; mechanics, timings and report are real.")
    if device.type == "cpu":
        result.notes.append("On a CPU TF32 does not exist; the precision differences come from the half (bf16) VAE and latents.")
    result.notes.append("Both arms run under torch.autocast, as the WebUI does; without it the unfixed service fails "
                        "(fp32 embeddings into a half UNet).")
    if config.refine:
        final_steps = (sizes.hires_steps or sizes.steps) if config.hires else sizes.steps
        ran = min(int(final_steps * sizes.strength), final_steps) if config.hires else final_steps
        result.notes.append(f"The \"with\" arm adds the late refine to its last pass: "
                            f"{describe_refine(config.refine, ran)} of that pass's own schedule on its latents, "
                            "with noise from the seed.")
    result.report_path = write_report(out, result)
    return result
