"""lib_sdfix.limits.txt2img (and the values of lib_sdfix.limits.values): every txt2img field of a
request, the Hires size, text, names and lists, ignored containers, the host's names."""
import pytest

from lib_sdfix.limits import values
from lib_sdfix.limits.overrides import OVERRIDE_RULES
from lib_sdfix.limits.txt2img import PAYLOAD_RULES, check_txt2img_payload, hires_size
from lib_sdfix.settings import SettingsError

from .support import CHEAP, accepted, b64, png_bytes, refused

# --- numbers ------------------------------------------------------------------------------------------

# (field, accepted values, refused values): the UI's ranges (see PAYLOAD_RULES' sources).
NUMBERS = [
    ("width", [64, 72, 512, 2048, 512.0], [0, 56, 63, 65, 516, 2056, 4096, -64, 10 ** 12, 512.5]),
    ("height", [64, 2048], [0, 60, 2049, -8]),
    ("steps", [1, 20, 150, 20.0], [0, -1, 151, 10 ** 9, 1.5]),
    ("batch_size", [1], [0, -1, 9]),
    ("n_iter", [1], [0, 101, -5]),
    ("cfg_scale", [1, 7, 7.5, 30], [0, 0.99, 30.5, -7]),
    ("denoising_strength", [0, 0.35, 1], [-0.01, 1.01]),
    ("subseed_strength", [0, 0.5, 1], [-0.5, 1.5]),
    ("hr_scale", [1, 1.05, 2, 4], [0.5, 0.99, 4.05, 0]),
    ("hr_resize_x", [0, 64, 1024, 2048], [8, 56, 100, 2056, -8]),
    ("hr_resize_y", [0, 64, 2048], [32, 4096]),
    ("hr_second_pass_steps", [0, 150], [-1, 151]),
    ("seed", [-1, 0, 42, 4294967295, None, 7.0], [-2, 4294967296, 2 ** 64, 1.5]),
    ("subseed", [-1, 0, 4294967295, None], [-7, 4294967296]),
    ("seed_resize_from_w", [-1, 0, 8, 512, 2048], [-8, 7, 2056]),
    ("seed_resize_from_h", [-1, 0, 2048], [4, 4096]),
    ("eta", [None, 0, 1], [1.5, -0.1]),
    ("s_churn", [None, 0, 100], [101]),
    ("s_tmin", [0, 10], [10.5]),
    ("s_tmax", [0, 999], [1000]),
    ("s_noise", [0, 1.1], [1.2]),
    ("s_min_uncond", [0, 15], [16]),
    ("refiner_switch_at", [None, 0.01, 1], [0, 1.5]),
    ("firstphase_width", [0], [32, 4096]),
]


@pytest.mark.parametrize("field,good,bad", NUMBERS, ids=[n[0] for n in NUMBERS])
def test_numbers_are_bounded_as_the_ui_bounds_them(field, good, bad):
    for value in good:
        assert field in accepted(dict(CHEAP, **{field: value})) or value is None
    for value in bad:
        problems = refused(dict(CHEAP, **{field: value}), field)
        assert len(problems[f"payload.{field}"]) < 300


@pytest.mark.parametrize("field", [k for k, r in PAYLOAD_RULES.items() if r.kind in ("int", "float")])
def test_numbers_refuse_other_types_nan_and_infinity(field):
    for value in (True, False, "7", [7], {"v": 7}, float("nan"), float("inf"), -float("inf"), 10 ** 400):
        if value == 10 ** 400 and PAYLOAD_RULES[field].kind == "int":
            value = -(10 ** 400)
        problems = refused(dict(CHEAP, **{field: value}), field)
        assert "payload." + field in problems


def test_integers_are_normalised_and_nulls_only_where_the_webui_allows_them():
    fields = accepted(dict(CHEAP, width=512.0, steps=20.0, cfg_scale=7))
    assert fields["width"] == 512 and type(fields["width"]) is int and type(fields["steps"]) is int
    assert fields["cfg_scale"] == 7.0 and type(fields["cfg_scale"]) is float
    for field in ("width", "steps", "cfg_scale", "prompt", "hr_scale", "denoising_strength", "enable_hr", "batch_size"):
        assert "must not be null" in refused(dict(CHEAP, **{field: None}), field)[f"payload.{field}"]
    for field in ("sampler_name", "scheduler", "hr_upscaler", "styles", "eta", "override_settings", "seed"):
        accepted(dict(CHEAP, **{field: None}))


