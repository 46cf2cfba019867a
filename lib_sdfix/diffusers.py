"""diffusers front: find and fix the five "oil painting" causes of a txt2img + img2img service.

Why: many people run Stable Diffusion through diffusers rather than the WebUI, and the first seed
is exactly such a service (SD1.5 fp16, two pipelines sharing components, CPU offload, Hires.fix
through RealESRGAN).  The same core that protects the WebUI protects them:

====================  =====================================================================
cause                 what :func:`harden` does
====================  =====================================================================
vae_precision         VAE decode/encode under the precision guard, VAE in fp32 for the call
                      (cast in place, no second VAE; with sequential/disk offload an fp32 copy
                      built from accelerate's weights map), tiled decode when fp32 runs out of memory
embeds_dtype          prompt embeddings (also Compel's, also from an fp32 text encoder) cast
                      to the UNet's dtype and the pipeline's execution device
offload_hooks         one CPU-offload hook chain shared by both pipelines instead of two
                      competing (diffusers >= 0.28) or stacked (<= 0.27) ones
scheduler_mismatch    the img2img pipeline gets the txt2img scheduler's class and config
hires_resize          :func:`hires_fix` resizes the upscaler's output once, with LANCZOS
====================  =====================================================================

:func:`audit` says which causes a pipeline pair has.  Everything heavy (torch, diffusers,
accelerate, spandrel) is imported inside functions, so importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.util
import sys
import threading
import time
import types
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from lib_sdfix.resize import resize_after_upscale, upscaler_passes
from lib_sdfix.failsafe import FixReport, logger
from lib_sdfix.settings import SDFixSettings

__all__ = [
    "CAUSES",
    "CAUSE_TITLES",
    "Finding",
    "Audit",
    "HardenReport",
    "audit",
    "harden",
    "unharden",
    "fix_report",
    "guard_vae",
    "cast_prompt_embeds",
    "share_offload_chain",
    "share_scheduler",
    "HiresResult",
    "hires_fix",
    "Upscaler",
    "UpscalerUnavailable",
    "load_upscaler",
]

CAUSES: Tuple[str, ...] = ("vae_precision", "embeds_dtype", "offload_hooks", "scheduler_mismatch", "hires_resize")

CAUSE_TITLES: Dict[str, str] = {
    "vae_precision": "VAE decode/encode in reduced precision (TF32, cuDNN autotuning, half-precision VAE)",
    "embeds_dtype": "prompt embeddings reach the UNet in another dtype",
    "offload_hooks": "CPU-offload hooks registered twice on shared modules",
    "scheduler_mismatch": "img2img / Hires pass runs another scheduler or schedule",
    "hires_resize": "blurring or repeated resize after the upscaler",
}

#: The filter :func:`hires_fix` uses when the post-resize fix is off: what hand-written Hires code
#: (and the seed's service) does, kept so that an A/B run can show the difference.
UNFIXED_RESIZE_FILTER = "BILINEAR"

_STATE_ATTR = "_sdfix_state"
_VAE_ATTR = "_sdfix_vae_guard"
_LAST_HIRES_ATTR = "_sdfix_last_hires_resize"
_WRAPPED_MARK = "__sdfix_wraps__"
_PREVIOUS_MARK = "__sdfix_previous__"
_NOTHING = object()


# --- audit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One cause: present (True), absent (False) or not observable (None), and the evidence."""

    cause: str
    present: Optional[bool]
    detail: str

    @property
    def title(self) -> str:
        return CAUSE_TITLES[self.cause]

    @property
    def status(self) -> str:
        return {True: "present", False: "absent", None: "not observed"}[self.present]


@dataclass(frozen=True)
class Audit:
    """What is wrong with a pipeline (pair): one :class:`Finding` per cause, in :data:`CAUSES` order."""

    findings: Tuple[Finding, ...]

    def __getitem__(self, cause: str) -> Finding:
        for finding in self.findings:
            if finding.cause == cause:
                return finding
        raise KeyError(cause)

    @property
    def present(self) -> List[str]:
        return [f.cause for f in self.findings if f.present]

    def as_dict(self) -> Dict[str, Dict[str, Any]]:
        return {f.cause: {"title": f.title, "present": f.present, "status": f.status, "detail": f.detail} for f in self.findings}

    def summary(self) -> str:
        return "\n".join(f"[{f.status:>12}] {f.cause}: {f.detail}" for f in self.findings)


def audit(pipe: Any, img2img_pipe: Any = None) -> Audit:
    """Which of the five causes the pipeline (pair) has right now.

    Reads the pipelines, their modules, accelerate's hooks and the process's precision flags; the
    Hires resize is caller code, so that finding reports the last resize :func:`hires_fix` made
    for this pipeline (None until one ran).
    """
    pipes = [p for p in (pipe, img2img_pipe) if p is not None]
    return Audit((
        _audit_vae(pipes),
        _audit_embeds(pipes),
        _audit_offload(pipes),
        _audit_scheduler(pipe, img2img_pipe),
        _audit_hires_resize(pipe),
    ))


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _module_dtype(module: Any) -> Any:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _audit_vae(pipes: Sequence[Any]) -> Finding:
    import torch

    from lib_sdfix.precision import read_flags

    vae = _component(pipes, "vae")
    if vae is None:
        return Finding("vae_precision", False, "no VAE")
    guard = getattr(vae, _VAE_ATTR, None)
    dtype = _module_dtype(vae)
    half = dtype is not None and dtype != torch.float32
    if guard is not None and guard.active("decode"):
        if half and guard.options.vae_dtype != "fp32":
            return Finding("vae_precision", True, f"decode guarded, but vae_dtype=auto keeps the {_dtype_name(dtype)} VAE")
        return Finding("vae_precision", False, "decode" + (" and encode" if guard.active("encode") else "") + " run under the precision guard in fp32")
    flags = read_flags()
    reduced = [name for name in ("cudnn.allow_tf32", "cuda.matmul.allow_tf32") if flags.get(name) is True]
    if not reduced:  # torch >= 2.9 driven through the fp32_precision strings only
        reduced = [f"{name}={value}" for name, value in flags.items() if name.endswith("fp32_precision") and value == "tf32"]
    reduced += ["cudnn.benchmark"] if flags.get("cudnn.benchmark") is True else []
    problems = []
    if half:
        problems.append(f"VAE weights in {_dtype_name(dtype)}")
    inert = ""
    if reduced and torch.cuda.is_available():
        problems.append(", ".join(reduced) + " on")
    elif reduced:
        inert = f" ({', '.join(reduced)} on, inert without CUDA)"
    if not problems:
        return Finding("vae_precision", False, "fp32 VAE" + (inert or " and no TF32 / cuDNN autotuning flags on"))
    return Finding("vae_precision", True, "decode unguarded; " + "; ".join(problems) + inert)


