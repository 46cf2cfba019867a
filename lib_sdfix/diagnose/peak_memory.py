"""Peak memory of one run: CUDA ``max_memory_allocated`` on a GPU, the process's peak resident set (RSS)
on a CPU -- and which of the two a number is, so a report never mixes them.

On Linux the RSS peak (``VmHWM``) is reset before each run by writing ``5`` to ``/proc/self/clear_refs``;
where that is not allowed the peak is the process's since start (``ru_maxrss``), which only grows, and
the report says so (``resettable`` False).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

__all__ = ["PeakMemory", "measure_peak", "memory_kind"]


@dataclass
class PeakMemory:
    """After the ``with`` block: ``peak_bytes`` (None where nothing could be read) and what it measures."""

    kind: str = ""
    resettable: bool = True
    peak_bytes: Optional[int] = None


def _cuda(device: Any) -> bool:
    import torch

    return torch.cuda.is_available() and getattr(torch.device(device) if device is not None else None, "type", None) == "cuda"


def memory_kind(device: Any) -> str:
    """"cuda max_memory_allocated" or "process peak RSS"."""
    return "cuda max_memory_allocated" if device is not None and _cuda(device) else "process peak RSS"


def _read_hwm() -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _maxrss() -> Optional[int]:
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) * (1 if os.uname().sysname == "Darwin" else 1024)


@contextlib.contextmanager
def measure_peak(device: Any = None) -> Iterator[PeakMemory]:
    """Measure the peak memory of the block on ``device`` (a torch device or its name; None: the CPU)."""
    if device is not None and _cuda(device):
        import torch

        index = torch.device(device).index
        torch.cuda.synchronize(index)
        torch.cuda.reset_peak_memory_stats(index)
        result = PeakMemory("cuda max_memory_allocated")
        try:
            yield result
        finally:
            torch.cuda.synchronize(index)
            result.peak_bytes = int(torch.cuda.max_memory_allocated(index))
        return
    reset = _reset_hwm() and _read_hwm() is not None
    result = PeakMemory("process peak RSS" if reset else "process peak RSS since start (cannot be reset here)", reset)
    try:
        yield result
    finally:
        result.peak_bytes = _read_hwm() if reset else _maxrss()
