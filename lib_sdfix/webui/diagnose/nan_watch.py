"""The NaN/Inf watch inside the host: every sampling step and the VAE decode of a generation.

Why these places: the hosts' own check (``devices.test_for_nans``) looks at one element of the final
latent and the decoded image in AUTOMATIC1111 and is a no-op in Forge and reForge.  The watch sees
each step's sampler state and denoised prediction (the sampler's ``callback_state``, which every host
calls once per step), the latent going into the VAE and the image coming out of it
(``processing.decode_latent_batch``, the hosts' one decode entry point after sampling), and what
AUTOMATIC1111's own check saw before its fp32 retry of a failed decode (``devices.test_for_nans``).

Two users: a generation with the ``nan_watch`` option (its session holds the watch; the AlwaysOn
script wraps the sampler before each sampling and writes the infotext note after the decode), and
the diagnosis runner (a watch bound to its thread for one run).  Which functions are replaced is the
host's to say (:meth:`lib_sdfix.webui.hosts.Host.nan_watch_targets`).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List, Optional

from lib_sdfix.diagnose.nan_watch import NanWatch
from lib_sdfix.failsafe import log_once
from lib_sdfix.webui import patches
from lib_sdfix.webui.hosts import current
from lib_sdfix.webui.refine import sampling_stage
from lib_sdfix.webui.session import current_session, session_of

__all__ = ["watching", "attach", "before_sampling", "after_decode", "observe_step", "active_watch"]

_LOCAL = threading.local()
_WRAPPED = "_sdfix_nan_watch"
_NOTE = "_sdfix_nan_note"


def active_watch() -> Optional[NanWatch]:
    """The watch of this thread: the diagnosis runner's, else the current generation's (option on)."""
    watch = getattr(_LOCAL, "watch", None)
    if watch is not None:
        return watch
    session = current_session()
    return getattr(session, "nan_watch", None) if session is not None else None


def observe_step(watch: NanWatch, stage: str, d: Any) -> None:
    """One sampler step at ``stage`` (its callback dict): the state ``x`` and the prediction ``denoised``."""
    if not isinstance(d, dict):
        return
    step = d.get("i")
    steps = current().sampling_steps()
    watch.observe(stage, (d.get("x"), d.get("denoised")),
                  step=int(step) + 1 if isinstance(step, int) else None, steps=steps)


def _observe(watch: NanWatch, stage: str, tensors: Any) -> None:
    """A check that never breaks the call it watches."""
    try:
        watch.observe(stage, tensors)
    except Exception as exc:  # noqa: BLE001
        log_once("nan-watch-" + stage, f"SDFix: NaN watch could not check the {stage}: {exc}", exc)


def _decode_latent_batch(original: Callable) -> Callable:
    """``processing.decode_latent_batch(model, batch, ...)``: the latent in, and each decoded image out."""

    def replacement(model, batch, *args, **kwargs):
        watch = active_watch()
        if watch is None:
            return original(model, batch, *args, **kwargs)
        _observe(watch, "latent", (batch,))
        samples = original(model, batch, *args, **kwargs)
        _observe(watch, "vae decode", list(samples))
        return samples

    return replacement


def _test_for_nans(original: Callable) -> Callable:
    """``devices.test_for_nans(x, where)``: AUTOMATIC1111 checks the latent and each decoded image here
    and may then retry the decode in fp32 -- the first, failed decode is only ever seen here."""

    def replacement(x, where, *args, **kwargs):
        watch = active_watch()
        if watch is not None and hasattr(x, "isfinite"):
            try:
                bad = not bool(x.isfinite().all())  # the host reads x now anyway
            except Exception:  # noqa: BLE001 -- not a tensor after all: the host's own check decides
                bad = False
            if bad:
                _observe(watch, "vae decode" if where == "vae" else "latent", (x,))
        return original(x, where, *args, **kwargs)

    return replacement


_FACTORIES = {"decode_latent_batch": _decode_latent_batch, "test_for_nans": _test_for_nans}


def _targets() -> List[patches.Target]:
    return [(owner, attr, _FACTORIES[kind]) for owner, attr, kind in current().nan_watch_targets()]


@contextlib.contextmanager
def watching(watch: NanWatch) -> Iterator[NanWatch]:
    """Bind ``watch`` to this thread for the block (the diagnosis runner's runs)."""
    with patches.held(_targets()):
        previous = getattr(_LOCAL, "watch", None)
        _LOCAL.watch = watch
        try:
            yield watch
        finally:
            _LOCAL.watch = previous


# --- a generation with the option on (the AlwaysOn script's hooks) ----------------------------------


def attach(session: Any) -> None:
    """Give a generation whose settings ask for it a watch; the decode patch lives as long as the session."""
    if session is None or not getattr(session.settings, "nan_watch", False) or getattr(session, "nan_watch", None):
        return
    try:
        session.hold(_targets())
    except Exception:  # noqa: BLE001 -- never break a generation; the watch just does not run
        return
    session.nan_watch = NanWatch()


def before_sampling(p: Any) -> None:
    """Before each sampling (``process_before_every_sampling``): watch the sampler about to run.  Forge
    calls the hook twice for one Hires pass: a sampler is wrapped once.  Never breaks the generation:
    a sampler without ``callback_state`` (or anything unexpected) just goes unwatched."""
    try:
        session = session_of(p)
        watch = getattr(session, "nan_watch", None) if session is not None else None
        sampler = getattr(p, "sampler", None)
        callback = getattr(sampler, "callback_state", None)
        if watch is None or callback is None or getattr(sampler, _WRAPPED, False):
            return
        def callback_state(d: Any) -> Any:
            try:
                observe_step(watch, sampling_stage(sampler, p), d)
            except Exception as exc:  # noqa: BLE001 -- the watch must not stop the sampler
                log_once("nan-watch-step", f"SDFix: NaN watch could not check a step: {exc}", exc)
            return callback(d)

        sampler.callback_state = callback_state
        setattr(sampler, _WRAPPED, True)
    except Exception as exc:  # noqa: BLE001 -- never break a generation
        log_once("nan-watch-sampler", f"SDFix: NaN watch could not watch this sampler: {exc}", exc)


def after_decode(p: Any) -> None:
    """After the decode (``postprocess_batch``, before the infotext is written): the note, replacing
    the one of an earlier batch of the same job.  Never breaks the generation."""
    try:
        session = session_of(p)
        watch = getattr(session, "nan_watch", None) if session is not None else None
        if watch is None:
            return
        note = watch.note()
        previous = getattr(session, _NOTE, None)
        if previous is not None and previous in session.report.notes:
            session.report.notes.remove(previous)
        session.report.note(note)
        setattr(session, _NOTE, note)
    except Exception as exc:  # noqa: BLE001 -- never break a generation
        log_once("nan-watch-note", f"SDFix: NaN watch could not write its note: {exc}", exc)
