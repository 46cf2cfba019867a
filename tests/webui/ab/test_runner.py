"""The A/B runner (lib_sdfix.webui.ab) in stand-ins of the hosts' generation (tests/webui/fakes/).

Every variant of a comparison must be the image, and the infotext, a plain txt2img API call with that
variant's SDFix settings gives -- while the UNet runs only as often as the plan
(lib_sdfix.sampling_plan.sampling_groups) says.  "Plain" generations go through the fakes'
``text2imgapi``, the WebUI API's own path.
"""
from __future__ import annotations

import itertools
import sys

import pytest
import torch

from lib_sdfix import sampling_plan
from lib_sdfix.settings import SettingsError

from ..fakes import HOSTS, fake_gradio
from ..support import assert_clean, compare, decodes, make_env, pixels, plain

pytest.importorskip("pydantic")
pytest.importorskip("fastapi")

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 3,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "DPM++ 2M"}
HIRES = dict(PAYLOAD, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=2)
FP16, FP32 = torch.float16, torch.float32


@pytest.fixture
def webui(monkeypatch):
    env = make_env(monkeypatch)
    yield env
    from lib_sdfix.webui.callbacks import unload

    unload()


@pytest.fixture(params=HOSTS)
def any_host(monkeypatch, request):
    env = make_env(monkeypatch, request.param)
    yield env
    from lib_sdfix.webui.callbacks import unload

    unload()


def assert_plain(env, run, payload, **alwayson):
    """Each variant's image and infotext are what a plain generation with its settings gives."""
    for variant in run.request.variants:
        expected = plain(env, payload, variant.settings, **alwayson)
        assert pixels(run.result["images"][variant.name]) == pixels(expected.image), variant.name
        assert run.result["infotexts"][variant.name] == expected.infotext, variant.name


def first_pass(calls, payload=PAYLOAD):
    return [c for c in calls if c["shape"][-1] == payload["width"]]


# --- 1. A/B without Hires ----------------------------------------------------------------------------


def test_ab_samples_once_and_each_variant_is_a_plain_generation(any_host):
    env = any_host
    run = compare(env, PAYLOAD)
    result = run.result
    assert result["complete"] and result["runs"] == 1 and result["seed"] == PAYLOAD["seed"]
    assert [r["kind"] for r in result["plan"]] == ["full sampling", "decode only (shared sampling)"]
    assert [r["variants"] for r in result["plan"]] == [["A"], ["B"]]
    assert decodes(run.vae) == [(FP16, FP16, True), (FP32, FP32, False)]  # A: the host's fp16 path; B: guarded
    assert_clean(env)

    off = plain(env, PAYLOAD, {"enabled": False})
    on = plain(env, PAYLOAD, {"enabled": True})
    assert len(run.unet) == len(off.unet) == len(on.unet) == PAYLOAD["steps"]  # one sampling for both
    assert pixels(result["images"]["A"]) == pixels(off.image)
    assert pixels(result["images"]["B"]) == pixels(on.image)
    assert pixels(off.image) != pixels(on.image)  # the fp16 and fp32 decodes differ: the checks above can fail
    a, b = result["infotexts"]["A"], result["infotexts"]["B"]
    assert a == off.infotext and b == on.infotext
    assert "SDFix" not in a and "SDFix: on=1 guard=1" in b
    assert "Schedule type: Karras" in a and "Schedule type: Karras" in b  # get_sigmas ran in the decode-only run
    assert [m["name"] for m in result["metrics"]] == ["A", "B"] and result["heatmap"] is not None
    assert any(note.startswith("B: SDFix on: changed") for note in result["notes"])


# --- 2. ablation ---------------------------------------------------------------------------------------


