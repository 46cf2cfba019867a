"""The A/B section of SDFix's tab: its layout (built from callbacks, so it is tested without a WebUI) and the
host callbacks behind it (``on_ui_tabs``).  The tab works whether or not the WebUI serves its API."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from lib_sdfix.parity import SAME_SAMPLER, SAME_SCHEDULER, is_same_marker

__all__ = ["TabCallbacks", "FORM_FIELDS", "build_ab_tab", "payload_from_form", "form_from_payload", "MODE_CHOICES",
           "on_ui_tabs", "tab_outputs", "api_response"]

MODE_CHOICES = {"A = SDFix off, B = SDFix on": "ab", "Ablation: baseline, each fix alone, all fixes": "ablation",
                "A = SDFix on, refine = SDFix on + late refine": "refine"}

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


@dataclass(frozen=True)
class TabCallbacks:
    """What the glue provides: choices, and the functions behind the buttons."""

    samplers: Callable[[], List[str]]
    schedulers: Callable[[], List[str]]
    upscalers: Callable[[], List[str]]
    last_generation: Callable[[], Dict[str, Any]]  # -> payload of the last txt2img (params.txt)
    payload_from_text: Callable[[str], Dict[str, Any]]  # infotext -> payload
    run: Callable[..., Any]  # wrapped for the WebUI queue: (id_task, mode, gain, save, *form) -> outputs
    interrupt: Callable[[], None]


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


def build_ab_tab(callbacks: TabCallbacks) -> Any:
    """The tab's gr.Blocks.  Element ids start with ``sdfix_ab_`` (the JS submit hook uses them)."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Same seed, with and without SDFix. **Use last txt2img**, paste generation parameters "
                    "or a PNG, or type a prompt; then **Run**.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    use_last = gr.Button("Use last txt2img", elem_id="sdfix_ab_use_last")
                    paste = gr.Button("Paste parameters", elem_id="sdfix_ab_paste")
                pasted = gr.Textbox(label="Generation parameters (infotext)", lines=2, elem_id="sdfix_ab_infotext")
                png = gr.Image(label="…or a PNG with parameters", type="pil", elem_id="sdfix_ab_png")
                form = _form(gr, callbacks)
                mode = gr.Radio(list(MODE_CHOICES), value=list(MODE_CHOICES)[0], label="Comparison",
                                elem_id="sdfix_ab_mode")
                with gr.Row():
                    gain = gr.Slider(1, 64, value=4, step=1, label="Heatmap amplification", elem_id="sdfix_ab_gain")
                    save = gr.Checkbox(value=True, label="Save to outputs/sdfix-ab", elem_id="sdfix_ab_save")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="sdfix_ab_run")
                    interrupt = gr.Button("Interrupt", elem_id="sdfix_ab_interrupt")
            with gr.Column(scale=2, elem_id="sdfix_ab_results"):
                compare = gr.HTML(elem_id="sdfix_ab_compare")
                gallery = gr.Gallery(label="Variants", elem_id="sdfix_ab_gallery", columns=4, height="auto")
                heat = gr.Image(label="Difference heatmap (A vs last variant)", type="pil", elem_id="sdfix_ab_heatmap")
                metrics = gr.Dataframe(label="Metrics", elem_id="sdfix_ab_metrics", interactive=False, wrap=True)
                notes = gr.Markdown(elem_id="sdfix_ab_notes")
                info = gr.HTML(elem_id="sdfix_ab_info")
        id_task = gr.Textbox(visible=False, elem_id="sdfix_ab_id_task")
        seed = form[[k for k, _, _ in FORM_FIELDS].index("seed")]

        use_last.click(lambda: form_from_payload(callbacks.last_generation()), inputs=[], outputs=form)
        paste.click(lambda text: form_from_payload(callbacks.payload_from_text(text or "")), inputs=[pasted], outputs=form)
        png.upload(lambda image: form_from_payload(callbacks.payload_from_text(
            (getattr(image, "info", None) or {}).get("parameters", ""))), inputs=[png], outputs=form)
        run.click(callbacks.run, _js="sdfixABSubmit", inputs=[id_task, mode, gain, save, *form],
                  outputs=[seed, compare, gallery, heat, metrics, notes, info])
        interrupt.click(callbacks.interrupt, inputs=[], outputs=[])
    return tab


