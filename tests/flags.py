"""The process-wide precision flags SDFix's guard turns off, read as the tests' records keep them."""
from __future__ import annotations

from typing import Any, Dict

import torch


def flag_record() -> Dict[str, Any]:
    """The three flags as a record of a module run keeps them."""
    return {"cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark}
