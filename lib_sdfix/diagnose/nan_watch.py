"""NaN/Inf watch: the first sampling step or stage of a generation that produced a non-finite value.

Why flags stay on the device: reading ``torch.isnan(x).any()`` right away would make the CPU wait for
the GPU at every step.  Each check only queues two small reductions; the flags are read together
when the watch is resolved -- at the VAE decode, which waits for the GPU anyway.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = ["STAGES", "NonFinite", "NanWatch"]

#: Where values are checked, in the order a generation reaches them.
STAGES = ("sampling", "hires sampling", "late refine", "latent", "vae decode")
#: Checks queued before they are read anyway (bounds the memory a very long run holds in flags).
_MAX_PENDING = 4096


@dataclass(frozen=True)
class NonFinite:
    """Where non-finite values were first seen: ``step`` is 1-based within its pass (None: no steps)."""

    stage: str
    step: Optional[int] = None
    steps: Optional[int] = None
    nan: bool = True
    inf: bool = False

    def describe(self) -> str:
        kinds = "/".join(k for k, on in (("NaN", self.nan), ("Inf", self.inf)) if on) or "non-finite"
        where = self.stage
        if self.step is not None:
            where += f" step {self.step}" + (f" of {self.steps}" if self.steps else "")
        return f"{kinds} at {where}"

    def as_dict(self) -> Dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "steps": self.steps, "nan": self.nan, "inf": self.inf,
                "text": self.describe()}


class NanWatch:
    """Collects checks of one generation (or one diagnosis cell) and finds the first non-finite one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: List[Tuple[str, Optional[int], Optional[int], Any]] = []
        self.first: Optional[NonFinite] = None
        self.later: List[str] = []  # other stages that had non-finite values after the first
        self.checked: Dict[str, int] = {}

    def observe(self, stage: str, tensors: Iterable[Any], step: Optional[int] = None,
                steps: Optional[int] = None) -> None:
        """Queue a check of ``tensors`` (floating torch tensors; others are ignored) at ``stage``/``step``."""
        import torch

        flags = [torch.stack([t.isnan().any(), t.isinf().any()]) for t in tensors
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not flags:
            return
        flag = flags[0] if len(flags) == 1 else torch.stack(flags).any(dim=0)
        with self._lock:
            self._pending.append((stage, step, steps, flag))
            self.checked[stage] = self.checked.get(stage, 0) + 1
            full = len(self._pending) >= _MAX_PENDING
        if full:
            self.resolve()

    def resolve(self) -> Optional[NonFinite]:
        """Read the queued flags (one wait for the device) and return the first non-finite check, if any."""
        import torch

        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            values = torch.stack([flag.to("cpu", non_blocking=False) for *_, flag in pending]).tolist()
            for (stage, step, steps, _), (nan, inf) in zip(pending, values):
                if not (nan or inf):
                    continue
                if self.first is None:
                    self.first = NonFinite(stage, step, steps, bool(nan), bool(inf))
                elif stage != self.first.stage and stage not in self.later:
                    self.later.append(stage)
        return self.first

    @property
    def finite(self) -> bool:
        return self.resolve() is None

    def summary(self) -> Dict[str, Any]:
        """{"finite", "first", "later", "checked"} for results and JSON."""
        first = self.resolve()
        return {"finite": first is None, "first": first.as_dict() if first else None, "later": list(self.later),
                "checked": dict(self.checked)}

    def note(self) -> str:
        """One line for the infotext's "SDFix notes"."""
        first = self.resolve()
        if first is None:
            counted = ", ".join(f"{n} {stage} check{'s' if n != 1 else ''}" for stage, n in self.checked.items())
            return f"nan watch: all values finite ({counted or 'nothing checked'})"
        text = f"nan watch: first {first.describe()}"
        if self.later:
            text += f", later also in {', '.join(self.later)}"
        return text
