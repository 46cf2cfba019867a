"""What every ``python -m lib_sdfix`` command shares: its program name; how it fails when it can say
why -- one argparse-style line on stderr and exit code 2, a module that is not installed named with
how to install it; and the argument types and bounds of the commands that run a diffusers pipeline
(``ab`` and ``diagnose``), each checked before anything loads."""
from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Callable, Iterable, List, Optional

__all__ = ["PROG", "fail", "missing_module_in", "missing_modules", "install_hint", "INSTALL_CORE", "INSTALL_TORCH",
           "INSTALL_EXTRA", "DIFFUSERS_MODULES", "SEED_MAX", "SIZE_MIN", "SIZE_MAX", "SIZE_MULTIPLE", "STEPS_MIN",
           "STEPS_MAX", "whole", "number", "model_path", "existing_file", "out_folder", "device", "check_device"]

PROG = "python -m lib_sdfix"

INSTALL_CORE = "pip install -e ."
INSTALL_TORCH = "install PyTorch for your machine first (https://pytorch.org/get-started/locally/)"
INSTALL_EXTRA = 'pip install -e .[diffusers]  (or: pip install "sdfix[diffusers]")'
#: What a diffusers command imports beyond the core: the ``[diffusers]`` extra (torch is the user's own install).
DIFFUSERS_MODULES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "tqdm")

# Bounds of the arguments: what SD1.x/2.x/SDXL are trained for and a CPU or one GPU can run.
SEED_MAX = 2**32 - 1
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
STEPS_MIN, STEPS_MAX = 1, 150


def fail(command: str, message: str) -> int:
    """Print ``<prog> <command>: error: <message>`` to stderr; the exit code to return (2)."""
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


def missing_module_in(exc: Optional[BaseException]) -> Optional[str]:
    """The top-level name of a module missing behind ``exc`` (also one that a library wrapped in its
    own error, as diffusers' lazy imports do), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def missing_modules(names: Iterable[str]) -> List[str]:
    """Those of ``names`` that cannot be imported here (looked up, not imported)."""
    missing = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a parent package missing, or a None entry in sys.modules
            missing.append(name)
    return missing


def install_hint(module: str) -> str:
    """How to install ``module`` for a diffusers command."""
    if module == "torch":
        return INSTALL_TORCH + ", then " + INSTALL_EXTRA
    return ("it is part of the [diffusers] extra: " if module in DIFFUSERS_MODULES + ("spandrel",) else "") + INSTALL_EXTRA


# --- argument types -------------------------------------------------------------------------------


def whole(low: int, high: int, multiple: int = 1) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (and a multiple of ``multiple``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}, got {value}")
        return value

    return parse


def number(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            bounds = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def model_path(text: str) -> str:
    """argparse type: a diffusers model folder, or a single model file."""
    path = Path(text)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise argparse.ArgumentTypeError(f"{text} is a folder without model_index.json, not a diffusers model")
    elif not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


def existing_file(text: str) -> str:
    """argparse type: a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def out_folder(text: str) -> str:
    """argparse type: an output folder that exists or can be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is not None and not path.exists() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be created: {existing} is a file")
    return text


def device(text: str) -> str:
    """argparse type: a torch device name, or auto."""
    if not re.fullmatch(r"auto|cpu|(cuda|mps|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N, mps or xpu, got {text!r}")
    return text


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """A usage error when the device ``name`` is not available here (needs torch: after the module check)."""
    import torch

    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {name} is not available here (torch {torch.__version__} sees no CUDA GPU)")
    if kind == "mps" and not torch.backends.mps.is_available():
        parser.error(f"argument --device: {name} is not available here")
