"""Cause ``scheduler_mismatch``: the img2img (Hires) pass runs the txt2img pass's scheduler.

Why: the img2img/Hires pass otherwise keeps the checkpoint's default (PNDM/DDIM, uniform steps),
which at Hires denoising strengths smooths away what DPM++ 2M Karras made.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from lib_sdfix.diffusers.causes import Finding
from lib_sdfix.failsafe import FixReport
from lib_sdfix.parity import resolve_hires_sampling

__all__ = ["share_scheduler", "find_scheduler_mismatch"]


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

    The copy is a separate instance built from the same config (Karras sigmas,
    ``final_sigmas_type`` and all), so the two pipelines never share a scheduler's per-run state.
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


def find_scheduler_mismatch(pipe: Any, img2img_pipe: Any) -> Finding:
    if img2img_pipe is None:
        return Finding("scheduler_mismatch", False, "no img2img pipeline")
    a, b = getattr(pipe, "scheduler", None), getattr(img2img_pipe, "scheduler", None)
    if a is None or b is None:
        return Finding("scheduler_mismatch", False, "no scheduler")
    if _same_scheduler(a, b):
        return Finding("scheduler_mismatch", False, f"both run {_sampler_label(a)} ({_schedule_label(a)})")
    return Finding("scheduler_mismatch", True, _scheduler_difference(a, b))
