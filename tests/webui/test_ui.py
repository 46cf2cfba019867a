"""The UI pieces registered in the host: X/Y/Z axes and the Settings panel."""
from __future__ import annotations

import sys

import pytest

from lib_sdfix.settings import SDFixSettings

from .fakes import FakeP
from .support import install_xyz_script, run


def test_xyz_axes_and_overrides(webui):
    from lib_sdfix.webui import xyz as xyz_module

    xyz = install_xyz_script(webui)
    xyz_module.add_xyz_axes()
    xyz_module.add_xyz_axes()  # idempotent
    labels = [o.label for o in xyz.axis_options]
    assert labels.count("SDFix: enabled") == 1 and "SDFix: resize filter" in labels
    axis = next(o for o in xyz.axis_options if o.label == "SDFix: precision guard")
    assert axis.choices() == ["on", "off"]
    with pytest.raises(ValueError, match="precision_guard"):
        axis.confirm(None, ["on", "maybe"])
    p = FakeP()
    axis.apply(p, "off", ["on", "off"])
    run(webui, p)
    assert "guard=0" in p.extra_generation_params["SDFix"]()
    p.close()


def test_settings_panel_registers_every_option(webui, monkeypatch):
    import types

    from lib_sdfix.webui.panel import on_ui_settings

    gr = types.ModuleType("gradio")
    gr.Checkbox, gr.Radio, gr.Slider = "Checkbox", "Radio", "Slider"
    monkeypatch.setitem(sys.modules, "gradio", gr)
    on_ui_settings()
    options = webui.shared.registered_options
    assert set(options) >= {"sdfix_enabled", "sdfix_precision_guard", "sdfix_hires_parity", "sdfix_resize_filter",
                            "sdfix_vae_dtype", "sdfix_add_infotext"}
    assert "sdfix_guard_previews" not in options
    assert options["sdfix_latent_denoise_warning"].component == "Slider"
    assert options["sdfix_resize_filter"].component_args == {"choices": ["LANCZOS", "BICUBIC", "BOX"]}
    assert all(o.section == ("sdfix", "SDFix") for o in options.values())


def test_ui_controls_build_with_the_webui_gradio():
    gr = pytest.importorskip("gradio")
    from lib_sdfix.settings import UI_ARG_ORDER, SDFixSettings
    from lib_sdfix.webui.controls import build_script_controls

    with gr.Blocks():
        controls = build_script_controls(SDFixSettings(resize_filter="BOX"), lambda item: f"sdfix_{item}")
    assert len(controls) == len(UI_ARG_ORDER)
    values = dict(zip(UI_ARG_ORDER, [c.value for c in controls]))
    assert values == SDFixSettings(resize_filter="BOX").as_dict()
    assert all(c.label for c in controls) and controls[0].elem_id == "sdfix_enabled"


def test_paste_and_axis_parsing():
    from lib_sdfix.settings import SettingsError
    from lib_sdfix.webui.controls import infotext_paste_value
    from lib_sdfix.webui.panel import settings_panel_options
    from lib_sdfix.webui.xyz import parse_axis_value

    text = SDFixSettings(hires_parity=False).to_infotext()
    assert infotext_paste_value({"SDFix": text}, "hires_parity") is False
    assert infotext_paste_value({"Steps": "20"}, "hires_parity") is None
    assert infotext_paste_value({"SDFix": "garbage=1"}, "enabled") is None
    assert infotext_paste_value({"SDFix": text + " weights=exact previews=0"}, "hires_parity") is False
    assert parse_axis_value("enabled", "Off") is False and parse_axis_value("resize_filter", "BOX") == "BOX"
    assert parse_axis_value("latent_denoise_warning", "0.3") == 0.3
    with pytest.raises(SettingsError, match="resize_filter"):
        parse_axis_value("resize_filter", "NEAREST")
    keys = [spec.key for spec in settings_panel_options()]
    assert keys[0] == "sdfix_enabled" and keys[-1] == "sdfix_add_infotext"
