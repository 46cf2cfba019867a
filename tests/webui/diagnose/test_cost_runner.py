"""The cost of speed in stand-ins of the three hosts: every cell is the image a plain txt2img call with those
options gives, cells that differ only in the decode share one sampling, a warm-up run comes first, and the
user's options are back after -- also after an error or an Interrupt."""
from __future__ import annotations

import pytest

from lib_sdfix.settings import SDFixSettings, SettingsError

from ..support import assert_clean, diagnose, pixels, plain

pytest.importorskip("pydantic")
pytest.importorskip("fastapi")

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 4,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler"}


def user_options(env, **values):
    for key, value in values.items():
        setattr(env.shared.opts, key, value)
    return dict(values)


def test_each_cell_is_a_plain_generation_and_decode_only_cells_share_a_sampling(webui):
    mine = user_options(webui, token_merging_ratio=0.5, sd_vae_decode_method="TAESD")
    run = diagnose(webui, kind="optimizations", payload=PAYLOAD)
    result = run.result
    names = [c["name"] for c in result["cells"]]
    assert names == ["reference", "token-merging-ratio-0-5", "sd-vae-decode-method-taesd", "all-on"] and result["complete"]
    # the warm-up (2 steps) and two samplings: TAESD shares the reference's, all-on shares token merging's
    assert len(run.unet) == 2 + 2 * PAYLOAD["steps"]
    kinds = [r["kind"] for r in result["timings"]["runs"]]
    assert kinds[0] == "warm-up (not timed)" and kinds.count("full generation") == 2
    assert sum(k.startswith("decode only") for k in kinds) == 4  # both donors' decodes and both sharers'
    assert result["warm_up"]["steps"] == 2 and result["warm_up"]["cell"] == "all-on"
    assert result["timings"]["unet_steps"] == 2 + 2 * PAYLOAD["steps"]  # the sampler steps taken, decode-only runs none
    for key, value in mine.items():  # the user's options are back
        assert getattr(webui.shared.opts, key) == value
    assert_clean(webui)
    overrides = {"reference": {"token_merging_ratio": 0.0, "sd_vae_decode_method": "Full"},
                 "token-merging-ratio-0-5": {"token_merging_ratio": 0.5, "sd_vae_decode_method": "Full"},
                 "sd-vae-decode-method-taesd": {"token_merging_ratio": 0.0, "sd_vae_decode_method": "TAESD"},
                 "all-on": mine}
    for cell in result["cells"]:
        expected = plain(webui, {**PAYLOAD, "override_settings": overrides[cell["name"]]}, SDFixSettings())
        assert pixels(cell["image"]) == pixels(expected.image), cell["name"]
    rows = {r["name"]: r for r in result["analysis"]["rows"]}
    assert rows["sd-vae-decode-method-taesd"]["shared_sampling_with"] == "reference"
    assert rows["sd-vae-decode-method-taesd"]["memory_scope"] == "decode"
    assert rows["all-on"]["shared_sampling_with"] == "token-merging-ratio-0-5"
    assert rows["token-merging-ratio-0-5"]["detail_ratio"] < 0.97  # the fake's token merging flattens detail
    assert rows["token-merging-ratio-0-5"]["verdict"].startswith("loses detail")
    assert all(isinstance(rows[n]["time_s"], float) for n in rows)
    assert result["memory"]["measures"].startswith("process peak RSS")
    listed = {o["key"]: o for o in result["options"]}
    assert listed["token_merging_ratio"]["status"] == "measured" and listed["token_merging_ratio"]["value"] == 0.5
    assert result["analysis"]["findings"][0].key == "cost_detail_loss"


def test_repeats_time_every_run_and_report_the_median(webui):
    user_options(webui, token_merging_ratio=0.3)
    run = diagnose(webui, kind="optimizations", payload=PAYLOAD, repeats=3)
    assert len(run.unet) == 2 + 2 * 3 * PAYLOAD["steps"]  # warm-up + reference and the option, three times each
    assert [r["repeats"] for r in run.result["analysis"]["rows"]] == [3, 3]
    assert webui.shared.opts.token_merging_ratio == 0.3


def test_ngms_follows_the_hosts_own_reading(webui):
    """A1111/Forge copy the option into p.s_min_uncond unless the request set the field; reForge reads the
    option only.  Either way the NGMS cell skips the negative prompt on late steps, the reference never."""
    user_options(webui, s_min_uncond=14.0)
    run = diagnose(webui, kind="optimizations", payload=PAYLOAD)
    assert [c["name"] for c in run.result["cells"]] == ["reference", "s-min-uncond-14"]
    skipped = [c for c in run.unet if c.get("uncond") is False]
    assert skipped and all(c["shape"][0] == 1 for c in skipped)  # the cond half alone: half the U-Net's work
    assert webui.shared.opts.s_min_uncond == 14.0
    expected = plain(webui, {**PAYLOAD, "override_settings": {"s_min_uncond": 0.0}}, SDFixSettings())
    assert pixels(run.result["cells"][0]["image"]) == pixels(expected.image)
    assert not [c for c in expected.unet if c.get("uncond") is False]


def test_a_request_field_is_the_users_value_and_is_switched_with_the_option(webui):
    if webui.host == "reforge":
        pytest.skip("reForge ignores the txt2img field s_min_uncond")
    run = diagnose(webui, kind="optimizations", payload={**PAYLOAD, "s_min_uncond": 14.0})
    assert [c["name"] for c in run.result["cells"]] == ["reference", "s-min-uncond-14"]
    expected = plain(webui, {**PAYLOAD, "s_min_uncond": 0.0}, SDFixSettings())
    assert pixels(run.result["cells"][0]["image"]) == pixels(expected.image)


