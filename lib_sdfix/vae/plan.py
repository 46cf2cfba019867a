"""The plan of one call of a VAE network: untiled, one image of the batch at a time (sliced), or
tiled -- from the fp32 estimate (:mod:`lib_sdfix.vae.estimate`) and the memory the call may use.

Untiled when the fp32 estimate fits (or nothing is known about the free memory); a batch that does
not fit runs one image at a time when one image fits; else tiled with the largest strips that fit,
with the strips waiting on the CPU when even the kept tensors do not fit the device.
:func:`memory_report` is the same plan for the audits, at a given image size.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from lib_sdfix.vae.estimate import GIB, MIN_STRIP, Estimate, available_memory, budget_from_env, default_strip_bytes, estimate
from lib_sdfix.vae.fp32 import vae_weight_dtype
from lib_sdfix.vae.net import Network, Resample, Unsupported, network_of, vae_networks

__all__ = ["Plan", "plan", "fp32_cast_bytes", "memory_report"]


@dataclass(frozen=True)
class Plan:
    tiled: bool
    estimate: Estimate
    available: Optional[int]
    strip_bytes: int
    offload: bool = False  # strips wait on the CPU between operations
    reason: str = ""
    sliced: bool = False  # untiled, one image of the batch at a time

    @property
    def how(self) -> str:
        """"untiled", "sliced" or "tiled"."""
        return "tiled" if self.tiled else "sliced" if self.sliced else "untiled"


def plan(net: Network, shape: Sequence[int], device: torch.device, *, native_dtype: torch.dtype,
         cast_bytes: int = 0, budget_gb: Optional[float] = None, force: bool = False,
         available: Optional[int] = None) -> Plan:
    """Untiled when the fp32 estimate fits what is available (or nothing is known); for a batch that
    does not fit, one image at a time when one image fits (slicing); else tiled (always one image at
    a time) with the largest strips that fit -- with the strips waiting on the CPU when even the
    kept tensors do not fit the device."""
    if available is None:
        available = available_memory(device, budget_gb)
    height, width = int(shape[2]), int(shape[3])
    strip = default_strip_bytes(net, height, width, device)
    est = estimate(net, shape, native_dtype, cast_bytes=cast_bytes, strip_bytes=strip, device=device)
    if not force and (available is None or est.fp32 <= available):
        why = "free memory unknown" if available is None else "fits"
        return Plan(False, est, available, strip, reason=why)
    why = "forced" if force else f"fp32 needs ~{est.fp32 / GIB:.2f} GiB, {available / GIB:.2f} GiB available"
    batch = int(shape[0])
    if not force and batch > 1:
        one = estimate(net, (1,) + tuple(shape[1:]), native_dtype, cast_bytes=cast_bytes, strip_bytes=strip, device=device)
        results = 4 * (batch - 1) * net.out_channels * est.output[0] * est.output[1]
        if one.fp32 + results <= available:
            return Plan(False, est, available, strip, reason=why + "; one image at a time fits", sliced=True)
    if available is None or est.tiled <= available:
        return Plan(True, est, available, strip, reason=why)
    kept = est.tiled - 5 * strip
    room = (available - kept) // 5
    if room >= MIN_STRIP:
        strip = int(min(strip, room))
        return Plan(True, replace(est, tiled=kept + 5 * strip, strip_bytes=strip), available, strip, reason=why)
    offload = device.type != "cpu"
    if offload:
        room = (available - (est.tiled_offloaded - 5 * strip)) // 5
        strip = int(max(MIN_STRIP // 4, min(strip, room)))
    else:
        strip = MIN_STRIP
    return Plan(True, replace(est, strip_bytes=strip), available, strip, offload,
                why + ("; strips kept on the CPU" if offload else "; may still run out of memory"))


def fp32_cast_bytes(net: nn.Module) -> int:
    """The bytes the network's low-precision weights take once cast to fp32 (what the untiled fp32 call adds)."""
    return sum(4 * p.numel() for p in net.parameters() if p.is_floating_point() and p.dtype != torch.float32)


# --- what the audits report -----------------------------------------------------------------------


def memory_report(module: Any, width: int, height: int, *, kind: str = "decoder", budget_gb: Optional[float] = None,
                  device: Optional[torch.device] = None, batch: int = 1) -> Dict[str, Any]:
    """The fp32 peak of decoding (or encoding) a ``width`` x ``height`` image with ``module`` and
    whether the call would run tiled; cheap (arithmetic on the network's structure)."""
    net = vae_networks(module).get(kind)
    if net is None:
        return {"available": False, "reason": f"the VAE has no {kind}"}
    try:
        graph = network_of(net)
    except Unsupported as exc:
        return {"available": False, "reason": f"cannot run tiled: {exc}"}
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        if device.type == "meta":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    up = 2 ** sum(1 for op in graph.ops if isinstance(op, Resample) and op.up)
    shape = (batch, graph.in_channels, max(1, height // up), max(1, width // up)) if kind == "decoder" else \
        (batch, graph.in_channels, height, width)
    chosen = plan(graph, shape, device, native_dtype=vae_weight_dtype(net), cast_bytes=fp32_cast_bytes(net),
                  budget_gb=budget_gb)
    return {"available": True, "size": [width, height], "device": str(device),
            "weights_dtype": str(vae_weight_dtype(net)).replace("torch.", ""), **chosen.estimate.as_dict(),
            "available_bytes": chosen.available,
            "budget_gb": budget_from_env() if budget_gb is None else budget_gb, "tiled": chosen.tiled,
            "sliced": chosen.sliced,
            "strips_on_cpu": chosen.offload, "reason": chosen.reason}
