"""lib_sdfix.ab.request: variants from the API, infotext to payload, the API body."""
import random

import pytest

from lib_sdfix.ab import (
    MAX_VARIANTS,
    ABRequest,
    ab_request_from_body,
    parse_variants,
    payload_from_infotext,
    plan_variants,
    settings_from_infotext,
)
from lib_sdfix.settings import SDFixSettings, SettingsError


def test_parse_variants_accepts_modes_and_explicit_lists():
    base = SDFixSettings(vae_dtype="auto")
    assert parse_variants("ab", base) == plan_variants("ab", base)
    assert parse_variants(["ablation"], base) == plan_variants("ablation", base)
    variants = parse_variants([
        {"name": "off", "settings": {"enabled": False}},
        {"name": "guard-fp32", "label": "guard, fp32", "settings": {"vae_dtype": "fp32", "guard_encode": False}},
        {"name": "defaults"},
    ], base)
    assert [v.name for v in variants] == ["off", "guard-fp32", "defaults"]
    assert variants[0].label == "off" and variants[1].label == "guard, fp32"
    assert variants[1].settings == base.changed(vae_dtype="fp32", guard_encode=False)
    assert variants[2].settings == base


def _spec(name, **settings):
    return {"name": name, "settings": settings}


@pytest.mark.parametrize("value,field,text", [
    ([], "variants", "empty"),
    ([_spec(f"v{i}") for i in range(MAX_VARIANTS + 1)], "variants", "at most 8"),
    ([_spec("a", precision_guard="yes")], "variants[0].settings.precision_guard", "expected true or false"),
    ([_spec("a"), _spec("b", precison_guard=True)], "variants[1].settings.precison_guard", "unknown option"),
    ([_spec("a"), _spec("b", resize_filter="BILINEAR")], "variants[1].settings.resize_filter", "must be one of"),
    ([_spec("a"), _spec("A")], "variants[1].name", "duplicate"),
    ([{"name": 3}], "variants[0].name", "got 3"),
    ([{"name": "../x"}], "variants[0].name", "letters, digits"),
    ([{"settings": {}}], "variants[0].name", "got None"),
    ([{"name": "a", "colour": 1}], "variants[0].colour", "unknown field"),
    ([{"name": "a", "settings": [True]}], "variants[0].settings", "expected an object"),
    ([{"name": "a", "label": ""}], "variants[0].label", "non-empty"),
    (["ab", _spec("x")], "variants[0]", "expected an object"),
    (["nope"], "variants[0]", "unknown mode"),
    ("abc", "variants", "unknown mode"),
    (3, "variants", "got int"),
    ({"name": "a"}, "variants", "got dict"),
])
def test_bad_variant_lists_name_the_field(value, field, text):
    with pytest.raises(SettingsError) as err:
        parse_variants(value, SDFixSettings())
    assert field in err.value.problems, err.value.problems
    assert text in err.value.problems[field]


def test_every_bad_variant_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        parse_variants([_spec("a", enabled=1), {"name": "a"}, _spec("c", vae_dtype="fp8")], SDFixSettings())
    assert set(err.value.fields) == {"variants[0].settings.enabled", "variants[1].name", "variants[2].settings.vae_dtype"}


# --- infotext, seed ------------------------------------------------------------------------------


def _parsed(**extra):
    """What the WebUI's parse_generation_parameters returns for a Hires.fix image (strings + its defaults)."""
    params = {
        "Prompt": "portrait, detailed skin", "Negative prompt": "blurry", "Steps": "28", "Sampler": "DPM++ 2M",
        "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "1234567", "Size-1": "512", "Size-2": "768",
        "Model hash": "abc", "Denoising strength": "0.35", "Hires upscale": "2", "Hires steps": "12",
        "Hires upscaler": "R-ESRGAN 4x+", "Clip skip": "2", "Hires resize-1": 0, "Hires resize-2": 0,
        "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
        "SDFix": "on=1 guard=1 encode=0 parity=1 resize=1 filter=BICUBIC dtype=fp32 previews=0 warn=0.5",
    }
    params.update(extra)
    return params


def test_payload_from_infotext_with_hires():
    payload = payload_from_infotext(_parsed())
    assert payload == {
        "prompt": "portrait, detailed skin", "negative_prompt": "blurry", "steps": 28, "sampler_name": "DPM++ 2M",
        "scheduler": "Karras", "cfg_scale": 6.5, "seed": 1234567, "width": 512, "height": 768,
        "denoising_strength": 0.35, "enable_hr": True, "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_upscaler": "R-ESRGAN 4x+", "hr_second_pass_steps": 12,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
    }
    assert type(payload["steps"]) is int and type(payload["cfg_scale"]) is float and type(payload["hr_scale"]) is float


def test_payload_from_infotext_explicit_hires_sampler_and_resize():
    params = _parsed(**{"Hires sampler": "Euler a", "Hires schedule type": "Uniform", "Hires resize-1": "1024",
                        "Hires resize-2": "1536"})
    del params["Hires upscale"]
    payload = payload_from_infotext(params)
    assert payload["hr_sampler_name"] == "Euler a" and payload["hr_scheduler"] == "Uniform"
    assert (payload["hr_resize_x"], payload["hr_resize_y"]) == (1024, 1536) and "hr_scale" not in payload