def test_named_values_and_options_this_host_lacks(webui):
    run = diagnose(webui, kind="optimizations", payload=PAYLOAD,
                   options={"token_merging_ratio": 0.6, "hypertile_enable_unet": True, "medvram": True})
    result = run.result
    assert [c["name"] for c in result["cells"]] == ["reference", "token-merging-ratio-0-6"]
    notes = "\n".join(result["notes"])
    assert "hypertile_enable_unet: not in this WebUI" in notes  # no Hypertile extension in these stand-ins
    if webui.host == "a1111":
        assert "medvram: reported, not measured (only at start" in notes
    else:  # Forge and reForge accept --medvram and ignore it
        assert "medvram: not in this WebUI" in notes
    assert webui.shared.opts.token_merging_ratio == 0.0
    listed = {o["key"]: o for o in result["options"]}
    if webui.host == "forge":
        assert listed["forge_unet_storage_dtype"]["status"] == "needs a model reload"


def test_cross_attention_is_switched_with_its_onchange_and_set_back(monkeypatch, host):
    from ..support import make_env

    if host != "a1111":
        pytest.skip("only AUTOMATIC1111 lets cross attention be chosen")
    env = make_env(monkeypatch, host)
    hijack = env.sd_hijack.model_hijack
    run = diagnose(env, kind="optimizations", payload=PAYLOAD, options={"cross_attention_optimization": "V1"})
    assert [c["name"] for c in run.result["cells"]] == ["reference", "cross-attention-optimization-v1"]
    assert hijack.redone == ["V1", "Automatic", "V1", "Automatic"]  # warm-up, then the cell; back each time
    assert env.shared.opts.cross_attention_optimization == "Automatic"
    row = run.result["analysis"]["rows"][1]
    assert row["psnr"] > 40 and row["psnr"] != float("inf")  # other rounding, same image
    with pytest.raises(SettingsError) as err:
        diagnose(env, kind="optimizations", payload=PAYLOAD, options={"cross_attention_optimization": "flash"})
    assert "options.cross_attention_optimization" in err.value.problems
    assert "Doggettx" in err.value.problems["options.cross_attention_optimization"]


def test_a_failing_generation_is_a_note_and_every_option_is_set_back(monkeypatch, host):
    from ..support import make_env

    env = make_env(monkeypatch, host)
    user_options(env, token_merging_ratio=0.5)
    options = {"token_merging_ratio": 0.5}
    if host == "a1111":
        options["cross_attention_optimization"] = "V1"

    def fail(count):
        if count == 5:
            raise RuntimeError("CUDA out of memory")

    env.shared.sd_model.unet_hook = fail  # inside the reference (after the 2-step warm-up)
    result = diagnose(env, kind="optimizations", payload=PAYLOAD, options=options).result
    assert "reference: the generation failed (RuntimeError: CUDA out of memory)" in result["notes"]
    assert "the reference was not rendered: no comparison" in result["notes"] and not result["complete"]
    assert [c["name"] for c in result["cells"]][:1] == ["token-merging-ratio-0-5"] and result["analysis"]["rows"] == []
    assert env.shared.opts.token_merging_ratio == 0.5 and env.shared.sd_model.tome_ratio == 0.0
    if host == "a1111":
        assert env.shared.opts.cross_attention_optimization == "Automatic"
        assert env.sd_hijack.model_hijack.optimization_method == "Doggettx"
    assert_clean(env)


def test_an_interrupt_keeps_what_was_rendered_and_sets_every_option_back(webui):
    user_options(webui, token_merging_ratio=0.5, sd_vae_decode_method="TAESD")

    def interrupt(count):
        if count == 2 + PAYLOAD["steps"] + 2:  # inside the second full generation (token merging)
            webui.shared.state.interrupt()

    webui.shared.sd_model.unet_hook = interrupt
    result = diagnose(webui, kind="optimizations", payload=PAYLOAD).result
    assert not result["complete"] and [c["name"] for c in result["cells"]] == ["reference", "sd-vae-decode-method-taesd"]
    assert "interrupted" in result["notes"][-2] or any("interrupted" in n for n in result["notes"])
    assert webui.shared.opts.token_merging_ratio == 0.5 and webui.shared.opts.sd_vae_decode_method == "TAESD"
    assert_clean(webui)


def test_saving_and_the_api_answer(webui, tmp_path):
    from lib_sdfix.webui.diagnose import runner

    webui.shared.opts.outdir_samples = str(tmp_path)
    user_options(webui, token_merging_ratio=0.5)
    result = diagnose(webui, kind="optimizations", payload=PAYLOAD, save=True).result
    saved = result["saved"]
    assert set(saved["images"]) == {"reference", "token-merging-ratio-0-5"}
    assert "chart" in saved["extras"] and "heatmap-token-merging-ratio-0-5" in saved["extras"]
    import json

    document = json.loads(open(saved["metrics"], encoding="utf-8").read())
    assert document["kind"] == "optimizations" and document["memory"]["measures"].startswith("process peak RSS")
    assert {o["key"] for o in document["options"]} >= {"token_merging_ratio", "sd_vae_decode_method"}
    answer = runner.api_response(result)
    assert answer["chart"] and answer["grid"] and answer["findings"][0]["key"] == "cost_detail_loss"
    assert answer["cells"][1]["metrics"]["verdict"].startswith("loses detail")
    json.dumps(answer, allow_nan=False)


def test_unknown_options_are_refused_before_anything_runs(webui):
    from lib_sdfix.webui.diagnose import runner

    with pytest.raises(SettingsError) as err:
        runner.request_from_body({"kind": "optimizations", "payload": PAYLOAD, "options": ["tome"]})
    assert "options[0]" in err.value.problems
    assert webui.shared.sd_model.unet_calls == []
