"""The findings rules on constructed measurements: each fires on its own pattern and on no other."""
import math

import pytest

from lib_sdfix.diagnose import findings as F


def sweep_rows(axis, values, hf, lap, psnr=None, reference=0):
    rows = []
    for i, (value, h, lp) in enumerate(zip(values, hf, lap)):
        rows.append({"name": f"c{i}", "label": str(value), "axis": axis, "value": value, "reference": i == reference,
                     "high_frequency_energy": h, "laplacian_variance": lp,
                     "psnr": math.inf if i == reference else (psnr[i] if psnr else 30.0), "ssim": 0.9})
    return rows


# Constructed sweeps, one per pattern; "flat" has none.
CASES = {
    # graininess that falls as steps rise and levels off at 50
    "steps": ("steps", sweep_rows("steps", [10, 20, 50, 100], [0.30, 0.20, 0.152, 0.150], [0.02, 0.02, 0.02, 0.02])),
    # detail that peaks at CFG 5 and falls beyond
    "cfg": ("cfg_scale", sweep_rows("cfg_scale", [1.0, 3.0, 5.0, 7.0, 10.0, 15.0], [0.1] * 6,
                                    [0.010, 0.016, 0.020, 0.017, 0.013, 0.010])),
    # samplers 2.5x apart in fine detail
    "sampler": ("sampler_name", sweep_rows("sampler_name", ["Euler", "Euler a", "DDIM"], [0.1, 0.1, 0.1], [0.020, 0.008, 0.019])),
    # schedules 1.4x apart
    "schedule": ("scheduler", sweep_rows("scheduler", ["Automatic", "Karras"], [0.1, 0.1], [0.014, 0.020])),
    # SDFix precision changes the image visibly
    "precision": ("precision", sweep_rows("precision", [False, True], [0.090, 0.100], [0.020, 0.021], psnr=[33.0, None], reference=1)),
    # nothing moves
    "flat": ("steps", sweep_rows("steps", [10, 20, 50], [0.15, 0.151, 0.149], [0.02, 0.02, 0.02])),
}
RULES = {"steps": F.rule_steps, "cfg": F.rule_cfg, "sampler": F.rule_sampler, "schedule": F.rule_schedule,
         "precision": F.rule_precision}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("case", list(CASES))
def test_each_sweep_rule_fires_on_its_own_case_only(rule, case):
    found = RULES[rule](CASES[case][1])
    assert (found is not None) == (rule == case), (rule, case, found)


def test_steps_rule_says_when_it_levels_off_and_is_worded_as_a_likelihood():
    found = F.rule_steps(CASES["steps"][1])
    assert found.key == "too_few_steps" and found.likelihood == F.LIKELY
    assert found.evidence["levels_off_at"] == 50 and found.evidence["ratio"] == pytest.approx(2.0)
    assert "likely" in found.text and "is the cause" not in found.text
    assert found.symptom == "High-frequency noise or graininess"
    # a mild fall is only "possible"; a fall that is not monotone does not fire
    mild = sweep_rows("steps", [10, 20, 50], [0.18, 0.17, 0.15], [0.02] * 3)
    assert F.rule_steps(mild).likelihood == F.POSSIBLE
    zigzag = sweep_rows("steps", [10, 20, 50, 100], [0.30, 0.10, 0.30, 0.15], [0.02] * 4)
    assert F.rule_steps(zigzag) is None


def test_cfg_rule_names_the_peak_and_needs_a_fall_after_it():
    found = F.rule_cfg(CASES["cfg"][1])
    assert found.key == "cfg_too_high" and found.evidence["peak_cfg"] == 5.0 and found.likelihood == F.LIKELY
    assert "CFG scale near 5" in found.next_step
    rising = sweep_rows("cfg_scale", [1.0, 5.0, 10.0], [0.1] * 3, [0.01, 0.02, 0.03])  # still rising: no finding
    assert F.rule_cfg(rising) is None
    mild = sweep_rows("cfg_scale", [3.0, 7.0, 15.0], [0.1] * 3, [0.02, 0.018, 0.015])
    assert F.rule_cfg(mild).likelihood == F.POSSIBLE


def test_spread_rules_name_the_softest_and_sharpest():
    found = F.rule_sampler(CASES["sampler"][1])
    assert found.evidence["least"] == "Euler a" and found.evidence["most"] == "Euler" and found.likelihood == F.LIKELY
    schedule = F.rule_schedule(CASES["schedule"][1])
    assert schedule.cause == "noise schedule" and schedule.likelihood == F.POSSIBLE


def test_precision_rule_ignores_identical_images_and_grades_small_changes():
    identical = sweep_rows("precision", [False, True], [0.1, 0.1], [0.02, 0.02], psnr=[math.inf, None], reference=1)
    assert F.rule_precision(identical) is None
    tiny = sweep_rows("precision", [False, True], [0.1, 0.1], [0.02, 0.02], psnr=[52.0, None], reference=1)
    assert F.rule_precision(tiny).likelihood == F.POSSIBLE
    assert F.rule_precision(CASES["precision"][1]).likelihood == F.LIKELY


