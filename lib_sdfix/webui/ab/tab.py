"""The A/B section of SDFix's tab: its layout (built from callbacks, so it is tested without a WebUI), the
result -> widget mapping, and the host's callbacks behind it (:func:`host_callbacks`).  The tab works
whether or not the WebUI serves its API; ``lib_sdfix.webui.tabs`` puts it in SDFix's tab.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

from lib_sdfix.settings import SettingsError
from lib_sdfix.webui.ab.request import request_from_body
from lib_sdfix.webui.ab.runner import run_comparison
from lib_sdfix.webui.form import FORM_FIELDS, build_form, form_from_payload, payload_from_form
from lib_sdfix.webui.hosts import current

__all__ = ["TabCallbacks", "MODE_CHOICES", "build_ab_tab", "tab_outputs", "host_callbacks"]

MODE_CHOICES = {"A = SDFix off, B = SDFix on": "ab", "Ablation: baseline, each fix alone, all fixes": "ablation",
                "A = SDFix on, refine = SDFix on + late refine": "refine"}


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
                form = build_form(gr, callbacks, "sdfix_ab")
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


# --- results -> widgets, and the host's callbacks ------------------------------------------------------


def tab_outputs(result: Dict[str, Any]) -> List[Any]:
    """Run results -> [seed, compare HTML, gallery, heatmap, metrics, notes, info]."""
    from lib_sdfix import ab, imaging

    variants = result["variants"]
    if len(variants) < 2:
        message = "Interrupted before two variants were ready." if not result["complete"] else "Nothing to compare."
        return [result["seed"], "", [], None, None, message, ""]
    images = result["images"]
    reference, last = variants[0], variants[-1]
    compare = ab.compare_html(imaging.png_base64(images[reference["name"]]), imaging.png_base64(images[last["name"]]),
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


def host_callbacks() -> TabCallbacks:
    """The host's callbacks behind the A/B section (the Diagnose section shares its choices and its
    last generation)."""
    import gradio as gr
    from modules import call_queue, infotext_utils, paths, sd_samplers, sd_schedulers

    from lib_sdfix import ab

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

    return TabCallbacks(
        samplers=sd_samplers.visible_sampler_names,
        schedulers=lambda: [s.label for s in sd_schedulers.schedulers],
        upscalers=lambda: [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]],
        last_generation=last_generation,
        payload_from_text=payload_from_text,
        run=call_queue.wrap_gradio_gpu_call(run, extra_outputs=[gr.update(), "", [], None, None, ""]),
        interrupt=lambda: shared.state.interrupt(),
    )
