"""Standalone A/B run: the same seed through a diffusers service with and without SDFix's fixes.

``python -m lib_sdfix ab`` calls :func:`run_ab`.  The "without" arm is the first seed's service as
it was: fp16 (bf16 on a CPU) UNet and VAE, an fp32 text encoder producing the prompt embeddings,
TF32 and cuDNN autotuning on for the whole process, ``enable_model_cpu_offload()`` on both
pipelines, DPM++ 2M Karras set on the txt2img pipeline only, and a BILINEAR resize after the
upscaler.  The "with" arm is the same service after :func:`lib_sdfix.diffusers.harden`;
``ablation`` adds one arm per fix alone.

Without a model the run uses an embedded default: an SD1.5-architecture pipeline built from a
config with small random weights (and a tiny random RealESRGAN-layout upscaler), so the command
runs on a fresh CPU-only machine in well under a minute.  Its images are noise; the mechanics,
timings and report are real.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from lib_sdfix.diffusers import CAUSES, audit, fix_report, harden, hires_fix, load_upscaler
from lib_sdfix.settings import SDFixSettings

__all__ = [
    "ABConfig",
    "ABResult",
    "run_ab",
    "resolve_sizes",
    "tiny_sd15_components",
    "tiny_esrgan_state_dict",
    "byte_level_clip_tokenizer",
]

DEFAULT_PROMPT = "close-up portrait photo, detailed skin texture, individual hair strands, sharp eye highlights"
DEFAULT_NEGATIVE = "blurry, oil painting, smooth plastic skin"
EMBEDDED = "embedded tiny SD1.5 (random weights)"

_IMG2IMG_FOR = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
}


# --- the embedded default model ----------------------------------------------------------------


def _byte_alphabet() -> List[str]:
    """The 256 printable stand-ins byte-level BPE tokenizers (GPT-2, CLIP) use for the bytes 0-255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_clip_tokenizer(directory: Any = None) -> Any:
    """A CLIPTokenizer over single bytes: needs no downloaded vocabulary.

    Every text tokenizes (one token per byte, word ends marked as CLIP does), which is all a
    random-weight text encoder needs.  The vocabulary files are written to ``directory`` (kept),
    or to a temporary folder removed once the tokenizer has read them.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="sdfix-tokenizer-") as scratch:
            return byte_level_clip_tokenizer(scratch)
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": 256 + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def tiny_sd15_components(seed: int = 0, tokenizer_dir: Any = None) -> Dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and scheduler of SD1.5's architecture, small and random.

    Same block layout as SD1.5 (four UNet levels, cross-attention in the first three, a 4-level VAE
    with an 8x latent, CLIP text encoder, PNDM as the checkpoint ships it), channel counts cut so
    a 128x128 image takes about a second on one CPU core.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = byte_level_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        sample_size=128, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
        "scheduler": scheduler, "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
    }


def tiny_esrgan_state_dict(num_feat: int = 8, num_block: int = 1, seed: int = 0) -> Dict[str, Any]:
    """Random x4 weights in Real-ESRGAN's RRDBNet key layout (``conv_first``, ``body.N.rdbM.convK``, ...).

    Loaders recognise the architecture from these names and shapes exactly as for
    RealESRGAN_x4plus.pth, which has ``num_feat=64, num_block=23``; growth channels stay 32 (what
    ESRGAN loaders assume).
    """
    import torch

    grow = 32
    generator = torch.Generator().manual_seed(seed)
    state: Dict[str, Any] = {}

    def conv(name: str, c_in: int, c_out: int, gain: float = 0.1) -> None:
        std = gain * (2.0 / (c_in * 9)) ** 0.5  # He init, scaled down inside the residual blocks
        state[f"{name}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.zeros(c_out)

    conv("conv_first", 3, num_feat, 1.0)
    for b in range(num_block):
        for r in (1, 2, 3):
            for k in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{k}", num_feat + (k - 1) * grow, grow if k < 5 else num_feat)
    conv("conv_body", num_feat, num_feat)
    conv("conv_up1", num_feat, num_feat, 1.0)  # two x2 upsampling convs: x4
    conv("conv_up2", num_feat, num_feat, 1.0)
    conv("conv_hr", num_feat, num_feat, 1.0)
    conv("conv_last", num_feat, 3, 1.0)
    return state


# --- the service, as the seed had it -------------------------------------------------------------


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
    device: str = "auto"
    offload: bool = True
    progress: bool = True


@dataclass
class ArmResult:
    name: str
    fixes: Tuple[str, ...]
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


class _Service:
    """Loaded weights, and fresh pipeline pairs wired the way the seed's service wired them."""

    def __init__(self, config: ABConfig, device: Any, dtype: Any) -> None:
        import torch

        self.device, self.dtype, self.show_bars = device, dtype, config.progress
        self.embedded = config.model is None
        if self.embedded:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(**tiny_sd15_components())
        else:
            pipe = _load_model(config.model, dtype)
        # The seed's text encoder ran in fp32 (kept on the CPU / offloaded), the rest in half.
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
        img2img_class = getattr(diffusers, _IMG2IMG_FOR[self.txt2img_class.__name__])
        extra = {"requires_safety_checker": False} if "safety_checker" in pipe.components else {}
        img2img = img2img_class(**pipe.components, **extra)  # shares every module, and the checkpoint's scheduler
        # setScheduler(): DPM++ 2M Karras -- on the txt2img pipeline only.
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
        # pipelineCache.py's "Ampere optimisation", process-wide.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return pipe, img2img


