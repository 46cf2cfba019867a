"""Request limits: every txt2img field of an A/B body, option overrides, base64 images, variant
labels, bounded error messages, and the grid's label trimming."""
import base64
import io
import math
import random
import struct
import time
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageFile

from lib_sdfix import limits
from lib_sdfix.ab import MAX_LABEL_CHARS, ab_request_from_body, compose_grid, payload_from_infotext
from lib_sdfix.ab.output import fit_label
from lib_sdfix.webui.form import FORM_FIELDS, payload_from_form
from lib_sdfix.limits import (
    MAX_IMAGE_PIXELS,
    OVERRIDE_REFUSED,
    OVERRIDE_RULES,
    PAYLOAD_RULES,
    check_override_settings,
    check_txt2img_payload,
    decode_image_field,
    hires_size,
    max_base64_chars,
)
from lib_sdfix.settings import UI_ARG_ORDER, SDFixSettings, SettingsError

CHEAP = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1}


def refused(payload, field=None):
    """The problems of a payload that must be refused; ``field`` (after "payload.") must be named."""
    with pytest.raises(SettingsError) as err:
        check_txt2img_payload(payload)
    if field is not None:
        assert f"payload.{field}" in err.value.problems, err.value.problems
    return err.value.problems


def accepted(payload):
    return check_txt2img_payload(payload)


# --- numbers ------------------------------------------------------------------------------------------

# (field, accepted values, refused values): the UI's ranges (see limits.PAYLOAD_RULES' sources).
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
    accepted(dict(CHEAP, **{field: "ü" * limits.MAX_PROMPT_CHARS}))
    message = refused(dict(CHEAP, **{field: "x" * (limits.MAX_PROMPT_CHARS + 1)}), field)[f"payload.{field}"]
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
    accepted(dict(CHEAP, styles=[f"style {i}" for i in range(limits.MAX_STYLES)]))
    refused(dict(CHEAP, styles=[f"s{i}" for i in range(limits.MAX_STYLES + 1)]), "styles")
    for bad in ("style", [1], ["x" * 2000], [["nested"]], {"a": 1}):
        refused(dict(CHEAP, styles=bad), "styles")


def test_infotext_is_bounded():
    accepted(dict(CHEAP, infotext="x" * limits.MAX_INFOTEXT_CHARS))
    refused(dict(CHEAP, infotext="x" * (limits.MAX_INFOTEXT_CHARS + 1)), "infotext")


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
    assert "not supported" in refused(dict(CHEAP, firstpass_image=_b64(_png(8, 8))), "firstpass_image")[
        "payload.firstpass_image"]
    accepted(dict(CHEAP, firstpass_image=None))
    refused(dict(CHEAP, alwayson_scripts={"SDFix": {"args": []}}), "alwayson_scripts.SDFix")
    refused(dict(CHEAP, alwayson_scripts=["x"]), "alwayson_scripts")


def test_ignored_containers_are_only_bounded():
    accepted(dict(CHEAP, alwayson_scripts={"ControlNet": {"args": [{"image": _b64(_png(64, 64)), "weight": 1.0}]}},
                  script_args=[1, "a", None], comments={"note": 1}))
    deep = []
    node = deep
    for _ in range(40):
        node.append([])
        node = node[0]
    assert "deeper than 16" in refused(dict(CHEAP, script_args=deep), "script_args")["payload.script_args"]
    assert "values" in refused(dict(CHEAP, script_args=list(range(20000))), "script_args")["payload.script_args"]
    refused(dict(CHEAP, alwayson_scripts={"x": {"args": [float("nan")]}}), "alwayson_scripts")
    refused(dict(CHEAP, comments={"a": "x" * (limits.JSON_MAX_CHARS + 1)}), "comments")


def test_host_choices_refuse_unknown_names():
    choices = {"hr_upscaler": ["Latent", "R-ESRGAN 4x+"]}
    hires = dict(CHEAP, enable_hr=True, hr_upscaler="R-ESRGAN 4x")
    with pytest.raises(SettingsError) as err:
        check_txt2img_payload(hires, choices=choices)
    assert "R-ESRGAN 4x+" in err.value.problems["payload.hr_upscaler"]  # suggested
    check_txt2img_payload(dict(hires, hr_upscaler="Latent"), choices=choices)
    check_txt2img_payload(dict(hires, enable_hr=False), choices=choices)  # not looked up without Hires


