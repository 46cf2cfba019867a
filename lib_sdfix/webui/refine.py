"""Late-step refine inside the WebUI: the last pass's own sampler runs the tail of its own schedule again.

Where: the host creates one sampler per pass (``sd_samplers.create_sampler``, patched while a
generation wants the refine).  :func:`watch` makes such a sampler record the schedule its pass computes
(``get_sigmas`` for k-diffusion samplers, ``get_timesteps`` for DDIM/PLMS) and, when the pass is the
generation's last (:meth:`lib_sdfix.webui.hosts.Host.final_pass`), refine the latent it returns --
inside the sampler call, before anything decodes it: the Hires pass decodes right after its sampler
returns, img2img blends its mask right after.

How, without a schedule of its own: k-diffusion samplers run again through the host's own
``sample_img2img`` (its noising, noise sampler and sampler arguments) with the pass's recorded
schedule handed back and a denoising strength that starts it ``k`` steps before the end; timestep
samplers run through the host's own ``sample`` from the re-noised latent over the schedule's last
``k`` steps.  The noise is drawn by the host's noise generator from :func:`lib_sdfix.refine.refine_seed`
of each image's seed.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from lib_sdfix.refine import refine_seed, refine_steps, skip_reason
from lib_sdfix.webui.hosts import Host, current
from lib_sdfix.webui.session import GenerationSession, session_of

__all__ = ["watch", "Watch", "FIX", "is_refining", "sampling_stage"]

FIX = "late_refine"
_ATTR = "_sdfix_refine"
_REFINING = "_sdfix_refining"  # on a sampler while it runs the refine's steps
_METHODS = ("sample", "sample_img2img")
_SCHEDULES = {"sigmas": "get_sigmas", "timesteps": "get_timesteps"}
_MISSING = object()


def _layout(p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
    """The hosts' ``sample(p, x, conditioning, ...)``: what every host's samplers take, in this order."""


def _layout_img2img(p, x, noise, conditioning, unconditional_conditioning, steps=None,
                    image_conditioning=None):
    """The hosts' ``sample_img2img(p, x, noise, conditioning, ...)``."""


#: The hosts' parameter layout of each sampler call (AUTOMATIC1111, Forge and reForge alike), for a
#: call whose method hides its names (another extension's ``(*args, **kwargs)`` wrapper).
_LAYOUTS = {"sample": inspect.signature(_layout), "sample_img2img": inspect.signature(_layout_img2img)}
_NEEDED = ("conditioning", "unconditional_conditioning")


class Watch:
    """What SDFix keeps on a watched sampler: the host's own methods and the last schedule it computed."""

    def __init__(self, kind: str, originals: Dict[str, Callable[..., Any]]) -> None:
        self.kind = kind  # "sigmas" or "timesteps"
        self.originals = originals
        self.schedule: Any = None
        self.runs = 0  # refines run (tests and notes)


def watch(sampler: Any) -> Any:
    """Make ``sampler`` record its schedule and refine its pass's latent when that pass is the last of
    a generation wanting the refine.  Idempotent; a sampler with neither schedule method is left alone."""
    if getattr(sampler, _ATTR, None) is not None:
        return sampler
    kind = next((k for k, name in _SCHEDULES.items() if callable(getattr(sampler, name, None))), None)
    if kind is None or not all(callable(getattr(sampler, m, None)) for m in _METHODS):
        return sampler
    schedule_name = _SCHEDULES[kind]
    state = Watch(kind, {name: getattr(sampler, name) for name in (*_METHODS, schedule_name)})

    def schedule(p: Any, steps: int) -> Any:
        state.schedule = state.originals[schedule_name](p, steps)
        return state.schedule

    setattr(sampler, schedule_name, schedule)
    for method in _METHODS:
        setattr(sampler, method, _refining(sampler, state, method))
    setattr(sampler, _ATTR, state)
    return sampler


@dataclass
class _Pass:
    """One sampler call: its generation, its arguments, and the steps it runs."""

    p: Any
    args: Dict[str, Any]
    steps: int
    method: str = "sample"

    @property
    def cond(self) -> Any:
        return self.args["conditioning"]

    @property
    def uncond(self) -> Any:
        return self.args["unconditional_conditioning"]

    @property
    def image_conditioning(self) -> Any:
        return self.args.get("image_conditioning")


def is_refining(sampler: Any) -> bool:
    """Whether ``sampler`` is running the late refine's steps now (not its pass's own)."""
    return vars(sampler).get(_REFINING, False) is True if hasattr(sampler, "__dict__") else False


def sampling_stage(sampler: Any, p: Any) -> str:
    """What the steps ``sampler`` runs now for ``p`` are, by what they are: the late refine's steps
    ("late refine"), the Hires pass's ("hires sampling"), or the first pass's ("sampling")."""
    if is_refining(sampler):
        return "late refine"
    return "hires sampling" if getattr(p, "is_hr_pass", False) else "sampling"


