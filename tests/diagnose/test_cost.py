"""The cost of speed, WebUI-free: the option table, which options a plan measures and how its cells share
samplings, the request's checks, the measured rows (time swap for decode-only cells, verdicts) and the
findings."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.diagnose import cost, optimizations, request, speed_options
from lib_sdfix.diagnose.optimizations import UNSET, FoundOption, plan_cost
from lib_sdfix.diagnose.peak_memory import measure_peak
from lib_sdfix.settings import SDFixSettings, SettingsError

PAYLOAD = {"prompt": "a face", "seed": 1, "steps": 4, "width": 64, "height": 64}


def found(host="a1111", **values):
    out = []
    for option in speed_options.options_for(host):
        out.append(FoundOption(option, values.get(option.key, option.quality)))
    return out


def with_value(items, key, **changes):
    return [dataclasses.replace(f, **changes) if f.key == key else f for f in items]


# --- the table ---------------------------------------------------------------------------------------


def test_every_option_has_a_valid_how_and_its_quality_value_passes_its_own_check():
    for option in speed_options.SPEED_OPTIONS:
        assert option.how in speed_options.SWITCHABLE + ("reload", "start"), option.key
        assert option.hosts, option.key
        if option.quality is not None:
            assert speed_options.check_option_value(option, option.quality) == option.quality, option.key
    keys = [(o.key, h) for o in speed_options.SPEED_OPTIONS for h in o.hosts]
    assert len(keys) == len(set(keys)), "one entry per option and host"


def test_values_are_checked_by_kind():
    tome = speed_options.known_option("token_merging_ratio")
    assert speed_options.check_option_value(tome, 1 / 2) == 0.5
    for bad in (True, "0.5", 0.95, float("nan"), -0.1):
        with pytest.raises(ValueError):
            speed_options.check_option_value(tome, bad)
    decode = speed_options.known_option("sd_vae_decode_method")
    with pytest.raises(ValueError, match="Full"):
        speed_options.check_option_value(decode, "Approx cheap")
    with pytest.raises(ValueError, match="true or false"):
        speed_options.check_option_value(speed_options.known_option("pad_cond_uncond"), 1)


# --- the plan ------------------------------------------------------------------------------------------


def test_default_plan_measures_every_switchable_option_that_is_on_and_all_together():
    items = found(token_merging_ratio=0.5, sd_vae_decode_method="TAESD", s_min_uncond=1.5, medvram=True)
    plan = plan_cost(items)
    assert [c.role for c in plan.cells] == ["reference", "option", "option", "option", "all"]
    ref = dict(plan.reference.changes)
    assert ref == {"token_merging_ratio": 0.0, "sd_vae_decode_method": "Full", "s_min_uncond": 0.0}
    tome = plan.cells[1]
    assert dict(tome.changes) == {**ref, "token_merging_ratio": 0.5} and tome.label == "token merging ratio 0.5"
    assert dict(plan.cells[-1].changes) == {"token_merging_ratio": 0.5, "sd_vae_decode_method": "TAESD", "s_min_uncond": 1.5}
    assert plan.cells[-1].label == "all on (your setup)"
    # TAESD differs from the reference only in the decode: one sampling for both
    taesd = next(c for c in plan.cells if c.measured == (("sd_vae_decode_method", "TAESD"),))
    assert plan.sampling_key(taesd) == plan.sampling_key(plan.reference)
    assert plan.sampling_key(tome) != plan.sampling_key(plan.reference)
    listed = {i["key"]: i for i in plan.listed}
    assert listed["medvram"]["status"] == "only at start" and listed["medvram"]["on"]
    assert listed["token_merging_ratio"]["status"] == "measured"
    assert listed["fp8_storage"]["status"] == "needs a model reload"


def test_nothing_on_plans_the_reference_alone_and_says_how_to_measure():
    plan = plan_cost(found())
    assert [c.role for c in plan.cells] == ["reference"] and plan.reference.changes == ()
    assert "name options" in plan.notes[0]


def test_named_options_with_values_missing_ones_start_flags_and_quality_values():
    items = with_value(found(token_merging_ratio=0.3), "hypertile_enable_unet", available=False, value=None)
    requested = (("token_merging_ratio", UNSET), ("s_min_uncond", 2.0), ("hypertile_enable_unet", True),
                 ("medvram", UNSET), ("pad_cond_uncond", False))
    plan = plan_cost(items, requested)
    assert [c.measured for c in plan.cells[1:]] == [(("token_merging_ratio", 0.3),), (("s_min_uncond", 2.0),),
                                                    (("token_merging_ratio", 0.3), ("s_min_uncond", 2.0))]
    assert plan.cells[-1].label == "all measured options on"
    notes = "\n".join(plan.notes)
    assert "hypertile_enable_unet: not in this WebUI" in notes
    assert "medvram: reported, not measured (only at start" in notes
    assert "pad_cond_uncond: off is its quality setting; nothing to measure" in notes
    listed = {i["key"]: i for i in plan.listed}
    assert listed["hypertile_enable_unet"]["status"] == "not in this WebUI" and listed["hypertile_enable_unet"]["value"] is None


def test_an_option_without_a_quality_setting_keeps_the_users_value_in_the_reference():
    items = found(cross_attention_optimization="Doggettx")
    assert plan_cost(items).cells == [plan_cost(items).reference]  # never "on"
    plan = plan_cost(items, (("cross_attention_optimization", "V1"),))
    assert "cross_attention_optimization" not in dict(plan.reference.changes)
    assert dict(plan.cells[1].changes)["cross_attention_optimization"] == "V1"
    same = plan_cost(items, (("cross_attention_optimization", "Doggettx"),))
    assert len(same.cells) == 1 and "the reference's value" in same.notes[0]


def test_a_blocked_option_is_listed_with_its_reason_and_not_measured():
    items = with_value(found(sd_vae_decode_method="TAESD"), "sd_vae_decode_method", blocked="no TAESD decoder file")
    plan = plan_cost(items)
    assert len(plan.cells) == 1 and "no TAESD decoder file" in plan.notes[0]
    assert {i["key"]: i for i in plan.listed}["sd_vae_decode_method"]["status"] == "cannot be measured here"


def test_at_most_twelve_options_measured_by_default():
    many = [FoundOption(speed_options.SpeedOption(f"opt{i}", f"opt {i}", ("a1111",), "override", False, ("bool",), "x"), True)
            for i in range(14)]
    plan = plan_cost(many)
    assert sum(c.role == "option" for c in plan.cells) == optimizations.MAX_OPTIONS
    assert "opt12, opt13" in plan.notes[0]


# --- the request -------------------------------------------------------------------------------------------


def body(**fields):
    return {"kind": "optimizations", "payload": PAYLOAD, **fields}


def test_request_defaults_and_both_option_forms():
    req = request.diagnose_request_from_body(body(), SDFixSettings())
    assert req.options is None and req.repeats == 1 and req.kind == "optimizations"
    req = request.diagnose_request_from_body(body(options=["token_merging_ratio"], repeats=3), SDFixSettings())
    assert req.options == (("token_merging_ratio", UNSET),) and req.repeats == 3
    req = request.diagnose_request_from_body(body(options={"token_merging_ratio": 0.5, "sd_vae_decode_method": "TAESD"}),
                                             SDFixSettings())
    assert req.options == (("token_merging_ratio", 0.5), ("sd_vae_decode_method", "TAESD"))


@pytest.mark.parametrize("fields, where, what", [
    ({"options": ["token_merging"]}, "options[0]", "unknown option 'token_merging'; did you mean token_merging_ratio"),
    ({"options": {"token_merging_ratio": 2}}, "options.token_merging_ratio", "must be 0.0-0.9"),
    ({"options": {"sd_vae_decode_method": "Approx NN"}}, "options.sd_vae_decode_method", "must be one of"),
    ({"options": ["s_min_uncond", "s_min_uncond"]}, "options[1]", "duplicate option"),
    ({"options": []}, "options", "at least one"),
    ({"options": "token_merging_ratio"}, "options", "expected a list"),
    ({"options": [f"token_merging_ratio{i}" for i in range(13)]}, "options", "at most 12"),
    ({"repeats": 0}, "repeats", "1-5"), ({"repeats": 6}, "repeats", "1-5"), ({"repeats": 2.5}, "repeats", "1-5"),
    ({"repeats": True}, "repeats", "1-5"), ({"axis": "steps"}, "axis", "unknown field"),
])
def test_request_refusals_name_the_field(fields, where, what):
    with pytest.raises(SettingsError) as err:
        request.diagnose_request_from_body(body(**fields), SDFixSettings())
    assert where in err.value.problems and what in err.value.problems[where]


def test_request_needs_a_payload():
    with pytest.raises(SettingsError) as err:
        request.diagnose_request_from_body({"kind": "optimizations"}, SDFixSettings())
    assert "payload" in err.value.problems


# --- rows, verdicts, findings ---------------------------------------------------------------------------------


def _image(seed, blur=0.0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def test_rows_swap_the_decode_for_shared_cells_and_judge_each_option():
    items = found(token_merging_ratio=0.5, sd_vae_decode_method="TAESD", persistent_cond_cache=True)
    plan = plan_cost(items, (("token_merging_ratio", UNSET), ("persistent_cond_cache", False),
                             ("sd_vae_decode_method", UNSET)))
    names = [c.name for c in plan.cells]
    assert names == ["reference", "token-merging-ratio-0-5", "persistent-cond-cache-off", "sd-vae-decode-method-taesd", "all-on"]
    images = {"reference": _image(0), "token-merging-ratio-0-5": _image(0, 1.2), "persistent-cond-cache-off": _image(0),
              "sd-vae-decode-method-taesd": _image(0, 0.6), "all-on": _image(0, 1.5)}
    timed = {"reference": cost.Timed([10.0, 12.0, 11.0], 1000, decode_times=[2.0], decode_peak=800),
             "token-merging-ratio-0-5": cost.Timed([8.0], 900),
             "persistent-cond-cache-off": cost.Timed([11.5], 1000),
             "sd-vae-decode-method-taesd": cost.Timed([0.5], 600, shared_with="reference"),
             "all-on": cost.Timed([7.0], 850)}
    rows = {r["name"]: r for r in cost.cost_rows(plan, images, timed)}
    assert rows["reference"]["time_s"] == 11.0 and rows["reference"]["verdict"] == "reference"
    assert rows["sd-vae-decode-method-taesd"]["time_s"] == pytest.approx(11.0 - 2.0 + 0.5)
    assert rows["sd-vae-decode-method-taesd"]["memory_scope"] == "decode"
    assert rows["sd-vae-decode-method-taesd"]["memory_delta_pct"] == pytest.approx(-25.0)  # against the donor's decode
    assert rows["token-merging-ratio-0-5"]["time_delta_pct"] == pytest.approx(-100 * 3 / 11)
    assert rows["token-merging-ratio-0-5"]["memory_delta_pct"] == pytest.approx(-10.0)
    assert rows["token-merging-ratio-0-5"]["verdict"].startswith("loses detail (x0.")
    assert "-27 % time" in rows["token-merging-ratio-0-5"]["verdict"]
    assert rows["persistent-cond-cache-off"]["verdict"] == "identical image; no measurable gain"
    findings = {f.key: f for f in cost.cost_findings(list(rows.values()), plan.listed)}
    worst = findings["cost_detail_loss"]
    assert worst.cause == "token merging ratio 0.5" and "the largest detail loss of your setup" in worst.text
    assert "-27 % time" in worst.text
    assert "cost_setup" in findings and "all measured options on" in findings["cost_setup"].text


def test_quality_lost_for_nothing_is_a_finding_and_a_free_gain_another():
    items = found(pad_cond_uncond=True, s_min_uncond=2.0)
    plan = plan_cost(items)
    images = {"reference": _image(0), "pad-cond-uncond-on": _image(0, 1.0), "s-min-uncond-2": _image(0), "all-on": _image(0, 1.0)}
    timed = {"reference": cost.Timed([10.0], 100), "pad-cond-uncond-on": cost.Timed([10.1], 100),
             "s-min-uncond-2": cost.Timed([8.0], 100), "all-on": cost.Timed([8.1], 100)}
    rows = cost.cost_rows(plan, images, timed)
    keys = [f.key for f in cost.cost_findings(rows, plan.listed)]
    assert keys == ["cost_detail_loss", "cost_free_s-min-uncond-2", "cost_setup"]
    # a second lossy option with no gain is its own finding
    items = found(pad_cond_uncond=True, pad_cond_uncond_v0=True)
    plan = plan_cost(items)
    images = {"reference": _image(0), "pad-cond-uncond-on": _image(0, 1.0), "pad-cond-uncond-v0-on": _image(0, 0.7),
              "all-on": _image(0, 1.0)}
    timed = {n: cost.Timed([10.0], 100) for n in images}
    keys = [f.key for f in cost.cost_findings(cost.cost_rows(plan, images, timed), plan.listed)]
    assert keys == ["cost_detail_loss", "cost_no_gain_pad-cond-uncond-v0-on", "cost_setup"]


def test_flags_that_are_on_are_a_finding_and_the_analysis_has_chart_grid_heatmaps():
    items = found(token_merging_ratio=0.5, medvram=True)
    plan = plan_cost(items)
    images = {"reference": _image(0), "token-merging-ratio-0-5": _image(0, 1.0)}
    timed = {"reference": cost.Timed([2.0], 10), "token-merging-ratio-0-5": cost.Timed([1.0], 9)}
    analysis = cost.analyse_cost(plan, images, timed)
    assert [f.key for f in analysis["findings"]] == ["cost_detail_loss", "cost_unmeasured"]
    assert "--medvram (on)" in analysis["findings"][-1].text
    assert analysis["chart"].size[0] > 100 and analysis["grid"] is not None
    assert set(analysis["heatmaps"]) == {"token-merging-ratio-0-5"}
    from lib_sdfix.diagnose.output import display_table

    headers, table = display_table("optimizations", analysis["rows"])
    assert headers[:4] == ["option", "value", "time Δ %", "memory Δ %"]
    assert table[0][0] == "quality settings (reference)" and table[1][2] == "-50.0"


def test_an_unrendered_reference_gives_no_rows():
    plan = plan_cost(found(token_merging_ratio=0.5))
    assert cost.cost_rows(plan, {"token-merging-ratio-0-5": _image(0)}, {}) == []


# --- peak memory ---------------------------------------------------------------------------------------------


def test_peak_memory_on_the_cpu_sees_an_allocation_and_resets_between_runs():
    with measure_peak() as big:
        block = np.ones(40_000_000)
        del block
    with measure_peak() as small:
        pass
    assert big.kind.startswith("process peak RSS")
    if big.resettable:
        assert big.peak_bytes - small.peak_bytes > 200_000_000
    else:
        assert big.peak_bytes > 0 and "cannot be reset" in big.kind


def test_bar_chart_draws_each_row_from_its_baseline_and_marks_losses():
    from lib_sdfix.diagnose.bars import bar_chart_svg

    rows = [{"label": "quality settings", "time_delta_pct": 0.0, "detail_ratio": 1.0},
            {"label": "token merging ratio 0.5, a long label that is cut for the picture", "time_delta_pct": -18.0,
             "detail_ratio": 0.71},
            {"label": "pad prompt/negative prompt on", "time_delta_pct": 2.0, "detail_ratio": None}]
    panels = cost.cost_panels(rows)
    assert [p.title for p in panels] == ["time vs reference (%)", "detail ratio vs reference (1 = kept)"]
    svg = bar_chart_svg(panels)
    assert svg.count("<rect") == 5  # the missing detail ratio has no bar
    assert "#2ca02c" in svg and "#d62728" in svg  # -18 % time is a gain, detail 0.71 a loss, +2 % time a loss
    assert "<title>token merging ratio 0.5, a long label that is cut for the picture</title>" in svg
    assert ">-18.0<" in svg and ">0.710<" in svg and ">–<" in svg
    from lib_sdfix.diagnose.bars import bar_chart_image

    image = bar_chart_image(panels)
    assert image.size[0] > 800 and image.getpixel((5, 5)) == (255, 255, 255)
