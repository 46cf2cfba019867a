"""Diagnosis, WebUI-free: what a careful engineer does by hand when an artifact survives SDFix.

One step of that work per module: ``roundtrip`` (the VAE on the user's own image under several
precisions), ``plan`` (one-variable sweeps at a fixed seed, and which cells share a sampling),
``steps`` (the denoised prediction of chosen steps), ``nan_watch`` (the first step or stage with NaN/Inf),
``findings`` (measurements -> likely causes), ``speed_options`` / ``optimizations`` / ``cost`` (the user's
speed and memory options: which there are, the generations that measure them, their measured cost),
``peak_memory`` (a run's peak, GPU or process), ``chart`` and ``output`` (metrics, grid, chart, JSON,
saving; the pictures and tables themselves: :mod:`lib_sdfix.imaging`); ``request`` validates the API body.  The hosts run the plans
(lib_sdfix.webui.diagnose, lib_sdfix.cli.diagnose_run) and hand the images back to ``output``.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> submodule.  Imported on first use: the WebUI imports the AlwaysOn script (and its NaN watch)
# at start, and the analysis helpers (metrics, charts, imaging) are only needed by a diagnosis.
_EXPORTS = {
    "LikelyCause": "findings", "roundtrip_findings": "findings", "steps_findings": "findings", "sweep_findings": "findings",
    "NanWatch": "nan_watch", "NonFinite": "nan_watch",
    "FORMAT": "output", "analyse_roundtrip": "output", "analyse_steps": "output", "analyse_sweep": "output",
    "diagnosis_json": "output", "display_table": "output", "merge_nan": "output", "save_diagnosis": "output",
    "AXES": "plan", "AXIS_LABELS": "plan", "DEFAULT_VALUES": "plan", "Cell": "plan", "count_decodes": "plan",
    "count_samplings": "plan", "sweep_cells": "plan",
    "KINDS": "request", "MAX_STRIP_STEPS": "request", "MAX_SWEEP_VALUES": "request", "RoundTripRequest": "request",
    "StepsRequest": "request", "SweepRequest": "request", "default_strip_steps": "request",
    "diagnose_request_from_body": "request", "parse_value_list": "request",
    "VARIANTS": "roundtrip", "supported_variants": "roundtrip", "default_variants": "roundtrip",
    "StepCapture": "steps",
    "OptimizationsRequest": "request", "SPEED_OPTIONS": "speed_options", "options_for": "speed_options",
    "FoundOption": "optimizations", "plan_cost": "optimizations", "analyse_cost": "cost", "Timed": "cost",
    "measure_peak": "peak_memory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