def test_ab_compares_one_image_with_a_clear_field_name():
    assert "A/B compares one image" in refused(dict(CHEAP, batch_size=2), "batch_size")["payload.batch_size"]
    assert "A/B compares one image" in refused(dict(CHEAP, n_iter=3), "n_iter")["payload.n_iter"]
    assert "between" not in refused(dict(CHEAP, n_iter=3))["payload.n_iter"]
    assert "1-8" in refused(dict(CHEAP, batch_size=9), "batch_size")["payload.batch_size"]  # beyond the UI: range


def test_booleans_are_booleans():
    for field in ("enable_hr", "restore_faces", "tiling", "disable_extra_networks", "send_images", "save_images",
                  "do_not_save_samples", "do_not_save_grid"):
        for value in (1, 0, "true", [True]):
            refused(dict(CHEAP, **{field: value}), field)
        accepted(dict(CHEAP, **{field: True}))


# --- Hires size -------------------------------------------------------------------------------------


def test_hires_size_follows_the_webui():
    assert hires_size(512, 768, 2.0, 0, 0) == (1024, 1536)
    assert hires_size(512, 768, 1.5, 0, 0) == (768, 1152)
    assert hires_size(512, 768, 2.0, 1024, 0) == (1024, 1536)
    assert hires_size(512, 768, 2.0, 0, 1536) == (1024, 1536)
    assert hires_size(512, 512, 2.0, 1024, 768) == (1024, 1024)  # covers the target, then cropped
    assert hires_size(64, 2048, 2.0, 2048, 64) == (2048, 65536)


@pytest.mark.parametrize("hires,field", [
    ({"width": 2048, "height": 2048, "hr_scale": 2}, "hr_scale"),  # the UI lets 2048 x 4 through
    ({"width": 1024, "height": 512, "hr_scale": 2.5}, "hr_scale"),
    ({"width": 64, "height": 2048, "hr_resize_x": 2048, "hr_resize_y": 64}, "hr_resize_x"),  # 2048 x 65536
    ({"width": 2048, "height": 64, "hr_resize_x": 64}, "hr_resize_x"),  # 64 x 2: no latent left
    ({"width": 512, "height": 2048, "hr_resize_y": 2048, "hr_scale": 1}, None),  # 512 x 2048: fine
    ({"width": 2048, "height": 2048, "hr_scale": 1}, None),
])
def test_the_hires_size_stays_within_the_uis_largest_size(hires, field):
    body = dict(CHEAP, enable_hr=True, denoising_strength=0.5, **hires)
    size = hires_size(body["width"], body["height"], body.get("hr_scale", 2.0), body.get("hr_resize_x", 0),
                      body.get("hr_resize_y", 0))
    if all(64 <= side <= 2048 for side in size):
        accepted(body)
    else:
        assert "Hires pass would be" in refused(body, field)[f"payload.{field}"]
        accepted(dict(body, enable_hr=False))  # not checked when Hires does not run


def test_hires_within_bounds_and_the_legacy_first_pass_size():
    accepted(dict(CHEAP, enable_hr=True, width=1024, height=1024, hr_scale=2))
    accepted(dict(CHEAP, enable_hr=True, hr_resize_x=2048, hr_resize_y=2048, width=512, height=512))
    accepted(dict(CHEAP, enable_hr=True, firstphase_width=512, firstphase_height=512, hr_scale=4))
    refused(dict(CHEAP, enable_hr=True, firstphase_width=1024, firstphase_height=1024, hr_scale=4), "hr_scale")
    refused(dict(CHEAP, firstphase_width=512), "firstphase_width")  # the field the client sent
    refused(dict(CHEAP, firstphase_height=512, firstphase_width=0), "firstphase_height")
    refused({"enable_hr": True, "width": 2048}, "width")  # hr_scale defaults to 2: the size is named


# --- text, names, lists -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"])
def test_prompts_are_bounded_valid_unicode(field):
    accepted(dict(CHEAP, **{field: "ü" * values.MAX_PROMPT_CHARS}))
    message = refused(dict(CHEAP, **{field: "x" * (values.MAX_PROMPT_CHARS + 1)}), field)[f"payload.{field}"]
    assert "at most 8000" in message
    refused(dict(CHEAP, **{field: "a\ud800b"}), field)  # a lone surrogate: every UTF-8 encode fails
    refused(dict(CHEAP, **{field: "a\x00b"}), field)
    refused(dict(CHEAP, **{field: 5}), field)
    accepted(dict(CHEAP, **{field: "line one\nline two\t(tabs, ok)"}))


@pytest.mark.parametrize("field", ["sampler_name", "scheduler", "hr_upscaler", "hr_sampler_name", "hr_scheduler",
                                   "hr_checkpoint_name", "refiner_checkpoint", "sampler_index", "script_name",
                                   "force_task_id"])