def test_ablation_samples_once_and_decodes_as_planned(webui):
    run = compare(webui, PAYLOAD, "ablation")
    result = run.result
    variants = run.request.variants
    assert [v.name for v in variants] == ["baseline", "precision_guard", "guard_encode", "hires_parity", "post_resize",
                                          "late_refine", "all"]
    groups = sampling_plan.sampling_groups(variants, hires=False, latent_upscaler=True)
    assert [g.refine for g in groups] == [None, 0.3]
    assert all(g.decodes == (sampling_plan.DecodeConfig(False), sampling_plan.DecodeConfig(True, "fp32")) for g in groups)
    # one sampling, and the late refine's round(0.3 x 3) = 1 step on top of it (shared by late_refine and all)
    assert result["complete"] and result["runs"] == 2 and len(run.unet) == PAYLOAD["steps"] + 1

    # the runs follow the plan: each group's decodes in order, each run's variants sharing its decode
    plan = result["plan"]
    assert plan[0]["kind"] == "full sampling"
    kinds = {tuple(r["variants"]): r["kind"] for r in plan[1:]}
    assert kinds.pop(("late_refine",)) == "refine only (shared passes)"
    assert set(kinds.values()) == {"decode only (shared sampling)"}
    by_name = {v.name: v for v in variants}
    group_of = {v.name: i for i, g in enumerate(groups) for v in g.variants}
    run_decodes, per_group = [], [[] for _ in groups]
    for entry in plan:
        configs = {sampling_plan.DecodeConfig.of(by_name[name].settings) for name in entry["variants"]}
        assert len(configs) == 1 and len({group_of[name] for name in entry["variants"]}) == 1
        run_decodes.append(configs.pop())
        per_group[group_of[entry["variants"][0]]].append(run_decodes[-1])
    assert [list(dict.fromkeys(d)) for d in per_group] == [list(g.decodes) for g in groups]
    assert sorted(n for r in plan for n in r["variants"]) == sorted(by_name)
    assert decodes(run.vae) == [(FP32, FP32, False) if d.guarded else (FP16, FP16, True) for d in run_decodes]
    assert_clean(webui)

    notes = result["notes"]
    assert "hires_parity: no effect, no Hires pass" in notes
    assert "guard_encode: no effect, no VAE encode happened (no Hires pass, not img2img)" in notes
    assert "post_resize: no effect, no upscaler ran" in notes
    assert any(n.startswith("precision_guard: changed") for n in notes)
    assert any(n.startswith("all fixes: changed") for n in notes)
    assert "run 1 (baseline): full sampling" in notes
    assert "run 2 (guard_encode): decode only -- sampled as run 1's group, same decode, its own infotext" in notes
    assert "run 5 (precision_guard): decode only -- sampled as run 1's group, only SDFix's decode differs" in notes
    assert ("run 6 (late_refine): refine only (shared passes) -- its passes are an earlier group's; only the late "
            "refine differs") in notes
    assert "run 7 (all): decode only -- sampled as run 6's group, only SDFix's decode differs" in notes
    refine = next(n for n in notes if n.startswith("late_refine:"))
    assert refine.startswith("late_refine: changed ") and refine.endswith("; re-ran the last 1 of 3 steps (strength 0.3)")
    assert_plain(webui, run, PAYLOAD)


def test_every_variant_has_its_own_infotext_even_when_it_shares_a_decode(webui):
    """"all fixes" decodes as "guard only" does; its infotext must still name all of its fixes."""
    run = compare(webui, PAYLOAD, "ablation")
    infotexts = run.result["infotexts"]
    assert "SDFix" not in infotexts["baseline"]
    for name in ("precision_guard", "guard_encode", "hires_parity", "post_resize", "late_refine", "all"):
        settings = next(v.settings for v in run.request.variants if v.name == name)
        assert f"SDFix: {settings.to_infotext()}" in infotexts[name], name
        assert ("SDFix refine: 0.3" in infotexts[name]) is (name in ("late_refine", "all")), name
    assert "SDFix: on=1 guard=1 encode=1 parity=1 resize=1" in infotexts["all"]


# --- 3.-5. Hires ------------------------------------------------------------------------------------------


def test_hires_with_a_latent_upscaler_and_the_same_sampler_samples_once(any_host):
    env = any_host
    run = compare(env, HIRES)
    result = run.result
    assert result["complete"] and result["runs"] == 1
    assert [r["kind"] for r in result["plan"]] == ["full sampling", "decode only (shared sampling)"]
    off = plain(env, HIRES, {"enabled": False})
    assert len(run.unet) == len(off.unet) == HIRES["steps"] + HIRES["hr_second_pass_steps"]
    assert len(first_pass(run.unet)) == HIRES["steps"]
    assert_clean(env)
    assert_plain(env, run, HIRES)
    assert "Hires upscale: 2.0" in result["infotexts"]["B"] and "Denoising strength: 0.6" in result["infotexts"]["B"]