def _text_encoders(pipe: Any) -> List[Tuple[str, Any]]:
    return [(name, getattr(pipe, name, None)) for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]


def _audit_embeds(pipes: Sequence[Any]) -> Finding:
    mismatched: Dict[str, str] = {}
    unguarded = False
    for pipe in pipes:
        unet = getattr(pipe, "unet", None)
        state = _state(pipe)
        if unet is None or (_is_ours(pipe.__dict__.get("encode_prompt")) and state is not None and state.active("embeds_dtype")):
            continue
        unguarded = True
        unet_dtype = _module_dtype(unet)
        for name, encoder in _text_encoders(pipe):
            encoder_dtype = _module_dtype(encoder)
            if encoder_dtype != unet_dtype:
                mismatched[name] = f"{name} {_dtype_name(encoder_dtype)} vs UNet {_dtype_name(unet_dtype)}"
    if mismatched:
        return Finding("embeds_dtype", True, ", ".join(mismatched.values()) + ": embeddings reach the UNet in the text encoder's dtype")
    if unguarded:
        return Finding("embeds_dtype", False, "text encoders match the UNet's dtype (embeddings passed in by the caller are not cast)")
    return Finding("embeds_dtype", False, "embeddings are cast to the UNet's dtype and execution device")


def _audit_scheduler(pipe: Any, img2img_pipe: Any) -> Finding:
    if img2img_pipe is None:
        return Finding("scheduler_mismatch", False, "no img2img pipeline")
    a, b = getattr(pipe, "scheduler", None), getattr(img2img_pipe, "scheduler", None)
    if a is None or b is None:
        return Finding("scheduler_mismatch", False, "no scheduler")
    if _same_scheduler(a, b):
        return Finding("scheduler_mismatch", False, f"both run {_sampler_label(a)} ({_schedule_label(a)})")
    return Finding("scheduler_mismatch", True, _scheduler_difference(a, b))


def _audit_hires_resize(pipe: Any) -> Finding:
    last = getattr(pipe, _LAST_HIRES_ATTR, None)
    if last is None:
        return Finding("hires_resize", None, "the resize is caller code; no Hires pass through hires_fix() seen yet")
    text = f"last Hires resize: {last['passes']} x {last['filter']} {last['from'][0]}x{last['from'][1]} -> {last['to'][0]}x{last['to'][1]}"
    bad = last["filter"] not in ("LANCZOS", "BICUBIC", "BOX") or last["passes"] > 1
    return Finding("hires_resize", bad, text)


# --- state --------------------------------------------------------------------------------------


class _State:
    """Options and fix report of a hardened pipeline (stored on the pipeline object)."""

    def __init__(self, options: SDFixSettings, fixes: Iterable[str], report: FixReport) -> None:
        self.options = options
        self.fixes = frozenset(fixes)
        self.report = report

    def active(self, cause: str) -> bool:
        if not self.options.enabled or cause not in self.fixes:
            return False
        return {
            "vae_precision": self.options.precision_guard,
            "scheduler_mismatch": self.options.hires_parity,
            "hires_resize": self.options.post_resize,
        }.get(cause, True)


def _state(pipe: Any) -> Optional[_State]:
    return getattr(pipe, _STATE_ATTR, None) if pipe is not None else None


def _is_ours(fn: Any) -> bool:
    return fn is not None and hasattr(fn, _WRAPPED_MARK)


def _component(pipes: Sequence[Any], name: str) -> Any:
    for pipe in pipes:
        value = getattr(pipe, name, None)
        if value is not None:
            return value
    return None


# --- 1. VAE precision -----------------------------------------------------------------------------


def _oom_errors() -> Tuple[type, ...]:
    """Out-of-memory exception types of this torch (torch.OutOfMemoryError exists from 2.5 on)."""
    import torch

    kinds = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple({k for k in kinds if isinstance(k, type)}) or (MemoryError,)


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _tiling(vae: Any) -> Iterator[None]:
    before = vae.use_tiling
    vae.use_tiling = True
    try:
        yield
    finally:
        vae.use_tiling = before


