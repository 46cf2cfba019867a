"""Cause ``vae_precision``: the VAE's decode and encode under the precision guard, the VAE in fp32 for
the call.

The fp32 call is :func:`lib_sdfix.vae.call.guarded_call` -- the VAE cast in place for the call,
no second VAE -- except where accelerate's offload hooks own the weights (sequential or disk
offload): there an fp32 copy built from the offload weights map runs instead
(:mod:`lib_sdfix.diffusers.vae_copy`), so the offloaded VAE is never touched.  Both run through
:mod:`lib_sdfix.vae.call`, as the WebUI front does: the fp32 decoder/encoder untiled, one image at a
time or tiled as the memory estimate says, and tiled when out of memory; only then the VAE's own
dtype, flags still guarded.  (diffusers' own ``enable_tiling`` blends independent tiles, with their
own GroupNorm statistics: it is not used here.)
"""
from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from lib_sdfix.diffusers.causes import CAUSES, Finding, dtype_name
from lib_sdfix.diffusers.offload import weight_offload_hooks
from lib_sdfix.diffusers.state import Hardening, component, last_hires_size, unwrap_method, wrap_method
from lib_sdfix.diffusers.vae_copy import Fp32Copy, NoFp32Copy, cast_floating, first_floating_dtype
from lib_sdfix.failsafe import FixReport
from lib_sdfix.settings import SDFixSettings

__all__ = ["guard_vae", "unguard_vae", "find_vae_precision", "vae_memory", "VaeGuard"]

_GUARD_ATTR = "_sdfix_vae_guard"
_KINDS = ("decode", "encode")


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _networks_known(vae: Any) -> bool:
    """Whether the tiled executor can run this VAE's decoder/encoder."""
    from lib_sdfix.vae.net import Unsupported, network_of, vae_networks

    try:
        return bool([network_of(net) for net in vae_networks(vae).values()])
    except Unsupported:
        return False


def _has_reduced_precision(vae: Any) -> bool:
    import torch

    tensors = list(vae.parameters()) + list(vae.buffers())
    return any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors)