# --- override_settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(OVERRIDE_REFUSED))
def test_path_and_file_options_are_refused(key):
    problems = refused(dict(CHEAP, override_settings={key: "x"}), f"override_settings.{key}")
    assert problems[f"payload.override_settings.{key}"].startswith("not allowed: ")


def test_unknown_and_pathlike_override_keys_are_refused():
    problems = check_override_settings({"my_extension_output_dir": "/tmp", "made_up_option": 1,
                                        "CLIP_stop_at_last_layer": 2})
    assert "path" in problems["payload.override_settings.my_extension_output_dir"]
    assert "not an option" in problems["payload.override_settings.made_up_option"]
    assert "did you mean CLIP_stop_at_last_layers" in problems["payload.override_settings.CLIP_stop_at_last_layer"]
    assert check_override_settings("x") == {"payload.override_settings": "expected an object of option names and "
                                                                         "values, got str"}
    assert check_override_settings(None) == {} and check_override_settings({}) == {}
    assert len(check_override_settings({f"k{i}": 1 for i in range(1000)})) <= 51


# Defaults from shared_options.py: every allowed option accepts the WebUI's own default.
DEFAULTS = {
    "CLIP_stop_at_last_layers": 1, "sdxl_clip_l_skip": False, "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
    "sd_vae": "Automatic", "emphasis": "Original", "randn_source": "GPU", "tiling": False, "face_restoration": False,
    "hires_fix_refiner_pass": "second pass", "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_extra_noise": 0.0, "s_min_uncond": 0.0,
    "s_min_uncond_all": False, "token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0, "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False, "use_old_scheduling": False, "use_downcasted_alpha_bar": False,
    "refiner_switch_by_sample_steps": False, "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3, "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default", "skip_early_cond": 0.0, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
}


def test_allowed_overrides_accept_the_webui_defaults_and_refuse_the_rest():
    assert set(DEFAULTS) == set(OVERRIDE_RULES) and not set(OVERRIDE_RULES) & set(OVERRIDE_REFUSED)
    assert accepted(dict(CHEAP, override_settings=DEFAULTS))["override_settings"] == DEFAULTS
    assert all(reason for _, reason in OVERRIDE_RULES.values())
    for key, default in DEFAULTS.items():
        where = f"payload.override_settings.{key}"
        for bad in ([default], {"v": default}):
            assert "JSON scalar" in refused(dict(CHEAP, override_settings={key: bad}))[where]
        wrong = "text" if not isinstance(default, str) else 3
        assert where in refused(dict(CHEAP, override_settings={key: wrong}))
        if isinstance(default, bool):
            refused(dict(CHEAP, override_settings={key: 1}), f"override_settings.{key}")
        if isinstance(default, float) or (isinstance(default, int) and not isinstance(default, bool)):
            rule = OVERRIDE_RULES[key][0]
            for out in (rule.maximum + 1, rule.minimum - 1, float("nan")):
                refused(dict(CHEAP, override_settings={key: out}), f"override_settings.{key}")
    refused(dict(CHEAP, override_settings={"CLIP_stop_at_last_layers": 13}), "override_settings.CLIP_stop_at_last_layers")
    refused(dict(CHEAP, override_settings={"CLIP_stop_at_last_layers": 2.5}), "override_settings.CLIP_stop_at_last_layers")
    refused(dict(CHEAP, override_settings={"sd_vae": "a\x00b"}), "override_settings.sd_vae")


def test_options_are_always_restored():
    accepted(dict(CHEAP, override_settings_restore_afterwards=True))
    assert "must be true" in refused(dict(CHEAP, override_settings_restore_afterwards=False),
                                     "override_settings_restore_afterwards")["payload.override_settings_restore_afterwards"]
    refused(dict(CHEAP, override_settings_restore_afterwards="no"), "override_settings_restore_afterwards")


# --- the body as a whole ---------------------------------------------------------------------------------


