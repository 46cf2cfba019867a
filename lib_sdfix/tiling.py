"""Tiled and sliced fp32 VAE calls, shared by both fronts.

Why: the precision guard runs the VAE in fp32, which doubles its activation memory.  At Hires sizes
(SD1.5 at 1024 px and more, SDXL at 1024-2048 px) an 8-12 GB card then runs out of memory exactly
where SDFix steps in.  Before each fp32 run of the VAE's decoder or encoder the peak memory is
estimated; when it would not fit, the network runs tiled in fp32 (:mod:`lib_sdfix.vae_net`: strips
with exact halos and whole-image GroupNorm statistics, one image of a batch at a time), which
gives the untiled result.  An out-of-memory error retries tiled before any fallback.

How a front uses it: :func:`fp32_call` runs the host's own decode or encode function (scaling,
shifting, clamping, batching and model loading stay the host's) with

* the VAE's weights outside its encoder and decoder (``quant_conv``, ``post_quant_conv``) in fp32
  for the call (:func:`lib_sdfix.fp32_vae.fp32_vae` with ``parts``),
* the ``forward`` of its ``decoder`` and ``encoder`` replaced -- for the calling thread, for this
  call -- by one that plans: the network's own forward with its weights cast when the estimate
  fits, the tiled executor otherwise.  An out-of-memory error in the untiled forward retries tiled
  right there, before the host's own code sees it (Forge and reForge would otherwise fall back to
  their own tiling, which has seams).  A structure the executor does not know runs untiled, and
  the front is told why.
* If out of memory escapes the call anyway, the call runs once more with tiling forced; then the
  error goes to the front's own fallback.

The estimate (bytes) walks the network's operations: for each, the elements its untiled forward
holds at once (a ResnetBlock: its input and two or three input-sized temporaries at the first
activation, or input + output-sized tensors at the residual add; attention: six; an upsampler: the
input, its 2x copy and the convolution's output), times the batch and the dtype's size, times
1.25 for the kernels' own buffers, plus 64 MiB; the fp32 run adds its cast weights.  The tiled
estimate is what the executor keeps (a block's input and output-sized tensors, one image) plus
five strips and the largest layer's weights.  ``bench/vae_memory.py`` measures both.
"""
from __future__ import annotations

import contextlib
import gc
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lib_sdfix.patching import PatchSet
from lib_sdfix.vae_net import (Attention, Conv, Exit, Network, Resample, Resnet, Unsupported, network_of, resampled_size,
                               run_network)

__all__ = ["Estimate", "Plan", "Run", "estimate", "plan", "free_memory", "available_memory", "is_oom",
           "fp32_call", "guarded_call", "networks_of", "network", "memory_report", "GIB"]

GIB = 1024 ** 3
_MIB = 1024 ** 2
_KERNELS = 1.25  # convolution kernels' own buffers (oneDNN reorders, cuDNN workspace), measured on the CPU
_SLACK = 64 * _MIB
_FREE_SHARE = 0.9  # of the free memory a call may plan for (the allocator fragments the rest)
_MIN_STRIP = 4 * _MIB
_NETWORKS = ("decoder", "encoder")


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