class VaeGuard(Hardening):
    """The guarded ``decode``/``encode`` of one VAE object (shared by both pipelines of a pair), and
    its fp32 copy while accelerate's offload hooks own the weights."""

    def __init__(self, vae: Any, options: SDFixSettings, fixes: Iterable[str], report: FixReport) -> None:
        super().__init__(options, fixes, report)
        self.vae_ref = weakref.ref(vae)
        self.fp32: Optional[Fp32Copy] = None
        self.fp32_lock = threading.RLock()

    def active(self, kind: str) -> bool:
        """Whether the ``kind`` ("decode" or "encode") call runs guarded now."""
        return self.on("vae_precision", kind)

    def call(self, kind: str, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        vae = self.vae_ref()
        if vae is None or not self.active(kind):
            return original(*args, **kwargs)
        return self.report.run(
            f"vae_{kind}",
            lambda: self._guarded(kind, original, vae, args, kwargs),
            lambda: original(*args, **kwargs),
        )

    def _guarded(self, kind: str, original: Callable[..., Any], vae: Any, args: Tuple, kwargs: Dict[str, Any]) -> Any:
        from lib_sdfix.vae.call import is_oom

        upcast = self.options.upcast
        in_dtype = first_floating_dtype(args, kwargs)
        try:
            out = self._invoke(kind, original, vae, upcast, args, kwargs)
        except Exception as exc:
            if not is_oom(exc):
                raise
            exc.__traceback__ = None  # its frames hold the activations
            out = self._after_oom(exc, kind, original, vae, upcast, args, kwargs)
        if kind == "encode" and in_dtype is not None:
            # The pipeline goes on in the dtype it passed in (an fp16 UNet cannot take fp32 latents);
            # the encoder's math ran in fp32.
            out = cast_floating(out, in_dtype)
        return out

    def _after_oom(self, error: BaseException, kind: str, original: Callable[..., Any], vae: Any, upcast: bool,
                   args: Tuple, kwargs: Dict[str, Any]) -> Any:
        """The VAE call did not fit.  In fp32 the tiled retry has already run (:mod:`lib_sdfix.vae.call`):
        the VAE's own dtype is left, flags still guarded.  In the VAE's own dtype (``vae_dtype=auto``):
        tiled in fp32, which needs less memory than the untiled half-precision call."""
        from lib_sdfix.vae.call import guarded_call, report_run

        _free_device_memory()
        if upcast:
            out = guarded_call(original, vae, *args, upcast=False, **kwargs)
            self.report.note(f"VAE {kind}: out of memory in fp32 (tiled too), ran in the VAE's own dtype "
                             "(flags still guarded)")
            return out
        if not _networks_known(vae):
            raise error
        out = guarded_call(original, vae, *args, tiling=True, record=lambda run: report_run(self.report, run), **kwargs)
        self.report.note(f"VAE {kind}: out of memory in the VAE's own dtype, ran tiled in fp32")
        return out

    def _invoke(self, kind: str, original: Callable[..., Any], vae: Any, upcast: bool, args: Tuple,
                kwargs: Dict[str, Any]) -> Any:
        """One guarded call: the VAE cast in place for the call, or -- where accelerate's offload
        hooks own its weights -- its fp32 copy, so the offloaded VAE is never touched; tiled as
        :mod:`lib_sdfix.vae.call` plans."""
        from lib_sdfix.vae.call import guarded_call, report_run

        record = lambda run: report_run(self.report, run)  # noqa: E731
        hooks = weight_offload_hooks(vae)
        if not hooks:
            self.fp32 = None
        if not (upcast and hooks and _has_reduced_precision(vae)):
            return guarded_call(original, vae, *args, upcast=upcast, record=record, **kwargs)
        with self.fp32_lock:  # one call at a time moves the shared copy
            try:
                fp32 = self._fp32_copy(vae, hooks)
            except NoFp32Copy as exc:
                self.report.note(f"VAE {kind}: offloaded weights, {exc}: ran in the VAE's own dtype (flags still guarded)")
                return guarded_call(original, vae, *args, upcast=False, **kwargs)
            fp32.follow(vae)
            return fp32.call(kind, args, kwargs, record=record)

    def _fp32_copy(self, vae: Any, hooks: Sequence[Tuple[str, Any, Any]]) -> Fp32Copy:
        if self.fp32 is None or not self.fp32.matches(hooks):
            self.fp32 = None
            self.fp32 = Fp32Copy(vae, hooks)
            self.report.note("VAE: weights offloaded by accelerate; decode/encode run on an fp32 copy "
                             "built from the offload weights (kept on the CPU)")
        return self.fp32


def _guarded_method(vae: Any, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The factory of the wrapper around ``vae.<kind>``: it asks the VAE's guard at call time, so a
    wrapper left in place (another library's wrapper on top of it) follows a later hardening."""
    vae_ref = weakref.ref(vae)

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            guard = getattr(vae_ref(), _GUARD_ATTR, None)
            return original(*args, **kwargs) if guard is None else guard.call(kind, original, *args, **kwargs)

        return guarded

    return make


def guard_vae(vae: Any, options: Optional[SDFixSettings] = None, *, report: Optional[FixReport] = None,
              fixes: Iterable[str] = CAUSES) -> FixReport:
    """Run ``vae.decode`` (and ``vae.encode``) under the precision guard; idempotent.

    The VAE object may be shared by several pipelines: it is wrapped once and every pipeline
    benefits.  Options are read at call time, so hardening again with other options just updates
    them.  Returns the report the guard writes to (fallbacks on out-of-memory are noted there).
    """
    options = options or SDFixSettings()
    guard = getattr(vae, _GUARD_ATTR, None)
    if guard is None:
        guard = VaeGuard(vae, options, fixes, report or FixReport())
        object.__setattr__(vae, _GUARD_ATTR, guard)
    else:
        guard.options, guard.fixes = options, frozenset(fixes)
        if report is not None:
            guard.report = report
    for kind in _KINDS:
        if hasattr(vae, kind):
            wrap_method(vae, kind, _guarded_method(vae, kind))
    return guard.report


def unguard_vae(vae: Any) -> None:
    """Remove the guard from ``vae`` (any module: one that was never guarded is left as it is)."""
    for kind in _KINDS:
        unwrap_method(vae, kind)
    if _GUARD_ATTR in vae.__dict__:
        object.__delattr__(vae, _GUARD_ATTR)


def find_vae_precision(pipes: Sequence[Any]) -> Finding:
    """The VAE's precision, with the fp32 decode's estimated peak at the Hires size and whether it
    would run tiled (``extra["fp32_memory"]``)."""
    found = _precision(pipes)
    memory = vae_memory(pipes)
    if not memory.get("available"):
        return Finding(found.cause, found.present, found.detail, {"fp32_memory": memory})
    width, height = memory["size"]
    text = (f"fp32 decode at {width}x{height} ({memory['size_source']}): ~{memory['fp32_bytes'] / 2 ** 30:.2f} GiB, "
            + ("tiled" if memory["tiled"] else "untiled"))
    return Finding(found.cause, found.present, f"{found.detail}; {text}", {"fp32_memory": memory})


def vae_memory(pipes: Sequence[Any], size: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
    """:func:`lib_sdfix.vae.plan.memory_report` for the pipelines' VAE at ``size`` -- default: the last
    Hires pass's size, else twice the pipeline's default size -- on their execution device."""
    from lib_sdfix.vae.plan import memory_report

    vae = component(pipes, "vae")
    if vae is None:
        return {"available": False, "reason": "no VAE"}
    source = "given"
    if size is None:
        size, source = last_hires_size(pipes[0]) if pipes else None, "last Hires pass"
    if size is None:
        unet = component(pipes, "unet")
        sample = getattr(getattr(unet, "config", None), "sample_size", None) or 64
        scale = getattr(pipes[0], "vae_scale_factor", 8) if pipes else 8
        side = 2 * int(sample if isinstance(sample, int) else sample[0]) * int(scale)
        size, source = (side, side), "Hires 2x of the default size (no Hires pass seen yet)"
    device = next((d for d in (getattr(p, "_execution_device", None) for p in pipes) if d is not None), None)
    try:
        return {**memory_report(vae, size[0], size[1], device=device), "size_source": source}
    except Exception as exc:  # noqa: BLE001 -- an audit must answer
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}


def _precision(pipes: Sequence[Any]) -> Finding:
    import torch

    from lib_sdfix.precision import read_flags
    from lib_sdfix.vae.fp32 import vae_weight_dtype

    vae = component(pipes, "vae")
    if vae is None:
        return Finding("vae_precision", False, "no VAE")
    guard = getattr(vae, _GUARD_ATTR, None)
    dtype = vae_weight_dtype(vae)
    half = dtype != torch.float32
    if guard is not None and guard.active("decode"):
        if half and not guard.options.upcast:
            return Finding("vae_precision", True, f"decode guarded, but vae_dtype=auto keeps the {dtype_name(dtype)} VAE")
        what = "decode" + (" and encode" if guard.active("encode") else "")
        return Finding("vae_precision", False, what + " run under the precision guard in fp32")
    flags = read_flags()
    reduced = [name for name in ("cudnn.allow_tf32", "cuda.matmul.allow_tf32") if flags.get(name) is True]
    if not reduced:  # torch >= 2.9 driven through the fp32_precision strings only
        reduced = [f"{name}={value}" for name, value in flags.items() if name.endswith("fp32_precision") and value == "tf32"]
    reduced += ["cudnn.benchmark"] if flags.get("cudnn.benchmark") is True else []
    problems = []
    if half:
        problems.append(f"VAE weights in {dtype_name(dtype)}")
    inert = ""
    if reduced and torch.cuda.is_available():
        problems.append(", ".join(reduced) + " on")
    elif reduced:
        inert = f" ({', '.join(reduced)} on, inert without CUDA)"
    if not problems:
        return Finding("vae_precision", False, "fp32 VAE" + (inert or " and no TF32 / cuDNN autotuning flags on"))
    return Finding("vae_precision", True, "decode unguarded; " + "; ".join(problems) + inert)