def _refining(sampler: Any, state: Watch, method: str) -> Callable[..., Any]:
    original = state.originals[method]

    def run(p: Any, *args: Any, **kwargs: Any) -> Any:
        session = session_of(p)
        host = current()
        if session is None or not session.wants(FIX):
            return original(p, *args, **kwargs)
        try:
            _announce(host, session, p)
            planned = _plan(host, sampler, state, session, method, p, args, kwargs) if host.final_pass(p, method) else None
        except Exception as exc:  # noqa: BLE001 -- never break the generation: sample as the host does
            session.report.mark_failed(FIX, exc)
            planned = None
        if planned is None:  # not the last pass (or no plan): the host's own sampling, nothing more
            return original(p, *args, **kwargs)
        call, count, why = planned
        samples = original(p, *args, **kwargs)
        try:
            if host.stopped():
                return samples  # Interrupt / Skip during the pass: nothing more runs
            host.next_job()  # the refine's job, announced up front: run now, or skipped
        except Exception as exc:  # noqa: BLE001
            session.report.mark_failed(FIX, exc)
            return samples
        if why is None:
            try:
                why = _no_tail(state, call, count)
            except Exception as exc:  # noqa: BLE001
                session.report.mark_failed(FIX, exc)
                return samples
        if why is not None:
            if why:
                session.report.mark_skipped(FIX, why)
            return samples
        refined = session.report.run(FIX, _refine, lambda *a: samples, host, sampler, state, call, samples, count)
        if refined is not samples and host.stopped():
            session.report.note(f"{FIX}: stopped while refining; the image is the pass's own")
            return samples
        return refined

    return run


