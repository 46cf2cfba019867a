"""Cause ``embeds_dtype``: prompt embeddings reach the UNet in its dtype, on the execution device.

Why: diffusers casts embeddings -- its own and the caller's (Compel) -- to the *text encoder's*
dtype, and the latents follow them.  An fp32 text encoder (kept on the CPU, or offloaded) with an
fp16 UNet then either fails ("mat1 and mat2 must have the same dtype") or, under autocast, runs
txt2img and img2img in different precisions.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lib_sdfix.diffusers.causes import Finding, dtype_name
from lib_sdfix.diffusers.state import is_ours, state_of, wrap_method
from lib_sdfix.failsafe import FixReport

__all__ = ["cast_prompt_embeds", "find_embeds_dtype"]


def _cast_embeddings(pipe: Any, output: Any, report: Optional[FixReport]) -> Any:
    import torch

    from lib_sdfix.vae.fp32 import vae_weight_dtype

    unet = getattr(pipe, "unet", None)
    if unet is None:
        return output
    dtype = vae_weight_dtype(unet)
    device = torch.device(pipe._execution_device)
    casts = set()

    def elsewhere(tensor: Any) -> bool:
        if tensor.device.type != device.type:
            return True
        return device.type != "cpu" and device.index is not None and tensor.device.index != device.index

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and (value.dtype != dtype or elsewhere(value)):
            text = f"{dtype_name(value.dtype)} -> {dtype_name(dtype)}" if value.dtype != dtype else ""
            if elsewhere(value):
                text += f"{' ' if text else ''}(moved {value.device} -> {device})"
            casts.add(text)
            return value.to(device=device, dtype=dtype)
        return value

    result = tuple(cast(v) for v in output) if isinstance(output, tuple) else cast(output)
    if casts and report is not None:
        report.mark_applied("embeds_dtype")
        report.note("prompt embeddings cast " + ", ".join(sorted(casts)))
    return result


def cast_prompt_embeds(pipe: Any, report: Optional[FixReport] = None) -> bool:
    """Make ``pipe.encode_prompt`` hand the UNet embeddings in its dtype, on the execution device.

    Idempotent; True if installed now.
    """
    if not hasattr(pipe, "encode_prompt"):
        return False
    pipe_ref = weakref.ref(pipe)

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            live = pipe_ref()
            state = state_of(live)
            if live is None or (state is not None and not state.on("embeds_dtype")):
                return output
            return _cast_embeddings(live, output, state.report if state is not None else report)

        return encode_prompt

    return wrap_method(pipe, "encode_prompt", make)


def _text_encoders(pipe: Any) -> List[Tuple[str, Any]]:
    return [(name, getattr(pipe, name, None)) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]


def find_embeds_dtype(pipes: Sequence[Any]) -> Finding:
    from lib_sdfix.vae.fp32 import vae_weight_dtype

    mismatched: Dict[str, str] = {}
    unguarded = False
    for pipe in pipes:
        unet = getattr(pipe, "unet", None)
        state = state_of(pipe)
        if unet is None or (is_ours(pipe.__dict__.get("encode_prompt")) and state is not None and state.on("embeds_dtype")):
            continue
        unguarded = True
        unet_dtype = vae_weight_dtype(unet)
        for name, encoder in _text_encoders(pipe):
            encoder_dtype = vae_weight_dtype(encoder)
            if encoder_dtype != unet_dtype:
                mismatched[name] = f"{name} {dtype_name(encoder_dtype)} vs UNet {dtype_name(unet_dtype)}"
    if mismatched:
        return Finding("embeds_dtype", True, ", ".join(mismatched.values()) + ": embeddings reach the UNet in the text encoder's dtype")
    if unguarded:
        return Finding("embeds_dtype", False, "text encoders match the UNet's dtype (embeddings passed in by the caller are not cast)")
    return Finding("embeds_dtype", False, "embeddings are cast to the UNet's dtype and execution device")