def test_the_tab_form_infotext_payloads_and_e2e_payloads_pass():
    base = SDFixSettings()
    form = payload_from_form([default for _, _, default in FORM_FIELDS])
    assert ab_request_from_body({"payload": form}, base).payload["width"] == 512
    hires_form = payload_from_form([True if key == "enable_hr" else default for key, _, default in FORM_FIELDS])
    ab_request_from_body({"payload": hires_form}, base)
    params = {"Prompt": "p", "Negative prompt": "n", "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras",
              "CFG scale": "7", "Seed": "123", "Size-1": "512", "Size-2": "768", "Denoising strength": "0.4",
              "Hires upscale": "2", "Hires upscaler": "Latent", "Clip skip": "2"}
    ab_request_from_body({"payload": payload_from_infotext(params)}, base)
    e2e = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 2,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler"}
    ab_request_from_body({"payload": dict(e2e, enable_hr=True, hr_upscaler="Latent", hr_scale=2,
                                          denoising_strength=0.6, hr_second_pass_steps=2)}, base)


def test_a_bad_payload_field_fails_the_body_with_its_path():
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": dict(CHEAP, width=-512, steps=10 ** 9), "heatmap_gain": 10 ** 400},
                             SDFixSettings())
    assert {"payload.width", "payload.steps", "heatmap_gain"} <= set(err.value.problems)
    assert "payload.width" in str(err.value)


def test_variant_labels_are_bounded():
    base = SDFixSettings()
    ok = ab_request_from_body({"payload": CHEAP, "variants": [{"name": "a", "label": "L" * MAX_LABEL_CHARS},
                                                             {"name": "b"}]}, base)
    assert ok.variants[0].label == "L" * MAX_LABEL_CHARS and ok.variants[1].label == "b"
    for bad in ("L" * (MAX_LABEL_CHARS + 1), "two\nlines", "a\ud800", 5, "   "):
        with pytest.raises(SettingsError) as err:
            ab_request_from_body({"payload": CHEAP, "variants": [{"name": "a", "label": bad}, {"name": "b"}]}, base)
        assert set(err.value.problems) == {"variants[0].label"}
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": CHEAP, "variants": [{"name": "x" * 33}, {"name": "b"}]}, base)
    assert set(err.value.problems) == {"variants[0].name"}


def test_error_messages_stay_small_whatever_was_sent():
    huge = "x" * 1_000_000
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": dict(CHEAP, prompt=huge, sampler_name=huge, styles=[huge], **{huge: 1}),
                              "variants": [{"name": huge, "label": huge, "settings": {"enabled": huge}}],
                              huge: huge, "heatmap_gain": huge}, SDFixSettings())
    assert len(str(err.value)) < 10_000
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_args([{f"unknown{i}": i for i in range(100_000)}])
    assert len(err.value.problems) <= 50 and len(str(err.value)) < 10_000 and "and 30 more" in str(err.value)
    nested = [[[[[[[[huge]]]]]]]]
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_args([nested])
    assert len(str(err.value)) < 500


def test_script_args_refuse_huge_integers_and_non_lists():
    positional = [True] * len(UI_ARG_ORDER)
    positional[UI_ARG_ORDER.index("latent_denoise_warning")] = 10 ** 400
    for args in (positional, [{"latent_denoise_warning": -(10 ** 400)}]):
        with pytest.raises(SettingsError) as err:
            SDFixSettings.from_args(args)
        assert "latent_denoise_warning" in err.value.problems
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_args("True")
    assert "args" in err.value.problems


# --- base64 images --------------------------------------------------------------------------------------


def _png(width, height, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width, height, idat):
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with ``idat`` as its pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def field_problem(value, **kw):
    with pytest.raises(SettingsError) as err:
        decode_image_field(value, "payload.image", **kw)
    assert list(err.value.problems) == ["payload.image"]
    return err.value.problems["payload.image"]


def test_decode_image_field_reads_png_jpeg_webp_and_data_urls():
    image = decode_image_field(_b64(_png(40, 30)), "image")
    assert image.size == (40, 30) and image.format == "PNG"
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 8), (10, 20, 30)).save(buffer, format=fmt)
        assert decode_image_field(_b64(buffer.getvalue()), "image").size == (16, 8)
    data = _b64(_png(5, 5))
    assert decode_image_field("data:image/png;base64," + data, "image").size == (5, 5)
    wrapped = "\n".join(data[i:i + 76] for i in range(0, len(data), 76))  # MIME line breaks
    assert decode_image_field(wrapped, "image").size == (5, 5)
    assert decode_image_field(data.rstrip("="), "image").size == (5, 5)  # padding dropped


