"""fp32 weights for a half-precision VAE from the file it was loaded from.

Why: when the weights were loaded from a file that holds them in higher precision than they run in
(an fp32 or fp16 file, a bf16 VAE), the in-place upcast (:func:`lib_sdfix.vae.fp32.fp32_vae`) keeps
the rounding.  Then the file's own values are used: read once with safetensors, matched to the
parameters by content (a file tensor counts only if rounding it gives the parameter bit for bit),
cached on the CPU.  :func:`lib_sdfix.vae.fp32.fp32_vae` runs them (its ``exact``).
"""
from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from lib_sdfix.vae.fp32 import low_precision_tensors

__all__ = ["ExactWeights", "exact_weights", "MANTISSA_BITS", "file_stats"]

#: Mantissa bits of each floating dtype a VAE's weights come in: a file holds a weight "exactly" only
#: in more bits than the weight runs in.
MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
_VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass
class ExactWeights:
    """The outcome of matching a VAE to its source file: fp32 tensors by parameter name, or why not."""

    tensors: Optional[Dict[str, torch.Tensor]]
    source: Optional[str]
    reason: str
    signature: Tuple[Any, ...] = ()

    @property
    def mode(self) -> str:
        return "exact" if self.tensors else "upcast"

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.tensors or {}).values())


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, ExactWeights]" = weakref.WeakKeyDictionary()


def _version(tensor: torch.Tensor) -> Any:
    """The tensor's in-place version counter (a load_state_dict into the same storage bumps it); None for
    inference-mode tensors (Forge loads its weights under inference mode), which have none."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def file_stats(paths: Sequence[str]) -> Tuple[Tuple[str, Any, Any], ...]:
    """(path, size, mtime) of each file, (path, None, None) where it cannot be read: what a cache keyed on
    files compares to see that none of them changed."""
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((path, None, None))
    return tuple(stats)


def _signature(module: torch.nn.Module, files: Sequence[str]) -> Tuple[Any, ...]:
    params = tuple((name, t.data_ptr(), t.dtype, tuple(t.shape), _version(t)) for name, t in low_precision_tensors(module))
    return params, file_stats(files)


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu()
    raw = data.view(torch.int16) if data.element_size() == 2 else data.view(torch.int32)
    return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()


def exact_weights(module: Optional[torch.nn.Module], files: Sequence[str]) -> ExactWeights:
    """Match ``module``'s low-precision weights to higher-precision copies in ``files`` (safetensors).

    Cached per module while its weights and the files stay the same.  Every low-precision parameter
    must be found (content match) in one file with more mantissa bits than the parameter has, else
    the answer is "upcast" with the reason.
    """
    if module is None:
        return ExactWeights(None, None, "no VAE module")
    low = low_precision_tensors(module)
    if not low:
        return ExactWeights(None, None, "the VAE already runs in fp32")
    files = [f for f in files if f]
    signature = _signature(module, files)
    cached = _CACHE.get(module)
    if cached is not None and cached.signature == signature:
        return cached
    result = ExactWeights(None, None, "no safetensors source file for the VAE's weights")
    inference = any(t.is_inference() for _, t in low)  # cached tensors of the parameters' kind (see fp32._swap_in)
    for path in files:
        if not path.endswith(".safetensors") or not os.path.isfile(path):
            continue
        try:
            with torch.inference_mode(inference):
                result = _match_file(low, path)
        except Exception as exc:  # noqa: BLE001 -- a damaged file costs the exact values only
            base = os.path.basename(path)
            result = ExactWeights(None, base, f"{base}: not readable ({type(exc).__name__}: {exc})")
        if result.tensors:
            break
    result.signature = signature
    _CACHE[module] = result
    return result


def _match_file(low: List[Tuple[str, torch.Tensor]], path: str) -> ExactWeights:
    from safetensors import safe_open

    wanted: Dict[Tuple[torch.dtype, int, str], List[str]] = {}
    for name, tensor in low:
        wanted.setdefault((tensor.dtype, tensor.numel(), _digest(tensor)), []).append(name)
    sizes = {(dtype, numel) for dtype, numel, _ in wanted}
    candidates: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    lower = False
    with safe_open(path, framework="pt") as handle:
        keys = list(handle.keys())
        prefixed = [k for k in keys if k.startswith(_VAE_PREFIXES)]
        for key in prefixed or keys:
            info = handle.get_slice(key)
            numel = 1
            for dim in info.get_shape():
                numel *= dim
            targets = [dtype for dtype, n in sizes if n == numel]
            if not targets:
                continue
            tensor = handle.get_tensor(key)
            if not tensor.is_floating_point():
                continue
            for dtype in targets:
                names = wanted.get((dtype, numel, _digest(tensor.to(dtype))))
                if not names:
                    continue
                if MANTISSA_BITS.get(tensor.dtype, 0) <= MANTISSA_BITS[dtype]:
                    lower = True
                    continue
                for name in names:
                    candidates.setdefault(name, []).append((key, tensor))
    found = {name: t for name, t in ((n, _pick(n, options)) for n, options in candidates.items()) if t is not None}
    base = os.path.basename(path)
    missing = [name for name, _ in low if name not in found]
    if missing:
        why = "the file holds them in the precision they run in" if lower and len(missing) == len(low) else \
            f"{len(missing)} of {len(low)} weights not found in higher precision"
        return ExactWeights(None, base, f"{base}: {why}")
    shapes = {name: tuple(t.shape) for name, t in low}
    tensors = {name: t.to(torch.float32).reshape(shapes[name]).contiguous() for name, t in found.items()}
    return ExactWeights(tensors, base, f"fp32 weights from {base}")


def _pick(name: str, options: List[Tuple[str, torch.Tensor]]) -> Optional[torch.Tensor]:
    """The file tensor for parameter ``name`` among those that round to it: the only one, the one
    stored under its own name, or any of several equal ones.  Different ones (tensors that differ in
    the file but round alike) and no name to tell them apart: none -- never a guess."""
    if len(options) == 1:
        return options[0][1]
    for key, tensor in options:
        if _without_prefix(key) == name:
            return tensor
    if len({(t.dtype, _digest(t)) for _, t in options}) == 1:
        return options[0][1]
    return None


def _without_prefix(key: str) -> str:
    for prefix in _VAE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
