"""ComfyUI's own VAE decode/encode under SDFix's guarded call, with ComfyUI's decode as the fallback.

Why: ComfyUI runs the SD1.5/SDXL VAE in bf16 on NVIDIA cards of compute capability 8 and up
(``model_management.vae_dtype`` with the VAE's ``working_dtypes`` [bfloat16, float32]), never turns
cuDNN TF32 off, turns ``cudnn.benchmark`` on with ``--fast``, has no NaN fallback, and on out of
memory decodes in three overlapping tile passes that it averages.  ComfyUI has no hook inside
``VAE.decode``; a node pack runs it from its own nodes.

How (``comfy/sd.py`` ``class VAE``): ``VAE.decode(samples)`` itself runs -- its batching from
``memory_used_decode``, ``load_models_gpu``, the cast of each batch to ``vae.vae_dtype``,
``process_output`` and the move to ComfyUI's intermediate device all stay ComfyUI's -- inside
:func:`lib_sdfix.vae.call.guarded_call` with

* ``module = vae.first_stage_model`` (its ``decoder``/``encoder`` planned untiled, sliced or tiled in
  fp32; its weights in fp32 for the call, the file's exact values where
  :func:`lib_sdfix.comfy.source.exact_for` finds them);
* ``dtype_attrs = [(vae, "vae_dtype")]``: ComfyUI casts each batch to ``vae.vae_dtype`` inside
  ``decode``/``encode`` and sizes its batches and model loading with it, so it says fp32 for the call and
  is restored (the same ``torch.dtype`` object) afterwards;
* ComfyUI's own blended-tile fallback (``decode_tiled_``/``encode_tiled_``, reached when out of memory
  escapes the network) turned into an out-of-memory error for the call, so the guarded call's own
  retry -- the whole call tiled in fp32, exact, no seams -- runs first.

If the guarded call fails anyway the node runs ``VAE.decode``/``VAE.encode`` exactly as ComfyUI would
(its tiled fallback included), logs why and says so in its report; ComfyUI's cancel is never caught.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List

from lib_sdfix.comfy import host
from lib_sdfix.failsafe import FixReport, log_once

__all__ = ["VaeRun", "guarded_decode", "guarded_encode", "vae_module", "dtype_name"]

_FIX = {"decode": "precision_guard", "encode": "guard_encode"}
_TILED = {"decode": "decode_tiled_", "encode": "encode_tiled_"}
_MISSING = object()
logger = logging.getLogger("sdfix")


class ComfyTiledFallback(MemoryError):
    """Raised in place of ComfyUI's blended-tile fallback while SDFix's guarded call runs: out of memory
    goes back to the guarded call, which retries tiled in fp32."""


@dataclass
class VaeRun:
    """One decode/encode through a node: the result, what happened, and the VAE's own dtype."""

    result: Any
    kind: str  # "decode" or "encode"
    report: FixReport
    native: str  # the VAE's dtype as ComfyUI runs it, e.g. "bf16"
    weights: str = ""  # "exact", "upcast" or "fp32" ("" when the guard did not run)
    source: str = ""  # why the weights ran as they did (exact_for's reason)
    notes: List[str] = field(default_factory=list)

    @property
    def fix(self) -> str:
        return _FIX[self.kind]

    @property
    def guarded(self) -> bool:
        return self.fix in self.report.applied

    def describe(self) -> str:
        """One line for the node's report output."""
        if self.guarded:
            how = {"exact": f"weights=exact ({self.source})", "upcast": f"weights=upcast ({self.source})",
                   "fp32": "weights=fp32"}.get(self.weights, f"weights={self.weights}")
            text = (f"{self.fix}: applied (VAE {self.kind} in fp32, VAE loaded as {self.native}, {how}; "
                    f"TF32, reduced-precision reductions, cudnn.benchmark and autocast off for the call)")
        else:
            why = self.report.failed.get(self.fix, "not run")
            text = f"{self.fix}: not applied ({why}); ComfyUI's own {self.kind} ran (VAE {self.native})"
        notes = [n for n in self.report.notes + self.notes if n]
        return "; ".join([text] + notes)


def dtype_name(dtype: Any) -> str:
    return {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), str(dtype))


def vae_module(vae: Any) -> Any:
    """The VAE's torch module (``comfy.sd.VAE.first_stage_model``); TypeError naming ``vae`` when it has none."""
    import torch

    module = getattr(vae, "first_stage_model", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"vae: expected a ComfyUI VAE (comfy.sd.VAE with a first_stage_model), got {type(vae).__name__}")
    return module


@contextlib.contextmanager
def _no_blended_tiles(vae: Any, kind: str) -> Iterator[None]:
    """For the block, ComfyUI's ``decode_tiled_``/``encode_tiled_`` of this VAE object raise out of memory
    (an instance attribute over the class's method, removed afterwards)."""
    name = _TILED[kind]
    before = vars(vae).get(name, _MISSING) if hasattr(vae, "__dict__") else _MISSING

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ComfyTiledFallback(f"out of memory in ComfyUI's VAE {kind}; SDFix retries it tiled in fp32")

    setattr(vae, name, refuse)
    try:
        yield
    finally:
        if before is _MISSING:
            vars(vae).pop(name, None)
        else:
            setattr(vae, name, before)


def _run(vae: Any, kind: str, tensor: Any) -> VaeRun:
    from lib_sdfix.comfy.source import exact_for
    from lib_sdfix.vae.call import guarded_call, report_run

    own: Callable[[Any], Any] = getattr(vae, kind)  # the bound VAE.decode / VAE.encode
    report = FixReport()
    run = VaeRun(None, kind, report, dtype_name(getattr(vae, "vae_dtype", None)))
    try:
        module = vae_module(vae)
        exact = exact_for(module)
        run.source = exact.reason
        weights: List[str] = []
        with _no_blended_tiles(vae, kind):
            run.result = guarded_call(own, module, tensor, dtype_attrs=[(vae, "vae_dtype")], exact=exact.tensors,
                                      record=lambda r: report_run(report, r), record_weights=weights.append)
        run.weights = weights[-1] if weights else ""
        report.mark_applied(run.fix)
        return run
    except Exception as exc:
        if host.is_interrupt(exc):
            raise
        report.mark_failed(run.fix, exc)
        logger.warning("SDFix VAE %s: %s not applied (%s: %s); ComfyUI's own %s runs", kind, run.fix,
                       type(exc).__name__, exc, kind)
        log_once(f"comfy:{kind}:{type(exc).__name__}", f"SDFix VAE {kind}: the guarded call failed", exc)
    run.result = own(tensor)
    return run


def guarded_decode(vae: Any, latent: Any) -> VaeRun:
    """``vae.decode(latent)`` under the guard (images NHWC in [0, 1], as ComfyUI returns them)."""
    return _run(vae, "decode", latent)


def guarded_encode(vae: Any, pixels: Any) -> VaeRun:
    """``vae.encode(pixels)`` under the guard (pixels NHWC in [0, 1]; returns the latent tensor)."""
    return _run(vae, "encode", pixels)