def test_decode_image_field_refuses_what_is_not_an_image():
    assert "got int" in field_problem(5)
    assert "got NoneType" in field_problem(None)
    assert "empty" in field_problem("")
    assert "base64" in field_problem("not base64 at all!")
    assert "base64" in field_problem("abcde")  # impossible length
    assert "not a PNG, JPEG, WEBP image" in field_problem(_b64(b"hello, this is text" * 10))
    assert "URLs are not fetched" in field_problem("https://example.com/x.png")
    assert "data:image" in field_problem("data:text/plain;base64," + _b64(b"x"))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    assert "not a PNG" in field_problem(_b64(buffer.getvalue()))  # only what the WebUI writes
    truncated = _png(64, 64)
    assert "damaged" in field_problem(_b64(truncated[:-30]))


def test_decode_image_field_refuses_a_decompression_bomb_from_its_header(monkeypatch):
    tiny = _png_claiming(100_000, 100_000, zlib.compress(b"\x00" * 64))
    assert len(tiny) < 200
    assert "pixels" in field_problem(_b64(tiny))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as the WebUI's X/Y/Z plot script leaves it
    assert "100000x100000" in field_problem(_b64(tiny))
    # Under Pillow's own limit but over ours: 5000x5000 of real zero rows, 25 MB that deflate to ~25 kB.
    bomb = _png_claiming(5000, 5000, zlib.compress(b"\x00" * (5001 * 5000), 9))
    assert len(bomb) < 100_000

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    message = field_problem(_b64(bomb))
    assert "5000x5000" in message and str(MAX_IMAGE_PIXELS) in message
    assert "100x100" in field_problem(_b64(_png(100, 100)), max_pixels=99 * 100)


def test_decode_image_field_caps_the_text_before_decoding():
    assert max_base64_chars(MAX_IMAGE_PIXELS) > len(_b64(b"\x00" * (MAX_IMAGE_PIXELS * 4)))
    assert "characters" in field_problem("A" * (max_base64_chars(100) + 1), max_pixels=100)
    assert "characters" in field_problem(_b64(_png(8, 8)), max_chars=10)


# --- grid labels ---------------------------------------------------------------------------------------


def _old_trim(text, width, measure):
    """What compose_grid did: cut one character at a time, re-measuring the whole string."""
    while text and measure(text) > width:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text


def test_label_trimming_matches_the_old_result():
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(t):
        return draw.textlength(t, font=font)

    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:-_()[]iIlWM"
    labels = ["", "A", "ab", "abcd", "abcde", "A: SDFix off", "B: SDFix on", "baseline (SDFix off)", "x" * 200,
              "W" * 60, "i" * 60, "λ ünïcode ✓"] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 90)))
                                                     for _ in range(300)]
    for label in labels:
        text = label.encode("latin-1", "replace").decode("latin-1")
        for width in (0, 1, 5, 8, 20, 24, 56, 120, 248, 600):
            assert fit_label(text, width, measure) == _old_trim(text, width, measure), (label, width)


def test_label_trimming_grows_about_linearly():
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    measured = []

    def measure(t):
        measured.append(len(t))
        return draw.textlength(t, font=font)

    def work(n):
        measured.clear()
        assert fit_label("m" * n, 120, measure).endswith("...")
        return sum(measured)

    assert work(8000) < 8 * 2 * work(1000)  # O(n log n): ~10x for 8x the text; cutting one by one was ~64x

    def seconds(n):
        label = "m" * n
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            compose_grid([Image.new("RGB", (64, 64))], [label])
            best = min(best, time.perf_counter() - start)
        return best

    assert seconds(8000) < 30 * seconds(1000) + 0.01  # generous: quadratic would be ~64x


def test_error_messages_are_always_encodable():
    """A lone surrogate in a key is echoed in the field path: the JSON answer must still encode."""
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": dict(CHEAP, **{"a\ud800": 1}), "\udfff": 2}, SDFixSettings())
    assert "payload.a\ud800" in err.value.problems  # the path itself stays what was sent
    str(err.value).encode("utf-8")
    assert "\\ud800" in str(err.value)


def test_the_readme_lists_every_field_and_allowed_override():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### A/B request limits"):readme.index("## Run: diffusers")]
    assert [f for f in PAYLOAD_RULES if f"`{f}`" not in section] == []
    assert [k for k in OVERRIDE_RULES if f"`{k}`" not in section] == []
