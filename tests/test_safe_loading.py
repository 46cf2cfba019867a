"""No checkpoint is unpickled beyond plain weights: every torch.load in the tree passes
weights_only=True, and the one loader that needs torch.load refuses anything else."""
import ast
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"node_modules", "__pycache__"}


def _sources():
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
                   and not (Path(directory) / d / "pyvenv.cfg").exists()]  # a virtual environment
        for name in files:
            if name.endswith(".py"):
                yield Path(directory) / name


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def unsafe_loads(source, filename="<source>"):
    """(line, what) for each torch.load without weights_only=True, each reference to torch.load that
    is not such a call (an alias, ``from torch import load``), and each pickle load."""
    tree = ast.parse(source, filename)
    found, checked = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func) == "torch.load":
            checked.add(id(node.func))
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            found.append((node.lineno, _dotted(node.func)))
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append((node.lineno, "from torch import load"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node) == "torch.load" and id(node) not in checked:
            found.append((node.lineno, "torch.load referenced, not called with weights_only=True"))
    return found


def test_the_check_sees_every_unsafe_form():
    assert unsafe_loads("torch.load(p, weights_only=True)") == []
    assert unsafe_loads("torch.load(p)") and unsafe_loads("torch.load(p, weights_only=False)")
    assert unsafe_loads("torch.load(p, weights_only=flag)"), "only the literal True is safe"
    assert unsafe_loads("load = torch.load") and unsafe_loads("from torch import load")
    assert unsafe_loads("pickle.loads(b)") and unsafe_loads("'torch.load(p)'") == []


def test_every_torch_load_in_the_tree_is_weights_only():
    sources = list(_sources())
    assert any(p.relative_to(ROOT).as_posix() == "lib_sdfix/diffusers/upscaler.py" for p in sources)  # loads .pth files
    assert any(p.parent.name == "bench" for p in sources)
    problems = [f"{path.relative_to(ROOT)}:{line}: {what}"
                for path in sources for line, what in unsafe_loads(path.read_text(encoding="utf-8"), str(path))]
    assert problems == []


class Runs:
    """Unpickling this calls os.makedirs(marker): proof of code run at load time."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def fake_realesrgan(monkeypatch):
    """The realesrgan backend's imports, standing in for basicsr/realesrgan (not installed here)."""
    made = []

    class RealESRGANer:
        def __init__(self, **kwargs):
            made.append(kwargs)

    modules = {
        "basicsr": types.ModuleType("basicsr"),
        "basicsr.archs": types.ModuleType("basicsr.archs"),
        "basicsr.archs.rrdbnet_arch": types.ModuleType("basicsr.archs.rrdbnet_arch"),
        "realesrgan": types.ModuleType("realesrgan"),
    }
    modules["basicsr.archs.rrdbnet_arch"].RRDBNet = lambda **kwargs: kwargs
    modules["realesrgan"].RealESRGANer = RealESRGANer
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return made


def test_realesrgan_backend_refuses_a_checkpoint_that_holds_more_than_weights(tmp_path, fake_realesrgan):
    torch = pytest.importorskip("torch")
    from lib_sdfix.cli.tiny import tiny_esrgan_state_dict
    from lib_sdfix.diffusers import load_upscaler

    good = tmp_path / "plain.pth"
    torch.save({"params_ema": tiny_esrgan_state_dict()}, good)
    upscaler = load_upscaler(good, device="cpu", backend="realesrgan")
    assert upscaler.backend == "realesrgan" and upscaler.scale == 4 and len(fake_realesrgan) == 1

    marker = tmp_path / "code-ran"
    bad = tmp_path / "with-code.pth"
    torch.save({"params_ema": tiny_esrgan_state_dict(), "extra": Runs(marker)}, bad)
    with pytest.raises(ValueError, match="refusing to load .*holds more than weights.*makedirs") as caught:
        load_upscaler(bad, device="cpu", backend="realesrgan")
    assert "weights_only" not in str(caught.value), "no advice to turn the protection off"
    assert not marker.exists() and len(fake_realesrgan) == 1