def _first_floating_dtype(args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    import torch

    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return None


def _map_tensors(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` (tensor, tuple, list, dict, diffusers output, latent distribution) with ``fn`` applied
    to every tensor in it; containers are rebuilt, never changed in place."""
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: _map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if hasattr(value, "__dict__") and any(isinstance(v, torch.Tensor) for v in vars(value).values()):
        clone = copy.copy(value)  # a latent distribution: mean, std, ... as attributes
        for name, v in vars(value).items():
            if isinstance(v, torch.Tensor):
                setattr(clone, name, fn(v))
        return clone
    return value


def _cast_floating(value: Any, dtype: Any) -> Any:
    """``value`` with its floating tensors in ``dtype``."""
    return _map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)


def _first_tensor_device(args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    import torch

    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _weight_offload_hooks(vae: Any) -> List[Tuple[str, Any, Any]]:
    """(submodule name, submodule, hook) for every accelerate hook that keeps weights of ``vae`` in a
    weights map (sequential CPU offload, disk offload); empty when the VAE holds its own weights."""
    out = []
    for name, module in vae.named_modules():
        for hook in _hooks_on(module):
            if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
                out.append((name, module, hook))
    return out


def _has_reduced_precision(vae: Any) -> bool:
    import torch

    tensors = list(vae.parameters()) + list(vae.buffers())
    return any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors)


class _NoFp32Copy(RuntimeError):
    """The offloaded VAE cannot be rebuilt in fp32 (the message says why)."""


_PLAIN = (bool, int, float, str, type(None))


class _Fp32Vae:
    """An fp32 copy of a VAE whose weights accelerate's offload hooks keep in a weights map.

    Why: with sequential (or disk) offload the VAE's parameters live on the meta device and the
    hooks put fresh parameter objects in from the weights map at every forward, casting the
    values to the dtype the meta parameters have.  Casting such a VAE in place mixes dtypes and
    leaves it unable to decode.  The copy is built once from the weights map, read only, and
    kept on the CPU; it goes to the hooks' execution device only for the call.
    """

    def __init__(self, vae: Any, hooks: Sequence[Tuple[str, Any, Any]]) -> None:
        import torch

        self.key = [(weakref.ref(hook), id(hook.weights_map)) for _, _, hook in hooks]
        device = next((hook.execution_device for _, _, hook in hooks if hook.execution_device is not None), "cpu")
        self.device = torch.device(device)
        self.module = self._build(vae, hooks)
        self.twins = dict(self.module.named_modules())

    def matches(self, hooks: Sequence[Tuple[str, Any, Any]]) -> bool:
        return len(self.key) == len(hooks) and all(
            ref() is hook and key == id(hook.weights_map) for (ref, key), (_, _, hook) in zip(self.key, hooks)
        )

    @staticmethod
    def _build(vae: Any, hooks: Sequence[Tuple[str, Any, Any]]) -> Any:
        import torch
        from accelerate import init_empty_weights
        from accelerate.utils import named_module_tensors

        config = getattr(vae, "config", None)
        if config is None or not callable(getattr(type(vae), "from_config", None)):
            raise _NoFp32Copy(f"a {type(vae).__name__} cannot be rebuilt from its config")
        sources: Dict[str, Tuple[Any, str]] = {}
        for prefix, module, hook in hooks:
            for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                recurse=hook.place_submodules, remove_non_persistent=True):
                sources.setdefault(f"{prefix}.{name}" if prefix else name, (hook.weights_map, name))
        with init_empty_weights(include_buffers=True):
            clone = type(vae).from_config(config)
        made: Dict[int, Any] = {}  # tied tensors stay tied
        named = [("_parameters", n, t) for n, t in vae.named_parameters(remove_duplicate=False)]
        named += [("_buffers", n, t) for n, t in vae.named_buffers(remove_duplicate=False)]
        for kind, full, tensor in named:
            if id(tensor) not in made:
                if full in sources:
                    weights_map, name = sources[full]
                    value = weights_map[name]
                elif tensor.device.type == "meta":
                    raise _NoFp32Copy(f"{full} is on the meta device and in no offload weights map")
                else:  # a buffer the hooks leave on the module (not offloaded)
                    value = tensor
                dtype = torch.float32 if value.is_floating_point() else value.dtype
                value = value.detach().to(device="cpu", dtype=dtype, copy=True)
                made[id(tensor)] = torch.nn.Parameter(value, requires_grad=False) if kind == "_parameters" else value
            owner_name, _, leaf = full.rpartition(".")
            owner = clone.get_submodule(owner_name)
            if leaf not in getattr(owner, kind):
                raise _NoFp32Copy(f"the rebuilt {type(vae).__name__} has no {full}")
            getattr(owner, kind)[leaf] = made[id(tensor)]
        left = [n for n, t in list(clone.named_parameters()) + list(clone.named_buffers()) if t.device.type == "meta"]
        if left:
            raise _NoFp32Copy(f"the rebuilt {type(vae).__name__} has tensors the original lacks: {', '.join(left[:3])}")
        return clone.eval()

    def follow(self, vae: Any) -> None:
        """Give the copy the VAE's current settings: plain attributes of every submodule (tiling,
        slicing, train/eval, ...) and the attention processors."""
        for name, module in vae.named_modules():
            twin = self.twins.get(name)
            if twin is None:
                continue
            for key, value in module.__dict__.items():
                if not key.startswith("_") and isinstance(value, _PLAIN) and key in twin.__dict__:
                    twin.__dict__[key] = value
        processors = getattr(vae, "attn_processors", None)
        if isinstance(processors, dict) and hasattr(self.module, "set_attn_processor"):
            mine = self.module.attn_processors
            if mine.keys() == processors.keys() and any(mine[k] is not v for k, v in processors.items()):
                self.module.set_attn_processor(dict(processors))


class _VaeGuard:
    """The guarded ``decode``/``encode`` of one VAE object (shared by both pipelines of a pair)."""

    def __init__(self, vae: Any, options: SDFixSettings, fixes: Iterable[str], report: FixReport) -> None:
        self.vae_ref = weakref.ref(vae)
        self.options = options
        self.fixes = frozenset(fixes)
        self.report = report
        self.fp32: Optional[_Fp32Vae] = None
        self.fp32_lock = threading.RLock()

    def active(self, kind: str) -> bool:
        if not self.options.enabled or "vae_precision" not in self.fixes:
            return False
        return self.options.precision_guard if kind == "decode" else self.options.guard_encode

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
        upcast = self.options.upcast
        in_dtype = _first_floating_dtype(args, kwargs)
        oom = _oom_errors()
        try:
            out = self._invoke(kind, original, vae, upcast, args, kwargs)
        except oom as exc:
            out = self._after_oom(exc, kind, original, vae, upcast, args, kwargs)
        if kind == "encode" and in_dtype is not None:
            # The pipeline goes on in the dtype it passed in (an fp16 UNet cannot take fp32 latents);
            # the encoder's math ran in fp32.
            out = _cast_floating(out, in_dtype)
        return out

    def _after_oom(self, error: BaseException, kind: str, original: Callable[..., Any], vae: Any, upcast: bool,
                   args: Tuple, kwargs: Dict[str, Any]) -> Any:
        """The VAE call did not fit: tiles first (diffusers' own tiling), then, if the VAE was being
        upcast, the VAE's own dtype -- flags still guarded."""
        from lib_sdfix.fp32_vae import guarded_vae_call

        oom = _oom_errors()
        _free_device_memory()
        if hasattr(vae, "use_tiling") and not vae.use_tiling:
            try:
                with _tiling(vae):
                    out = self._invoke(kind, original, vae, upcast, args, kwargs)
                self.report.note(f"VAE {kind}: out of memory in one piece, ran tiled" + (" in fp32" if upcast else ""))
                return out
            except oom as again:
                error = again
                _free_device_memory()
        if not upcast:
            raise error
        out = guarded_vae_call(original, vae, *args, upcast=False, **kwargs)
        self.report.note(f"VAE {kind}: out of memory in fp32, ran in the VAE's own dtype (flags still guarded)")
        return out

    def _invoke(self, kind: str, original: Callable[..., Any], vae: Any, upcast: bool, args: Tuple,
                kwargs: Dict[str, Any]) -> Any:
        """One guarded call: the VAE cast in place for the call, or -- where accelerate's offload
        hooks own its weights -- an fp32 copy of it, so the offloaded VAE is never touched."""
        from lib_sdfix.fp32_vae import guarded_vae_call

        hooks = _weight_offload_hooks(vae)
        if not hooks:
            self.fp32 = None
        if not (upcast and hooks and _has_reduced_precision(vae)):
            return guarded_vae_call(original, vae, *args, upcast=upcast, **kwargs)
        with self.fp32_lock:  # one call at a time moves the shared copy
            try:
                fp32 = self._fp32_copy(vae, hooks)
            except _NoFp32Copy as exc:
                self.report.note(f"VAE {kind}: offloaded weights, {exc}: ran in the VAE's own dtype (flags still guarded)")
                return guarded_vae_call(original, vae, *args, upcast=False, **kwargs)
            fp32.follow(vae)
            return self._on_copy(kind, fp32, args, kwargs)

    def _fp32_copy(self, vae: Any, hooks: Sequence[Tuple[str, Any, Any]]) -> _Fp32Vae:
        if self.fp32 is None or not self.fp32.matches(hooks):
            self.fp32 = None
            self.fp32 = _Fp32Vae(vae, hooks)
            self.report.note("VAE: weights offloaded by accelerate; decode/encode run on an fp32 copy "
                             "built from the offload weights (kept on the CPU)")
        return self.fp32

    @staticmethod
    def _on_copy(kind: str, fp32: _Fp32Vae, args: Tuple, kwargs: Dict[str, Any]) -> Any:
        from lib_sdfix.fp32_vae import guarded_vae_call

        module, device = fp32.module, fp32.device
        back = _first_tensor_device(args, kwargs)
        away = device.type != "cpu"
        if away:
            module.to(device)
            args, kwargs = _map_tensors(args, lambda t: t.to(device)), _map_tensors(kwargs, lambda t: t.to(device))
        try:
            out = guarded_vae_call(getattr(module, kind), module, *args, upcast=True, **kwargs)
        finally:
            if away:
                module.to("cpu")
        if back is not None and back != device:
            out = _map_tensors(out, lambda t: t.to(back))
        return out


def _wrap_method(owner: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Install ``make(original)`` as ``owner.name`` unless ours is already there; True if installed."""
    current = owner.__dict__.get(name, _NOTHING)
    if _is_ours(current):
        return False
    original = getattr(owner, name)
    wrapper = make(original)
    setattr(wrapper, _WRAPPED_MARK, original)
    setattr(wrapper, _PREVIOUS_MARK, current)  # another library's instance-level wrapper, kept
    object.__setattr__(owner, name, wrapper)
    return True


def _unwrap_method(owner: Any, name: str) -> None:
    current = owner.__dict__.get(name)
    if not _is_ours(current):
        return
    previous = getattr(current, _PREVIOUS_MARK, _NOTHING)
    if previous is _NOTHING:
        object.__delattr__(owner, name)  # the class's own method again
    else:
        object.__setattr__(owner, name, previous)


def guard_vae(vae: Any, options: Optional[SDFixSettings] = None, *, report: Optional[FixReport] = None,
              fixes: Iterable[str] = CAUSES) -> FixReport:
    """Run ``vae.decode`` (and ``vae.encode``) under the precision guard; idempotent.

    The VAE object may be shared by several pipelines: it is wrapped once and every pipeline
    benefits.  Options are read at call time, so hardening again with other options just updates
    them.  Returns the report the guard writes to (fallbacks on out-of-memory are noted there).
    """
    options = options or SDFixSettings()
    guard = getattr(vae, _VAE_ATTR, None)
    if guard is None:
        guard = _VaeGuard(vae, options, fixes, report or FixReport())
        object.__setattr__(vae, _VAE_ATTR, guard)
    else:
        guard.options, guard.fixes = options, frozenset(fixes)
        if report is not None:
            guard.report = report
    for kind in ("decode", "encode"):
        if not hasattr(vae, kind):
            continue

        def make(original: Callable[..., Any], kind: str = kind) -> Callable[..., Any]:
            guard_ref = weakref.ref(guard)

            @functools.wraps(original)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                live = guard_ref()
                return original(*args, **kwargs) if live is None else live.call(kind, original, *args, **kwargs)

            return guarded

        _wrap_method(vae, kind, make)
    return guard.report


def _unguard_vae(vae: Any) -> None:
    for kind in ("decode", "encode"):
        _unwrap_method(vae, kind)
    if _VAE_ATTR in vae.__dict__:
        object.__delattr__(vae, _VAE_ATTR)


# --- 2. prompt embeddings ----------------------------------------------------------------------


def _cast_embeddings(pipe: Any, output: Any, report: Optional[FixReport]) -> Any:
    import torch

    unet = getattr(pipe, "unet", None)
    if unet is None:
        return output
    dtype = _module_dtype(unet)
    device = torch.device(pipe._execution_device)
    casts = set()

    def elsewhere(tensor: Any) -> bool:
        if tensor.device.type != device.type:
            return True
        return device.type != "cpu" and device.index is not None and tensor.device.index != device.index

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and (value.dtype != dtype or elsewhere(value)):
            text = f"{_dtype_name(value.dtype)} -> {_dtype_name(dtype)}" if value.dtype != dtype else ""
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

    Why: diffusers casts embeddings -- its own and the caller's (Compel) -- to the *text encoder's*
    dtype, and the latents follow them.  An fp32 text encoder (kept on the CPU, or offloaded) with
    an fp16 UNet then either fails ("mat1 and mat2 must have the same dtype") or, under autocast,
    runs txt2img and img2img in different precisions.  Idempotent; True if installed now.
    """
    if not hasattr(pipe, "encode_prompt"):
        return False

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        pipe_ref = weakref.ref(pipe)

        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            live = pipe_ref()
            state = _state(live)
            if live is None or (state is not None and not state.active("embeds_dtype")):
                return output
            return _cast_embeddings(live, output, state.report if state is not None else report)

        return encode_prompt

    return _wrap_method(pipe, "encode_prompt", make)


# --- 3. CPU-offload hooks ----------------------------------------------------------------------


def _hooks_on(module: Any) -> List[Any]:
    """accelerate hooks attached to ``module`` itself (a SequentialHook flattened)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    out, todo = [], [hook]
    while todo:
        item = todo.pop(0)
        inner = getattr(item, "hooks", None)
        if type(item).__name__ == "SequentialHook" and inner is not None:
            todo[:0] = list(inner)
        else:
            out.append(item)
    return out


def _offload_hooks_on(module: Any) -> List[Any]:
    return [h for h in _hooks_on(module) if type(h).__name__ == "CpuOffload"]


def _named_modules(pipes: Sequence[Any]) -> List[Tuple[str, Any]]:
    """(name, module) of every torch module component of the pipes, each module once, in order."""
    import torch

    seen, out = set(), []
    for pipe in pipes:
        for name, value in pipe.components.items():
            if isinstance(value, torch.nn.Module) and id(value) not in seen:
                seen.add(id(value))
                out.append((name, value))
    return out


def _shared(pipes: Sequence[Any]) -> List[Tuple[str, Any]]:
    if len(pipes) < 2:
        return []
    second = {id(v) for v in pipes[1].components.values()}
    return [(name, m) for name, m in _named_modules(pipes[:1]) if id(m) in second]


def _user_hooks_for(pipe: Any, module: Any) -> List[Any]:
    return [h for h in (getattr(pipe, "_all_hooks", None) or []) if getattr(h, "model", None) is module]


def _offload_problems(pipes: Sequence[Any]) -> List[str]:
    problems = []
    for name, module in _named_modules(pipes):
        count = len(_offload_hooks_on(module))
        if count > 1:
            problems.append(f"{name} has {count} CPU-offload hooks stacked (each forward moves it {count} times)")
    if len(pipes) == 2:
        competing, stale = [], set()
        for name, module in _shared(pipes):
            own = [_user_hooks_for(p, module) for p in pipes]
            if not (own[0] and own[1]) or own[0][0].hook is own[1][0].hook:
                continue
            competing.append(name)
            attached = {id(h) for h in _offload_hooks_on(module)}
            stale.update(label for label, hooks in zip(("txt2img", "img2img"), own) if id(hooks[0].hook) not in attached)
        if competing:
            text = f"both pipelines called enable_model_cpu_offload() on the shared {', '.join(competing)}"
            if stale:
                text += f": the {' and '.join(sorted(stale))} pipeline's hooks are no longer attached"
            problems.append(text + "; each call re-registers every hook and moves every model to the CPU")
    return problems


def _offload_in_use(pipes: Sequence[Any]) -> bool:
    return any(_offload_hooks_on(m) for _, m in _named_modules(pipes)) or any(getattr(p, "_all_hooks", None) for p in pipes)


def _foreign_hooks(pipes: Sequence[Any]) -> List[str]:
    """Modules with accelerate hooks other than model offload (sequential offload, device maps)."""
    out = []
    for name, module in _named_modules(pipes):
        if any(type(h).__name__ != "CpuOffload" for h in _hooks_on(module)):
            out.append(name)
            continue
        if any(getattr(sub, "_hf_hook", None) is not None for sub in module.modules() if sub is not module):
            out.append(name)
    return out


def _is_shared_chain(pipes: Sequence[Any]) -> bool:
    hooks = getattr(pipes[0], "_all_hooks", None)
    if not hooks or any(getattr(p, "_all_hooks", None) is not hooks for p in pipes):
        return False
    attached = all(len(_offload_hooks_on(h.model)) == 1 and _offload_hooks_on(h.model)[0] is h.hook for h in hooks)
    covered = {id(h.model) for h in hooks}
    return attached and all(id(m) in covered for _, m in _named_modules(pipes) if _offload_hooks_on(m))


def _audit_offload(pipes: Sequence[Any]) -> Finding:
    if not _offload_in_use(pipes):
        return Finding("offload_hooks", False, "no model CPU offload")
    problems = _offload_problems(pipes)
    if problems:
        return Finding("offload_hooks", True, "; ".join(problems))
    if len(pipes) == 2 and _is_shared_chain(pipes):
        return Finding("offload_hooks", False, "one offload hook chain shared by both pipelines")
    return Finding("offload_hooks", False, "one offload hook per module")


def _offload_device(pipes: Sequence[Any]) -> Any:
    import torch

    for _, module in _named_modules(pipes):
        for hook in _offload_hooks_on(module):
            return torch.device(hook.execution_device)
    for pipe in pipes:
        device = getattr(pipe, "_offload_device", None)
        if device is not None:
            return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build_chain(pipes: Sequence[Any], device: Any) -> List[Any]:
    """What ``enable_model_cpu_offload`` builds, once, over the modules of all pipes."""
    import torch
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import remove_hook_from_module

    named = _named_modules(pipes)
    for _, module in named:
        remove_hook_from_module(module, recurse=True)
    by_name: Dict[str, Any] = {}
    for pipe in pipes:
        for name, value in pipe.components.items():
            if isinstance(value, torch.nn.Module):
                by_name.setdefault(name, value)
    order: List[str] = []
    for pipe in pipes:
        for name in (getattr(pipe, "model_cpu_offload_seq", None) or "").split("->"):
            if name and name not in order:
                order.append(name)
    excluded = set()
    for pipe in pipes:
        excluded.update(getattr(pipe, "_exclude_from_cpu_offload", []) or [])

    hooks: List[Any] = []
    done = set()
    previous = None
    for name in order:
        module = by_name.get(name)
        if module is None or id(module) in done:
            continue
        done.add(id(module))
        _, previous = cpu_offload_with_hook(module, device, prev_module_hook=previous)
        hooks.append(previous)
    for name, module in named:
        if id(module) in done:
            continue
        done.add(id(module))
        if name in excluded:
            module.to(device)
        else:
            _, hook = cpu_offload_with_hook(module, device)
            hooks.append(hook)
    return hooks


def _enable_shared_offload(pipe_refs: Tuple[Any, ...], gpu_id: Optional[int] = None, device: Any = None) -> None:
    """``enable_model_cpu_offload`` of a hardened pair: rebuild the one chain for both pipelines.

    diffusers calls it at the end of every pipeline call (``maybe_free_model_hooks``); rebuilding
    for both keeps the two pipelines on the same hooks instead of taking them from each other.
    """
    import torch

    pipes = [ref() for ref in pipe_refs]
    pipes = [p for p in pipes if p is not None]
    if not pipes:
        return
    if device is None:
        device = getattr(pipes[0], "_offload_device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if gpu_id is not None and device.type != "cpu":
        device = torch.device(device.type, gpu_id)
    _install_chain(pipes, device)


def _install_chain(pipes: Sequence[Any], device: Any) -> List[Any]:
    hooks = _build_chain(pipes, device)
    for pipe in pipes:
        object.__setattr__(pipe, "_all_hooks", hooks)
        object.__setattr__(pipe, "_offload_device", device)
        object.__setattr__(pipe, "_offload_gpu_id", device.index or 0)
    return hooks


def share_offload_chain(pipe: Any, img2img_pipe: Any = None, report: Optional[FixReport] = None) -> bool:
    """One CPU-offload hook chain for the pipeline (pair); True if the hooks were rebuilt.

    Why: with two pipelines over the same modules, each ``enable_model_cpu_offload()`` either
    stacks a second hook on every shared module (diffusers <= 0.27: two moves per forward, hooks
    of one pipeline removed by the other's cleanup) or takes the hooks away from the other pipeline
    (>= 0.28: stale hooks, every call re-registers everything).  Afterwards every module has exactly
    one offload hook, both pipelines hold the same chain (text encoder -> UNet -> VAE), and their
    ``enable_model_cpu_offload`` -- which diffusers calls after every generation -- rebuilds it for
    both.  Sequential offload and device maps are left alone.  Idempotent.
    """
    pipes = [p for p in (pipe, img2img_pipe) if p is not None]
    if not _offload_in_use(pipes):
        return False
    foreign = _foreign_hooks(pipes)
    if foreign:
        if report is not None:
            report.note("offload hooks: sequential offload / device map on " + ", ".join(foreign) + " left alone")
        return False
    rebuilt = False
    if not (_is_shared_chain(pipes) and not _offload_problems(pipes)):
        problems = _offload_problems(pipes)
        _install_chain(pipes, _offload_device(pipes))
        rebuilt = True
        if report is not None and problems:
            report.note("offload hooks: " + "; ".join(problems) + " -> one shared chain")
    if len(pipes) == 2:
        for p in pipes:
            current = p.__dict__.get("enable_model_cpu_offload")
            if _is_ours(current) and len(current.args[0]) == len(pipes) and all(
                ref() is q for ref, q in zip(current.args[0], pipes)
            ):
                continue  # already rebuilding for this very pair
            shared = functools.partial(_enable_shared_offload, tuple(weakref.ref(q) for q in pipes))
            setattr(shared, _WRAPPED_MARK, getattr(p, "enable_model_cpu_offload"))
            object.__setattr__(p, "enable_model_cpu_offload", shared)
    if report is not None and rebuilt:
        report.mark_applied("offload_hooks")
    return rebuilt


# --- 4. scheduler parity -----------------------------------------------------------------------


def _config_of(scheduler: Any) -> Dict[str, Any]:
    return {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}


def _same_scheduler(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and _config_of(a) == _config_of(b))


def _sampler_label(scheduler: Any) -> str:
    algorithm = dict(scheduler.config).get("algorithm_type")
    return type(scheduler).__name__ + (f"({algorithm})" if algorithm else "")


def _schedule_label(scheduler: Any) -> str:
    config = dict(scheduler.config)
    for key, label in (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential"), ("use_beta_sigmas", "Beta")):
        if config.get(key):
            return label
    return "Automatic"


def _scheduler_difference(txt2img: Any, img2img: Any) -> str:
    from lib_sdfix.parity import resolve_hires_sampling

    resolved = resolve_hires_sampling(
        _sampler_label(txt2img), _schedule_label(txt2img), _sampler_label(img2img), _schedule_label(img2img), parity=True
    )
    if resolved.note:
        return resolved.note
    a, b = _config_of(txt2img), _config_of(img2img)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "img2img scheduler config differs: " + ", ".join(f"{k} {b.get(k)!r} -> {a.get(k)!r}" for k in keys)


def share_scheduler(pipe: Any, img2img_pipe: Any, report: Optional[FixReport] = None) -> bool:
    """Give the img2img pipeline the txt2img scheduler's class and full config; True if changed.

    Why: the img2img/Hires pass otherwise keeps the checkpoint's default (PNDM/DDIM, uniform
    steps), which at Hires denoising strengths smooths away what DPM++ 2M Karras made.  The copy
    is a separate instance built from the same config (Karras sigmas, ``final_sigmas_type`` and
    all), so the two pipelines never share a scheduler's per-run state.
    """
    if img2img_pipe is None:
        return False
    source, target = pipe.scheduler, img2img_pipe.scheduler
    if _same_scheduler(source, target):
        return False
    note = _scheduler_difference(source, target)
    img2img_pipe.scheduler = type(source).from_config(source.config)
    if report is not None:
        report.mark_applied("scheduler_mismatch")
        report.note(note)
    return True


# --- harden ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardenReport:
    """What :func:`harden` found, what it changed, and what is left."""

    before: Audit
    after: Audit
    changed: Tuple[str, ...]
    notes: Tuple[str, ...]
    failed: Dict[str, str]

    def as_dict(self) -> Dict[str, Any]:
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "changed": list(self.changed),
            "notes": list(self.notes),
            "failed": dict(self.failed),
        }


def harden(pipe: Any, img2img_pipe: Any = None, *, options: Optional[SDFixSettings] = None,
           fixes: Iterable[str] = CAUSES) -> HardenReport:
    """Apply the fixes to a StableDiffusion / StableDiffusionXL txt2img pipeline and its img2img twin.

    Idempotent: hardening twice is hardening once (wrappers are installed once, the offload chain
    and scheduler are left alone when already right); hardening again with other ``options``
    updates them.  ``options.enabled=False`` removes SDFix's wrappers (:func:`unharden`).
    ``fixes`` (a subset of :data:`CAUSES`) exists for ablation runs.  A fix that fails is logged and
    recorded in the report's ``failed``; the pipelines keep working without it.
    """
    options = options or SDFixSettings()
    fixes = tuple(fixes)
    unknown = set(fixes) - set(CAUSES)
    if unknown:
        raise ValueError(f"unknown fixes {sorted(unknown)}; known: {list(CAUSES)}")
    pipes = [p for p in (pipe, img2img_pipe) if p is not None]
    before = audit(pipe, img2img_pipe)
    if not options.enabled:
        unharden(pipe, img2img_pipe)
        return HardenReport(before, audit(pipe, img2img_pipe), (), ("SDFix disabled: wrappers removed",), {})

    existing = _state(pipe)
    report = existing.report if existing is not None else FixReport()
    state = _State(options, fixes, report)
    for p in pipes:
        object.__setattr__(p, _STATE_ATTR, state)
    changed: List[str] = []

    def attempt(name: str, fn: Callable[[], bool]) -> None:
        try:
            if fn():
                changed.append(name)
        except Exception as exc:  # noqa: BLE001 -- a fix that cannot be applied must not break the service
            report.mark_failed(name, exc)
            logger.error("%s could not be applied: %s", name, exc, exc_info=exc)

    if "vae_precision" in fixes:
        for vae in {id(v): v for v in (getattr(p, "vae", None) for p in pipes) if v is not None}.values():
            attempt("vae_precision", lambda vae=vae: _guard_vae_changed(vae, options, report, fixes))
    if "embeds_dtype" in fixes:
        for p in pipes:
            attempt("embeds_dtype", lambda p=p: cast_prompt_embeds(p, report))
    if "offload_hooks" in fixes:
        attempt("offload_hooks", lambda: share_offload_chain(pipe, img2img_pipe, report))
    if "scheduler_mismatch" in fixes and options.hires_parity and img2img_pipe is not None:
        attempt("scheduler_mismatch", lambda: share_scheduler(pipe, img2img_pipe, report))
    _, failed, notes = report.items()
    return HardenReport(before, audit(pipe, img2img_pipe), tuple(dict.fromkeys(changed)), tuple(notes), failed)


def fix_report(pipe: Any) -> Optional[FixReport]:
    """The live report of a hardened pipeline: fixes applied per call, failures, notes (embedding
    casts, out-of-memory fallbacks, scheduler alignments).  None if the pipeline is not hardened."""
    state = _state(pipe)
    return state.report if state is not None else None


def _guard_vae_changed(vae: Any, options: SDFixSettings, report: FixReport, fixes: Iterable[str]) -> bool:
    had = _is_ours(vae.__dict__.get("decode"))
    guard_vae(vae, options, report=report, fixes=fixes)
    return not had


def unharden(pipe: Any, img2img_pipe: Any = None) -> None:
    """Remove SDFix's wrappers from the pipeline (pair) and its VAE.

    The offload chain and the img2img scheduler stay as they are: they are plain diffusers state,
    correct without SDFix.
    """
    for p in (pipe, img2img_pipe):
        if p is None:
            continue
        vae = getattr(p, "vae", None)
        if vae is not None:
            _unguard_vae(vae)
        _unwrap_method(p, "encode_prompt")
        current = p.__dict__.get("enable_model_cpu_offload")
        if _is_ours(current):
            object.__delattr__(p, "enable_model_cpu_offload")
        if _STATE_ATTR in p.__dict__:
            object.__delattr__(p, _STATE_ATTR)


# --- 5. Hires.fix ------------------------------------------------------------------------------


class UpscalerUnavailable(ImportError):
    """No backend can load the upscaler (the message says why)."""


@dataclass
class Upscaler:
    """A super-resolution model: ``upscaler(image)`` returns the image at ``scale`` x its size."""

    name: str
    scale: int
    backend: str
    run: Callable[[Image.Image], Image.Image] = field(repr=False)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.run(image)


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Let spandrel import where torchvision cannot (absent, or a CUDA build beside a CPU torch).

    spandrel imports ``torchvision.transforms.functional`` at import time for two architectures
    SDFix never loads (LaMa, RestoreFormer).  For the import only, those names point at functions
    that raise if ever called; the stand-in is removed from ``sys.modules`` right after.
    """
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {name: sys.modules.get(name) for name in names}

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise UpscalerUnavailable("this spandrel architecture needs torchvision, which does not import here")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(NEAREST=0, BILINEAR=2, BICUBIC=3)  # type: ignore[attr-defined]
    root.transforms, transforms.functional = transforms, functional  # type: ignore[attr-defined]
    sys.modules.update(dict(zip(names, (root, transforms, functional))))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:  # noqa: BLE001 -- any failure means spandrel cannot use it either
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            sys.modules.pop(name, None)
        return False
    return True


def _import_spandrel() -> Any:
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise UpscalerUnavailable("spandrel is not installed (pip install spandrel, or sdfix[diffusers])")
    try:
        if _torchvision_imports():
            return importlib.import_module("spandrel")
        with _torchvision_stand_in():
            return importlib.import_module("spandrel")
    except ImportError as exc:
        raise UpscalerUnavailable(f"spandrel does not import here: {exc}") from exc


def _image_to_tensor(image: Image.Image, device: Any, dtype: Any) -> Any:
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def _tensor_to_image(tensor: Any) -> Image.Image:
    array = tensor.squeeze(0).permute(1, 2, 0).float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return Image.fromarray(array, "RGB")


def _load_with_spandrel(path: str, device: Any, half: bool) -> Upscaler:
    import torch

    spandrel = _import_spandrel()
    descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{path} is a {type(descriptor).__name__}, not a single-image upscaler")
    descriptor.eval()
    if half and getattr(descriptor, "supports_half", False):
        descriptor.half()
    model_device = next(descriptor.model.parameters()).device
    model_dtype = next(descriptor.model.parameters()).dtype

    def run(image: Image.Image) -> Image.Image:
        with torch.inference_mode():
            return _tensor_to_image(descriptor(_image_to_tensor(image, model_device, model_dtype)))

    architecture = getattr(descriptor.architecture, "name", None) or descriptor.architecture.id
    return Upscaler(f"{architecture} x{descriptor.scale}", int(descriptor.scale), "spandrel", run)


def _load_tensors_only(path: str) -> Any:
    """A .pth checkpoint's tensors (dicts, lists and tensors; nothing else is unpickled).

    Why: a pickle can run any code while it loads.  Upscaler checkpoints hold only weights; one
    that needs more (a pickled model class, an optimizer, ...) is refused rather than executed.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; only the line naming the blocked object is kept.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise ValueError(f"refusing to load {path}: it holds more than weights, and unpickling it could run "
                         f"arbitrary code ({why}); use a .safetensors file or a plain state dict") from exc


def _load_with_realesrgan(path: str, device: Any, half: bool) -> Upscaler:
    """The ``realesrgan`` package (RRDBNet checkpoints with ``params``/``params_ema``), if it imports."""
    import numpy as np
    import torch

    try:
        from basicsr.archs.rrdbnet_arch import RRDBNet
        from realesrgan import RealESRGANer
    except Exception as exc:  # noqa: BLE001 -- basicsr fails with current torchvision (functional_tensor)
        raise UpscalerUnavailable(f"the realesrgan backend does not import here: {type(exc).__name__}: {exc}") from exc
    if path.lower().endswith(".safetensors"):
        raise UpscalerUnavailable("the realesrgan backend reads .pth files only (RealESRGANer loads the file itself)")
    state = _load_tensors_only(path)
    weights = state.get("params_ema", state.get("params", state))
    in_ch = weights["conv_first.weight"].shape[1]
    scale = {3: 4, 12: 2, 48: 1}.get(in_ch, 4)
    blocks = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("body."))
    model = RRDBNet(
        num_in_ch=3, num_out_ch=3, num_feat=weights["conv_first.weight"].shape[0], num_block=blocks,
        num_grow_ch=weights["body.0.rdb1.conv1.weight"].shape[0], scale=scale,
    )
    # RealESRGANer reads the file again with its own torch.load; the weights-only load above has
    # already refused any file that holds more than tensors.
    upsampler = RealESRGANer(scale=scale, model_path=path, model=model, tile=0, pre_pad=0, half=half, device=device)

    def run(image: Image.Image) -> Image.Image:
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
        output, _ = upsampler.enhance(np.ascontiguousarray(bgr), outscale=scale)
        return Image.fromarray(np.ascontiguousarray(output[:, :, ::-1]), "RGB")

    return Upscaler(f"RealESRGAN x{scale}", scale, "realesrgan", run)


def load_upscaler(path: Any, *, device: Any = None, backend: str = "auto", half: bool = False) -> Upscaler:
    """Load a super-resolution model file (RealESRGAN, ESRGAN, ... as .pth/.safetensors).

    ``backend``: "spandrel" (the loader the WebUI uses; recognises the architecture from the
    weights), "realesrgan" (the ``realesrgan`` package, optional: its ``basicsr`` dependency does
    not import with current torchvision) or "auto" (spandrel, else realesrgan).
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = str(path)
    if backend == "spandrel":
        return _load_with_spandrel(path, device, half)
    if backend == "realesrgan":
        return _load_with_realesrgan(path, device, half)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'spandrel' or 'realesrgan', got {backend!r}")
    try:
        return _load_with_spandrel(path, device, half)
    except UpscalerUnavailable as spandrel_error:
        try:
            return _load_with_realesrgan(path, device, half)
        except UpscalerUnavailable as realesrgan_error:
            raise UpscalerUnavailable(f"{spandrel_error}; {realesrgan_error}") from realesrgan_error


@dataclass
class HiresResult:
    """The Hires.fix result and every intermediate, with timings in seconds."""

    image: Image.Image
    first_pass: Image.Image
    upscaled: Image.Image
    resized: Image.Image
    resize: Dict[str, Any]
    timings: Dict[str, float]
    notes: List[str]


def _hires_target(width: int, height: int, scale: float) -> Tuple[int, int]:
    return max(8, int(round(width * scale / 8)) * 8), max(8, int(round(height * scale / 8)) * 8)


def _generator(seed: Optional[int]) -> Any:
    import torch

    return None if seed is None else torch.Generator("cpu").manual_seed(int(seed))


def hires_fix(
    pipe: Any,
    img2img_pipe: Any,
    prompt: Any = None,
    *,
    negative_prompt: Any = None,
    prompt_embeds: Any = None,
    negative_prompt_embeds: Any = None,
    width: int = 512,
    height: int = 512,
    scale: float = 2.0,
    strength: float = 0.35,
    num_inference_steps: int = 25,
    hires_steps: Optional[int] = None,
    guidance_scale: float = 7.0,
    seed: Optional[int] = None,
    upscaler: Optional[Upscaler] = None,
    options: Optional[SDFixSettings] = None,
    **call_kwargs: Any,
) -> HiresResult:
    """txt2img -> super-resolution upscaler -> one resize to the target -> img2img, all timed.

    The resize goes straight from the upscaler's native output to the target, once, with
    ``options.resize_filter`` (LANCZOS); with the post-resize fix off it is the BILINEAR resize
    hand-written Hires code does.  With Hires parity on, the img2img pipeline gets the txt2img
    scheduler again right before its pass (a scheduler swapped after :func:`harden` is followed).
    Without an upscaler the first pass is resized directly.  Both passes use ``seed``.
    """
    steps = hires_steps or num_inference_steps
    if int(steps * strength) < 1:  # diffusers' img2img would fail on an empty schedule
        raise ValueError(f"the Hires pass would run {int(steps * strength)} steps ({steps} steps x strength {strength}); "
                         "raise the steps or the strength")
    state = _state(pipe)
    options = options or (state.options if state is not None else SDFixSettings())
    active = (lambda cause: options.enabled and (state is None or cause in state.fixes))
    notes: List[str] = []
    timings: Dict[str, float] = {}
    common = dict(prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                  negative_prompt_embeds=negative_prompt_embeds, guidance_scale=guidance_scale, **call_kwargs)

    start = time.perf_counter()
    first = pipe(width=width, height=height, num_inference_steps=num_inference_steps, generator=_generator(seed),
                 output_type="pil", **common).images[0]
    timings["txt2img"] = time.perf_counter() - start

    target = _hires_target(width, height, scale)
    start = time.perf_counter()
    native = first
    if upscaler is not None:
        for _ in range(upscaler_passes(first.size, target, upscaler.scale)):
            native = upscaler(native)
    timings["upscale"] = time.perf_counter() - start

    start = time.perf_counter()
    if options.post_resize and active("hires_resize"):
        filter_name = options.resize_filter
        resized = resize_after_upscale(native, target, filter_name)
    else:
        filter_name = UNFIXED_RESIZE_FILTER
        resized = native if native.size == target else native.resize(target, Image.BILINEAR)
    timings["resize"] = time.perf_counter() - start
    resize = {"filter": filter_name, "from": list(native.size), "to": list(target), "passes": 0 if native.size == target else 1}
    object.__setattr__(pipe, _LAST_HIRES_ATTR, resize)

    if options.hires_parity and active("scheduler_mismatch"):
        report = state.report if state is not None else None
        if share_scheduler(pipe, img2img_pipe, report):
            notes.append("img2img scheduler aligned with txt2img")

    start = time.perf_counter()
    image = img2img_pipe(image=resized, strength=strength, num_inference_steps=steps, generator=_generator(seed),
                         output_type="pil", **common).images[0]
    timings["img2img"] = time.perf_counter() - start
    return HiresResult(image, first, native, resized, resize, timings, notes)
