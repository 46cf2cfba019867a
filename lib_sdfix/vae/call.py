"""The guarded VAE call, shared by both fronts: the VAE in fp32 under the precision guard, sliced or
tiled when that does not fit.

Why: the precision guard runs the VAE in fp32, which doubles its activation memory.  At Hires sizes
(SD1.5 at 1024 px and more, SDXL at 1024-2048 px) an 8-12 GB card then runs out of memory exactly
where SDFix steps in.  Before each fp32 run of the VAE's decoder or encoder the peak memory is
estimated; when it would not fit, the network runs tiled in fp32 (:mod:`lib_sdfix.vae.strips`: strips
with exact halos and whole-image GroupNorm statistics, one image of a batch at a time), which
gives the untiled result.  An out-of-memory error retries tiled before any fallback.

How a front uses it: :func:`guarded_call`, the one guarded VAE call, runs the host's own decode or
encode function (scaling, shifting, clamping, batching and model loading stay the host's) under the
precision guard (:mod:`lib_sdfix.precision`), with autocast off, its tensor arguments in fp32, and

* the VAE's weights outside its encoder and decoder (``quant_conv``, ``post_quant_conv``) in fp32
  for the call (:func:`lib_sdfix.vae.fp32.fp32_vae` with ``parts``),
* its ``decoder`` and ``encoder`` planned -- for the calling thread, for this call -- by a forward
  pre-hook put first (so other pre-hooks see the weights the network runs with) and a replaced
  ``forward``: the network's own forward with its weights cast when the fp32 estimate fits; one
  image of the batch at a time when only one image fits (slicing); else the tiled executor, which
  casts one layer's weights at a time.  An out-of-memory error in the untiled forward retries tiled
  right there, before the host's own code sees it (Forge and reForge would otherwise fall back to
  their own tiling, which has seams).  A structure the executor does not know runs untiled (logged
  once; the audits' :func:`lib_sdfix.vae.plan.memory_report` says why).
* If out of memory escapes the call anyway, the call runs once more with tiling forced; then the
  error goes to the front's own fallback.

The plan is :mod:`lib_sdfix.vae.plan`, from the estimate of :mod:`lib_sdfix.vae.estimate`; the
network's structure :mod:`lib_sdfix.vae.net`; the strip executor :mod:`lib_sdfix.vae.strips`.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lib_sdfix.failsafe import log_once
from lib_sdfix.patching import PatchSet
from lib_sdfix.precision import autocast_disabled, precision_guard
from lib_sdfix.vae.estimate import MIN_STRIP
from lib_sdfix.vae.fp32 import fp32_vae, vae_weight_dtype
from lib_sdfix.vae.net import Network, Unsupported, network_of, vae_networks
from lib_sdfix.vae.plan import Plan, fp32_cast_bytes, plan
from lib_sdfix.vae.strips import run_network

__all__ = ["guarded_call", "Run", "report_run", "is_oom"]


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
    output: Tuple[int, int]  # (height, width) of what the network returned
    how: str  # "untiled", "sliced" (one image of the batch at a time) or "tiled"
    plan: Optional[Plan]
    note: str = ""  # why it ran as it did, when that is worth telling the user

    @property
    def tiled(self) -> bool:
        return self.how == "tiled"

    def describe(self) -> str:
        """The user-facing note, e.g. "VAE decode 1024x1024: tiled in fp32 (fp32 needs ~5.1 GiB, 3.0 GiB
        available)"; "" for a plain untiled run."""
        what = "decode" if self.kind == "decoder" else "encode"
        size = f"{self.output[1]}x{self.output[0]}" if self.kind == "decoder" else ""
        where = f"VAE {what}" + (f" {size}" if size else "")
        if self.how == "untiled":
            return f"{where}: {self.note}" if self.note else ""
        why = "; ".join(t for t in (self.note, self.plan.reason if self.plan else "") if t)
        body = "tiled in fp32" if self.tiled else "one image at a time in fp32"
        return f"{where}: {body}" + (f" ({why})" if why else "")


def report_run(report: Any, run: Run) -> None:
    """Into a :class:`lib_sdfix.failsafe.FixReport`: a tiled run as the fact ``tiled`` ("decode",
    "encode" or "encode,decode": the infotext's ``tiled=decode``), a tiled or sliced one as a note
    saying why."""
    if run.tiled:
        what = "decode" if run.kind == "decoder" else "encode"
        parts = [p for p in report.facts.get("tiled", "").split(",") if p]
        if what not in parts:
            report.fact("tiled", ",".join(parts + [what]))
    text = run.describe()
    if text:
        report.note(text)


