"""The SDFix accordion in txt2img/img2img, built from the one settings model, and infotext paste."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

from lib_sdfix.settings import FIXES, INFOTEXT_KEY, OPTIONS, REFINE_INFOTEXT_KEY, UI_ARG_ORDER, Option, SDFixSettings, SettingsError

__all__ = ["build_script_controls", "infotext_paste_value"]


def build_script_controls(defaults: SDFixSettings, elem_id: Callable[[str], str]) -> List[Any]:
    """The accordion of the AlwaysOn script; returns the controls in :data:`UI_ARG_ORDER`.

    Must be called inside a gradio Blocks context (the WebUI's script UI).
    """
    import gradio as gr

    controls: Dict[str, Any] = {}

    def make(field: Option) -> Any:
        value = getattr(defaults, field.name)
        common = dict(label=field.label, value=value, elem_id=elem_id(field.name), info=field.help)
        if field.kind is bool:
            return gr.Checkbox(**common)
        if field.kind is float:
            return gr.Slider(minimum=field.minimum, maximum=field.maximum, step=0.05, **common)
        return gr.Radio(choices=list(field.choices), **common)

    fixes = {f.key for f in FIXES}
    with gr.Accordion("SDFix", open=False, elem_id=elem_id("accordion")):
        controls["enabled"] = make(OPTIONS[0])
        with gr.Row():  # one toggle per fix
            for spec in OPTIONS:
                if spec.name in fixes:
                    controls[spec.name] = make(spec)
        with gr.Row():  # the fixes' parameters
            for spec in OPTIONS[1:]:
                if spec.name not in fixes:
                    controls[spec.name] = make(spec)
    return [controls[name] for name in UI_ARG_ORDER]


def infotext_paste_value(params: Mapping[str, Any], name: str) -> Any:
    """The value of option ``name`` from pasted generation parameters, or None to leave the control.

    Images made without SDFix (no ``SDFix`` entry) leave the controls unchanged; so does an entry
    this version cannot read.  An image made without the late refine (no ``SDFix refine`` entry)
    switches it off and leaves its strength as it is.  The WebUI's API reads its ``infotext`` field
    through the same functions.
    """
    if not any(isinstance(params.get(key), (str, int, float)) for key in (INFOTEXT_KEY, REFINE_INFOTEXT_KEY)):
        return None
    if name == "late_refine_strength" and REFINE_INFOTEXT_KEY not in params:
        return None
    try:
        settings = SDFixSettings.from_infotext_params({k: str(params[k]) for k in (INFOTEXT_KEY, REFINE_INFOTEXT_KEY)
                                                       if k in params})
    except SettingsError:
        return None
    return None if settings is None else getattr(settings, name)
