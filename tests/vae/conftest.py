"""Fixtures of the VAE tests: no fp32 state left behind by any test, both VAE layouts, small strips."""
from __future__ import annotations

import pytest

from lib_sdfix.vae import call as vae_call
from lib_sdfix.vae import estimate as vae_estimate
from lib_sdfix.vae import exact as vae_exact
from lib_sdfix.vae import fp32 as vae_fp32
from lib_sdfix.vae import plan as vae_plan
from lib_sdfix.vae import strips as vae_strips

from ..ldm_vae import LdmVAE
from .support import HALF, diffusers_vae


@pytest.fixture(autouse=True)
def no_state_left():
    """Every test leaves no reference count behind (a leak would keep some VAE fp32 for good)."""
    vae_exact._CACHE.clear()
    yield
    assert vae_fp32._MODULES == {} and vae_fp32._ATTRS == {}
    vae_exact._CACHE.clear()


@pytest.fixture(params=["ldm", "diffusers"])
def vae(request):
    return (LdmVAE() if request.param == "ldm" else diffusers_vae()).to(HALF)


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of a few rows, so that small test images are cut into many of them."""
    counts = []
    real = vae_strips._strips

    def strips(height, rows):
        found = real(height, rows)
        counts.append(len(found))
        return found

    monkeypatch.setattr(vae_estimate, "default_strip_bytes", lambda *a, **k: 48 * 1024)
    monkeypatch.setattr(vae_estimate, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_plan, "default_strip_bytes", lambda *a, **k: 48 * 1024)
    monkeypatch.setattr(vae_plan, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_call, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_strips, "_strips", strips)
    return counts
