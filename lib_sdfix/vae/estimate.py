"""How much memory one call of a VAE network takes -- untiled in its own dtype, in fp32, and tiled
in fp32 -- and how much a call may use on its device (the plan that follows: :mod:`lib_sdfix.vae.plan`).

Why an estimate and not a trial: the untiled fp32 call that does not fit is exactly what must not
run first (on a shared GPU its out-of-memory error may hit another process's allocation, and
unwinding it costs as much as the call).  The estimate walks the network's operations
(:mod:`lib_sdfix.vae.net`): for each, the elements its untiled forward holds at once (a ResnetBlock:
its input and two or three input-sized temporaries at the first activation, or input + output-sized
tensors at the residual add; attention: six; an upsampler: the input, its 2x copy and the
convolution's output), times the batch and the dtype's size, times 1.25 for the kernels' own
buffers, plus 64 MiB; the fp32 run adds its cast weights.  The tiled estimate is what the strip
executor (:mod:`lib_sdfix.vae.strips`) keeps (a block's input and output-sized tensors, one image)
plus five strips and the largest layer's weights.  ``bench/vae_memory.py`` prints both next to
the measured peaks.

``SDFIX_VAE_MEMORY_GB`` (environment): at most this many GiB for one VAE call (default: 90 % of the
free device memory).  A small value forces tiling, e.g. to check it on a large GPU.  Unset, empty or 0
means the default; anything else that is not a finite positive number (``inf``, ``1e400``, ``nan``,
negative, text) is logged once and ignored -- the call is planned as without it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from lib_sdfix.failsafe import log_once
from lib_sdfix.vae.net import Attention, Conv, Exit, Network, Resample, Resnet, resampled_size

__all__ = ["Estimate", "estimate", "free_memory", "available_memory", "budget_from_env",
           "default_strip_bytes", "walk", "GIB", "MIN_STRIP", "BUDGET_ENV"]

GIB = 1024 ** 3
BUDGET_ENV = "SDFIX_VAE_MEMORY_GB"
_MIB = 1024 ** 2
_KERNELS = 1.25  # convolution kernels' own buffers (oneDNN reorders, cuDNN workspace), measured on the CPU
_SLACK = 64 * _MIB
_FREE_SHARE = 0.9  # of the free memory a call may plan for (the allocator fragments the rest)
MIN_STRIP = 4 * _MIB
#: A cap above this many GiB (a zettabyte) caps nothing: the budget is clamped to it, so that bytes stay a
#: Python int (``1e300 * GIB`` is an infinite float).
_MAX_BUDGET_GB = float(2 ** 40)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --- the estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one call of a VAE network on ``shape`` (its input ``[B, C, H, W]``), in bytes."""

    kind: str
    shape: Tuple[int, ...]
    output: Tuple[int, int]
    native: int  # untiled in the VAE's own dtype
    fp32: int  # untiled in fp32, with the weights cast for it
    tiled: int  # tiled in fp32 with ``strip_bytes`` strips, strips kept on the device
    tiled_offloaded: int  # tiled, strips waiting on the CPU (device memory only)
    strip_bytes: int

    def as_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "input": list(self.shape), "output": list(self.output), "native_bytes": self.native,
                "fp32_bytes": self.fp32, "fp32_tiled_bytes": self.tiled, "strip_bytes": self.strip_bytes}


def walk(net: Network, height: int, width: int) -> Iterator[Tuple[Any, int, int, int, int, int, int]]:
    """(op, in channels, out channels, in pixels, out pixels, widest channels, out width) per operation."""
    channels = net.in_channels
    for op in net.ops:
        pixels = height * width
        if isinstance(op, Resample):
            height, width = resampled_size(op, height, width)
            out = op.conv.out_channels if op.conv is not None else channels
        elif isinstance(op, (Conv, Exit)):
            out = op.conv.out_channels
        elif isinstance(op, Resnet):
            out = op.conv1.out_channels
        else:
            out = channels
        yield op, channels, out, pixels, height * width, max(channels, out), width
        channels = out


def _untiled_elements(op: Any, cin: int, cout: int, pin: int, pout: int) -> int:
    if isinstance(op, Resnet):
        return pin * max(op.entry * cin, cin + 3 * cout + (cout if op.shortcut is not None else 0))
    if isinstance(op, Attention):
        return 6 * cin * pin
    if isinstance(op, Resample):
        return cin * pin * 9 if op.up else cin * pin * 2 + cout * pout
    if isinstance(op, Exit):
        return pin * (4 * cin + cout)
    return cin * pin + cout * pout