def test_hires_with_another_hires_sampler_shares_only_the_first_pass(webui):
    payload = dict(HIRES, hr_sampler_name="Euler")
    run = compare(webui, payload)
    result = run.result
    assert result["complete"] and result["runs"] == 2
    assert [r["kind"] for r in result["plan"]] == ["full sampling", "Hires pass (shared first pass)"]
    hires_steps = payload["hr_second_pass_steps"]
    assert len(first_pass(run.unet)) == payload["steps"]  # the first pass sampled once
    assert len(run.unet) == payload["steps"] + 2 * hires_steps  # one Hires pass per parity group
    assert "Hires sampler: Euler" in result["infotexts"]["A"]
    assert "Hires sampler Euler -> DPM++ 2M" in result["infotexts"]["B"]
    assert_clean(webui)
    assert_plain(webui, run, payload)

    ablation = compare(webui, payload, "ablation")
    groups = sampling_plan.sampling_groups(ablation.request.variants, hires=True, latent_upscaler=True)
    assert [[v.name for v in g.variants] for g in groups] == [
        ["baseline", "precision_guard", "guard_encode", "post_resize"], ["hires_parity"], ["late_refine"], ["all"]]
    assert ablation.result["runs"] == 4 and ablation.result["complete"]
    # one first pass, a Hires pass per parity setting, and a 1-step refine (round(0.3 x 2)) for late_refine and all
    assert len(ablation.unet) == payload["steps"] + 2 * hires_steps + 2 * 1
    assert [(r["variants"], r["kind"]) for r in ablation.result["plan"]] == [
        (["baseline"], "full sampling"), (["guard_encode"], "decode only (shared sampling)"),
        (["post_resize"], "decode only (shared sampling)"), (["precision_guard"], "decode only (shared sampling)"),
        (["hires_parity"], "Hires pass (shared first pass)"), (["late_refine"], "refine only (shared passes)"),
        (["all"], "refine only (shared passes)")]
    assert ("run 7 (all): refine only (shared passes) -- its passes are an earlier group's; only the late refine "
            "differs") in ablation.result["notes"]
    assert_clean(webui)
    assert_plain(webui, ablation, payload)


def test_hires_with_an_upscaler_model_splits_groups_by_the_decode_resize_encode_fixes(webui):
    # 72x64 -> 108x96: the host's Upscaler.upscale stops at 104 (a multiple of 8), resize_image resamples again
    payload = dict(HIRES, hr_upscaler="Fake 4x", width=72, hr_scale=1.5)
    run = compare(webui, payload)
    result = run.result
    assert result["runs"] == 2 and [r["kind"] for r in result["plan"]] == ["full sampling", "Hires pass (shared first pass)"]
    assert len(first_pass(run.unet, payload)) == payload["steps"]
    assert len(run.unet) == payload["steps"] + 2 * payload["hr_second_pass_steps"]
    encodes = [(r["input"], r["weight"], r["cudnn_tf32"]) for r in run.vae if r["part"] == "encoder"]
    assert encodes == [(FP16, FP16, True), (FP32, FP32, False)]  # B's Hires input encoded by the guard
    # A: first pass + final decoded by the host; B: the same first pass decoded again, guarded, then its final
    assert decodes(run.vae) == [(FP16, FP16, True)] * 2 + [(FP32, FP32, False)] * 2
    assert_clean(webui)
    assert_plain(webui, run, payload)

    ablation = compare(webui, payload, "ablation")
    groups = sampling_plan.sampling_groups(ablation.request.variants, hires=True, latent_upscaler=False,
                                parity_changes_sampler=False)
    assert [[v.name for v in g.variants] for g in groups] == [["baseline", "hires_parity"], ["precision_guard"], ["guard_encode"],
                                                              ["post_resize"], ["late_refine"], ["all"]]
    assert ablation.result["runs"] == len(groups) and ablation.result["complete"]
    kinds = [r["kind"] for r in ablation.result["plan"]]
    assert kinds == (["full sampling", "decode only (shared sampling)"] + ["Hires pass (shared first pass)"] * 3
                     + ["refine only (shared passes)", "Hires pass (shared first pass)"])
    assert len(first_pass(ablation.unet, payload)) == payload["steps"]
    # a Hires pass per group but late_refine's (it has baseline's), a 1-step refine for late_refine and all
    assert len(ablation.unet) == payload["steps"] + (len(groups) - 1) * payload["hr_second_pass_steps"] + 2
    assert_clean(webui)
    assert_plain(webui, ablation, payload)
    notes = ablation.result["notes"]
    assert "hires_parity: no effect, first and Hires sampler already equal" in notes
    assert any(n.startswith("post_resize: changed") for n in notes)


