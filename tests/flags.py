"""The process-wide precision flags SDFix's guard turns off: set as a WebUI or service sets them, and read
as the tests' records and snapshots keep them."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch


def set_webui_flags() -> None:
    """TF32 and cuDNN autotuning on, process-wide: what the WebUI's ``devices.enable_tf32`` does at start on
    Ampere+ GPUs, and what services switch on for speed."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def current_flags() -> Tuple[bool, bool, bool]:
    """(cuDNN TF32, matmul TF32, cuDNN autotuning) as they are now."""
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark


def flags_on() -> bool:
    """Whether all three are on (the WebUI's own state, outside SDFix's guard)."""
    return all(current_flags())


def flag_record() -> Dict[str, Any]:
    """The three flags as a record of a module run keeps them."""
    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark}
