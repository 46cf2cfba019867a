"""The speed and memory options SDFix knows, per host: what each trades, how a diagnosis switches it for one
generation, and the value that trades nothing (its "quality setting").

One table (:data:`SPEED_OPTIONS`) for every front.  A name is the host's own: the ``shared.opts`` key, the
txt2img field or the command-line flag's attribute (``cmd_opts.medvram``), or for the diffusers front the
pipeline setting.  How an option is switched (``how``), read from each host's source:

* ``override`` -- the option is read while the generation runs, after ``process_images`` applies
  ``override_settings`` (and restores them after, ``override_settings_restore_afterwards``); where it
  is also a txt2img field (``field``: ``s_min_uncond``, copied from the option in
  ``fill_fields_from_opts`` only when the field is empty) a request's field wins, so both are set;
* ``setting`` -- only the option's ``onchange`` makes it take effect (cross attention re-hijacks the
  model): set with the host's callbacks for the run and set back the same way after;
* ``reload`` -- changing it reloads the checkpoint's weights: reported, not measured;
* ``start`` -- a command-line flag: reported, not measured (restart without it to compare);
* ``pipeline`` -- the diffusers front sets it on the pipeline it builds for the cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from lib_sdfix.settings import describe

__all__ = ["SpeedOption", "SPEED_OPTIONS", "OPTION_NAMES", "SWITCHABLE", "options_for", "known_option", "check_option_value",
           "option_value_text"]

#: How an option can be switched for one generation (see the module docstring).
SWITCHABLE = ("override", "setting", "pipeline")
_HOWS = SWITCHABLE + ("reload", "start")
A1111, FORGE, REFORGE, DIFFUSERS = "a1111", "forge", "reforge", "diffusers"
_WEBUIS = (A1111, FORGE, REFORGE)


@dataclass(frozen=True)
class SpeedOption:
    """One option: the host's name for it, its label, the hosts that have it, how it is switched, the value
    that trades nothing (None: every value computes the same thing; the reference keeps the user's), the
    values it takes (``("float", lo, hi)``, ``("int", lo, hi)``, ``("bool",)``, ``("choice", names)`` or
    ``("text",)`` where the host lists the names), whether only the VAE decode differs, and what it trades."""

    key: str
    label: str
    hosts: Tuple[str, ...]
    how: str
    quality: Any
    values: Tuple[Any, ...]
    trades: str
    decode_only: bool = False
    field: bool = False  # also a txt2img field, which wins over the option where the request sets it

    @property
    def switchable(self) -> bool:
        return self.how in SWITCHABLE


def _o(key: str, label: str, hosts: Tuple[str, ...], how: str, quality: Any, values: Tuple[Any, ...], trades: str,
       decode_only: bool = False, field: bool = False) -> SpeedOption:
    assert how in _HOWS, how
    return SpeedOption(key, label, hosts, how, quality, values, trades, decode_only, field)


_BOOL = ("bool",)
_RATIO = ("float", 0.0, 0.9)

#: Every option a diagnosis of kind "optimizations" knows; a name outside this table is a 422.  Read from
#: AUTOMATIC1111 v1.10.1, Forge and reForge main: an option a host keeps but never reads (Forge's
#: ``pad_cond_uncond``, the A1111 flags Forge and reForge accept and ignore, ``fp8_storage`` outside
#: A1111) is not listed for that host, so it shows as "not in this WebUI".
SPEED_OPTIONS: Tuple[SpeedOption, ...] = (
    # --- options (modules/shared_options.py; A1111's extensions-builtin/hypertile)
    _o("cross_attention_optimization", "cross attention optimization", (A1111,), "setting", None, ("text",),
       "speed and memory; every variant computes the same attention up to rounding"),
    _o("token_merging_ratio", "token merging ratio", _WEBUIS, "override", 0.0, _RATIO,
       "speed: merges similar tokens in the U-Net's attention; softens fine detail"),
    _o("token_merging_ratio_hr", "token merging ratio (Hires pass)", _WEBUIS, "override", 0.0, _RATIO,
       "speed of the Hires pass; softens the detail the Hires pass adds"),
    _o("s_min_uncond", "negative guidance minimum sigma", _WEBUIS, "override", 0.0, ("float", 0.0, 15.0),
       "speed: skips the negative prompt on late steps", field=True),
    _o("s_min_uncond_all", "negative guidance minimum sigma, all steps", _WEBUIS, "override", False, _BOOL,
       "speed: with NGMS, skips the negative prompt on every late step instead of every other one"),
    _o("skip_early_cond", "ignore negative prompt during early sampling", _WEBUIS, "override", 0.0, ("float", 0.0, 1.0),
       "speed: no negative prompt for the first part of sampling; changes composition"),
    _o("pad_cond_uncond", "pad prompt/negative prompt", (A1111,), "override", False, _BOOL,
       "speed when prompt and negative prompt differ in length; changes the image (seeds)"),
    _o("pad_cond_uncond_v0", "pad prompt/negative prompt (v0)", (A1111,), "override", False, _BOOL,
       "speed; truncates a long negative prompt; changes the image"),
    _o("persistent_cond_cache", "persistent cond cache", _WEBUIS, "override", None, _BOOL,
       "speed: reuses the prompt's conditioning between generations; no quality cost"),
    _o("batch_cond_uncond", "batch cond/uncond", (A1111,), "override", None, _BOOL,
       "speed for memory: cond and uncond in one batch; no quality cost"),
    _o("sd_vae_decode_method", "VAE decode method", _WEBUIS, "override", "Full", ("choice", ("Full", "TAESD")),
       "speed and memory: TAESD is a small approximate decoder; softens detail", decode_only=True),
    _o("hypertile_enable_unet", "Hypertile U-Net", (A1111,), "override", False, _BOOL,
       "speed at large sizes: attention in tiles; changes detail"),
    _o("hypertile_enable_unet_secondpass", "Hypertile U-Net (Hires pass)", (A1111,), "override", False, _BOOL,
       "speed of the Hires pass; changes detail"),
    _o("hypertile_enable_vae", "Hypertile VAE", (A1111,), "override", False, _BOOL,
       "speed of the VAE at large sizes; small changes", decode_only=True),
    _o("fp8_storage", "FP8 weight", (A1111,), "reload", "Disable", ("choice", ("Disable", "Enable for SDXL", "Enable")),
       "memory: U-Net weights stored in fp8; switching reloads the checkpoint"),
    _o("cache_fp16_weight", "cache FP16 weight for LoRA", (A1111,), "reload", False, _BOOL,
       "LoRA quality under FP8, for memory; needs a reload"),
    # --- Forge's own (modules_forge/main_entry.py, modules/sysinfo.py set_config)
    _o("forge_unet_storage_dtype", "diffusion in low bits", (FORGE,), "reload", "Automatic", ("text",),
       "memory: the U-Net in fp8/nf4/fp4; applies only with a model reload"),
    _o("forge_inference_memory", "GPU weights: memory kept for inference (MB)", (FORGE,), "override", None,
       ("int", 0, 1 << 20), "memory for speed: weights that do not fit move to the CPU; unloads every model"),
    _o("forge_async_loading", "swap method", (FORGE,), "override", None, ("choice", ("Queue", "Async")),
       "speed of weight swapping; unloads every model"),
    _o("forge_pin_shared_memory", "swap location", (FORGE,), "override", None, ("choice", ("CPU", "Shared")),
       "speed of weight swapping; unloads every model"),
    # --- command-line flags (reported with their value)
    _o("medvram", "--medvram", (A1111,), "start", False, _BOOL, "memory for speed: model parts moved to the CPU"),
    _o("medvram_sdxl", "--medvram-sdxl", (A1111,), "start", False, _BOOL, "memory for speed, SDXL only"),
    _o("lowvram", "--lowvram", (A1111,), "start", False, _BOOL, "memory for much speed: layers moved to the CPU"),
    _o("opt_channelslast", "--opt-channelslast", (A1111,), "start", False, _BOOL, "speed on some GPUs; same math"),
    _o("upcast_sampling", "--upcast-sampling", (A1111,), "start", False, _BOOL,
       "speed and memory: fp16 weights with fp32 sampling where it matters"),
    _o("no_half_vae", "--no-half-vae", (A1111,), "start", True, _BOOL,
       "quality for memory: the VAE in fp32 (off: fp16 VAE, NaN and banding risk)"),
    _o("no_half", "--no-half", (A1111,), "start", True, _BOOL, "quality for memory and speed: every model in fp32"),
    _o("xformers", "--xformers", (A1111,), "start", False, _BOOL, "speed and memory: xformers attention"),
    _o("vae_in_bf16", "--vae-in-bf16", (FORGE, REFORGE), "start", False, _BOOL, "memory: the VAE in bf16 (8 mantissa bits)"),
    _o("vae_in_fp16", "--vae-in-fp16", (FORGE, REFORGE), "start", False, _BOOL, "memory: the VAE in fp16"),
    _o("unet_in_fp8_e4m3fn", "--unet-in-fp8-e4m3fn", (FORGE, REFORGE), "start", False, _BOOL, "memory: the U-Net in fp8"),
    _o("unet_in_fp8_e5m2", "--unet-in-fp8-e5m2", (FORGE, REFORGE), "start", False, _BOOL, "memory: the U-Net in fp8"),
    _o("unet_in_fp16", "--unet-in-fp16", (FORGE, REFORGE), "start", False, _BOOL, "memory and speed: the U-Net in fp16"),
    _o("unet_in_bf16", "--unet-in-bf16", (FORGE, REFORGE), "start", False, _BOOL, "memory and speed: the U-Net in bf16"),
    _o("always_low_vram", "--always-low-vram", (FORGE, REFORGE), "start", False, _BOOL, "memory for speed: layers offloaded"),
    _o("always_no_vram", "--always-no-vram", (FORGE, REFORGE), "start", False, _BOOL, "memory for much speed: all offloaded"),
    _o("use_sage_attention", "--use-sage-attention", (REFORGE,), "start", False, _BOOL,
       "speed: quantized (lossy) attention"),
    _o("fast", "--fast", (REFORGE,), "start", False, _BOOL, "speed: fp16 accumulation / fp8 matmul; may lose quality"),
    _o("force_channels_last", "--force-channels-last", (REFORGE,), "start", False, _BOOL, "speed on some GPUs; same math"),
    # --- the diffusers front: set on the pipeline for the cell, undone after (the SDXL optimisation guide's list)
    _o("unet_dtype", "UNet dtype", (DIFFUSERS,), "pipeline", "fp32", ("choice", ("fp32", "fp16", "bf16")),
       "speed and memory: the UNet (and the prompt embeddings) in half precision; rounding in every step"),
    _o("attention_slicing", "attention slicing", (DIFFUSERS,), "pipeline", False, _BOOL,
       "memory for speed: attention in slices instead of one SDPA call; same math"),
    _o("vae_slicing", "VAE slicing", (DIFFUSERS,), "pipeline", False, _BOOL,
       "memory for batches: decodes one image at a time; same image", decode_only=True),
    _o("vae_tiling", "VAE tiling", (DIFFUSERS,), "pipeline", False, _BOOL,
       "memory at large sizes: decodes in overlapping tiles; seams and tone shifts possible", decode_only=True),
    _o("channels_last", "channels-last UNet", (DIFFUSERS,), "pipeline", False, _BOOL,
       "speed on some GPUs: the UNet's weights in channels-last layout; same math"),
    _o("torch_compile", "torch.compile UNet", (DIFFUSERS,), "pipeline", False, _BOOL,
       "speed after a slow first compile; same math up to kernel rounding"),
    _o("freeu", "FreeU", (DIFFUSERS,), "pipeline", False, _BOOL,
       "no speed: re-weights the UNet's skip and backbone features; changes the image"),
    _o("tomesd", "token merging (tomesd)", (DIFFUSERS,), "pipeline", 0.0, _RATIO,
       "speed: merges similar tokens in the UNet's attention; softens fine detail"),
    _o("steps", "sampling steps", (DIFFUSERS,), "pipeline", None, ("int", 1, 150),
       "speed: fewer steps; less converged detail"),
    _o("model_cpu_offload", "model CPU offload", (DIFFUSERS,), "pipeline", False, _BOOL,
       "accelerator memory for speed: each model moves to the device only while it runs"),
    _o("sequential_cpu_offload", "sequential CPU offload", (DIFFUSERS,), "pipeline", False, _BOOL,
       "accelerator memory for much speed: each layer moves to the device only while it runs"),
    _o("vae", "VAE", (DIFFUSERS,), "pipeline", "pipeline", ("text",),
       "speed or memory: another VAE (TAESD, fp16-fix) decodes; its own detail and colour", decode_only=True),
)

#: Every name of the table, sorted (an unknown one is a 422 with the nearest of these).
OPTION_NAMES: Tuple[str, ...] = tuple(sorted({o.key for o in SPEED_OPTIONS}))
_BY_KEY: Dict[str, Tuple[SpeedOption, ...]] = {}
for _option in SPEED_OPTIONS:
    _BY_KEY[_option.key] = _BY_KEY.get(_option.key, ()) + (_option,)


def options_for(host: str) -> Tuple[SpeedOption, ...]:
    """The options of one host ("a1111", "forge", "reforge", "diffusers"), in table order."""
    return tuple(o for o in SPEED_OPTIONS if host in o.hosts)


def known_option(key: Any, host: Optional[str] = None) -> Optional[SpeedOption]:
    """The option of that name (the host's entry where it has one), or None where no host has it."""
    entries = _BY_KEY.get(key, ()) if isinstance(key, str) else ()
    for option in entries:
        if host is None or host in option.hosts:
            return option
    return entries[0] if entries else None


def check_option_value(option: SpeedOption, value: Any) -> Any:
    """A value for ``option``, normalised (ints from whole floats, floats from ints); ValueError says why not."""
    kind = option.values[0]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {describe(value)}")
    if kind in ("float", "int"):
        low, high = option.values[1], option.values[2]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number {low}-{high}, got {describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be {low}-{high}, got {describe(value)}")
        if kind == "int":
            if float(value) != int(value):
                raise ValueError(f"expected a whole number {low}-{high}, got {describe(value)}")
            return int(value)
        return float(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise ValueError(f"expected a name, got {describe(value)}")
    if kind == "choice" and value not in option.values[1]:
        raise ValueError(f"must be one of {list(option.values[1])}, got {describe(value)}")
    return value


def option_value_text(value: Any) -> str:
    """A value as labels show it: on/off for booleans, 0.5 not 0.50."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, "g")
    return str(value)
