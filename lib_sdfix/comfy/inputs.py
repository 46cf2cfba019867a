"""Checks of what a node is handed, failing with the input's name: ComfyUI validates prompts from its API
against the node's declared types and ranges, but another pack (or a workflow edited by hand) can still
call a node with anything."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

__all__ = ["InputError", "latent_samples", "image_batch", "choice", "number", "integer"]


class InputError(ValueError):
    """A node input is wrong; the message starts with the input's name."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.input = name


def _kind(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__


def latent_samples(value: Any, name: str = "samples") -> Any:
    """The tensor of a LATENT (``{"samples": B x C x H x W}``); a nested latent gives its first tensor, as
    ComfyUI's VAEDecode does."""
    import torch

    if not isinstance(value, dict) or "samples" not in value:
        raise InputError(name, f"expected a LATENT (a dict with 'samples'), got {_kind(value)}")
    samples = value["samples"]
    if not isinstance(samples, torch.Tensor):
        raise InputError(name, f"expected a LATENT whose 'samples' is a tensor, got {_kind(samples)}")
    if getattr(samples, "is_nested", False):
        samples = samples.unbind()[0]
    if samples.ndim not in (4, 5) or not samples.is_floating_point():
        raise InputError(name, f"expected a float latent of 4 (B x C x H x W) or 5 dimensions, got {_kind(samples)} "
                               f"of {samples.dtype}")
    return samples


def image_batch(value: Any, name: str = "image") -> Any:
    """An IMAGE: a float tensor B x H x W x C (C = 3 or 4) in [0, 1]."""
    import torch

    if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[-1] not in (3, 4) \
            or not value.is_floating_point():
        raise InputError(name, f"expected an IMAGE (a float tensor B x H x W x 3), got {_kind(value)}")
    if value.shape[0] == 0 or value.shape[1] == 0 or value.shape[2] == 0:
        raise InputError(name, f"the image batch is empty ({_kind(value)})")
    return value


def choice(value: Any, name: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        shown = ", ".join(list(options)[:40])
        raise InputError(name, f"unknown value {value!r}; expected one of: {shown}")
    return value


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) \
            or not low <= float(value) <= high:
        raise InputError(name, f"expected a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def integer(value: Any, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InputError(name, f"expected a whole number {span}, got {value!r}")
    return int(value)
