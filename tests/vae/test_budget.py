"""SDFIX_VAE_MEMORY_GB: a bad value (inf, 1e400, nan, negative, text) is logged once and ignored -- the
fp32 VAE call is planned as without it and stays guarded; unset, empty and 0 mean the default."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix import failsafe
from lib_sdfix.failsafe import FixReport
from lib_sdfix.vae import call, estimate

from ..ldm_vae import LdmVAE

BAD = ["inf", "1e400", "-inf", "nan", "-2", "-0.5", "lots", "8GB", "0x10"]
CPU = torch.device("cpu")


@pytest.fixture
def warnings(monkeypatch):
    """What SDFix's logger warns, with a fresh log-once memory."""
    logged = []
    monkeypatch.setattr(failsafe, "_LOGGED", set())
    monkeypatch.setattr(failsafe.logger, "warning", lambda msg, exc_info=None: logged.append(msg))
    monkeypatch.setattr(failsafe.logger, "error", lambda msg, exc_info=None: logged.append(("error", msg)))
    return logged


@pytest.mark.parametrize("value", BAD)
def test_a_bad_budget_is_ignored_and_warned_about_once(monkeypatch, warnings, value):
    monkeypatch.setattr(estimate, "free_memory", lambda device: 8 * estimate.GIB)
    monkeypatch.delenv(estimate.BUDGET_ENV, raising=False)
    default = estimate.available_memory(CPU)
    monkeypatch.setenv(estimate.BUDGET_ENV, value)
    assert estimate.budget_from_env() == 0.0
    assert estimate.available_memory(CPU) == default == int(8 * estimate.GIB * 0.9)
    assert len(warnings) == 1 and f"SDFIX_VAE_MEMORY_GB={value!r} ignored" in warnings[0]


@pytest.mark.parametrize("value", ["", " ", "0", "0.0", "-0"])
def test_unset_empty_and_zero_mean_the_default_without_a_warning(monkeypatch, warnings, value):
    monkeypatch.setattr(estimate, "free_memory", lambda device: 8 * estimate.GIB)
    monkeypatch.setenv(estimate.BUDGET_ENV, value)
    assert estimate.budget_from_env() == 0.0
    assert estimate.available_memory(CPU) == int(8 * estimate.GIB * 0.9) and warnings == []


def test_a_huge_finite_budget_caps_nothing_and_an_explicit_bad_one_is_ignored(monkeypatch, warnings):
    monkeypatch.setattr(estimate, "free_memory", lambda device: None)
    monkeypatch.setenv(estimate.BUDGET_ENV, "1e300")  # 1e300 * GIB is an infinite float
    assert estimate.budget_from_env() == 1e300
    assert estimate.available_memory(CPU) >= 2 ** 70 and warnings == []
    monkeypatch.setenv(estimate.BUDGET_ENV, " 0.5 ")
    assert estimate.available_memory(CPU) == estimate.GIB // 2
    for bad in (float("inf"), float("nan"), -1.0):
        assert estimate.available_memory(CPU, bad) is None  # nothing known: untiled, as without a budget


@pytest.mark.parametrize("value", BAD)
def test_the_guarded_call_still_runs_in_fp32_with_a_bad_budget(monkeypatch, warnings, value):
    vae = LdmVAE().to(torch.bfloat16)
    z = torch.randn(1, 4, 16, 24).to(torch.bfloat16)
    seen = []
    vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(module.conv_in.weight.dtype))
    report = FixReport()

    def guarded(latent):
        return call.guarded_call(vae.decode, vae, latent, record=lambda run: call.report_run(report, run))

    with torch.no_grad():
        reference = guarded(z)
        monkeypatch.setenv(estimate.BUDGET_ENV, value)
        outs = [report.run("precision_guard", guarded, vae.decode, z) for _ in range(2)]
    assert report.failed == {} and report.applied == {"precision_guard": 2}, "the guard stays on"
    assert seen == [torch.float32] * 3 and all(o.dtype == torch.float32 for o in outs)
    assert all(torch.equal(o, reference) for o in outs), "planned as without the variable"
    assert len(warnings) == 1 and "ignored" in warnings[0]


@pytest.mark.parametrize("value", ["inf", "nan", "garbage"])
def test_a_host_decode_stays_guarded_with_a_bad_budget(monkeypatch, warnings, value):
    from ..webui.fakes import FakeP
    from ..webui.support import decode, make_env, run

    env = make_env(monkeypatch, "a1111", ldm_vae=True)
    monkeypatch.setenv(estimate.BUDGET_ENV, value)
    p = FakeP()
    script = run(env, p)
    latent = torch.randn(1, 4, 16, 16, dtype=torch.float16)
    decode(env, latent)
    decode(env, latent)
    assert [r["weight"] for r in env.vae.seen if r["part"] == "decoder"] == [torch.float32] * 2
    script.postprocess(p, None)
    assert "not applied" not in (p.extra_generation_params["SDFix notes"]() or "")
    assert p.extra_generation_params["SDFix"]().endswith(" weights=upcast")
    assert len(warnings) == 1 and f"={value!r} ignored" in warnings[0]