def test_sweep_findings_use_the_axis_rule_and_put_likely_first():
    axis, rows = CASES["steps"]
    nan = {"finite": False, "first": {"stage": "vae decode", "step": None, "text": "NaN at vae decode"}, "later": []}
    found = F.sweep_findings(axis, rows, nan)
    assert [f.key for f in found] == ["too_few_steps", "non_finite"]
    assert F.sweep_findings("cfg_scale", CASES["steps"][1]) == []


# --- VAE round trip ----------------------------------------------------------------------------------


def rt_rows(fp32=(38.0, 0.97, 0.95), webui=(38.0, 0.97, 0.95, 70.0), fp16=None):
    rows = [{"name": "original", "label": "original", "psnr": math.inf, "high_frequency_ratio": 1.0, "laplacian_ratio": 1.0,
             "psnr_vs_fp32": None}]

    def row(name, values, vs):
        psnr, hf, lap = values[:3]
        return {"name": name, "label": name, "psnr": psnr, "ssim": 0.95, "high_frequency_ratio": hf,
                "laplacian_ratio": lap, "psnr_vs_fp32": vs}

    rows.append(row("webui", webui, webui[3]))
    rows.append(row("precision_guard", fp32, math.inf))
    rows.append(row("fp32", fp32, None))
    if fp16:
        rows.append(row("fp16", fp16, fp16[3]))
    return rows


RT_CASES = {
    "healthy": rt_rows(),
    "capacity": rt_rows(fp32=(22.0, 0.6, 0.5), webui=(22.0, 0.6, 0.5, 80.0)),
    "precision": rt_rows(webui=(33.0, 0.86, 0.9, 31.0)),
}


@pytest.mark.parametrize("case", list(RT_CASES))
def test_roundtrip_rules_fire_on_their_case_only(case):
    rows = RT_CASES[case]
    assert (F.rule_vae_capacity(rows) is not None) == (case == "capacity")
    assert (F.rule_vae_precision(rows) is not None) == (case == "precision")


def test_roundtrip_precision_finding_names_the_webui_and_the_guard():
    found = F.rule_vae_precision(RT_CASES["precision"])
    assert found.likelihood == F.LIKELY and found.evidence["variant"] == "webui"
    assert "WebUI's own VAE precision" in found.text and "With precision_guard and guard_encode: inf dB" in found.text
    assert found.fixes == ("precision_guard", "guard_encode")
    # without the host's own variant, the worst lower precision is named
    rows = [r for r in rt_rows(fp16=(37.0, 0.95, 0.95, 41.0)) if r["name"] != "webui"]
    assert F.rule_vae_precision(rows).evidence["variant"] == "fp16"
    # a flat original (no high-frequency energy: ratios infinite) does not fire by itself
    flat = rt_rows(fp32=(40.0, math.inf, math.inf), webui=(40.0, math.inf, math.inf, 80.0))
    assert F.rule_vae_precision(flat) is None


def test_roundtrip_capacity_wording_when_the_vae_adds_rather_than_loses():
    noisy = rt_rows(fp32=(9.0, 5.9, 1.02), webui=(9.0, 5.9, 1.02, 40.0))
    assert "does not reproduce the image" in F.rule_vae_capacity(noisy).text
    assert "loses detail" in F.rule_vae_capacity(RT_CASES["capacity"]).text


# --- step strips ---------------------------------------------------------------------------------------


def step_rows(ratios, steps=20):
    return [{"step": s, "steps": steps, "high_frequency_ratio": r} for s, r in ratios]


STEP_CASES = {
    "early": step_rows([(2, 0.5), (5, 0.9), (10, 1.0), (20, 1.0)]),
    "late": step_rows([(4, 0.2), (8, 0.3), (12, 0.5), (16, 0.7), (20, 1.0)]),
    "overshoot": step_rows([(4, 0.3), (8, 0.6), (12, 1.8), (16, 1.2), (20, 1.0)]),
    "middle": step_rows([(4, 0.2), (8, 0.5), (12, 0.85), (20, 1.0)]),
}
STEP_KEYS = {"early": {"artifact_early"}, "late": {"artifact_late"}, "overshoot": {"unstable_steps"}, "middle": set()}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_timing_rules_fire_on_their_case_only(case):
    found = F.rule_step_timing(STEP_CASES[case])
    assert {f.key for f in found} == STEP_KEYS[case]
    assert all(f.likelihood == F.POSSIBLE for f in found)


# --- NaN / Inf -----------------------------------------------------------------------------------------


def test_non_finite_rule_tells_sampling_from_decode():
    assert F.rule_non_finite(None) is None
    assert F.rule_non_finite({"finite": True, "first": None}) is None
    sampling = F.rule_non_finite({"finite": False, "first": {"stage": "sampling", "step": 7, "text": "NaN at sampling step 7 of 20"}})
    assert "UNet" in sampling.cause and "step 7 of 20" in sampling.text and sampling.likelihood == F.LIKELY
    decode = F.rule_non_finite({"finite": False, "first": {"stage": "vae decode", "text": "NaN at vae decode"}})
    assert "VAE" in decode.cause and "--no-half-vae" in decode.next_step


def test_spearman_handles_ties_and_constants():
    assert F.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert F.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert F.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)


def test_findings_serialise_to_strict_json():
    import json

    found = F.rule_steps(CASES["steps"][1]).as_dict()
    json.dumps(found, allow_nan=False)
    assert set(found) == {"key", "symptom", "cause", "likelihood", "text", "evidence", "next_step", "fixes"}
