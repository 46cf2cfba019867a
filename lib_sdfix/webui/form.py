"""The generation form the A/B and Diagnose sections share: its fields, its layout, and payload <-> form.

One list of fields (:data:`FORM_FIELDS`) gives the layout (:func:`build_form`, element ids
``<prefix>_<field>``), the txt2img payload a Run sends (:func:`payload_from_form`) and the updates that
fill it from a payload (:func:`form_from_payload`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

from lib_sdfix.parity import SAME_SAMPLER, SAME_SCHEDULER, is_same_marker

__all__ = ["FORM_FIELDS", "build_form", "payload_from_form", "form_from_payload"]

#: The form's fields in order: (payload key, label, default).
FORM_FIELDS: Tuple[Tuple[str, str, Any], ...] = (
    ("prompt", "Prompt", ""),
    ("negative_prompt", "Negative prompt", ""),
    ("seed", "Seed (-1: random, resolved once)", -1),
    ("steps", "Steps", 20),
    ("cfg_scale", "CFG scale", 7.0),
    ("width", "Width", 512),
    ("height", "Height", 512),
    ("sampler_name", "Sampler", "Euler a"),
    ("scheduler", "Schedule type", "Automatic"),
    ("enable_hr", "Hires.fix", False),
    ("hr_upscaler", "Hires upscaler", "Latent"),
    ("hr_scale", "Upscale by", 2.0),
    ("denoising_strength", "Denoising strength", 0.5),
    ("hr_second_pass_steps", "Hires steps (0: same)", 0),
    ("hr_sampler_name", "Hires sampler", SAME_SAMPLER),
    ("hr_scheduler", "Hires schedule type", SAME_SCHEDULER),
)
_INT_FIELDS = {"seed", "steps", "width", "height", "hr_second_pass_steps"}


def payload_from_form(values: Sequence[Any]) -> Dict[str, Any]:
    """Form values (in :data:`FORM_FIELDS` order) -> a txt2img payload; "same" choices left out."""
    payload: Dict[str, Any] = {}
    for (key, _, _), value in zip(FORM_FIELDS, values):
        if key in ("hr_sampler_name", "hr_scheduler") and is_same_marker(value):
            continue
        if key in _INT_FIELDS and value is not None:
            value = int(value)
        payload[key] = value
    if not payload.get("enable_hr"):
        for key in ("hr_upscaler", "hr_scale", "denoising_strength", "hr_second_pass_steps"):
            payload.pop(key, None)
    return payload


def form_from_payload(payload: Dict[str, Any]) -> List[Any]:
    """A payload -> one gradio update per form field (fields the payload lacks keep their value)."""
    import gradio as gr

    updates = []
    for key, _, _ in FORM_FIELDS:
        if key in payload:
            updates.append(gr.update(value=payload[key]))
        elif key in ("hr_sampler_name", "hr_scheduler") and "enable_hr" in payload:
            updates.append(gr.update(value=SAME_SAMPLER if key == "hr_sampler_name" else SAME_SCHEDULER))
        else:
            updates.append(gr.update())
    return updates


def build_form(gr: Any, callbacks: Any, prefix: str) -> List[Any]:
    """The form's components in :data:`FORM_FIELDS` order, inside the caller's gradio Blocks; element ids
    ``<prefix>_<field>``.  ``callbacks`` gives the choices (``samplers``, ``schedulers``, ``upscalers``)."""
    components: Dict[str, Any] = {}
    labels = {key: (label, default) for key, label, default in FORM_FIELDS}

    def make(key: str, factory: Callable[..., Any], **kwargs: Any) -> None:
        label, default = labels[key]
        components[key] = factory(label=label, value=default, elem_id=f"{prefix}_{key}", **kwargs)

    make("prompt", gr.Textbox, lines=2)
    make("negative_prompt", gr.Textbox, lines=1)
    with gr.Row():
        make("seed", gr.Number, precision=0)
        make("steps", gr.Slider, minimum=1, maximum=150, step=1)
        make("cfg_scale", gr.Slider, minimum=1.0, maximum=30.0, step=0.5)
    with gr.Row():
        make("width", gr.Slider, minimum=64, maximum=2048, step=8)
        make("height", gr.Slider, minimum=64, maximum=2048, step=8)
    with gr.Row():
        make("sampler_name", gr.Dropdown, choices=callbacks.samplers())
        make("scheduler", gr.Dropdown, choices=callbacks.schedulers())
    with gr.Accordion("Hires.fix", open=False):
        make("enable_hr", gr.Checkbox)
        with gr.Row():
            make("hr_upscaler", gr.Dropdown, choices=callbacks.upscalers())
            make("hr_scale", gr.Slider, minimum=1.0, maximum=4.0, step=0.05)
        with gr.Row():
            make("denoising_strength", gr.Slider, minimum=0.0, maximum=1.0, step=0.01)
            make("hr_second_pass_steps", gr.Slider, minimum=0, maximum=150, step=1)
        with gr.Row():
            make("hr_sampler_name", gr.Dropdown, choices=[SAME_SAMPLER, *callbacks.samplers()])
            make("hr_scheduler", gr.Dropdown, choices=[SAME_SCHEDULER, *callbacks.schedulers()])
    return [components[key] for key, _, _ in FORM_FIELDS]
