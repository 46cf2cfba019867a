"""Which file a ComfyUI VAE was loaded from, so the guarded call can use the file's exact fp32 weights.

Why: ComfyUI's ``comfy.sd.VAE`` keeps no path (the checkpoint loader hands it a state dict).  A bf16
VAE loaded from an fp16 or fp32 file still has the file's more precise values there; SDFix's
:func:`lib_sdfix.vae.exact.exact_weights` uses them when it is told the file.  Here the file is found
cheaply: each ``.safetensors`` file in ComfyUI's ``vae`` and ``checkpoints`` folders is opened (header
only) and one small probe tensor of the VAE is read; a file counts when that tensor, rounded to the
VAE's dtype, is the VAE's own bit for bit and is stored in higher precision.  Only that file is then
matched in full by the core.  The answer is cached per VAE module while its weights and the folders'
files stay the same.
"""
from __future__ import annotations

import weakref
from typing import Any, List, Optional, Tuple

from lib_sdfix.comfy import host

__all__ = ["find_source", "exact_for"]

# Small tensors every SD1.x/SD2.x/SDXL VAE has, under the names ComfyUI's first_stage_model and
# diffusers-format files give them; checkpoints prefix them with first_stage_model.
_PROBES = ("post_quant_conv.weight", "quant_conv.weight", "decoder.conv_out.weight", "encoder.conv_in.weight")
_PREFIXES = ("first_stage_model.", "vae.", "")
_BITS = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7}

_CACHE: "weakref.WeakKeyDictionary[Any, Tuple[Tuple[Any, ...], Optional[str]]]" = weakref.WeakKeyDictionary()


def _files() -> List[str]:
    return [path for _, path in host.model_files() if path.endswith(".safetensors")]


def _probe(module: Any) -> Optional[Tuple[str, Any]]:
    import torch

    params = dict(module.named_parameters())
    for name in _PROBES:
        tensor = params.get(name)
        if tensor is not None and tensor.is_floating_point() and tensor.dtype != torch.float32:
            return name, tensor.detach().to("cpu")
    return None


def _holds(path: str, name: str, tensor: Any, bits: int) -> bool:
    """Whether ``path`` stores ``name`` in more than ``bits`` mantissa bits with values rounding to ``tensor``."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            keys = set(handle.keys())
            for prefix in _PREFIXES:
                key = prefix + name
                if key not in keys:
                    continue
                info = handle.get_slice(key)
                if _BITS.get(info.get_dtype(), 0) <= bits or tuple(info.get_shape()) != tuple(tensor.shape):
                    continue
                return bool(torch.equal(handle.get_tensor(key).to(tensor.dtype), tensor))
    except Exception:  # noqa: BLE001 -- an unreadable file is just not the source
        return False
    return False


def find_source(module: Any) -> Optional[str]:
    """The ``.safetensors`` file in ComfyUI's vae/checkpoints folders that holds ``module``'s weights in
    higher precision than they run in; None when none does (or the VAE already runs in fp32)."""
    from lib_sdfix.vae.exact import MANTISSA_BITS, file_stats

    probe = _probe(module)
    if probe is None:
        return None
    name, tensor = probe
    bits = MANTISSA_BITS.get(tensor.dtype, 23)
    files = _files()
    signature = (name, tensor.dtype, file_stats(files), tuple(p.data_ptr() for p in module.parameters()))
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == signature:
        return cached[1]
    found = next((path for path in files if _holds(path, name, tensor, bits)), None)
    _CACHE[module] = (signature, found)
    return found


def exact_for(module: Any) -> Any:
    """:class:`lib_sdfix.vae.exact.ExactWeights` for ``module``: the file's fp32 values where a file in
    ComfyUI's folders holds them, else why not (the weights are then upcast in place)."""
    from lib_sdfix.vae.exact import ExactWeights, exact_weights
    from lib_sdfix.vae.fp32 import low_precision_tensors

    if not low_precision_tensors(module):
        return exact_weights(module, [])  # "the VAE already runs in fp32"
    try:
        path = find_source(module)
    except Exception as exc:  # noqa: BLE001 -- the search costs the exact values only, never the guard
        return ExactWeights(None, None, f"the search for the VAE's file failed ({type(exc).__name__}: {exc})")
    if path is None:
        return ExactWeights(None, None, "no .safetensors file in ComfyUI's vae or checkpoints folders holds this "
                                        "VAE's weights in higher precision")
    return exact_weights(module, [path])

