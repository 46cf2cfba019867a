"""Whole request bodies within the limits: the tab's form, infotexts, variant labels, error messages
that stay small and encodable whatever was sent, script args."""
import pytest

from lib_sdfix.ab import MAX_LABEL_CHARS, ab_request_from_body, payload_from_infotext
from lib_sdfix.settings import UI_ARG_ORDER, SDFixSettings, SettingsError
from lib_sdfix.webui.form import FORM_FIELDS, payload_from_form

from .support import CHEAP

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


def test_error_messages_are_always_encodable():
    """A lone surrogate in a key is echoed in the field path: the JSON answer must still encode."""
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": dict(CHEAP, **{"a\ud800": 1}), "\udfff": 2}, SDFixSettings())
    assert "payload.a\ud800" in err.value.problems  # the path itself stays what was sent
    str(err.value).encode("utf-8")
    assert "\\ud800" in str(err.value)
