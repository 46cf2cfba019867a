"""An fp32 copy of a VAE whose weights accelerate's offload hooks keep in a weights map.

Why: with sequential (or disk) offload the VAE's parameters live on the meta device and the hooks
put fresh parameter objects in from the weights map at every forward, casting the values to the
dtype the meta parameters have.  Casting such a VAE in place mixes dtypes and leaves it unable to
decode.  The copy is built once from the weights map, read only, and kept on the CPU; it goes to
the hooks' execution device only for the call.
"""
from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

__all__ = ["Fp32Copy", "NoFp32Copy", "map_tensors", "cast_floating", "first_floating_dtype"]

_PLAIN = (bool, int, float, str, type(None))


class NoFp32Copy(RuntimeError):
    """The offloaded VAE cannot be rebuilt in fp32 (the message says why)."""


def map_tensors(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` (tensor, tuple, list, dict, diffusers output, latent distribution) with ``fn`` applied
    to every tensor in it; containers are rebuilt, never changed in place."""
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    if hasattr(value, "__dict__") and any(isinstance(v, torch.Tensor) for v in vars(value).values()):
        clone = copy.copy(value)  # a latent distribution: mean, std, ... as attributes
        for name, v in vars(value).items():
            if isinstance(v, torch.Tensor):
                setattr(clone, name, fn(v))
        return clone
    return value


def cast_floating(value: Any, dtype: Any) -> Any:
    """``value`` with its floating tensors in ``dtype``."""
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t)


def first_floating_dtype(args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    import torch

    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return None


def _first_tensor_device(args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
    import torch

    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


class Fp32Copy:
    """The fp32 copy of one offloaded VAE, tied to the hooks (and weights maps) it was built from."""

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
            raise NoFp32Copy(f"a {type(vae).__name__} cannot be rebuilt from its config")
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
                    raise NoFp32Copy(f"{full} is on the meta device and in no offload weights map")
                else:  # a buffer the hooks leave on the module (not offloaded)
                    value = tensor
                dtype = torch.float32 if value.is_floating_point() else value.dtype
                value = value.detach().to(device="cpu", dtype=dtype, copy=True)
                made[id(tensor)] = torch.nn.Parameter(value, requires_grad=False) if kind == "_parameters" else value
            owner_name, _, leaf = full.rpartition(".")
            owner = clone.get_submodule(owner_name)
            if leaf not in getattr(owner, kind):
                raise NoFp32Copy(f"the rebuilt {type(vae).__name__} has no {full}")
            getattr(owner, kind)[leaf] = made[id(tensor)]
        left = [n for n, t in list(clone.named_parameters()) + list(clone.named_buffers()) if t.device.type == "meta"]
        if left:
            raise NoFp32Copy(f"the rebuilt {type(vae).__name__} has tensors the original lacks: {', '.join(left[:3])}")
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

    def call(self, kind: str, args: Tuple, kwargs: Dict[str, Any], record: Optional[Callable[[Any], None]] = None) -> Any:
        """``copy.<kind>(*args, **kwargs)`` guarded and tiled as planned (:mod:`lib_sdfix.vae.call`), on
        the hooks' execution device; the result comes back to the device the inputs were on."""
        from lib_sdfix.vae.call import guarded_call

        module, device = self.module, self.device
        back = _first_tensor_device(args, kwargs)
        away = device.type != "cpu"
        if away:
            module.to(device)
            args, kwargs = map_tensors(args, lambda t: t.to(device)), map_tensors(kwargs, lambda t: t.to(device))
        try:
            out = guarded_call(getattr(module, kind), module, *args, record=record, **kwargs)
        finally:
            if away:
                module.to("cpu")
        if back is not None and back != device:
            out = map_tensors(out, lambda t: t.to(back))
        return out
