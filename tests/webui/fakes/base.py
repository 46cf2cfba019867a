"""What every part of the fake hosts shares: the repository root, the host names, a namespace and a
fresh module object."""
from __future__ import annotations

import importlib.machinery
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HOSTS = ("a1111", "forge", "reforge")


class Namespace(types.SimpleNamespace):
    pass


def new_module(name: str, package: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    return mod