def test_payload_from_infotext_without_hires():
    params = {"Prompt": "a cat", "Negative prompt": "", "Steps": "20", "Sampler": "DPM++ 2M Karras",
              "CFG scale": "7", "Seed": "-1", "Size-1": "512", "Size-2": "512", "Clip skip": "1",
              "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler"}
    payload = payload_from_infotext(params)
    assert payload["enable_hr"] is False and not any(k.startswith("hr_") for k in payload)
    assert payload["sampler_name"] == "DPM++ 2M Karras" and "scheduler" not in payload  # the API splits it
    assert payload["seed"] == -1 and payload["cfg_scale"] == 7.0 and "denoising_strength" not in payload


def test_payload_from_infotext_names_bad_entries():
    with pytest.raises(SettingsError) as err:
        payload_from_infotext(_parsed(Steps="many", **{"CFG scale": "x", "Size-1": "51.5", "Seed": True}))
    assert set(err.value.fields) == {"Steps", "CFG scale", "Size-1", "Seed"}
    with pytest.raises(SettingsError):
        payload_from_infotext("Steps: 20")


def test_sdfix_settings_come_from_the_infotext_not_the_payload():
    base = SDFixSettings(vae_dtype="auto")
    assert "SDFix" not in payload_from_infotext(_parsed()) and "alwayson_scripts" not in payload_from_infotext(_parsed())
    settings = settings_from_infotext(_parsed(), base)
    assert settings.guard_encode is False and settings.resize_filter == "BICUBIC" and settings.vae_dtype == "fp32"
    assert settings_from_infotext({"Prompt": "x"}, base) is base
    with pytest.raises(SettingsError):
        settings_from_infotext({"SDFix": "on=maybe"}, base)


# --- the API body --------------------------------------------------------------------------------


def test_minimal_body_defaults_to_ab():
    body = {"payload": {"prompt": "x", "seed": 3}}
    request = ab_request_from_body(body, SDFixSettings(resize_filter="BOX"))
    assert isinstance(request, ABRequest)
    assert [v.name for v in request.variants] == ["A", "B"] and request.reference.name == "A"
    assert request.variants[1].settings.resize_filter == "BOX"
    assert (request.heatmap_gain, request.save) == (4.0, False)
    body["payload"]["prompt"] = "changed"
    assert request.payload["prompt"] == "x"  # a copy


def test_full_body():
    request = ab_request_from_body({
        "payload": {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}},
        "variants": [{"name": "off", "settings": {"enabled": False}}, {"name": "on"}],
        "heatmap_gain": 16, "save": True,
    }, SDFixSettings())
    assert [v.name for v in request.variants] == ["off", "on"]
    assert request.heatmap_gain == 16.0 and request.save is True
    assert ab_request_from_body({"payload": {}, "variants": "ablation"}, SDFixSettings()).variants[0].name == "baseline"


@pytest.mark.parametrize("body,field", [
    ([1], "body"),
    ({}, "payload"),
    ({"payload": ["prompt"]}, "payload"),
    ({"payload": {"alwayson_scripts": {"SDFix": {"args": [{}]}}}}, "payload.alwayson_scripts.SDFix"),
    ({"payload": {"alwayson_scripts": {"sdfix": {"args": []}}}}, "payload.alwayson_scripts.sdfix"),
    ({"payload": {"alwayson_scripts": ["sdfix"]}}, "payload.alwayson_scripts"),
    ({"payload": {}, "variant": "ab"}, "variant"),
    ({"payload": {}, "variants": [{"name": 1}]}, "variants[0].name"),
    ({"payload": {}, "variants": []}, "variants"),
    ({"payload": {}, "heatmap_gain": 0}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": 100}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": "4"}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": True}, "heatmap_gain"),
    ({"payload": {}, "save": "yes"}, "save"),
])
def test_bad_bodies_name_the_field(body, field):
    with pytest.raises(SettingsError) as err:
        ab_request_from_body(body, SDFixSettings())
    assert field in err.value.problems, err.value.problems
    assert field in str(err.value)


def test_every_body_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": 1, "variants": "abc", "heatmap_gain": -1, "save": 0, "x": 1}, SDFixSettings())
    assert set(err.value.fields) == {"payload", "variants", "heatmap_gain", "save", "x"}


def test_seed_is_resolved_once_for_all_variants():
    request = ab_request_from_body({"payload": {"prompt": "x", "seed": -1}}, SDFixSettings())
    resolved = request.with_resolved_seed(random.Random(1))
    assert resolved.payload["seed"] == random.Random(1).randrange(4294967294)
    assert request.payload["seed"] == -1 and "subseed" not in resolved.payload
    assert resolved.variants == request.variants
    fixed = ab_request_from_body({"payload": {"seed": 9, "subseed_strength": 0.3}}, SDFixSettings())
    fixed = fixed.with_resolved_seed(random.Random(2))
    assert fixed.payload["seed"] == 9 and 0 <= fixed.payload["subseed"] < 4294967294
    assert ab_request_from_body({"payload": {}}, SDFixSettings()).with_resolved_seed().payload["seed"] >= 0
    with pytest.raises(SettingsError, match="seed"):
        ab_request_from_body({"payload": {"seed": "x"}}, SDFixSettings()).with_resolved_seed()
