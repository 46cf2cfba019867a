"""The A/B runner's hold on sampling: every sampler the host creates on this thread during a run reports
the latent it returns, and may be handed one to return instead of sampling.

Why there: the host creates a sampler for the first pass and one for the Hires pass; handing such a
sampler a latent in ``launch_sampling`` keeps everything around the sampling (schedule bookkeeping,
infotext, the Hires upscale) as the host runs it.  A late refine samples once more on the last pass's
sampler, so a run's latents are every sampling it made, in order.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List, Optional

from lib_sdfix.webui import hooks, patches
from lib_sdfix.webui.refine import sampling_stage

__all__ = ["Sampling", "recorded", "in_progress"]

_LOCAL = threading.local()


class Sampling:
    """The latents the samplers of one run return, in order (first pass, Hires pass), and the latents
    queued to hand them instead of sampling.

    Only the run's own samplers count (the host sets ``sampler.p`` before launching): an extension that
    runs a generation of its own from a hook on this thread (ADetailer, from ``postprocess_image``)
    samples as usual, and its latent is neither recorded as the run's nor replaced."""

    def __init__(self, inject: List[Any], owner: Any = None, observer: Optional[Callable[[str, Any], None]] = None) -> None:
        self.inject = list(inject)
        self.outputs: List[Any] = []
        self.owner = owner
        self.observer = observer  # observer(stage, the sampler's callback dict) at every step it samples

    def wrap(self, sampler: Any) -> Any:
        launch = sampler.launch_sampling
        if self.observer is not None:
            # The hosts look ``self.callback_state`` up when sampling starts: an instance attribute is seen.
            callback = sampler.callback_state

            def callback_state(d: Any) -> Any:
                if self.owner is None or getattr(sampler, "p", self.owner) is self.owner:
                    self.observer(sampling_stage(sampler, getattr(sampler, "p", self.owner)), d)
                return callback(d)

            sampler.callback_state = callback_state

        def launch_sampling(steps: int, func: Callable[[], Any]) -> Any:
            if self.owner is not None and getattr(sampler, "p", self.owner) is not self.owner:
                return launch(steps, func)  # another generation's sampler
            index = len(self.outputs)
            latent = self.inject[index] if index < len(self.inject) else None
            result = latent.clone() if latent is not None else launch(steps, func)
            self.outputs.append(result.clone())
            return result

        sampler.launch_sampling = launch_sampling
        return sampler


@contextlib.contextmanager
def recorded(inject: List[Any], owner: Any = None, observer: Any = None) -> Iterator[Sampling]:
    """Every sampler the host creates on this thread during the block reports (and may skip) its sampling."""
    with patches.held(hooks.hook_targets({"sampler"})):
        _LOCAL.sampling = sampling = Sampling(inject, owner, observer)
        try:
            with hooks.watching_samplers(sampling.wrap):
                yield sampling
        finally:
            _LOCAL.sampling = None


def in_progress() -> bool:
    """Whether an A/B or diagnosis run samples on this thread now (its generations are not the user's)."""
    return getattr(_LOCAL, "sampling", None) is not None
