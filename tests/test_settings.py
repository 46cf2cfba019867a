"""The settings model: strict parsing of positional and named args, infotext round trip."""
import pytest

from lib_sdfix.settings import OPTIONS, UI_ARG_ORDER, SDFixSettings, SettingsError, defaults_from_options


def test_defaults_match_field_declarations():
    s = SDFixSettings()
    assert s.as_dict() == {f.name: f.default for f in OPTIONS}


def test_positional_args_in_ui_order_and_inverse():
    s = SDFixSettings(enabled=True, precision_guard=False, resize_filter="BOX", latent_denoise_warning=0.25)
    assert SDFixSettings.from_args(s.as_args()) == s
    assert list(UI_ARG_ORDER[:2]) == ["enabled", "precision_guard"]


def test_short_positional_list_takes_the_rest_from_base():
    base = SDFixSettings(hires_parity=False)
    s = SDFixSettings.from_args([True, False], base)
    assert s.precision_guard is False and s.hires_parity is False


def test_named_dict_missing_keys_take_the_base():
    base = SDFixSettings(resize_filter="BICUBIC")
    s = SDFixSettings.from_args([{"precision_guard": False, "hires_parity": False}], base)
    assert (s.precision_guard, s.hires_parity, s.resize_filter, s.enabled) == (False, False, "BICUBIC", True)


@pytest.mark.parametrize("args,field,text", [
    ([{"precision_guard": "yes"}], "precision_guard", "expected true or false"),
    ([{"precision_guard": 1}], "precision_guard", "expected true or false"),
    ([{"resize_filter": "BILINEAR"}], "resize_filter", "must be one of"),
    ([{"resize_filter": 3}], "resize_filter", "got int"),
    ([{"latent_denoise_warning": 1.5}], "latent_denoise_warning", "between 0 and 1"),
    ([{"latent_denoise_warning": "0.5"}], "latent_denoise_warning", "expected a number"),
    ([{"latent_denoise_warning": float("nan")}], "latent_denoise_warning", "between"),
    ([{"precison_guard": True}], "precison_guard", "unknown option"),
    ([True, "no"], "precision_guard", "expected true or false"),
    ([True] * 20, "args", "at most"),
    ([True, {"enabled": True}], "args", "only argument"),
    ([{"bogus": 1}, True, True], "bogus", "unknown option"),
])
def test_bad_input_names_the_field(args, field, text):
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_args(args)
    assert field in err.value.problems
    assert text in err.value.problems[field]
    assert field in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_mapping({"enabled": "on", "vae_dtype": "fp8"})
    assert set(err.value.fields) == {"enabled", "vae_dtype"}


def test_non_mapping_is_rejected():
    with pytest.raises(SettingsError, match="args"):
        SDFixSettings.from_mapping(["enabled"])


@pytest.mark.parametrize("settings", [
    SDFixSettings(),
    SDFixSettings(enabled=False, precision_guard=False, guard_encode=False, hires_parity=False, post_resize=False,
                  resize_filter="BOX", vae_dtype="auto", latent_denoise_warning=0.0),
    SDFixSettings(latent_denoise_warning=0.3333333333333333, resize_filter="BICUBIC"),
])
def test_infotext_round_trip_is_lossless(settings):
    text = settings.to_infotext()
    assert "," not in text and ":" not in text  # written unquoted by the WebUI
    assert SDFixSettings.from_infotext(text) == settings
    assert SDFixSettings.from_infotext(f'"{text}"') == settings  # quoted by another tool


def test_infotext_parsing_is_strict():
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_infotext("on=1 guard=maybe bogus=1")
    assert set(err.value.fields) == {"precision_guard", "bogus"}


def test_infotext_missing_keys_take_the_base():
    s = SDFixSettings.from_infotext("guard=0", SDFixSettings(hires_parity=False))
    assert s.precision_guard is False and s.hires_parity is False


def test_changed_validates():
    assert SDFixSettings().changed(post_resize=False).post_resize is False
    with pytest.raises(SettingsError):
        SDFixSettings().changed(post_resize="off")


def test_api_padded_dict_args_ignore_the_padding():
    """The WebUI API puts the client's dict in slot 0 and UI defaults after it."""
    s = SDFixSettings.from_args([{"hires_parity": False}, True, True, True, True, True, "LANCZOS", "fp32", False, 0.5])
    assert s.hires_parity is False and s.enabled is True


def test_defaults_from_options():
    from lib_sdfix.settings import defaults_from_options
    stored = {"sdfix_resize_filter": "BOX", "sdfix_hires_parity": False}
    s = defaults_from_options(lambda key, default: stored.get(key, default))
    assert (s.resize_filter, s.hires_parity, s.precision_guard) == ("BOX", False, True)
    with pytest.raises(SettingsError) as err:
        defaults_from_options(lambda key, default: "nope" if key == "sdfix_enabled" else default)
    assert err.value.fields == ["sdfix_enabled"]


def test_the_fix_table_names_each_fix_by_its_option():
    from lib_sdfix.settings import FIXES, fix, option

    for f in FIXES:
        assert option(f.key).kind is bool and fix(f.key) is f
        assert set(f.patches) <= {"decode", "encode", "resize", "sampler"}
    s = SDFixSettings(hires_parity=False)
    assert s.fixes_on() == ["precision_guard", "guard_encode", "post_resize"]
    assert not SDFixSettings(enabled=False).fixes_on() and SDFixSettings().wants("hires_parity")


def test_vae_dtype_reads_its_older_name_in_the_api_the_infotext_and_the_settings_panel():
    assert SDFixSettings.from_mapping({"decode_dtype": "auto"}).vae_dtype == "auto"
    assert SDFixSettings.from_infotext("on=1 dtype=auto").vae_dtype == "auto"  # images made before the rename
    assert SDFixSettings(vae_dtype="auto").to_infotext().split()[6] == "vae=auto"
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_mapping({"decode_dtype": "auto", "vae_dtype": "fp32"})
    assert "given twice" in str(err.value)
    stored = {"sdfix_decode_dtype": "auto"}  # a config.json written before the rename
    assert defaults_from_options(lambda key, default: stored.get(key, default)).vae_dtype == "auto"
    stored["sdfix_vae_dtype"] = "fp32"
    assert defaults_from_options(lambda key, default: stored.get(key, default)).vae_dtype == "fp32"


def test_nan_watch_is_an_option_every_consumer_reads_not_a_fix():
    from lib_sdfix.settings import FIXES
    from lib_sdfix.webui.panel import settings_panel_options
    from lib_sdfix.webui.xyz import XYZ_AXES

    assert SDFixSettings().nan_watch is False and "nan_watch" not in {f.key for f in FIXES}
    on = SDFixSettings(nan_watch=True)
    assert on.to_infotext().endswith("nan=1") and SDFixSettings.from_infotext(on.to_infotext()) == on
    written_before = "on=1 guard=1 encode=1 parity=1 resize=1 filter=LANCZOS vae=fp32 warn=0.5"
    assert SDFixSettings.from_infotext(written_before).nan_watch is False  # older images still paste
    assert SDFixSettings.from_args([{"nan_watch": True}]).nan_watch is True
    assert UI_ARG_ORDER[-1] == "nan_watch"  # appended: older positional lists keep their meaning
    assert ("SDFix: nan watch", "nan_watch", ("on", "off")) in XYZ_AXES
    assert "sdfix_nan_watch" in {spec.key for spec in settings_panel_options()}
    with pytest.raises(SettingsError) as err:
        SDFixSettings.from_mapping({"nan_watch": "yes"})
    assert "nan_watch" in err.value.problems
