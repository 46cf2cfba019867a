import pytest

from . import fakes


@pytest.fixture
def comfy(monkeypatch):
    """The fake ComfyUI modules (tests/comfy/fakes.py) for one test."""
    fakes.install(monkeypatch)
    monkeypatch.delenv("SDFIX_VAE_MEMORY_GB", raising=False)
    return fakes