def _plan(host: Host, sampler: Any, state: Watch, session: GenerationSession, method: str, p: Any,
          args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[_Pass, int, Optional[str]]:
    """The pass's call, how many of its steps run again, and why none can (None: they run)."""
    arguments = bind_call(state.originals[method], method, p, args, kwargs)
    call = _Pass(p, arguments, host.pass_steps(p, method, arguments.get("steps")), method)
    strength = session.settings.late_refine_strength
    count = refine_steps(strength, call.steps)
    why = _unsupported(sampler, state)
    if why is None and count == 0:
        why = f"strength {strength:g} x {call.steps} steps rounds to 0 steps"
    return call, count, why


def bind_call(original: Callable[..., Any], method: str, p: Any, args: Tuple[Any, ...],
              kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A sampler call's arguments by name, however the host passed them: the hosts call ``sample``
    positionally (``sample(p, x, conditioning, unconditional_conditioning, image_conditioning=...)``),
    others by keyword.  Bound to the method's own signature, or -- where that hides the names (a
    wrapper taking ``*args, **kwargs``) -- to the hosts' layout of that call.  TypeError if neither fits."""
    try:
        bound = inspect.signature(original).bind(p, *args, **kwargs)
    except (TypeError, ValueError):
        bound = None
    if bound is None or not all(name in bound.arguments for name in _NEEDED):
        bound = _LAYOUTS[method].bind(p, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _unsupported(sampler: Any, state: Watch) -> Optional[str]:
    """Why this sampler cannot be started at a point of its schedule, or None."""
    config = getattr(sampler, "config", None)
    name = getattr(config, "name", None)
    reason = skip_reason(name)
    if reason is not None:
        return reason
    wanted = "sigmas" if state.kind == "sigmas" else "timesteps"
    func = getattr(sampler, "func", None)
    try:
        takes = callable(func) and wanted in inspect.signature(func).parameters
    except (TypeError, ValueError):
        takes = False
    return None if takes else f"sampler {name or type(sampler).__name__} takes no {wanted} schedule"


def _announce(host: Host, session: GenerationSession, p: Any) -> None:
    """One more sampling job per remaining batch of ``p``, told to the progress bar once, before the
    first pass samples, so the bar never goes backwards (a skipped refine uses its job up at once)."""
    if "refine-jobs" in session.marks:
        return
    session.marks.add("refine-jobs")
    host.add_jobs(max(1, int(getattr(p, "n_iter", 1)) - int(getattr(p, "iteration", 0))))


def _intervals(state: Watch, call: _Pass) -> int:
    """How many steps of the pass's schedule a refine can start from (0: none)."""
    if state.schedule is None:
        raise RuntimeError("the pass computed no schedule SDFix could see")
    intervals = len(state.schedule) - 1
    if state.kind == "timesteps" and call.method == "sample_img2img":
        # the host's img2img walks timesteps[:t_enc] (t_enc = its steps - 1): never reach above them
        intervals = min(intervals, call.steps - 2)
    return max(0, intervals)


def _no_tail(state: Watch, call: _Pass, count: int) -> Optional[str]:
    """Why the pass, now sampled, leaves no step of its schedule to run again (None: it does)."""
    if count > 0 and _intervals(state, call) == 0:
        what = "img2img pass" if call.method == "sample_img2img" else "pass"
        return f"the {what}'s schedule ({call.steps} step{'s' if call.steps != 1 else ''}) leaves no step to run again"
    return None


def _refine(host: Host, sampler: Any, state: Watch, call: _Pass, latent: Any, count: int) -> Any:
    """The last ``count`` steps of the pass's schedule again, on ``latent``."""
    intervals = _intervals(state, call)
    seeds = list(getattr(call.p, "seeds", None) or [])
    if len(seeds) != latent.shape[0]:
        raise RuntimeError(f"{latent.shape[0]} latents but {len(seeds)} seeds")
    noise = host.seeded_noise(tuple(latent.shape[1:]), [refine_seed(s) for s in seeds])
    count = min(count, intervals)
    if count <= 0:
        return latent
    state.runs += 1
    with _continuing_steps(sampler, state.kind), _instance_attr(sampler, _REFINING, True):
        if state.kind == "sigmas":
            return _refine_sigmas(host, sampler, state, call, latent, noise, count, intervals)
        return _refine_timesteps(host, sampler, state, call, latent, noise, count)


def _continuing_steps(sampler: Any, kind: str) -> Any:
    """The refine's denoiser step counter continues at the pass's tail instead of restarting at 0.

    The hosts' CFG denoiser picks prompt-editing conditioning (``[a:b:0.5]``), "skip early CFG" and
    the refiner switch from ``step / total_steps``; ``initialize`` resets ``step`` to 0 and
    ``launch_sampling`` sets ``total_steps`` for the steps it launches.  Wrapping the sampler's
    function (its signature kept: the host reads its parameters) sets both, just before it runs, to
    where the same steps were in the pass: ``total_steps`` the pass's, ``step`` the pass's count less
    the refine's.  A k-diffusion pass and its refine both end on the schedule's last step, so their
    launched totals line up; a DDIM/PLMS pass runs one step fewer than it launches and the refine
    exactly what it launches, so there the count is where the pass's counter ended."""
    cfg = getattr(sampler, "model_wrap_cfg", None)
    func = getattr(sampler, "func", None)
    pass_total, pass_end = getattr(cfg, "total_steps", None), getattr(cfg, "step", None)  # as the pass left them
    if not callable(func) or not isinstance(pass_total, int) or not isinstance(pass_end, int):
        return contextlib.nullcontext()
    counted = pass_total if kind == "sigmas" else pass_end

    @functools.wraps(func)
    def at_the_tail(*args: Any, **kwargs: Any) -> Any:
        refine_total = getattr(cfg, "total_steps", None)
        if isinstance(refine_total, int) and 0 <= refine_total <= counted:
            cfg.total_steps, cfg.step = pass_total, counted - refine_total
        return func(*args, **kwargs)

    return _instance_attr(sampler, "func", at_the_tail)


def _refine_sigmas(host: Host, sampler: Any, state: Watch, call: _Pass, latent: Any, noise: Any, count: int,
                   intervals: int) -> Any:
    """Through the host's ``sample_img2img``: with ``steps=count`` and a denoising of
    count / (intervals + 0.5) its ``setup_img2img_steps`` asks for an ``intervals``-step schedule and
    runs its last ``count`` steps; that schedule is the pass's own, handed back as recorded.  img2img's
    "Extra noise" setting is held at 0: the latent is noised to exactly the schedule's level."""
    schedule = state.schedule

    def recorded(p: Any, steps: int) -> Any:
        if steps != intervals:
            raise RuntimeError(f"the host asked for a {steps}-step schedule, the pass's has {intervals}")
        return schedule

    with _instance_attr(sampler, "get_sigmas", recorded), _instance_attr(call.p, "denoising_strength",
                                                                       count / (intervals + 0.5)), \
            host.without_extra_noise():
        return state.originals["sample_img2img"](call.p, latent, noise, call.cond, call.uncond, steps=count,
                                                 image_conditioning=call.image_conditioning)


def _refine_timesteps(host: Host, sampler: Any, state: Watch, call: _Pass, latent: Any, noise: Any,
                      count: int) -> Any:
    """Through the host's ``sample``: from the latent noised to the timestep ``count`` steps before the
    end, over the schedule's last ``count`` steps (timesteps ascend; the sampler walks them down)."""
    timesteps = state.schedule
    tail = timesteps[:count + 1]
    alpha = float(host.alphas_cumprod(sampler)[int(timesteps[count])])
    noised = latent * alpha ** 0.5 + noise.to(latent) * (1.0 - alpha) ** 0.5
    with _instance_attr(sampler, "get_timesteps", lambda p, steps: tail):
        return state.originals["sample"](call.p, noised, call.cond, call.uncond, steps=count,
                                         image_conditioning=call.image_conditioning)


@contextlib.contextmanager
def _instance_attr(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` for the block; whatever the instance held before (or nothing) afterwards."""
    before = vars(owner).get(name, _MISSING)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if before is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, before)
