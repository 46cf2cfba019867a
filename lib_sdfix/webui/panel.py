"""The Settings -> SDFix section: the default of every per-generation option, plus the panel-only ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from lib_sdfix.settings import OPTION_PREFIX, OPTIONS, PANEL_OPTIONS, Option
from lib_sdfix.webui.hosts import current

__all__ = ["OptionSpec", "SETTINGS_SECTION", "settings_panel_options", "on_ui_settings", "component_of"]

SETTINGS_SECTION = ("sdfix", "SDFix")


@dataclass(frozen=True)
class OptionSpec:
    """One Settings-panel option: turned into the host's ``shared.OptionInfo``."""

    key: str
    default: Any
    label: str
    component: str  # "checkbox", "radio" or "slider"
    component_args: Optional[Dict[str, Any]]
    info: str


def component_of(field: Option) -> Tuple[str, Optional[Dict[str, Any]]]:
    if field.kind is bool:
        return "checkbox", None
    if field.kind is float:
        return "slider", {"minimum": field.minimum, "maximum": field.maximum, "step": 0.05}
    return "radio", {"choices": list(field.choices)}


def settings_panel_options() -> List[OptionSpec]:
    """Defaults for every per-generation toggle, then the panel-only options."""
    specs = []
    for spec in OPTIONS + PANEL_OPTIONS:
        component, args = component_of(spec)
        label = spec.label if spec in PANEL_OPTIONS else f"Default: {spec.label}"
        specs.append(OptionSpec(OPTION_PREFIX + spec.name, spec.default, label, component, args, spec.help))
    return specs


def on_ui_settings() -> None:
    import gradio as gr

    shared = current().shared
    components = {"checkbox": gr.Checkbox, "radio": gr.Radio, "slider": gr.Slider}
    for spec in settings_panel_options():
        info = shared.OptionInfo(spec.default, spec.label, components[spec.component], spec.component_args,
                                 section=SETTINGS_SECTION, category_id="sd")
        shared.opts.add_option(spec.key, info.info(spec.info))