def _reset_components(components: Dict[str, Any]) -> None:
    """Undo what an earlier arm did to the shared modules (SDFix wrappers, offload hooks)."""
    import torch

    from lib_sdfix.diffusers import _unguard_vae

    for value in components.values():
        if isinstance(value, torch.nn.Module):
            if getattr(value, "_hf_hook", None) is not None or any(
                getattr(m, "_hf_hook", None) is not None for m in value.modules()
            ):
                from accelerate.hooks import remove_hook_from_module

                remove_hook_from_module(value, recurse=True)
            _unguard_vae(value)


def _load_model(path: str, dtype: Any) -> Any:
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    if os.path.isdir(path):
        index = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))
        extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
        pipe = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **extra)
    else:
        pipe = StableDiffusionPipeline.from_single_file(path, torch_dtype=dtype, local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
    if type(pipe).__name__ not in _IMG2IMG_FOR:
        raise SystemExit(f"ab supports Stable Diffusion 1.x/2.x and SDXL pipelines, got {type(pipe).__name__}")
    return pipe


def _half_dtype(device: Any) -> Any:
    """What a service runs the UNet/VAE in: fp16 on a GPU; bf16 on a CPU (fp16 CPU kernels are slow)."""
    import torch

    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# --- running the arms -----------------------------------------------------------------------------


def _arms(ablation: bool) -> List[Tuple[str, Tuple[str, ...]]]:
    arms = [("without", ()), ("with", CAUSES)]
    if ablation:
        arms += [(f"only {cause}", (cause,)) for cause in CAUSES]
    return arms


def _prompt_embeddings(service: _Service, config: ABConfig) -> Dict[str, Any]:
    import torch

    pipe, _ = service.pair(offload=False)
    with torch.no_grad():
        out = pipe.encode_prompt(prompt=config.prompt, device=service.device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt=config.negative_prompt)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return {name: value for name, value in zip(names, out) if value is not None}


def _run_arm(service: _Service, config: ABConfig, name: str, fixes: Tuple[str, ...], embeds: Dict[str, Any],
             upscaler: Any, sizes: Dict[str, Any]) -> ArmResult:
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
                      width=sizes["width"], height=sizes["height"], num_inference_steps=sizes["steps"], seed=config.seed)
        if config.hires:
            result = hires_fix(pipe, img2img, scale=config.hires_scale, strength=sizes["strength"],
                               hires_steps=sizes["hires_steps"], upscaler=upscaler, options=options, **common)
            image, first, upscaled, resized = result.image, result.first_pass, result.upscaled, result.resized
            timings, resize = result.timings, result.resize
            notes += result.notes
        else:
            seed = common.pop("seed")
            t0 = time.perf_counter()
            image = pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="pil", **common).images[0]
            first = upscaled = resized = resize = None
            timings = {"txt2img": time.perf_counter() - t0}
    timings["total"] = time.perf_counter() - start
    report = fix_report(pipe)
    if report is not None:
        _, arm_failed, arm_notes = report.items()
        failed.update(arm_failed)
        notes += [n for n in arm_notes if n not in notes]
    found = audit(pipe, img2img).as_dict()
    return ArmResult(name, fixes, image, first, upscaled, resized, timings, resize, notes, failed, found)


