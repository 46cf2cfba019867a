"""Run a VAE in fp32 for one call and leave it exactly as it was: weights, dtype attributes, devices.

Why: a half-precision VAE rounds every activation, and hosts decide the dtype the VAE runs in from
attributes beside the weights (AUTOMATIC1111's ``devices.dtype_vae``, Forge's and reForge's
``VAE.vae_dtype``, PyTorch Lightning's cached ``_dtype``), casting the input to it inside their own
decode.  So an fp32 call needs both: fp32 weights and every such attribute saying fp32, for the
duration of the host's own decode, then everything back.

* Weights: each floating parameter keeps its Parameter object; only its ``.data`` is swapped for an
  fp32 tensor and the original tensor object is put back afterwards (bit-identical, same storage).
  If the host moved or re-cast the tensor inside the call (its model manager loading the VAE onto
  the GPU), the tensor is cast back to its dtype where it now is, so the host's bookkeeping holds.
* Exact weights: the file's own fp32 values instead of the upcast where the file holds them
  (``exact``, from :func:`lib_sdfix.vae.exact.exact_weights`).
* Parts: a call may cast only some submodules (``parts``); the tiled executor
  (:mod:`lib_sdfix.vae.strips`) casts the encoder's and decoder's weights one operation at a time, so
  a tiled call casts only what runs around them.  A later call that needs more casts more; every
  floating tensor is watched, so one the host re-cast inside the call (AUTOMATIC1111's encode moves
  the whole VAE to ``devices.dtype_vae``) goes back to its dtype too.
* Reference counts, process-wide: several threads or nested calls share one fp32 state; the last
  one out restores.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["fp32_vae", "vae_weight_dtype", "low_precision_tensors", "dtype_attributes"]

_LOCK = threading.RLock()


def vae_weight_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype the VAE's weights have right now (a cached ``.dtype`` can lag behind in-place casts)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def dtype_attributes(module: torch.nn.Module) -> List[Tuple[Any, str]]:
    """Dtype caches inside the module tree: PyTorch Lightning keeps ``_dtype`` behind ``.dtype``, and
    code inside the VAE reads it to cast its inputs."""
    return [(m, "_dtype") for m in module.modules() if isinstance(getattr(m, "_dtype", None), torch.dtype)]


# --- weights ----------------------------------------------------------------------------------------


@dataclass
class _Swap:
    name: str
    tensor: torch.Tensor  # the Parameter / buffer object (kept)
    original: torch.Tensor  # its data before
    ours_ptr: int
    dtype: torch.dtype


@dataclass
class _ModuleState:
    module: Optional[torch.nn.Module] = None
    users: int = 0
    swaps: List[_Swap] = field(default_factory=list)
    exact: Optional[Dict[str, torch.Tensor]] = None
    watched: List[Tuple[str, torch.Tensor, torch.dtype]] = field(default_factory=list)  # every low-precision tensor

    @property
    def mode(self) -> str:
        """How the weights run: "exact" (the file's fp32 values), "upcast" (cast in place) or "fp32" (as loaded)."""
        if not self.watched:
            return "fp32"
        return "exact" if self.exact else "upcast"


_MODULES: Dict[int, _ModuleState] = {}


def low_precision_tensors(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The module's floating parameters and buffers that are not fp32, by name."""
    named = list(module.named_parameters(remove_duplicate=True)) + list(module.named_buffers(remove_duplicate=True))
    return [(name, t) for name, t in named if t.is_floating_point() and t.dtype != torch.float32]


def _in_parts(name: str, parts: Optional[Sequence[str]]) -> bool:
    return parts is None or any(name == part or name.startswith(part + ".") for part in parts)


def _new_state(module: torch.nn.Module, exact: Optional[Dict[str, torch.Tensor]]) -> _ModuleState:
    watched = [(name, t, t.dtype) for name, t in low_precision_tensors(module)]
    return _ModuleState(module=module, exact=exact or None, watched=watched)


def _swap_in(state: _ModuleState, parts: Optional[Sequence[str]]) -> None:
    """Cast the tensors of ``parts`` (all when None) that are not cast yet."""
    done = {swap.name for swap in state.swaps}
    exact = state.exact
    first = len(state.swaps)
    try:
        for name, tensor in low_precision_tensors(state.module):
            if name in done or not _in_parts(name, parts):
                continue
            original = tensor.data
            source = exact.get(name) if exact else None
            # The fp32 tensor is of the parameter's kind: Forge and reForge load their VAE under
            # inference_mode, and an inference parameter holding a normal tensor fails in every conv.
            with torch.inference_mode(tensor.is_inference()):
                if source is not None:
                    new = source.to(original.device)
                    if new.stride() != original.stride() or new.is_inference() != tensor.is_inference():
                        # channels-last weights pick other kernels: keep the layout (and the kind)
                        new = torch.empty_like(original, dtype=torch.float32).copy_(new)
                else:
                    new = original.to(torch.float32)
            tensor.data = new
            state.swaps.append(_Swap(name, tensor, original, new.data_ptr(), original.dtype))
    except BaseException:
        _undo(state.swaps[first:], state.module)  # out of memory half-way: never leave a half-cast VAE behind
        del state.swaps[first:]
        raise


def _swap_out(state: _ModuleState) -> None:
    _undo(state.swaps, state.module)
    swapped = {id(swap.tensor) for swap in state.swaps}
    for name, tensor, dtype in state.watched:
        # Not cast here, but the host may have re-cast it inside the call (following an attribute set to fp32).
        if id(tensor) not in swapped and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
        now = _registered(state.module, name)
        if now is not None and now is not tensor and now.is_floating_point() and now.dtype != dtype:
            now.data = now.data.to(dtype)
    state.swaps.clear()
    state.module = None


def _undo(swaps: List[_Swap], module: Optional[torch.nn.Module]) -> None:
    for swap in reversed(swaps):
        tensor = swap.tensor
        if tensor.data_ptr() == swap.ours_ptr and tensor.dtype == torch.float32:
            tensor.data = swap.original
        elif tensor.dtype != swap.dtype:
            tensor.data = tensor.data.to(swap.dtype)  # moved or re-cast inside the call: back to its dtype there
        now = _registered(module, swap.name)
        if now is not None and now is not tensor and now.is_floating_point() and now.dtype != swap.dtype:
            # The host put another tensor there inside the call (``module.to`` makes new buffers, and
            # new Parameters across device types): that one goes back to the dtype, where it is.
            now.data = now.data.to(swap.dtype)


def _registered(module: Optional[torch.nn.Module], name: str) -> Optional[torch.Tensor]:
    """The parameter or buffer registered under ``name`` now, if any."""
    if module is None:
        return None
    owner_name, _, leaf = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        return None
    tensor = owner._parameters.get(leaf)
    return tensor if tensor is not None else owner._buffers.get(leaf)


# --- dtype attributes ---------------------------------------------------------------------------


@dataclass
class _AttrState:
    owner: Any
    name: str
    previous: Any
    changed: bool = False
    users: int = 0


_ATTRS: Dict[Tuple[int, str], _AttrState] = {}


def _attrs_enter(attrs: Sequence[Tuple[Any, str]]) -> List[Tuple[int, str]]:
    keys: List[Tuple[int, str]] = []
    try:
        for owner, name in attrs:
            key = (id(owner), name)
            state = _ATTRS.get(key)
            if state is None:
                previous = getattr(owner, name)
                state = _AttrState(owner, name, previous)
                if isinstance(previous, torch.dtype) and previous != torch.float32:
                    setattr(owner, name, torch.float32)
                    state.changed = True
                _ATTRS[key] = state
            state.users += 1
            keys.append(key)
    except BaseException:
        _attrs_exit(keys)  # one unreadable attribute: the ones already set go back
        raise
    return keys


def _attrs_exit(keys: Sequence[Tuple[int, str]]) -> None:
    for key in reversed(keys):
        state = _ATTRS[key]
        state.users -= 1
        if state.users == 0:
            del _ATTRS[key]
            # Put back only what was set here, and only unless the host changed it deliberately
            # meanwhile (another dtype; the attribute removed).
            if state.changed and getattr(state.owner, state.name, None) is torch.float32:
                setattr(state.owner, state.name, state.previous)


@contextlib.contextmanager
def fp32_vae(module: Optional[torch.nn.Module], dtype_attrs: Sequence[Tuple[Any, str]] = (),
             exact: Optional[Dict[str, torch.Tensor]] = None, parts: Optional[Sequence[str]] = None) -> Iterator[str]:
    """Run the block with ``module``'s floating weights in fp32 and every ``(owner, name)`` dtype
    attribute (plus the module's own dtype caches) saying fp32; everything back afterwards.

    ``exact`` maps parameter names to fp32 tensors to use instead of upcasting (see
    :func:`lib_sdfix.vae.exact.exact_weights`).  ``parts``: the names of the submodules to cast (default: all).  Yields
    how the weights run: "exact", "upcast" or "fp32" (nothing to cast).
    """
    attrs = list(dtype_attrs) + (dtype_attributes(module) if module is not None else [])
    key = id(module) if module is not None else None
    with _LOCK:
        state = None
        if module is not None:
            state = _MODULES.get(key)
            fresh = state is None
            if fresh:
                state = _new_state(module, exact)
            try:
                _swap_in(state, parts)
            except BaseException:
                if fresh:
                    _swap_out(state)
                raise
            if fresh:
                _MODULES[key] = state
            state.users += 1
        try:
            attr_keys = _attrs_enter(attrs)
        except BaseException:
            _release(key, state)
            raise
    try:
        yield state.mode if state is not None else "fp32"
    finally:
        with _LOCK:
            _attrs_exit(attr_keys)
            _release(key, state)


def _release(key: Optional[int], state: Optional[_ModuleState]) -> None:
    if state is None:
        return
    state.users -= 1
    if state.users == 0:
        _MODULES.pop(key, None)
        _swap_out(state)
