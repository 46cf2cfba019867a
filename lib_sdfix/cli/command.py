"""What every ``python -m lib_sdfix`` command shares: its program name, and how it fails when it can
say why -- one argparse-style line on stderr and exit code 2, a module that is not installed named
with how to install it."""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["PROG", "fail", "missing_module_in", "INSTALL_CORE", "INSTALL_TORCH"]

PROG = "python -m lib_sdfix"

INSTALL_CORE = "pip install -e ."
INSTALL_TORCH = "install PyTorch for your machine first (https://pytorch.org/get-started/locally/)"


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