def _diffusers_warnings_off() -> Any:
    """Silence diffusers' per-construction warnings (disabled safety checker, dtype casts) for the
    run; returns the function that puts the previous verbosity back."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    return lambda: diffusers_logging.set_verbosity(before)


def _versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "spandrel"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def resolve_sizes(config: ABConfig) -> Dict[str, Any]:
    """Width, height, steps and Hires strength the run uses: the config's, else the defaults (small
    for the embedded model, SD-sized with ``--model``)."""
    embedded = config.model is None
    return {
        "width": config.width or (128 if embedded else 512),
        "height": config.height or (128 if embedded else 512),
        "steps": config.steps or (12 if embedded else 25),
        "strength": config.strength if config.strength is not None else (0.5 if embedded else 0.35),
        "hires_steps": config.hires_steps,
    }


def run_ab(config: ABConfig) -> ABResult:
    """Run every arm with the same seed, write the report to ``config.out``, return the results."""
    import torch
    from tqdm.auto import tqdm

    from lib_sdfix.precision import read_flags, restore_flags
    from lib_sdfix.report import write_report

    flags_before = read_flags()
    device = _resolve_device(config.device)
    dtype = _half_dtype(device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    embedded = config.model is None
    sizes = resolve_sizes(config)
    stages = tqdm(total=2 + len(_arms(config.ablation)), desc="SDFix A/B", disable=not config.progress, unit="step")
    quiet = _diffusers_warnings_off()
    threads = torch.get_num_threads()
    if embedded and device.type == "cpu":
        # The tiny model's ops are too small to split: one thread is as fast, and does not crawl
        # when other processes hold the other cores.
        torch.set_num_threads(1)
    try:
        stages.set_postfix_str("loading model")
        service = _Service(config, device, dtype)
        upscaler = None
        if config.hires:
            path = config.upscaler
            if path is None and embedded:
                import safetensors.torch

                path = str(out / "tiny-realesrgan-x4.safetensors")
                safetensors.torch.save_file(tiny_esrgan_state_dict(), path)
            upscaler = load_upscaler(path, device=device) if path else None
        stages.update()

        # The seed's Compel embeddings: computed once by the fp32 text encoder and passed in raw.
        stages.set_postfix_str("prompt embeddings")
        embeds = _prompt_embeddings(service, config)
        stages.update()

        arms: Dict[str, ArmResult] = {}
        for name, fixes in _arms(config.ablation):
            stages.set_postfix_str(name)
            arms[name] = _run_arm(service, config, name, fixes, embeds, upscaler, sizes)
            stages.update()
    finally:
        environment_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        stages.close()
        quiet()
        restore_flags(flags_before)

    environment = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "torch_threads": environment_threads,
        "model": config.model or EMBEDDED,
        "upscaler": (upscaler.name + f" via {upscaler.backend}" + (" (random weights)" if config.upscaler is None else ""))
        if upscaler is not None else ("none: the first pass is resized directly" if config.hires else "no Hires pass"),
        "flags_after_run_equal_before": read_flags() == flags_before,
        **_versions(),
    }
    record = dict(vars(config), out=str(config.out), **{k: v for k, v in sizes.items()})
    result = ABResult(record, environment, arms, arms["without"].audit, arms["with"].audit)
    if embedded:
        result.notes.append("Embedded default model: random weights, so the images are noise; mechanics, timings and report are real.")
    if device.type == "cpu":
        result.notes.append("On a CPU TF32 does not exist; the precision differences come from the half (bf16) VAE and latents.")
    result.notes.append("Both arms run under torch.autocast, as the WebUI does; without it the unfixed service fails "
                        "(fp32 embeddings into a half UNet).")
    result.report_path = write_report(out, result)
    return result



