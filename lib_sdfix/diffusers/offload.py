"""Cause ``offload_hooks``: one CPU-offload hook chain for a txt2img and an img2img pipeline that share
their modules; and the reading of accelerate's hooks the other fixes need.

Why: each pipeline's ``enable_model_cpu_offload()`` registers hooks on every module it holds.  Over
shared modules the second call either stacks a second hook on each (diffusers <= 0.27: two moves per
forward, one pipeline's cleanup removing the other's hooks) or takes the hooks away from the first
pipeline (>= 0.28: stale hooks, every call re-registers everything).
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lib_sdfix.diffusers.causes import Finding
from lib_sdfix.diffusers.state import is_ours, unwrap_method, wrap_method
from lib_sdfix.failsafe import FixReport

__all__ = ["share_offload_chain", "find_offload_hooks", "hooks_on", "offload_hooks_on", "weight_offload_hooks"]


def hooks_on(module: Any) -> List[Any]:
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


def offload_hooks_on(module: Any) -> List[Any]:
    return [h for h in hooks_on(module) if type(h).__name__ == "CpuOffload"]


def weight_offload_hooks(module: Any) -> List[Tuple[str, Any, Any]]:
    """(submodule name, submodule, hook) for every accelerate hook that keeps weights of ``module`` in
    a weights map (sequential CPU offload, disk offload); empty when the module holds its own weights."""
    out = []
    for name, sub in module.named_modules():
        for hook in hooks_on(sub):
            if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
                out.append((name, sub, hook))
    return out


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
        count = len(offload_hooks_on(module))
        if count > 1:
            problems.append(f"{name} has {count} CPU-offload hooks stacked (each forward moves it {count} times)")
    if len(pipes) == 2:
        competing, stale = [], set()
        for name, module in _shared(pipes):
            own = [_user_hooks_for(p, module) for p in pipes]
            if not (own[0] and own[1]) or own[0][0].hook is own[1][0].hook:
                continue
            competing.append(name)
            attached = {id(h) for h in offload_hooks_on(module)}
            stale.update(label for label, hooks in zip(("txt2img", "img2img"), own) if id(hooks[0].hook) not in attached)
        if competing:
            text = f"both pipelines called enable_model_cpu_offload() on the shared {', '.join(competing)}"
            if stale:
                text += f": the {' and '.join(sorted(stale))} pipeline's hooks are no longer attached"
            problems.append(text + "; each call re-registers every hook and moves every model to the CPU")
    return problems


def _offload_in_use(pipes: Sequence[Any]) -> bool:
    return any(offload_hooks_on(m) for _, m in _named_modules(pipes)) or any(getattr(p, "_all_hooks", None) for p in pipes)


def _foreign_hooks(pipes: Sequence[Any]) -> List[str]:
    """Modules with accelerate hooks other than model offload (sequential offload, device maps)."""
    out = []
    for name, module in _named_modules(pipes):
        if any(type(h).__name__ != "CpuOffload" for h in hooks_on(module)):
            out.append(name)
            continue
        if any(getattr(sub, "_hf_hook", None) is not None for sub in module.modules() if sub is not module):
            out.append(name)
    return out


def _is_shared_chain(pipes: Sequence[Any]) -> bool:
    hooks = getattr(pipes[0], "_all_hooks", None)
    if not hooks or any(getattr(p, "_all_hooks", None) is not hooks for p in pipes):
        return False
    attached = all(len(offload_hooks_on(h.model)) == 1 and offload_hooks_on(h.model)[0] is h.hook for h in hooks)
    covered = {id(h.model) for h in hooks}
    return attached and all(id(m) in covered for _, m in _named_modules(pipes) if offload_hooks_on(m))


def find_offload_hooks(pipes: Sequence[Any]) -> Finding:
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
        for hook in offload_hooks_on(module):
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


def _rebuilds_for(current: Any, pipes: Sequence[Any]) -> bool:
    """Whether ``current`` is SDFix's ``enable_model_cpu_offload`` for exactly these pipelines."""
    return (is_ours(current) and isinstance(current, functools.partial) and len(current.args[0]) == len(pipes)
            and all(ref() is q for ref, q in zip(current.args[0], pipes)))


def share_offload_chain(pipe: Any, img2img_pipe: Any = None, report: Optional[FixReport] = None) -> bool:
    """One CPU-offload hook chain for the pipeline (pair); True if the hooks were rebuilt.

    Afterwards every module has exactly one offload hook, both pipelines hold the same chain (text
    encoder -> UNet -> VAE), and their ``enable_model_cpu_offload`` -- which diffusers calls after
    every generation -- rebuilds it for both.  Sequential offload and device maps are left alone.
    Idempotent.
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
        refs = tuple(weakref.ref(q) for q in pipes)
        for p in pipes:
            if _rebuilds_for(p.__dict__.get("enable_model_cpu_offload"), pipes):
                continue  # already rebuilding for this very pair
            unwrap_method(p, "enable_model_cpu_offload")  # one that rebuilt for another pair
            wrap_method(p, "enable_model_cpu_offload", lambda original: functools.partial(_enable_shared_offload, refs))
    if report is not None and rebuilt:
        report.mark_applied("offload_hooks")
    return rebuilt
