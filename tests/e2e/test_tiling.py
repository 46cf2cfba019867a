"""The tiled fp32 VAE inside real WebUIs: the host's own VAE is one the tiled executor runs, a decode
that does not fit the memory budget runs tiled with the untiled image, and the infotext says so.

The budget is set in the WebUI's process through the observer (``SDFIX_VAE_MEMORY_GB``)."""
from __future__ import annotations

import numpy as np

from .test_webui import assert_restored


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image().convert("RGB"), dtype=np.int16)


def test_status_reports_the_fp32_peak_of_the_host_vae(webui):
    # Before any decode the report is for twice the model's size (SDXL: 2048x2048, ~16 GB in fp32,
    # which tiles on a small machine); after one it is for the last decode's size.
    webui.txt2img(width=64, height=72)
    memory = webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_fp32_memory"]
    assert memory["available"] is True, memory  # the host's VAE structure is recognised
    assert memory["size_source"] == "last decode" and memory["size"] == [64, 72], memory
    # (at the small sizes of these tests the strips' fixed cost makes the tiled estimate the larger one)
    assert memory["fp32_bytes"] >= memory["native_bytes"] > 0 and memory["fp32_tiled_bytes"] > 0
    assert memory["tiled"] is False and memory["reason"] == "fits", memory


def test_a_decode_over_the_memory_budget_runs_tiled_in_fp32(webui):
    flags_before = webui.flags()
    untiled = webui.txt2img()
    assert "tiled" not in untiled.params()["SDFix"]
    webui.ok("POST", "/sdfix-observer/vae-memory-budget", {"gb": 0.001})
    try:
        tiled = webui.txt2img()
        memory = webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_fp32_memory"]
    finally:
        webui.ok("POST", "/sdfix-observer/vae-memory-budget", {"gb": None})
    assert memory["tiled"] is True and memory["size_source"] == "last decode", memory
    assert tiled.params()["SDFix"].endswith("tiled=decode"), tiled.params()["SDFix"]
    assert "tiled in fp32" in tiled.params()["SDFix notes"]
    diff = np.abs(_pixels(tiled) - _pixels(untiled))
    assert diff.max() <= 1 and diff.mean() <= 0.05, "the untiled image, up to rounding to 8 bits"
    assert_restored(webui, flags_before)
