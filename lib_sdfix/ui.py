"""Gradio pieces of SDFix, built from the one settings model (no WebUI import; gradio 3.41 API).

Imported only when the WebUI builds its UI, so gradio is never imported at WebUI start by SDFix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from lib_sdfix.settings import (
    FIELDS,
    INFOTEXT_KEY,
    OPTION_PREFIX,
    PANEL_FIELDS,
    UI_ARG_ORDER,
    Field,
    SDFixSettings,
    SettingsError,
    field,
)

__all__ = ["OptionSpec", "settings_panel_options", "build_script_controls", "infotext_paste_value", "XYZ_AXES"]

SETTINGS_SECTION = ("sdfix", "SDFix")


@dataclass(frozen=True)
class OptionSpec:
    """One Settings-panel option: the glue turns it into a ``shared.OptionInfo``."""

    key: str
    default: Any
    label: str
    component: str  # "checkbox", "radio" or "slider"
    component_args: Optional[Dict[str, Any]]
    info: str


def _component_of(field: Field) -> Tuple[str, Optional[Dict[str, Any]]]:
    if field.kind is bool:
        return "checkbox", None
    if field.kind is float:
        return "slider", {"minimum": field.minimum, "maximum": field.maximum, "step": 0.05}
    return "radio", {"choices": list(field.choices)}


def settings_panel_options() -> List[OptionSpec]:
    """Defaults for every per-generation toggle, then the panel-only options."""
    specs = []
    for spec in FIELDS + PANEL_FIELDS:
        component, args = _component_of(spec)
        label = spec.label if spec in PANEL_FIELDS else f"Default: {spec.label}"
        specs.append(OptionSpec(OPTION_PREFIX + spec.name, spec.default, label, component, args, spec.help))
    return specs


def build_script_controls(defaults: SDFixSettings, elem_id: Callable[[str], str]) -> List[Any]:
    """The accordion of the AlwaysOn script; returns the controls in :data:`UI_ARG_ORDER`.

    Must be called inside a gradio Blocks context (the WebUI's script UI).
    """
    import gradio as gr

    controls: Dict[str, Any] = {}

    def make(field: Field) -> Any:
        value = getattr(defaults, field.name)
        common = dict(label=field.label, value=value, elem_id=elem_id(field.name), info=field.help)
        if field.kind is bool:
            return gr.Checkbox(**common)
        if field.kind is float:
            return gr.Slider(minimum=field.minimum, maximum=field.maximum, step=0.05, **common)
        return gr.Radio(choices=list(field.choices), **common)

    by_name = {f.name: f for f in FIELDS}
    with gr.Accordion("SDFix", open=False, elem_id=elem_id("accordion")):
        controls["enabled"] = make(by_name["enabled"])
        with gr.Row():
            for name in ("precision_guard", "guard_encode", "hires_parity", "post_resize"):
                controls[name] = make(by_name[name])
        with gr.Row():
            controls["resize_filter"] = make(by_name["resize_filter"])
            controls["decode_dtype"] = make(by_name["decode_dtype"])
        with gr.Row():
            controls["guard_previews"] = make(by_name["guard_previews"])
            controls["latent_denoise_warning"] = make(by_name["latent_denoise_warning"])
    return [controls[name] for name in UI_ARG_ORDER]


def infotext_paste_value(params: Mapping[str, Any], name: str) -> Any:
    """The value of option ``name`` from pasted generation parameters, or None to leave the control.

    Images made without SDFix (no ``SDFix`` entry) leave the controls unchanged; so does an entry
    this version cannot read.
    """
    text = params.get(INFOTEXT_KEY)
    if not isinstance(text, str):
        return None
    try:
        return getattr(SDFixSettings.from_infotext(text), name)
    except SettingsError:
        return None


#: X/Y/Z plot axes: (label, option, choices).  Booleans take "on"/"off".
XYZ_AXES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("SDFix: enabled", "enabled", ("on", "off")),
    ("SDFix: precision guard", "precision_guard", ("on", "off")),
    ("SDFix: guard encode", "guard_encode", ("on", "off")),
    ("SDFix: Hires parity", "hires_parity", ("on", "off")),
    ("SDFix: post-resize", "post_resize", ("on", "off")),
    ("SDFix: resize filter", "resize_filter", field("resize_filter").choices),
    ("SDFix: decode dtype", "decode_dtype", field("decode_dtype").choices),
)


def parse_axis_value(option: str, raw: str) -> Any:
    """An X/Y/Z cell value as the option's type; raises SettingsError naming the option."""
    spec = field(option)
    text = str(raw).strip()
    if spec.kind is bool:
        lowered = text.lower()
        if lowered in ("on", "true", "1", "yes"):
            return True
        if lowered in ("off", "false", "0", "no"):
            return False
        raise SettingsError({option: f"expected on or off, got {raw!r}"})
    try:
        return spec.validate(text) if spec.kind is str else spec.validate(float(text))
    except ValueError as err:
        raise SettingsError({option: str(err)}) from None