def test_override_settings_apply_to_every_variant_and_are_restored(webui):
    payload = dict(PAYLOAD, override_settings={"CLIP_stop_at_last_layers": 2})
    run = compare(webui, payload)
    assert all("Clip skip: 2" in text for text in run.result["infotexts"].values())
    assert webui.shared.opts.CLIP_stop_at_last_layers == 1
    assert_clean(webui)
    assert_plain(webui, run, payload)


# --- 6.-7. other scripts --------------------------------------------------------------------------------


def test_other_extensions_scripts_run_in_every_variant_with_the_payloads_args(webui):
    marker = {"Marker": {"args": [True, "m1"]}}
    payload = dict(PAYLOAD, alwayson_scripts=marker)
    run = compare(webui, payload)
    result = run.result
    for name in ("A", "B"):
        assert result["images"][name].getpixel((0, 0)) == (255, 0, 255), name
        assert "Marker: m1" in result["infotexts"][name], name
    assert result["scripts"] == {"ran": ["Marker"], "note": None}  # not the built-in UI-only "Sampler"
    calls = webui.marker_script.calls
    assert [(c["enabled"], c["tag"]) for c in calls] == [(True, "m1"), (True, "m1")]
    assert_clean(webui)
    assert_plain(webui, run, PAYLOAD, **marker)


def test_an_extension_generating_from_a_hook_does_not_take_the_variants_latent(webui):
    """ADetailer runs a generation of its own from postprocess_image, on the same thread: its sampler
    is not the variant's and its latent must not be handed to the next variant."""
    marker = {"Marker": {"args": [True, "m1", True]}}
    run = compare(webui, dict(PAYLOAD, alwayson_scripts=marker))
    assert run.result["complete"] and run.result["runs"] == 1
    assert_clean(webui)
    assert_plain(webui, run, PAYLOAD, **marker)

    hires = compare(webui, dict(HIRES, hr_sampler_name="Euler", alwayson_scripts=marker))
    assert hires.result["runs"] == 2
    assert len(first_pass(hires.unet, HIRES)) == HIRES["steps"] + 2 * 2  # once, plus each nested generation
    assert_clean(webui)
    assert_plain(webui, hires, dict(HIRES, hr_sampler_name="Euler"), **marker)


def test_builtin_ui_only_scripts_do_not_run(webui):
    run = compare(webui, PAYLOAD)
    assert webui.builtin_script.setups == []
    for name in ("A", "B"):
        text = run.result["infotexts"][name]
        assert "Steps: 3, Sampler: DPM++ 2M" in text and f"Seed: {PAYLOAD['seed']}" in text
    assert len(run.unet) == PAYLOAD["steps"]

    # what would have happened: the UI's defaults copied over the payload's fields
    p = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **dict(PAYLOAD))
    p.scripts = webui.runner
    p.script_args = webui.api.api.default_script_args(webui.runner)
    assert webui.builtin_script.setups == [p] and (p.steps, p.sampler_name, p.seed) == (20, "Euler a", -1)
    p.close()


def test_an_unknown_alwayson_script_is_named(webui):
    from lib_sdfix.webui.ab.request import request_from_body

    with pytest.raises(SettingsError) as err:
        compare(webui, dict(PAYLOAD, alwayson_scripts={"Nope": {"args": [1]}}))
    assert "payload.alwayson_scripts.Nope" in err.value.problems
    with pytest.raises(SettingsError) as err:
        compare(webui, dict(PAYLOAD, alwayson_scripts={"Marker": {"args": "yes"}}))
    assert "payload.alwayson_scripts.Marker.args" in err.value.problems
    assert webui.shared.sd_model.unet_calls == []
    assert_clean(webui)

    for name in ("sdfix", "SDFix"):
        with pytest.raises(SettingsError) as err:
            request_from_body({"payload": dict(PAYLOAD, alwayson_scripts={name: {"args": [{}]}})})
        assert f"payload.alwayson_scripts.{name}" in err.value.problems