class _Call:
    """What one front call asked for, seen by the replaced ``forward`` of its VAE's networks."""

    def __init__(self, module: nn.Module, names: Dict[int, str], exact: Optional[Dict[str, torch.Tensor]],
                 budget_gb: Optional[float], force: bool, record: Optional[Callable[[Run], None]]) -> None:
        self.module, self.names, self.budget_gb, self.force, self.record = module, names, budget_gb, force, record
        self.exact = self._by_parameter(module, exact) if exact else {}
        self.exact_names = exact
        self.decisions: Dict[int, Optional[Tuple[Network, Plan]]] = {}

    @staticmethod
    def _by_parameter(module: nn.Module, exact: Dict[str, torch.Tensor]) -> Dict[int, torch.Tensor]:
        return {id(p): exact[name] for name, p in module.named_parameters() if name in exact}

    def source(self, param: torch.Tensor) -> Optional[torch.Tensor]:
        return None if param.dtype == torch.float32 else self.exact.get(id(param))

    def tell(self, run: Run) -> None:
        if self.record is not None:
            self.record(run)

    def decide(self, net: nn.Module, args: Tuple, kwargs: Dict[str, Any]) -> Optional[Tuple[Network, Plan]]:
        """The plan for this call of ``net`` (None: run it as it is), made once per call: first in the
        pre-hook, which casts the network's weights right away unless it will run tiled -- so other
        pre-hooks (an observer, another extension) see the weights it runs with."""
        key = id(net)
        if key in self.decisions:
            return self.decisions[key]
        self.decisions[key] = None
        extra = [v for v in list(args[1:]) + list(kwargs.values()) if v is not None]
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 4 and not extra:
            try:
                graph = network_of(net)
            except Unsupported as exc:  # untiled as it is; the audit's memory report says why
                log_once(f"tiling:{type(net).__name__}", f"VAE {self.names[key]} cannot run tiled: {exc}")
            else:
                chosen = plan(graph, x.shape, x.device, native_dtype=vae_weight_dtype(net),
                              cast_bytes=fp32_cast_bytes(net), budget_gb=self.budget_gb, force=self.force)
                self.decisions[key] = (graph, chosen)
        return self.decisions[key]

    def before(self, net: nn.Module, args: Tuple, kwargs: Dict[str, Any]) -> None:
        decision = self.decide(net, args, kwargs)
        if decision is None or not decision[1].tiled:
            self._cast(net)

    def _cast(self, net: nn.Module) -> None:
        """The network's weights to fp32 for the rest of the front's call (the call's own fp32 state
        holds them; it restores them when the call ends)."""
        with fp32_vae(self.module, exact=self.exact_names, parts=[self.names[id(net)]]):
            pass

    def forward(self, net: nn.Module, original: Callable[..., Any], args: Tuple, kwargs: Dict[str, Any]) -> Any:
        decision = self.decide(net, args, kwargs)
        self.decisions.pop(id(net), None)  # the next call of the network plans afresh
        if decision is None:
            return self._untiled(net, original, args, kwargs)
        graph, chosen = decision
        x = args[0]
        kind = "decoder" if self.names[id(net)] == "decoder" else "encoder"
        note = ""
        if not chosen.tiled:
            try:
                if chosen.sliced:
                    out = torch.cat([self._untiled(net, original, (x[i:i + 1],), {}) for i in range(x.shape[0])])
                else:
                    out = self._untiled(net, original, args, kwargs)
                self.tell(Run(kind, tuple(out.shape[-2:]), chosen.how, chosen))
                return out
            except Exception as exc:
                if not is_oom(exc):
                    raise
                exc.__traceback__ = None  # its frames hold the untiled activations
            _release_memory()
            chosen = plan(graph, x.shape, x.device, native_dtype=vae_weight_dtype(net), budget_gb=self.budget_gb,
                          force=True)
            note = "out of memory untiled"
        out = self._tiled(graph, x, chosen)
        self.tell(Run(kind, tuple(out.shape[-2:]), "tiled", chosen, note))
        return out

    def _untiled(self, net: nn.Module, original: Callable[..., Any], args: Tuple, kwargs: Dict[str, Any]) -> Any:
        args = tuple(_to_fp32(a) for a in args)
        with fp32_vae(self.module, exact=self.exact_names, parts=[self.names[id(net)]]), autocast_disabled():
            return original(*args, **kwargs)

    def _tiled(self, graph: Network, x: torch.Tensor, chosen: Plan) -> torch.Tensor:
        """The executor, with smaller strips (and then strips on the CPU) while it runs out of memory."""
        attempts = [(chosen.strip_bytes, chosen.offload), (max(MIN_STRIP // 4, chosen.strip_bytes // 8), chosen.offload)]
        if x.device.type != "cpu" and not chosen.offload:
            attempts.append((MIN_STRIP, True))
        for i, (strip, offload) in enumerate(attempts):
            try:
                store = torch.device("cpu") if offload else None
                return run_network(graph, x, strip_bytes=strip, store=store, source=self.source)
            except Exception as exc:
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


def _pre_hook(net: nn.Module) -> Callable[..., None]:
    key = id(net)

    def hook(module: nn.Module, args: Tuple, kwargs: Dict[str, Any]) -> None:
        calls = _active().get(key)
        if calls:
            calls[-1].before(net, args, kwargs)

    return hook


@contextlib.contextmanager
def _planned(call: _Call, nets: Dict[str, nn.Module]) -> Iterator[None]:
    active = _active()
    hooks = []
    for net in nets.values():
        _PATCHES.acquire(net, "forward", _replacement(net))
        hooks.append(net.register_forward_pre_hook(_pre_hook(net), prepend=True, with_kwargs=True))
        active.setdefault(id(net), []).append(call)
    try:
        yield
    finally:
        for handle in hooks:
            handle.remove()
        for net in nets.values():
            stack = active.get(id(net), [])
            if call in stack:
                stack.remove(call)
            if not stack:
                active.pop(id(net), None)
            _PATCHES.release(net, "forward")


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.to(torch.float32)
    return value


def guarded_call(fn: Callable[..., Any], vae: Any, *args: Any, upcast: bool = True,
                 exact: Optional[Dict[str, torch.Tensor]] = None, dtype_attrs: Sequence[Tuple[Any, str]] = (),
                 tiling: Optional[bool] = None, budget_gb: Optional[float] = None,
                 record: Optional[Callable[[Run], None]] = None, record_weights: Optional[Callable[[str], None]] = None,
                 **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` -- a host's or library's own VAE decode or encode -- under the precision
    guard; returns what ``fn`` returns.

    With ``upcast`` the VAE ``vae`` runs in fp32 (:func:`lib_sdfix.vae.fp32.fp32_vae`, with ``exact``
    weights and ``dtype_attrs`` where given), autocast off, and floating tensor arguments (the latent,
    the image) upcast to fp32.  Its decoder and encoder, with ``tiling`` None: untiled, one image at a
    time or tiled as the estimate says (within ``budget_gb`` GiB; None: ``SDFIX_VAE_MEMORY_GB``), and
    the whole call once more tiled if out of memory escapes it; True: always tiled; False: the VAE
    as it is, never planned nor retried.  A VAE without them (or of a structure the executor does not
    know) runs untiled.  ``record`` gets a :class:`Run` for each planned network
    call, ``record_weights`` how the weights ran ("exact", "upcast" or "fp32") once ``fn`` returned.
    Without ``upcast`` only the flags are guarded.
    """
    with precision_guard():
        if not upcast:
            return fn(*args, **kwargs)
        with autocast_disabled():
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
            result, weights = _fp32_call(lambda: fn(*args, **kwargs), vae, dtype_attrs, exact, tiling, budget_gb,
                                         record)
            if record_weights is not None:
                record_weights(weights)
            return result


def _fp32_call(call: Callable[[], Any], module: Any, dtype_attrs: Sequence[Tuple[Any, str]],
               exact: Optional[Dict[str, torch.Tensor]], tiling: Optional[bool], budget_gb: Optional[float],
               record: Optional[Callable[[Run], None]]) -> Tuple[Any, str]:
    """``call()`` with the VAE in fp32 and its networks planned as :func:`guarded_call` says; the
    result and how the weights ran."""
    if tiling is False:
        with fp32_vae(module, dtype_attrs, exact) as weights:
            return call(), weights
    nets = vae_networks(module)
    parts: Optional[List[str]] = None
    if nets:
        parts = [name for name, _ in module.named_children() if name not in nets]
        parts += [name for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))]
    names = {id(net): name for name, net in nets.items()}
    error: Optional[BaseException] = None
    for forced in dict.fromkeys((bool(tiling and nets), True)):  # no networks: nothing to tile
        if forced and not nets:
            break
        try:
            with fp32_vae(module, dtype_attrs, exact, parts=parts) as weights, \
                    _planned(_Call(module, names, exact, budget_gb, forced, record), nets):
                return call(), weights
        except Exception as exc:
            if not is_oom(exc):
                raise
            exc.__traceback__ = None
            error = exc
        _release_memory()
    raise error