def test_names_are_short_single_line_text(field):
    accepted(dict(CHEAP, **{field: "DPM++ 2M"}))
    accepted(dict(CHEAP, **{field: "sub/folder/model.safetensors [abcdef0123]"}))
    for bad in ("x" * 1025, "a\nb", "a\x1bb", 3, ["Euler"]):
        refused(dict(CHEAP, **{field: bad}), field)


def test_styles_are_a_bounded_list_of_names():
    accepted(dict(CHEAP, styles=[f"style {i}" for i in range(values.MAX_STYLES)]))
    refused(dict(CHEAP, styles=[f"s{i}" for i in range(values.MAX_STYLES + 1)]), "styles")
    for bad in ("style", [1], ["x" * 2000], [["nested"]], {"a": 1}):
        refused(dict(CHEAP, styles=bad), "styles")


def test_infotext_is_bounded():
    accepted(dict(CHEAP, infotext="x" * values.MAX_INFOTEXT_CHARS))
    refused(dict(CHEAP, infotext="x" * (values.MAX_INFOTEXT_CHARS + 1)), "infotext")


def test_unknown_fields_are_refused_with_a_suggestion():
    problems = refused(dict(CHEAP, stpes=20, init_images=["..."]))
    assert "did you mean steps" in problems["payload.stpes"]
    assert "unknown txt2img field" in problems["payload.init_images"]
    many = refused(dict(CHEAP, **{f"k{i}": i for i in range(5000)}))
    assert len(many) <= 60 and "5000 unknown fields" in many["payload"]


def test_every_webui_txt2img_field_has_a_rule():
    """api/models.py: StableDiffusionProcessing(Txt2Img) init fields minus API_NOT_ALLOWED, plus the API's extras."""
    expected = {
        "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
        "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
        "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength",
        "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
        "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks",
        "firstpass_image", "comments", "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
        "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler",
        "hr_prompt", "hr_negative_prompt", "force_task_id", "sampler_index", "script_name", "script_args",
        "send_images", "save_images", "alwayson_scripts", "infotext",
    }
    assert set(PAYLOAD_RULES) == expected
    assert all(rule.source for rule in PAYLOAD_RULES.values())


def test_firstpass_image_and_sdfix_script_args_are_refused():
    assert "not supported" in refused(dict(CHEAP, firstpass_image=b64(png_bytes(8, 8))), "firstpass_image")[
        "payload.firstpass_image"]
    accepted(dict(CHEAP, firstpass_image=None))
    refused(dict(CHEAP, alwayson_scripts={"SDFix": {"args": []}}), "alwayson_scripts.SDFix")
    refused(dict(CHEAP, alwayson_scripts=["x"]), "alwayson_scripts")


def test_ignored_containers_are_only_bounded():
    accepted(dict(CHEAP, alwayson_scripts={"ControlNet": {"args": [{"image": b64(png_bytes(64, 64)), "weight": 1.0}]}},
                  script_args=[1, "a", None], comments={"note": 1}))
    deep = []
    node = deep
    for _ in range(40):
        node.append([])
        node = node[0]
    assert "deeper than 16" in refused(dict(CHEAP, script_args=deep), "script_args")["payload.script_args"]
    assert "values" in refused(dict(CHEAP, script_args=list(range(20000))), "script_args")["payload.script_args"]
    refused(dict(CHEAP, alwayson_scripts={"x": {"args": [float("nan")]}}), "alwayson_scripts")
    refused(dict(CHEAP, comments={"a": "x" * (values.JSON_MAX_CHARS + 1)}), "comments")


def test_host_choices_refuse_unknown_names():
    choices = {"hr_upscaler": ["Latent", "R-ESRGAN 4x+"]}
    hires = dict(CHEAP, enable_hr=True, hr_upscaler="R-ESRGAN 4x")
    with pytest.raises(SettingsError) as err:
        check_txt2img_payload(hires, choices=choices)
    assert "R-ESRGAN 4x+" in err.value.problems["payload.hr_upscaler"]  # suggested
    check_txt2img_payload(dict(hires, hr_upscaler="Latent"), choices=choices)
    check_txt2img_payload(dict(hires, enable_hr=False), choices=choices)  # not looked up without Hires


def test_the_api_doc_lists_every_field_and_allowed_override():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text(encoding="utf-8")
    section = doc[doc.index("## A/B request limits"):]
    assert [f for f in PAYLOAD_RULES if f"`{f}`" not in section] == []
    assert [k for k in OVERRIDE_RULES if f"`{k}`" not in section] == []
