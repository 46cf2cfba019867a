"""SDFix core: removes the precision and pipeline mistakes behind the "oil painting" look.

WebUI-free (imports no ``modules.*``): the WebUI glue in ``scripts/``, the A/B tab and the diffusers
front all call into this package.  Submodules are imported lazily so that importing ``lib_sdfix``
costs nothing at WebUI start; ``precision`` imports torch, ``metrics`` scikit-image.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "precision_guard": "precision",
    "precision_guarded": "precision",
    "guarded_vae_call": "precision",
    "vae_in_fp32": "precision",
    "read_flags": "precision",
    "effective_tf32": "precision",
    "resolve_hires_sampling": "parity",
    "HiresSampling": "parity",
    "resize_after_upscale": "resize",
    "compare_detail": "metrics",
    "difference_heatmap": "metrics",
    "SDFixSettings": "settings",
    "SettingsError": "settings",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lib_sdfix' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
