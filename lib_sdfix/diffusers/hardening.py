"""What is wrong with a pipeline pair (:func:`audit`), fixing it (:func:`harden`), and undoing that
(:func:`unharden`): the front's entry points over the per-cause modules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from lib_sdfix.diffusers.causes import CAUSES, Audit
from lib_sdfix.diffusers.embeds import cast_prompt_embeds, find_embeds_dtype
from lib_sdfix.diffusers.hires import find_hires_resize
from lib_sdfix.diffusers.offload import find_offload_hooks, share_offload_chain
from lib_sdfix.diffusers.scheduler import find_scheduler_mismatch, share_scheduler
from lib_sdfix.diffusers.state import Hardening, clear_state, is_ours, set_state, state_of, unwrap_method
from lib_sdfix.diffusers.vae import find_vae_precision, guard_vae, unguard_vae
from lib_sdfix.failsafe import FixReport, logger
from lib_sdfix.settings import SDFixSettings

__all__ = ["audit", "harden", "unharden", "fix_report", "HardenReport"]


def audit(pipe: Any, img2img_pipe: Any = None) -> Audit:
    """Which of the five causes the pipeline (pair) has right now.

    Reads the pipelines, their modules, accelerate's hooks and the process's precision flags; the
    Hires resize is caller code, so that finding reports the last resize :func:`hires_fix` made
    for this pipeline (None until one ran).
    """
    pipes = [p for p in (pipe, img2img_pipe) if p is not None]
    return Audit((
        find_vae_precision(pipes),
        find_embeds_dtype(pipes),
        find_offload_hooks(pipes),
        find_scheduler_mismatch(pipe, img2img_pipe),
        find_hires_resize(pipe),
    ))


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

    existing = state_of(pipe)
    report = existing.report if existing is not None else FixReport()
    state = Hardening(options, fixes, report)
    for p in pipes:
        set_state(p, state)
    changed: List[str] = []

    def attempt(name: str, fn: Callable[[], bool]) -> None:
        try:
            if fn():
                changed.append(name)
        except Exception as exc:  # noqa: BLE001 -- a fix that cannot be applied must not break the service
            report.mark_failed(name, exc)
            logger.error("%s could not be applied: %s", name, exc, exc_info=exc)

    # The VAE guard and the embeddings cast read the options at call time: installed whenever chosen.
    if "vae_precision" in fixes:
        for vae in {id(v): v for v in (getattr(p, "vae", None) for p in pipes) if v is not None}.values():
            attempt("vae_precision", lambda vae=vae: _guard_vae_changed(vae, options, report, fixes))
    if "embeds_dtype" in fixes:
        for p in pipes:
            attempt("embeds_dtype", lambda p=p: cast_prompt_embeds(p, report))
    if state.on("offload_hooks"):
        attempt("offload_hooks", lambda: share_offload_chain(pipe, img2img_pipe, report))
    if state.on("scheduler_mismatch") and img2img_pipe is not None:
        attempt("scheduler_mismatch", lambda: share_scheduler(pipe, img2img_pipe, report))
    _, failed, notes = report.items()
    return HardenReport(before, audit(pipe, img2img_pipe), tuple(dict.fromkeys(changed)), tuple(notes), failed)


def fix_report(pipe: Any) -> Optional[FixReport]:
    """The live report of a hardened pipeline: fixes applied per call, failures, notes (embedding
    casts, out-of-memory fallbacks, scheduler alignments).  None if the pipeline is not hardened."""
    state = state_of(pipe)
    return state.report if state is not None else None


def _guard_vae_changed(vae: Any, options: SDFixSettings, report: FixReport, fixes: Iterable[str]) -> bool:
    had = is_ours(vae.__dict__.get("decode"))
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
            unguard_vae(vae)
        unwrap_method(p, "encode_prompt")
        unwrap_method(p, "enable_model_cpu_offload")
        clear_state(p)
