"""The plan (lib_sdfix.vae.plan): untiled when the fp32 estimate fits, one image at a time when only
one image fits, else tiled; the audits' memory report."""
from __future__ import annotations

import torch

from lib_sdfix.vae import estimate as vae_estimate
from lib_sdfix.vae import plan as vae_plan
from lib_sdfix.vae.net import network_of

from ..ldm_vae import LdmVAE
from .support import HALF


def test_the_estimate_decides(vae, monkeypatch):
    graph = network_of(vae.decoder)
    shape = (1, 4, 128, 128)
    est = vae_estimate.estimate(graph, shape, HALF)
    fits = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=est.fp32)
    short = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=est.fp32 - 1)
    unknown = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=None, budget_gb=0)
    assert (fits.how, short.how) == ("untiled", "tiled") and "GiB available" in short.reason
    monkeypatch.setattr(vae_estimate, "free_memory", lambda device: None)
    assert vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF).how == "untiled"
    assert unknown.available is not None  # the CPU's MemAvailable


def test_a_batch_runs_one_image_at_a_time_where_one_image_fits(vae):
    graph = network_of(vae.decoder)
    cpu, shape = torch.device("cpu"), (3, 4, 16, 16)
    one = vae_estimate.estimate(graph, (1, 4, 16, 16), HALF)
    three = vae_estimate.estimate(graph, shape, HALF)
    sliced = vae_plan.plan(graph, shape, cpu, native_dtype=HALF, available=(one.fp32 + three.fp32) // 2)
    assert sliced.how == "sliced" and sliced.reason.endswith("one image at a time fits")
    whole = vae_plan.plan(graph, shape, cpu, native_dtype=HALF, available=three.fp32)
    forced = vae_plan.plan(graph, shape, cpu, native_dtype=HALF, available=three.fp32, force=True)
    assert (whole.how, forced.how) == ("untiled", "tiled") and forced.reason.startswith("forced")


def test_memory_report_for_the_audits(vae, monkeypatch):
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "64")  # the machine's free memory is not the test's
    report = vae_plan.memory_report(vae, 1024, 1024)
    factor = 4 if isinstance(vae, LdmVAE) else 2  # the test networks' upsamplings
    assert report["available"] and report["input"] == [1, 4, 1024 // factor, 1024 // factor]
    assert report["output"] == [1024, 1024]
    assert report["fp32_bytes"] > report["native_bytes"] > report["fp32_tiled_bytes"] and report["tiled"] is False
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.01")
    small = vae_plan.memory_report(vae, 1024, 1024)
    assert small["tiled"] is True and small["budget_gb"] == 0.01 and "GiB available" in small["reason"]
    encoder = vae_plan.memory_report(vae, 512, 512, kind="encoder")
    assert encoder["input"] == [1, 3, 512, 512]