def test_sdfix_in_alwayson_scripts_gets_422_from_the_route(webui):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_sdfix.webui.routes import on_app_started

    app = FastAPI()
    on_app_started(None, app)
    client = TestClient(app)
    body = {"payload": dict(PAYLOAD, alwayson_scripts={"SDFix": {"args": [{"enabled": False}]}})}
    answer = client.post("/sdfix/v1/ab", json=body)
    assert answer.status_code == 422 and "payload.alwayson_scripts.SDFix" in answer.json()["detail"]
    answer = client.post("/sdfix/v1/ab", json={"payload": dict(PAYLOAD, alwayson_scripts={"Nope": {}})})
    assert answer.status_code == 422 and "payload.alwayson_scripts.Nope" in answer.json()["detail"]
    ok = client.post("/sdfix/v1/ab", json={"payload": PAYLOAD})
    assert ok.status_code == 200 and ok.json()["complete"] and set(ok.json()["images"]) == {"A", "B"}
    assert_clean(webui)


def test_a_failing_extension_ui_leaves_sdfix_alone_and_says_so(webui, monkeypatch):
    """After "Reload script bodies" the scripts have no controls; building them again fails for one."""
    webui.runner.reload_sources()
    webui.marker_script.fail_ui = True
    monkeypatch.setitem(sys.modules, "gradio", fake_gradio())
    run = compare(webui, dict(PAYLOAD, alwayson_scripts={"Marker": {"args": [True, "m1"]}}))
    result = run.result
    note = "other extensions' scripts did not run (RuntimeError: marker ui broke)"
    assert result["complete"] and result["scripts"] == {"ran": [], "note": note}
    assert result["notes"][-1] == note
    assert result["images"]["A"].getpixel((0, 0)) != (255, 0, 255)  # the marker did not run
    assert decodes(run.vae) == [(FP16, FP16, True), (FP32, FP32, False)]  # SDFix still decides each decode
    assert "SDFix" not in result["infotexts"]["A"] and "SDFix: on=1" in result["infotexts"]["B"]
    assert webui.builtin_script.setups == []
    assert_clean(webui)
    assert_plain(webui, run, PAYLOAD)


# --- 8.-9. interruption, failures, clean-up -----------------------------------------------------------


def _interrupt_when_run_starts(env, monkeypatch, n):
    """The user presses Interrupt once n - 1 runs are done: as the n-th generation from now starts."""
    original = env.processing.process_images
    env.generations = []

    def process_images(p):
        env.generations.append(p)
        if len(env.generations) == n:
            env.shared.state.interrupt()
        return original(p)

    monkeypatch.setattr(env.processing, "process_images", process_images)
    return original


def test_interrupted_after_the_first_run(webui, monkeypatch):
    original = _interrupt_when_run_starts(webui, monkeypatch, 2)
    run = compare(webui, PAYLOAD)
    result = run.result
    assert not result["complete"] and [v["name"] for v in result["variants"]] == ["A"]
    assert set(result["images"]) == {"A"} and set(result["infotexts"]) == {"A"} and result["runs"] == 1
    assert result["metrics"] == [] and result["notes"] == [] and result["heatmap"] is None
    assert len(decodes(run.vae)) == 1  # B never decoded
    assert_clean(webui)
    assert pixels(result["images"]["A"]) == pixels(plain(webui, PAYLOAD, {"enabled": False}).image)

    monkeypatch.setattr(webui.processing, "process_images", original)
    _interrupt_when_run_starts(webui, monkeypatch, 2)
    result = compare(webui, dict(HIRES, hr_sampler_name="Euler"), "ablation").result
    assert not result["complete"] and len(result["plan"]) == 1 and result["plan"][0]["kind"] == "full sampling"
    assert [v["name"] for v in result["variants"]] == result["plan"][0]["variants"] == ["baseline"]
    assert len(webui.generations) == 2  # no generation started after the interrupted one
    assert_clean(webui)


def test_a_run_interrupted_while_sampling_is_not_a_finished_variant(webui):
    payload = dict(HIRES, hr_sampler_name="Euler")
    run_one = payload["steps"] + payload["hr_second_pass_steps"]

    def interrupt(calls):
        if calls == run_one + 1:  # the first UNet call of B's Hires pass
            webui.shared.state.interrupted = True

    webui.shared.sd_model.unet_hook = interrupt
    run = compare(webui, payload)
    result = run.result
    assert len(run.unet) == run_one + 1
    assert not result["complete"] and set(result["images"]) == {"A"}
    assert result["metrics"] == [] and result["notes"] == []
    assert_clean(webui)