def _walk(net: Network, height: int, width: int) -> Iterator[Tuple[Any, int, int, int, int, int, int]]:
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
    largest = max(4 * widest * pout for _, _, _, _, pout, widest, _ in _walk(net, height, width))
    cap = 32 * _MIB if device.type == "cpu" else 512 * _MIB
    return int(min(cap, max(_MIN_STRIP, largest // 16)))


def estimate(net: Network, shape: Sequence[int], native_dtype: torch.dtype, *, cast_bytes: int = 0,
             strip_bytes: Optional[int] = None, device: Optional[torch.device] = None) -> Estimate:
    """The peak memory of running ``net`` on an input of ``shape``: untiled in ``native_dtype`` and in
    fp32 (plus ``cast_bytes`` of weights cast for it), and tiled in fp32 (one image at a time)."""
    batch, _, height, width = (int(v) for v in shape)
    device = device or torch.device("cpu")
    strip = int(strip_bytes or default_strip_bytes(net, height, width, device))
    untiled = tiled = 0
    for op, cin, cout, pin, pout, _, _ in _walk(net, height, width):
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


# --- free memory and the plan -----------------------------------------------------------------------


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


def available_memory(device: torch.device, budget_gb: float = 0.0) -> Optional[int]:
    """What a VAE call may plan to use on ``device``: 90 % of the free memory, and no more than
    ``budget_gb`` when that is set (0: automatic).  None when neither is known."""
    free = free_memory(device)
    share = None if free is None else int(free * _FREE_SHARE)
    if budget_gb and budget_gb > 0:
        budget = int(budget_gb * GIB)
        return budget if share is None else min(budget, share)
    return share


@dataclass(frozen=True)
class Plan:
    tiled: bool
    estimate: Estimate
    available: Optional[int]
    strip_bytes: int
    offload: bool = False  # strips wait on the CPU between operations
    reason: str = ""


def plan(net: Network, shape: Sequence[int], device: torch.device, *, native_dtype: torch.dtype,
         cast_bytes: int = 0, budget_gb: float = 0.0, force: bool = False,
         available: Optional[int] = None) -> Plan:
    """Untiled when the fp32 estimate fits what is available (or nothing is known), else tiled with
    the largest strips that fit -- with the strips waiting on the CPU when even the kept tensors do
    not fit the device."""
    if available is None:
        available = available_memory(device, budget_gb)
    height, width = int(shape[2]), int(shape[3])
    strip = default_strip_bytes(net, height, width, device)
    est = estimate(net, shape, native_dtype, cast_bytes=cast_bytes, strip_bytes=strip, device=device)
    if not force and (available is None or est.fp32 <= available):
        why = "free memory unknown" if available is None else "fits"
        return Plan(False, est, available, strip, reason=why)
    why = "forced" if force else f"fp32 needs ~{est.fp32 / GIB:.2f} GiB, {available / GIB:.2f} GiB available"
    if available is None or est.tiled <= available:
        return Plan(True, est, available, strip, reason=why)
    kept = est.tiled - 5 * strip
    room = (available - kept) // 5
    if room >= _MIN_STRIP:
        strip = int(min(strip, room))
        return Plan(True, replace(est, tiled=kept + 5 * strip, strip_bytes=strip), available, strip, reason=why)
    offload = device.type != "cpu"
    if offload:
        room = (available - (est.tiled_offloaded - 5 * strip)) // 5
        strip = int(max(_MIN_STRIP // 4, min(strip, room)))
    else:
        strip = _MIN_STRIP
    return Plan(True, replace(est, strip_bytes=strip), available, strip, offload,
                why + ("; strips kept on the CPU" if offload else "; may still run out of memory"))


# --- which networks a VAE has ---------------------------------------------------------------------

_NETS: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()


def network(net: nn.Module) -> Network:
    """:func:`lib_sdfix.vae_net.network_of`, cached per module (raises Unsupported likewise)."""
    found = _NETS.get(net)
    if found is None:
        try:
            found = network_of(net)
        except Unsupported as exc:
            found = exc
        _NETS[net] = found
    if isinstance(found, Unsupported):
        raise found
    return found


def networks_of(module: Any) -> Dict[str, nn.Module]:
    """The VAE's ``decoder`` and ``encoder`` modules (by attribute; either may be missing)."""
    found = {}
    for name in _NETWORKS:
        child = getattr(module, name, None) if isinstance(module, nn.Module) else None
        if isinstance(child, nn.Module) and module._modules.get(name) is child:
            found[name] = child
    return found


def _low_precision_bytes(net: nn.Module) -> int:
    return sum(4 * p.numel() for p in net.parameters() if p.is_floating_point() and p.dtype != torch.float32)


def _weight_dtype(net: nn.Module) -> torch.dtype:
    return next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)


# --- out of memory ----------------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means an allocation failed (CUDA, MPS or the CPU allocator)."""
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                  if isinstance(k, type))
    if isinstance(exc, kinds + (MemoryError,)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- one guarded call ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """How one network call of a guarded VAE call ran (handed to the front's ``record``)."""

    kind: str  # "decoder" or "encoder"
    output: Tuple[int, int]
    tiled: bool
    plan: Optional[Plan]
    note: str = ""  # why it ran as it did, when that is worth telling the user


class _Call:
    """What one front call asked for, seen by the replaced ``forward`` of its VAE's networks."""

    def __init__(self, module: nn.Module, names: Dict[int, str], exact: Optional[Dict[str, torch.Tensor]],
                 budget_gb: float, force: bool, record: Optional[Callable[[Run], None]]) -> None:
        self.module, self.names, self.budget_gb, self.force, self.record = module, names, budget_gb, force, record
        self.exact = self._by_parameter(module, exact) if exact else {}
        self.exact_names = exact

    @staticmethod
    def _by_parameter(module: nn.Module, exact: Dict[str, torch.Tensor]) -> Dict[int, torch.Tensor]:
        return {id(p): exact[name] for name, p in module.named_parameters() if name in exact}

    def source(self, param: torch.Tensor) -> Optional[torch.Tensor]:
        return None if param.dtype == torch.float32 else self.exact.get(id(param))

    def tell(self, run: Run) -> None:
        if self.record is not None:
            self.record(run)

    def forward(self, net: nn.Module, original: Callable[..., Any], args: Tuple, kwargs: Dict[str, Any]) -> Any:
        extra = [v for v in list(args[1:]) + list(kwargs.values()) if v is not None]
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or extra:
            return self._untiled(net, original, args, kwargs)
        kind = "decoder" if self.names[id(net)] == "decoder" else "encoder"
        try:
            graph = network(net)
        except Unsupported as exc:
            out = self._untiled(net, original, args, kwargs)
            self.tell(Run(kind, tuple(out.shape[-2:]), False, None, f"cannot run tiled: {exc}"))
            return out
        chosen = plan(graph, x.shape, x.device, native_dtype=_weight_dtype(net), cast_bytes=_low_precision_bytes(net),
                      budget_gb=self.budget_gb, force=self.force)
        note = ""
        if not chosen.tiled:
            try:
                out = self._untiled(net, original, args, kwargs)
                self.tell(Run(kind, tuple(out.shape[-2:]), False, chosen))
                return out
            except Exception as exc:  # noqa: BLE001 -- only out of memory is handled
                if not is_oom(exc):
                    raise
                exc.__traceback__ = None  # its frames hold the untiled activations
            _release_memory()
            chosen = plan(graph, x.shape, x.device, native_dtype=_weight_dtype(net), budget_gb=self.budget_gb, force=True)
            note = "out of memory untiled"
        out = self._tiled(graph, x, chosen)
        self.tell(Run(kind, tuple(out.shape[-2:]), True, chosen, note))
        return out

    def _untiled(self, net: nn.Module, original: Callable[..., Any], args: Tuple, kwargs: Dict[str, Any]) -> Any:
        from lib_sdfix.fp32_vae import fp32_vae
        from lib_sdfix.precision import autocast_disabled

        args = tuple(a.to(torch.float32) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        with fp32_vae(self.module, exact=self.exact_names, parts=[self.names[id(net)]]), autocast_disabled():
            return original(*args, **kwargs)

    def _tiled(self, graph: Network, x: torch.Tensor, chosen: Plan) -> torch.Tensor:
        """The executor, with smaller strips (and then strips on the CPU) while it runs out of memory."""
        attempts = [(chosen.strip_bytes, chosen.offload), (max(_MIN_STRIP // 4, chosen.strip_bytes // 8), chosen.offload)]
        if x.device.type != "cpu" and not chosen.offload:
            attempts.append((_MIN_STRIP, True))
        for i, (strip, offload) in enumerate(attempts):
            try:
                store = torch.device("cpu") if offload else None
                return run_network(graph, x, strip_bytes=strip, store=store, source=self.source)
            except Exception as exc:  # noqa: BLE001 -- only out of memory is retried
                if not is_oom(exc) or i == len(attempts) - 1:
                    raise
                exc.__traceback__ = None
            _release_memory()
        raise AssertionError("unreachable")


_LOCAL = threading.local()
_PATCHES = PatchSet()


def _active() -> Dict[int, List[_Call]]:
    active = getattr(_LOCAL, "calls", None)
    if active is None:
        active = _LOCAL.calls = {}
    return active


def _replacement(net: nn.Module) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    key = id(net)

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            calls = _active().get(key)
            if not calls:  # another thread, or no guarded call: the network as it is
                return original(*args, **kwargs)
            return calls[-1].forward(net, original, args, kwargs)

        return forward

    return make


@contextlib.contextmanager
def _planned(call: _Call, nets: Dict[str, nn.Module]) -> Iterator[None]:
    active = _active()
    for net in nets.values():
        _PATCHES.acquire(net, "forward", _replacement(net))
        active.setdefault(id(net), []).append(call)
    try:
        yield
    finally:
        for net in nets.values():
            stack = active.get(id(net), [])
            if call in stack:
                stack.remove(call)
            if not stack:
                active.pop(id(net), None)
            _PATCHES.release(net, "forward")


def fp32_call(call: Callable[[], Any], module: Any, *, dtype_attrs: Sequence[Tuple[Any, str]] = (),
              exact: Optional[Dict[str, torch.Tensor]] = None, budget_gb: float = 0.0,
              record: Optional[Callable[[Run], None]] = None, force: bool = False) -> Tuple[Any, str]:
    """``call()`` -- a host's or library's own VAE decode/encode -- with the VAE in fp32, its encoder
    and decoder planned (untiled, or tiled when the estimate does not fit; always tiled with
    ``force``), and once more with tiling forced if it still runs out of memory.  Returns the result
    and how the weights ran ("exact", "upcast" or "fp32").  Run it inside the precision guard."""
    from lib_sdfix.fp32_vae import fp32_vae

    nets = networks_of(module)
    parts: Optional[List[str]] = None
    if nets:
        parts = [name for name, _ in module.named_children() if name not in nets]
        parts += [name for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))]
    names = {id(net): name for name, net in nets.items()}
    error: Optional[BaseException] = None
    for forced in dict.fromkeys((force, True)):
        if forced and not nets:
            break
        try:
            with fp32_vae(module, dtype_attrs, exact, parts=parts) as weights, \
                    _planned(_Call(module, names, exact, budget_gb, forced, record), nets):
                return call(), weights
        except Exception as exc:  # noqa: BLE001 -- only out of memory is retried
            if not is_oom(exc):
                raise
            exc.__traceback__ = None
            error = exc
        _release_memory()
    raise error


def guarded_call(fn: Callable[..., Any], vae: Any, *args: Any, upcast: bool = True,
                 exact: Optional[Dict[str, torch.Tensor]] = None, dtype_attrs: Sequence[Tuple[Any, str]] = (),
                 budget_gb: float = 0.0, record: Optional[Callable[[Run], None]] = None, force: bool = False,
                 **kwargs: Any) -> Any:
    """:func:`lib_sdfix.fp32_vae.guarded_vae_call` with the networks planned and tiled as needed."""
    from lib_sdfix.fp32_vae import guarded_vae_call
    from lib_sdfix.precision import autocast_disabled, precision_guard

    if not upcast:
        return guarded_vae_call(fn, vae, *args, upcast=False, **kwargs)
    with precision_guard(), autocast_disabled():
        args = tuple(a.to(torch.float32) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        kwargs = {k: v.to(torch.float32) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in kwargs.items()}
        return fp32_call(lambda: fn(*args, **kwargs), vae, exact=exact, dtype_attrs=dtype_attrs, budget_gb=budget_gb,
                         record=record, force=force)[0]


# --- what the audits report -----------------------------------------------------------------------


def memory_report(module: Any, width: int, height: int, *, kind: str = "decoder", budget_gb: float = 0.0,
                  device: Optional[torch.device] = None, batch: int = 1) -> Dict[str, Any]:
    """The fp32 peak of decoding (or encoding) a ``width`` x ``height`` image with ``module`` and
    whether the call would run tiled; cheap (arithmetic on the network's structure)."""
    net = networks_of(module).get(kind)
    if net is None:
        return {"available": False, "reason": f"the VAE has no {kind}"}
    try:
        graph = network(net)
    except Unsupported as exc:
        return {"available": False, "reason": f"cannot run tiled: {exc}"}
    if device is None:
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        if device.type == "meta":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    up = 2 ** sum(1 for op in graph.ops if isinstance(op, Resample) and op.up)
    shape = (batch, graph.in_channels, max(1, height // up), max(1, width // up)) if kind == "decoder" else \
        (batch, graph.in_channels, height, width)
    chosen = plan(graph, shape, device, native_dtype=_weight_dtype(net), cast_bytes=_low_precision_bytes(net),
                  budget_gb=budget_gb)
    return {"available": True, "size": [width, height], "device": str(device),
            "weights_dtype": str(_weight_dtype(net)).replace("torch.", ""), **chosen.estimate.as_dict(),
            "available_bytes": chosen.available, "budget_gb": budget_gb, "tiled": chosen.tiled,
            "strips_on_cpu": chosen.offload, "reason": chosen.reason}
