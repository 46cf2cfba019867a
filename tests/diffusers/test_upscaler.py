"""Upscaler loading: .pth and .safetensors through spandrel, the realesrgan backend optional, no
torchvision stand-in left behind."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch
from PIL import Image

from lib_sdfix.diffusers import UpscalerUnavailable, load_upscaler

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    one_thread,
    service_flags,
    upscaler_file,
)

# --- upscaler loading ------------------------------------------------------------------------------


def test_upscaler_loads_pth_and_safetensors_through_spandrel(tmp_path, upscaler_file):
    from lib_sdfix.cli.tiny import tiny_esrgan_state_dict

    pth = tmp_path / "tiny.pth"
    torch.save(tiny_esrgan_state_dict(), pth)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8))
    outputs = []
    for path in (pth, upscaler_file):
        upscaler = load_upscaler(path, device="cpu", backend="spandrel")
        assert upscaler.name == "ESRGAN x4" and upscaler.scale == 4
        outputs.append(np.asarray(upscaler(image)))
    assert outputs[0].shape == (96, 80, 3)
    assert np.array_equal(outputs[0], outputs[1]), "same weights, same output, whichever file format"
    assert not np.array_equal(outputs[0], np.asarray(image.resize((80, 96), Image.NEAREST)))


def test_realesrgan_backend_is_optional(monkeypatch, upscaler_file):
    monkeypatch.setitem(sys.modules, "basicsr", None)  # what a torchvision without functional_tensor leaves
    monkeypatch.setitem(sys.modules, "basicsr.archs.rrdbnet_arch", None)
    with pytest.raises(UpscalerUnavailable, match="realesrgan backend does not import"):
        load_upscaler(upscaler_file, device="cpu", backend="realesrgan")
    assert load_upscaler(upscaler_file, device="cpu").backend == "spandrel"
    with pytest.raises(ValueError, match="backend must be"):
        load_upscaler(upscaler_file, backend="opencv")


def test_spandrel_import_leaves_no_torchvision_stand_in_behind(upscaler_file):
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import sys, importlib.util
        from lib_sdfix.diffusers import load_upscaler
        real = importlib.util.find_spec("torchvision") is not None
        up = load_upscaler({str(upscaler_file)!r}, device="cpu")
        tv = sys.modules.get("torchvision")
        print(up.backend, real, tv is None or getattr(tv, "__file__", None) is not None)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    backend, _, clean = out.stdout.split()
    assert backend == "spandrel" and clean == "True"