def _form(gr: Any, callbacks: Any, prefix: str = "sdfix_ab") -> List[Any]:
    """The generation form (FORM_FIELDS); element ids ``<prefix>_<field>`` (the Diagnose section has its own)."""
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


# --- host side -----------------------------------------------------------------------------------------


def api_response(result: Dict[str, Any]) -> Dict[str, Any]:
    """A comparison result as JSON: images as base64 PNG, metrics as strict JSON."""
    from lib_sdfix import ab

    out = {k: v for k, v in result.items() if k not in ("images", "heatmap", "metrics")}
    out["images"] = {name: ab.png_base64(image) for name, image in result["images"].items()}
    out["heatmap"] = ab.png_base64(result["heatmap"]) if result["heatmap"] is not None else None
    out["metrics"] = ab.metrics_json(result["metrics"], notes=result["notes"]) if result["metrics"] else None
    return out


def tab_outputs(result: Dict[str, Any]) -> List[Any]:
    """Run results -> [seed, compare HTML, gallery, heatmap, metrics, notes, info]."""
    from lib_sdfix import ab

    variants = result["variants"]
    if len(variants) < 2:
        message = "Interrupted before two variants were ready." if not result["complete"] else "Nothing to compare."
        return [result["seed"], "", [], None, None, message, ""]
    images = result["images"]
    reference, last = variants[0], variants[-1]
    compare = ab.compare_html(ab.png_base64(images[reference["name"]]), ab.png_base64(images[last["name"]]),
                              (reference["label"], last["label"]))
    gallery = [(images[v["name"]], v["label"]) for v in variants]
    headers, rows = ab.metrics_display(result["metrics"])
    notes = [f"- {note}" for note in result["notes"]]
    notes.append(f"- {result['runs']} sampling run(s) for {len(variants)} variants, seed {result['seed']}")
    if not result["complete"]:
        notes.append("- interrupted: only the variants shown were rendered")
    if result["saved"]:
        notes.append(f"- saved: `{result['saved']['grid']}`")
    return [result["seed"], compare, gallery, result["heatmap"], {"headers": headers, "data": rows},
            "\n".join(notes), ""]


def on_ui_tabs() -> List[Any]:
    """SDFix's tab: the A/B comparison (this module) and the Diagnose section (diagnose_tab)."""
    import os

    import gradio as gr

    from lib_sdfix import ab
    from lib_sdfix.settings import SettingsError
    from lib_sdfix.webui.comparison import request_from_body, run_comparison
    from lib_sdfix.webui.host import current
    from modules import call_queue, infotext_utils, paths, sd_samplers, sd_schedulers

    shared = current().shared

    def payload_from_text(text: str) -> Dict[str, Any]:
        if not text.strip():
            return {}
        try:
            return ab.payload_from_infotext(infotext_utils.parse_generation_parameters(text))
        except SettingsError as err:
            gr.Warning(f"SDFix: {err}")
            return {}

    def last_generation() -> Dict[str, Any]:
        path = os.path.join(paths.data_path, "params.txt")
        if not os.path.isfile(path):
            gr.Warning("SDFix: no txt2img generation yet")
            return {}
        with open(path, encoding="utf8") as file:
            return payload_from_text(file.read())

    def run(id_task: str, mode: str, gain: float, save: bool, *form: Any) -> List[Any]:
        body = {"payload": payload_from_form(form), "variants": MODE_CHOICES.get(mode, "ab"),
                "heatmap_gain": gain, "save": bool(save)}
        try:
            return tab_outputs(run_comparison(request_from_body(body)))
        except SettingsError as err:
            return [gr.update(), "", [], None, None, f"**SDFix:** {err}", ""]

    callbacks = TabCallbacks(
        samplers=sd_samplers.visible_sampler_names,
        schedulers=lambda: [s.label for s in sd_schedulers.schedulers],
        upscalers=lambda: [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]],
        last_generation=last_generation,
        payload_from_text=payload_from_text,
        run=call_queue.wrap_gradio_gpu_call(run, extra_outputs=[gr.update(), "", [], None, None, ""]),
        interrupt=lambda: shared.state.interrupt(),
    )
    from lib_sdfix.webui.diagnose_tab import build_diagnose_tab, build_sdfix_tab, diagnose_callbacks

    return [(build_sdfix_tab(build_ab_tab(callbacks), build_diagnose_tab(diagnose_callbacks(callbacks))), "SDFix",
             "sdfix_ab")]