def _tiled_elements(op: Any, cin: int, cout: int, pin: int, pout: int) -> int:
    if isinstance(op, Resnet):
        return pin * (max(cin, 2 * cout) if op.shortcut is not None else cin + cout)
    if isinstance(op, Attention):
        return 5 * cin * pin
    if isinstance(op, Resample):
        return max(cin * pin, cout * pout)
    return cin * pin + cout * pout


def _layer_bytes(net: Network) -> int:
    """fp32 bytes of the largest operation's weights (cast once per operation)."""
    best = 0
    for op in net.ops:
        total = sum(p.numel() for m in vars(op).values() if isinstance(m, nn.Module) for p in m.parameters(recurse=False))
        best = max(best, total)
    return 4 * best


def default_strip_bytes(net: Network, height: int, width: int, device: torch.device) -> int:
    """A strip of about 1/16 of the largest activation: small enough to keep the tiled peak near the
    kept tensors, large enough that per-strip overhead stays small (on the CPU at most 32 MiB,
    which the caches like)."""
    largest = max(4 * widest * pout for _, _, _, _, pout, widest, _ in walk(net, height, width))
    cap = 32 * _MIB if device.type == "cpu" else 512 * _MIB
    return int(min(cap, max(MIN_STRIP, largest // 16)))


def estimate(net: Network, shape: Sequence[int], native_dtype: torch.dtype, *, cast_bytes: int = 0,
             strip_bytes: Optional[int] = None, device: Optional[torch.device] = None) -> Estimate:
    """The peak memory of running ``net`` on an input of ``shape``: untiled in ``native_dtype`` and in
    fp32 (plus ``cast_bytes`` of weights cast for it), and tiled in fp32 (one image at a time)."""
    batch, _, height, width = (int(v) for v in shape)
    device = device or torch.device("cpu")
    strip = int(strip_bytes or default_strip_bytes(net, height, width, device))
    untiled = tiled = 0
    for op, cin, cout, pin, pout, _, _ in walk(net, height, width):
        untiled = max(untiled, _untiled_elements(op, cin, cout, pin, pout))
        tiled = max(tiled, _tiled_elements(op, cin, cout, pin, pout))
    out_h, out_w = net.output_size(height, width)
    result = 4 * batch * net.out_channels * out_h * out_w
    working = 5 * strip + 2 * _layer_bytes(net) + _SLACK
    return Estimate(
        net.kind, (batch, int(shape[1]), height, width), (out_h, out_w),
        native=int(untiled * batch * _size(native_dtype) * _KERNELS) + _SLACK,
        fp32=int(untiled * batch * 4 * _KERNELS) + _SLACK + int(cast_bytes),
        tiled=4 * tiled + working + result,
        tiled_offloaded=working + result,
        strip_bytes=strip,
    )


# --- free memory ----------------------------------------------------------------------------------


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes a new allocation on ``device`` can get now; None where it cannot be told.

    CUDA: the driver's free memory plus what torch's allocator holds unused.  CPU: the kernel's
    MemAvailable (psutil where installed).  MPS: the recommended working set minus what is allocated.
    """
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        if device.type == "cpu":
            return _available_ram()
        if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except Exception:  # noqa: BLE001 -- no answer is an answer: plan without it
        return None
    return None


def _available_ram() -> Optional[int]:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def budget_from_env() -> float:
    """``SDFIX_VAE_MEMORY_GB`` as GiB; 0 (automatic) when unset, empty or 0.  A value that is not a finite
    positive number is logged once (per value) and ignored: 0, as if unset."""
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        value = float(raw.strip() or 0)
    except ValueError:
        value = math.nan
    if value == 0:
        return 0.0
    if _valid_budget(value):
        return value
    log_once(f"{BUDGET_ENV}={raw}", f"{BUDGET_ENV}={raw!r} ignored: expected a positive number of GiB "
             "(unset, empty or 0: plan for 90 % of the free device memory)", warning=True)
    return 0.0


def _valid_budget(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def available_memory(device: torch.device, budget_gb: Optional[float] = None) -> Optional[int]:
    """What a VAE call may plan to use on ``device``: 90 % of the free memory, and no more than
    ``budget_gb`` when that is set (None: ``SDFIX_VAE_MEMORY_GB``; 0: automatic; not a finite positive
    number: automatic too).  None when neither is known."""
    if budget_gb is None:
        budget_gb = budget_from_env()
    free = free_memory(device)
    share = None if free is None else int(free * _FREE_SHARE)
    if _valid_budget(budget_gb):
        budget = int(min(float(budget_gb), _MAX_BUDGET_GB) * GIB)
        return budget if share is None else min(budget, share)
    return share
