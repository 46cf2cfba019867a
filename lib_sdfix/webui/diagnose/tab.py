"""The "Diagnose" section of SDFix's tab: layout (built from callbacks, tested without a WebUI), the
result -> widget mapping, and the host callbacks behind it (:func:`host_callbacks`).

The generation form is the A/B section's (lib_sdfix.webui.form, with its own element ids ``sdfix_dg_*``), one Run
button per kind; the WebUI's progress bar and Interrupt follow a run as they follow txt2img
(``sdfixDiagnoseSubmit`` in ``javascript/sdfix_ab.js``).  The layout uses only what gradio 3.41 (AUTOMATIC1111, reForge)
and 4.40 (Forge, with its ``_js`` shim) both have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from lib_sdfix.diagnose.plan import DEFAULT_VALUES, PRECISION_FIXES
from lib_sdfix.settings import SettingsError
from lib_sdfix.webui.ab.tab import TabCallbacks
from lib_sdfix.webui.diagnose import last_output, runner
from lib_sdfix.webui.diagnose.speed_options import found_options
from lib_sdfix.webui.form import FORM_FIELDS, build_form, form_from_payload, payload_from_form
from lib_sdfix.webui.hosts import current

__all__ = ["DiagnoseCallbacks", "KIND_BUTTONS", "AXIS_CHOICES", "VARIANT_CHOICES", "build_diagnose_tab",
           "body_from_form", "options_from_text", "options_table", "tab_outputs", "host_callbacks", "PREFIX"]

PREFIX = "sdfix_dg"
#: (kind, button label)
KIND_BUTTONS = (("vae_roundtrip", "Run VAE round-trip"), ("sweep", "Run sweep"), ("steps", "Run step strip"),
                ("optimizations", "Run cost of speed"))
AXIS_CHOICES = {"CFG scale": "cfg_scale", "Steps": "steps", "Sampler": "sampler_name", "Schedule type": "scheduler",
                f"SDFix {' + '.join(PRECISION_FIXES)} (off / on)": "precision"}
VARIANT_CHOICES = {"WebUI as it runs": "webui", "SDFix (precision_guard + guard_encode)": "precision_guard",
                   "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass(frozen=True)
class DiagnoseCallbacks:
    """What the glue provides: choices, the last generation and output, and the functions behind the buttons."""

    samplers: Callable[[], List[str]]
    schedulers: Callable[[], List[str]]
    upscalers: Callable[[], List[str]]
    variants: Callable[[], List[str]]  # round-trip variants this device runs (VARIANT_CHOICES values)
    last_generation: Callable[[], Dict[str, Any]]
    last_image: Callable[[], Any]
    run: Callable[..., Any]  # wrapped for the WebUI queue: (id_task, kind, image, dtypes, axis, values, reference, at,
    #                          gain, save, options, repeats, *form)
    interrupt: Callable[[], None]
    #: the variants a round trip runs when none are named (ticked at start); None: all of ``variants``
    default_variants: Optional[Callable[[], List[str]]] = None
    #: the speed and memory options this WebUI has, as an HTML table (the "Cost of speed" tab's list)
    speed_options: Optional[Callable[[], str]] = None


def options_from_text(text: str) -> Any:
    """"token_merging_ratio, sd_vae_decode_method=TAESD" -> the API's ``options``: a list of names, or (where
    a value is given) an object name -> value (null: the user's own value); None for an empty field."""
    from lib_sdfix.diagnose.request import parse_value_list

    items = [part.strip() for part in str(text or "").replace(";", ",").split(",") if part.strip()]
    if not items:
        return None
    if not any("=" in item for item in items):
        return items
    out: Dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        value = value.strip()
        if not value:
            out[name.strip()] = None
        elif value.lower() in ("true", "on", "false", "off"):
            out[name.strip()] = value.lower() in ("true", "on")
        else:
            parsed = parse_value_list(value)
            out[name.strip()] = float(parsed[0]) if parsed and isinstance(parsed[0], (int, float)) else value
    return out


def body_from_form(kind: str, image: Any, dtypes: Sequence[str], axis: str, values: str, reference: str, at: str,
                   gain: float, save: bool, form: Sequence[Any], options: str = "", repeats: float = 1) -> Dict[str, Any]:
    """The API body the form asks for (so the tab passes the route's own validation)."""
    from lib_sdfix.diagnose.request import parse_value_list

    body: Dict[str, Any] = {"kind": kind, "heatmap_gain": gain, "save": bool(save)}
    if kind == "optimizations":
        body["payload"] = payload_from_form(form)
        body["repeats"] = int(repeats) if isinstance(repeats, (int, float)) and float(repeats).is_integer() else repeats
        chosen = options_from_text(options)
        if chosen is not None:
            body["options"] = chosen
        return body
    if kind == "vae_roundtrip":
        body["image"] = _image_base64(image) if image is not None else None
        body["dtypes"] = [VARIANT_CHOICES.get(d, d) for d in dtypes or []] or None
        return body
    body["payload"] = payload_from_form(form)
    if kind == "steps":
        if at and at.strip():
            body["at"] = parse_value_list(at)
        return body
    body["axis"] = AXIS_CHOICES.get(axis, axis)
    if values and values.strip():
        body["values"] = parse_value_list(values)
    if reference and reference.strip():
        parsed = parse_value_list(reference)
        body["reference"] = parsed[0] if len(parsed) == 1 else reference.strip()
    return body


#: Modes a PNG keeps as they are (16-bit grayscale included); others go to 8-bit RGB in the tab.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")


def _image_base64(image: Any) -> str:
    """The uploaded image as base64 PNG, in its own mode where a PNG holds it (the route scales 16-bit
    and says so), else as 8-bit RGB (:func:`lib_sdfix.image_input.rgb8`); a refusal names the field."""
    from lib_sdfix.image_input import ImageModeError, rgb8
    from lib_sdfix.imaging import png_base64

    if image.mode not in _PNG_MODES:
        try:
            image = rgb8(image)
        except ImageModeError as err:
            raise SettingsError({"image": str(err)}) from None
    return png_base64(image)


def build_diagnose_tab(callbacks: DiagnoseCallbacks) -> Any:
    """The Diagnose section's gr.Blocks.  Element ids start with ``sdfix_dg_``."""
    import gradio as gr

    runs = callbacks.variants()
    defaults = callbacks.default_variants() if callbacks.default_variants is not None else runs
    supported = [label for label, value in VARIANT_CHOICES.items() if value in runs]
    ticked = [label for label, value in VARIANT_CHOICES.items() if value in runs and value in defaults]
    slow = [value for value in VARIANT_CHOICES.values() if value in runs and value not in defaults]
    precisions = "Precisions" + (f" ({' and '.join(slow)} unticked: no fast kernels for {'them' if len(slow) > 1 else 'it'} "
                                 "on this device, minutes per round trip)" if slow else "")
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Find where an artifact comes from, one variable at a time (fixed seed): the **VAE round-trip** "
                    "tests the VAE on your own image in several precisions; a **sweep** varies one setting; the "
                    "**step strip** shows the image as predicted at chosen sampling steps. Findings are likelihoods, "
                    "with the numbers behind them.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs(elem_id=f"{PREFIX}_kinds"):
                    with gr.Tab("VAE round-trip", elem_id=f"{PREFIX}_tab_roundtrip"):
                        # image_mode None: gradio hands the upload over as it is (its default "RGB" clips
                        # 16-bit PNGs to white and drops transparency); SDFix converts it (image_input)
                        image = gr.Image(label="Your image (PNG, JPEG, WebP)", type="pil", image_mode=None,
                                         elem_id=f"{PREFIX}_image")
                        use_image = gr.Button("Use last output", elem_id=f"{PREFIX}_use_last_image")
                        dtypes = gr.CheckboxGroup(supported, value=ticked, label=precisions, elem_id=f"{PREFIX}_dtypes")
                    with gr.Tab("Sweep", elem_id=f"{PREFIX}_tab_sweep"):
                        axis = gr.Dropdown(list(AXIS_CHOICES), value="CFG scale", label="Vary",
                                           elem_id=f"{PREFIX}_axis")
                        values = gr.Textbox(label="Values (comma-separated; empty: defaults)", lines=1,
                                            placeholder=", ".join(format(v, "g") for v in DEFAULT_VALUES["cfg_scale"]),
                                            elem_id=f"{PREFIX}_values")
                        reference = gr.Textbox(label="Reference value (empty: your setting)", lines=1,
                                               elem_id=f"{PREFIX}_reference")
                    with gr.Tab("Step strip", elem_id=f"{PREFIX}_tab_steps"):
                        at = gr.Textbox(label="Steps to show (comma-separated; empty: six spread over the run)",
                                        lines=1, elem_id=f"{PREFIX}_at")
                    with gr.Tab("Cost of speed", elem_id=f"{PREFIX}_tab_optimizations"):
                        gr.Markdown("Your generation with your speed and memory options at their quality settings, "
                                    "each turned back on alone, and all on: time, peak memory and detail lost.")
                        options = gr.Textbox(label="Options to measure (empty: every one that is on; name=value to "
                                             "try a value)", lines=1, placeholder="token_merging_ratio=0.5, s_min_uncond",
                                             elem_id=f"{PREFIX}_options")
                        repeats = gr.Slider(1, 5, value=1, step=1, label="Timed repeats per cell (median; a warm-up "
                                            "run is never timed)", elem_id=f"{PREFIX}_repeats")
                        listed = gr.HTML(elem_id=f"{PREFIX}_speed_options")
                        list_button = gr.Button("List my speed options", elem_id=f"{PREFIX}_list_options")
                with gr.Accordion("Generation (sweep, step strip, cost of speed)", open=True):
                    use_last = gr.Button("Use last txt2img", elem_id=f"{PREFIX}_use_last")
                    form = build_form(gr, callbacks, PREFIX)
                with gr.Row():
                    gain = gr.Slider(1, 64, value=4, step=1, label="Heatmap amplification", elem_id=f"{PREFIX}_gain")
                    save = gr.Checkbox(value=True, label="Save to outputs/sdfix-diagnose", elem_id=f"{PREFIX}_save")
                with gr.Row():
                    buttons = [gr.Button(label, variant="primary", elem_id=f"{PREFIX}_run_{kind}") for kind, label in KIND_BUTTONS]
                    interrupt = gr.Button("Interrupt", elem_id=f"{PREFIX}_interrupt")
            with gr.Column(scale=2, elem_id=f"{PREFIX}_results"):
                gallery = gr.Gallery(label="Cells", elem_id=f"{PREFIX}_gallery", columns=4, height="auto")
                chart = gr.Image(label="Metrics against the varied value", type="pil", elem_id=f"{PREFIX}_chart")
                findings = gr.Markdown(elem_id=f"{PREFIX}_findings")
                metrics = gr.Dataframe(label="Metrics", elem_id=f"{PREFIX}_metrics", interactive=False, wrap=True)
                notes = gr.Markdown(elem_id=f"{PREFIX}_notes")
                info = gr.HTML(elem_id=f"{PREFIX}_info")
        id_task = gr.Textbox(visible=False, elem_id=f"{PREFIX}_id_task")
        seed = form[[k for k, _, _ in FORM_FIELDS].index("seed")]

        use_last.click(lambda: form_from_payload(callbacks.last_generation()), inputs=[], outputs=form)
        use_image.click(callbacks.last_image, inputs=[], outputs=[image])
        for (kind, _), button in zip(KIND_BUTTONS, buttons):
            kind_box = gr.Textbox(value=kind, visible=False, elem_id=f"{PREFIX}_kind_{kind}")
            button.click(callbacks.run, _js="sdfixDiagnoseSubmit",
                         inputs=[id_task, kind_box, image, dtypes, axis, values, reference, at, gain, save, options,
                                 repeats, *form],
                         outputs=[seed, gallery, chart, metrics, findings, notes, info])
        interrupt.click(callbacks.interrupt, inputs=[], outputs=[])
        if callbacks.speed_options is not None:
            list_button.click(callbacks.speed_options, inputs=[], outputs=[listed])
    return tab


# --- results -> widgets ----------------------------------------------------------------------------------


def _findings_markdown(findings: Sequence[Any]) -> str:
    if not findings:
        return "**Findings:** nothing in this run points to a cause on its own (see the metrics)."
    lines = ["**Findings** (likelihoods from this seed, not certainties):", "",
             "| likelihood | symptom → cause | what was measured | try |", "|---|---|---|---|"]
    for f in findings:
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {f.likelihood} | {cell(f.symptom)} → {cell(f.cause)} | {cell(f.text)} | {cell(f.next_step)} |")
    return "\n".join(lines)


def tab_outputs(result: Dict[str, Any]) -> List[Any]:
    """A diagnosis result -> [seed, gallery, chart, metrics, findings, notes, info]."""
    from lib_sdfix.diagnose.output import display_table

    analysis = result["analysis"]
    gallery = []
    if result.get("original") is not None:
        gallery.append((result["original"], "original"))
    for cell in result["cells"]:
        gallery.append((cell["image"], cell["label"]))
    for cell in result["cells"]:
        for against, image in (cell.get("heatmaps") or {}).items():
            gallery.append((image, f"{cell['label']}: difference vs {against}"))
        if cell.get("heatmap") is not None:
            gallery.append((cell["heatmap"], f"{cell['label']}: difference vs reference"))
    if analysis.get("strip") is not None:
        gallery.append((analysis["strip"], "step strip"))
    headers, rows = display_table(result["kind"], analysis.get("rows", []))
    timings = result["timings"]
    notes = [f"- {note}" for note in result["notes"]]
    notes.append(f"- {timings['samplings']} sampling(s), {timings['unet_steps']} sampler steps, "
                 f"{timings['decodes']} decode(s), {timings.get('total_s', 0):.1f} s")
    nan = analysis.get("nan")
    if nan:
        notes.append("- NaN watch: " + ("all values finite" if nan.get("finite") else nan["first"]["text"]))
    if not result["complete"]:
        notes.append("- interrupted: only the cells shown were rendered")
    if result.get("saved"):
        notes.append(f"- saved: `{result['saved']['metrics']}`")
    if result.get("memory"):
        notes.append(f"- memory: {result['memory']['measures']}; times: median of {result.get('repeats', 1)} timed "
                     f"run(s) per cell" + (f", after an untimed warm-up ({result['warm_up']['time_s']:.1f} s)"
                                           if result.get("warm_up") else ""))
    seed = result.get("seed")
    info = options_table(result["options"]) if result.get("options") else ""
    return [seed if seed is not None else _no_change(), gallery, analysis.get("chart"),
            {"headers": headers, "data": rows} if rows else None, _findings_markdown(analysis.get("findings", [])),
            "\n".join(notes), info]


def options_table(listed: Sequence[Dict[str, Any]], compact: bool = False) -> str:
    """The speed and memory options this WebUI has, as an HTML table: value, quality setting, status (and
    what each trades; ``compact``, for the form's narrow column: as the row's tooltip)."""
    from html import escape

    from lib_sdfix.diagnose.speed_options import option_value_text

    def text(value: Any) -> str:
        return "–" if value is None else escape(option_value_text(value))

    def row(item: Dict[str, Any]) -> str:
        trades = escape(item["trades"]) + (f" ({escape(item['note'])})" if item.get("note") else "")
        status = ("<b>on</b>, " if item["on"] else "") + escape(item["status"])
        name = f"{escape(item['label'])}<br><code>{escape(item['key'])}</code>"
        if compact:
            return (f"<tr title='{trades}'><td>{name}</td><td>{text(item['value'])}</td>"
                    f"<td>{text(item['quality_value'])}</td><td>{status}</td></tr>")
        return (f"<tr><td>{name}</td><td>{text(item['value'])}</td><td>{text(item['quality_value'])}</td>"
                f"<td>{status}</td><td>{trades}</td></tr>")

    head = "<th>option</th><th>yours</th><th>quality</th><th>status</th>" + ("" if compact else "<th>trades</th>")
    style = "width:100%;table-layout:fixed;word-break:break-word;font-size:0.85em"
    return (f"<table class='sdfix-options' style='{style}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(row(i) for i in listed)}</tbody></table>")


def _no_change() -> Any:
    import gradio as gr

    return gr.update()


# --- host side -----------------------------------------------------------------------------------------


def host_callbacks(ab: TabCallbacks) -> DiagnoseCallbacks:
    """The host's callbacks (``ab``: the A/B section's, for its choices and last generation)."""
    import gradio as gr
    from modules import call_queue

    from lib_sdfix.diagnose.roundtrip import default_variants, supported_variants

    shared = current().shared

    def last_image() -> Any:
        image = last_output.image()
        if image is None:
            gr.Warning("SDFix: no image generated since the WebUI started")
            return gr.update()
        return image

    def run(id_task: str, kind: str, image: Any, dtypes: Any, axis: str, values: str, reference: str, at: str,
            gain: float, save: bool, options: str, repeats: float, *form: Any) -> List[Any]:
        try:
            body = body_from_form(kind, image, dtypes, axis, values, reference, at, gain, save, form, options, repeats)
            return tab_outputs(runner.run_diagnosis(runner.request_from_body(body)))
        except SettingsError as err:
            return [gr.update(), [], None, None, f"**SDFix:** {err}", "", ""]

    return DiagnoseCallbacks(
        samplers=ab.samplers, schedulers=ab.schedulers, upscalers=ab.upscalers,
        variants=lambda: list(supported_variants(runner.vae_device())),
        last_generation=ab.last_generation, last_image=last_image,
        run=call_queue.wrap_gradio_gpu_call(run, extra_outputs=[gr.update(), [], None, None, "", ""]),
        interrupt=lambda: shared.state.interrupt(),
        default_variants=lambda: list(default_variants(runner.vae_device())),
        speed_options=speed_options_html,
    )


def speed_options_html() -> str:
    """The "List my speed options" answer: what this WebUI has, with the user's values."""
    from lib_sdfix.diagnose.optimizations import listing

    return options_table([listing(f) for f in found_options({})], compact=True)