@pytest.mark.parametrize("fail_at", [1, HIRES["steps"] + HIRES["hr_second_pass_steps"] + 1])
def test_a_generation_that_raises_leaves_nothing_behind(webui, fail_at):
    def fail(calls):
        if calls == fail_at:
            raise RuntimeError("unet failed")

    webui.shared.sd_model.unet_hook = fail
    with pytest.raises(RuntimeError, match="unet failed"):
        compare(webui, dict(HIRES, hr_sampler_name="Euler"))
    assert_clean(webui)
    webui.shared.sd_model.unet_hook = None
    assert compare(webui, PAYLOAD).result["complete"]  # and the next comparison runs as usual
    assert_clean(webui)


def test_a_skipped_run_is_not_a_finished_variant_and_the_next_run_goes_on(webui):
    payload = dict(HIRES, hr_sampler_name="Euler")
    run_one = payload["steps"] + payload["hr_second_pass_steps"]

    def skip(calls):
        if calls == run_one + 1:  # "Skip" pressed during B's Hires pass
            webui.shared.state.skipped = True

    webui.shared.sd_model.unet_hook = skip
    result = compare(webui, payload, "ablation").result
    # the parity-off group finished; the parity group's Hires pass was skipped: its variant is missing; the
    # refine groups after it ran ("all" sampled its own Hires pass, the parity group had none to share)
    assert sorted(result["images"]) == ["all", "baseline", "guard_encode", "late_refine", "post_resize",
                                        "precision_guard"] and not result["complete"]
    assert webui.shared.state.skipped is False
    assert_clean(webui)


@pytest.mark.parametrize("name", ["Eulr", "DPM++ 2M Karrass"])
def test_an_unknown_sampler_is_refused_not_replaced(webui, name):
    with pytest.raises(SettingsError) as err:
        compare(webui, dict(PAYLOAD, sampler_name=name))
    assert "payload.sampler_name" in err.value.problems
    assert compare(webui, dict(PAYLOAD, sampler_name="DPM++ 2M Karras")).result["complete"]  # legacy combined name
    assert_clean(webui)


# --- 10. seeds ------------------------------------------------------------------------------------------


def test_a_random_seed_is_drawn_once_for_every_variant(webui, monkeypatch):
    import random

    draws = itertools.count(1000)
    monkeypatch.setattr(random, "randrange", lambda *a: next(draws))
    payload = dict(HIRES, hr_upscaler="Fake 4x", seed=-1, subseed=-1, subseed_strength=0.3)
    run = compare(webui, payload, "ablation")
    result = run.result
    assert result["seed"] == 1000 and result["complete"]
    for text in result["infotexts"].values():
        assert "Seed: 1000," in text and "Variation seed: 1001," in text
    assert_clean(webui)
    fixed = dict(payload, seed=1000, subseed=1001)
    expected = plain(webui, fixed, {"enabled": False})
    assert pixels(result["images"]["baseline"]) == pixels(expected.image)
    assert result["infotexts"]["baseline"] == expected.infotext


# --- the host's API fields -------------------------------------------------------------------------------


def test_txt2img_fields_are_the_hosts_api_fields(any_host):
    from lib_sdfix.webui.ab.request import txt2img_fields

    fields = txt2img_fields(dict(HIRES, alwayson_scripts={"Marker": {"args": []}}, send_images=True))
    for dropped in ("alwayson_scripts", "script_args", "sampler_index", "send_images", "save_images", "infotext",
                    "script_name", "force_task_id"):
        assert dropped not in fields
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] is None
    assert fields["override_settings_restore_afterwards"] is True and fields["steps"] == 3
    if any_host.host == "forge":
        assert fields["hr_additional_modules"] == ["Use same choices"]
    else:
        assert "hr_additional_modules" not in fields
    legacy = txt2img_fields(dict(PAYLOAD, sampler_name="Euler Karras"))
    assert (legacy["sampler_name"], legacy["scheduler"]) == ("Euler", "Karras")
    with pytest.raises(SettingsError, match="payload.script_name"):
        txt2img_fields(dict(PAYLOAD, script_name="X/Y/Z plot"))


def test_forge_needs_its_hires_module_default(monkeypatch):
    """Forge's Hires pass fails on hr_additional_modules=None: the host's default makes the comparison run."""
    from lib_sdfix.webui.hosts.forge import ForgeHost

    env = make_env(monkeypatch, "forge")
    assert compare(env, HIRES).result["complete"]
    monkeypatch.setattr(ForgeHost, "txt2img_defaults", lambda self: {})
    with pytest.raises(TypeError):
        compare(env, HIRES)
    assert_clean(env)
