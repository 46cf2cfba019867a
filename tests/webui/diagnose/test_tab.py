"""The Diagnose section: form -> API body, result -> widgets, the layout (gradio 3.41 as the WebUI pins
it), and the host callbacks behind the buttons, run in the hosts' stand-ins."""
from __future__ import annotations

import pytest
from PIL import Image

from lib_sdfix.webui.ab.tab import TabCallbacks, build_ab_tab
from lib_sdfix.webui.diagnose.tab import (
    AXIS_CHOICES,
    KIND_BUTTONS,
    VARIANT_CHOICES,
    DiagnoseCallbacks,
    body_from_form,
    build_diagnose_tab,
)
from lib_sdfix.webui.form import FORM_FIELDS
from lib_sdfix.webui.tabs import build_sdfix_tab

pytest.importorskip("pydantic")


def form(**overrides):
    values = {key: default for key, _, default in FORM_FIELDS}
    values.update(prompt="a portrait", seed=4321, steps=3, width=64, height=64, sampler_name="Euler")
    values.update(overrides)
    return [values[key] for key, _, _ in FORM_FIELDS]


def test_form_to_body_for_each_kind():
    sweep = body_from_form("sweep", None, [], "SDFix precision_guard + guard_encode (off / on)", "", "on", "", 4, True, form())
    assert sweep == {"kind": "sweep", "heatmap_gain": 4, "save": True, "axis": "precision", "reference": "on",
                     "payload": {k: v for k, v in sweep["payload"].items()}}
    assert sweep["payload"]["prompt"] == "a portrait" and "hr_upscaler" not in sweep["payload"]
    cfg = body_from_form("sweep", None, [], "CFG scale", "1, 3, 7.5", "7.5", "", 4, False, form())
    assert cfg["values"] == [1, 3, 7.5] and cfg["reference"] == 7.5 and cfg["axis"] == "cfg_scale"
    steps = body_from_form("steps", None, [], "", "", "", "1,2, 3", 4, False, form())
    assert steps["at"] == [1, 2, 3] and "axis" not in steps
    assert "at" not in body_from_form("steps", None, [], "", "", "", " ", 4, False, form())
    image = Image.new("RGB", (64, 64))
    roundtrip = body_from_form("vae_roundtrip", image, ["WebUI as it runs", "fp16"], "", "", "", "", 8, False, form())
    assert roundtrip["dtypes"] == ["webui", "fp16"] and roundtrip["image"] and "payload" not in roundtrip
    assert body_from_form("vae_roundtrip", None, [], "", "", "", "", 8, False, form())["dtypes"] is None


def _dtypes_box(dg):
    gr = pytest.importorskip("gradio")
    with gr.Blocks() as page:
        build_diagnose_tab(dg).render()
    return next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sdfix_dg_dtypes")


def test_the_precisions_ticked_at_start_are_what_runs_by_default():
    variants = ["webui", "precision_guard", "fp32", "fp16", "bf16"]
    common = dict(samplers=lambda: [], schedulers=lambda: [], upscalers=lambda: [], variants=lambda: variants,
                  last_generation=lambda: {}, last_image=lambda: None, run=lambda *a: None, interrupt=lambda: None)
    box = _dtypes_box(DiagnoseCallbacks(**common, default_variants=lambda: ["webui", "precision_guard", "fp32"]))
    assert [VARIANT_CHOICES[c if isinstance(c, str) else c[0]] for c in box.choices] == variants
    assert [VARIANT_CHOICES[v] for v in box.value] == ["webui", "precision_guard", "fp32"]
    assert "fp16 and bf16 unticked: no fast kernels for them on this device" in box.label
    fast = _dtypes_box(DiagnoseCallbacks(**common))  # no default_variants: everything the device runs
    assert [VARIANT_CHOICES[v] for v in fast.value] == variants and fast.label == "Precisions"


def test_the_tab_hands_a_16_bit_upload_over_unclipped_and_refuses_floats():
    import base64
    import io

    import numpy as np

    from lib_sdfix.settings import SettingsError

    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    body = body_from_form("vae_roundtrip", Image.fromarray(ramp), [], "", "", "", "", 4, False, form())
    sent = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert np.asarray(sent).max() == 65535, "16 bits reach the route (which scales them and says so)"
    cmyk = body_from_form("vae_roundtrip", Image.new("CMYK", (64, 64), (0, 255, 255, 0)), [], "", "", "", "", 4,
                          False, form())
    assert Image.open(io.BytesIO(base64.b64decode(cmyk["image"]))).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(SettingsError) as err:
        body_from_form("vae_roundtrip", Image.new("F", (64, 64)), [], "", "", "", "", 4, False, form())
    assert "floating-point" in err.value.problems["image"]


def test_the_image_field_keeps_the_uploads_mode():
    """gradio's default image_mode "RGB" clips a 16-bit PNG to white before SDFix sees it."""
    gr = pytest.importorskip("gradio")
    import base64
    import io

    import numpy as np

    dg = DiagnoseCallbacks(samplers=lambda: [], schedulers=lambda: [], upscalers=lambda: [], variants=lambda: ["fp32"],
                           last_generation=lambda: {}, last_image=lambda: None, run=lambda *a: None, interrupt=lambda: None)
    with gr.Blocks() as page:
        build_diagnose_tab(dg).render()
    field = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sdfix_dg_image")
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(buffer, "PNG")
    uploaded = field.preprocess("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    assert uploaded.mode in ("I", "I;16") and np.asarray(uploaded).max() == 32768


def test_sdfix_tab_has_both_sections_and_keeps_the_ab_ids():
    gr = pytest.importorskip("gradio")
    ab = TabCallbacks(samplers=lambda: ["Euler"], schedulers=lambda: ["Automatic"], upscalers=lambda: ["Latent"],
                      last_generation=lambda: {}, payload_from_text=lambda text: {}, run=lambda *a: None,
                      interrupt=lambda: None)
    dg = DiagnoseCallbacks(samplers=ab.samplers, schedulers=ab.schedulers, upscalers=ab.upscalers,
                           variants=lambda: ["webui", "precision_guard", "fp32"], last_generation=lambda: {},
                           last_image=lambda: None, run=lambda *a: None, interrupt=lambda: None)
    tab = build_sdfix_tab(build_ab_tab(ab), build_diagnose_tab(dg))
    with gr.Blocks() as page:  # as the WebUI renders an extension's tab
        tab.render()
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    for needed in ("sdfix_ab_run", "sdfix_ab_use_last", "sdfix_ab_results", "sdfix_ab_compare", "sdfix_ab_gallery",
                   "sdfix_section_ab", "sdfix_section_diagnose", "sdfix_dg_results", "sdfix_dg_gallery",
                   "sdfix_dg_use_last", "sdfix_dg_use_last_image", "sdfix_dg_image", "sdfix_dg_dtypes", "sdfix_dg_axis",
                   "sdfix_dg_values", "sdfix_dg_reference", "sdfix_dg_at", "sdfix_dg_chart", "sdfix_dg_findings",
                   "sdfix_dg_metrics", "sdfix_dg_interrupt", *[f"sdfix_dg_run_{k}" for k, _ in KIND_BUTTONS],
                   "sdfix_dg_tab_optimizations", "sdfix_dg_options", "sdfix_dg_repeats", "sdfix_dg_list_options",
                   *[f"sdfix_dg_{k}" for k, _, _ in FORM_FIELDS]):
        assert needed in ids, needed
    dtypes = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sdfix_dg_dtypes")
    assert [VARIANT_CHOICES[c if isinstance(c, str) else c[0]] for c in dtypes.choices] == ["webui", "precision_guard", "fp32"]
    axis = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sdfix_dg_axis")
    assert [AXIS_CHOICES[c if isinstance(c, str) else c[0]] for c in axis.choices] == list(AXIS_CHOICES.values())


@pytest.fixture
def callbacks(webui):
    pytest.importorskip("gradio")
    from lib_sdfix.webui.diagnose.tab import host_callbacks

    ab = TabCallbacks(samplers=lambda: ["Euler"], schedulers=lambda: ["Automatic"], upscalers=lambda: ["Latent"],
                      last_generation=lambda: {"prompt": "from params.txt"}, payload_from_text=lambda text: {},
                      run=lambda *a: None, interrupt=lambda: None)
    return host_callbacks(ab)


def test_run_button_renders_results_under_the_queue_and_refusals_as_a_message(webui, callbacks):
    outputs = callbacks.run("task(abc)", "sweep", None, [], "SDFix precision_guard + guard_encode (off / on)", "", "", "", 4, False,
                            "", 1,
                            *form())
    seed, gallery, chart, metrics, findings, notes, info = outputs
    assert seed == 4321 and [label for _, label in gallery][:2] == ["precision_guard+guard_encode off", "precision_guard+guard_encode on"]
    assert isinstance(chart, Image.Image) and metrics["headers"][0] == "cell" and len(metrics["data"]) == 2
    assert "| likelihood |" in findings and "numerical precision" in findings
    assert "1 sampling(s)" in notes and "NaN watch: all values finite" in notes
    assert webui.shared.state.job == ""
    refused = callbacks.run("task(x)", "sweep", None, [], "CFG scale", "1, 99", "", "", 4, False, "", 1, *form())
    assert "**SDFix:**" in refused[4] and "values[1]" in refused[4] and refused[1] == []


def test_cost_of_speed_button_and_the_list_of_options(webui, callbacks):
    webui.shared.opts.token_merging_ratio = 0.5
    listed = callbacks.speed_options()
    assert "<code>token_merging_ratio</code></td><td>0.5</td><td>0</td><td><b>on</b>, switchable</td></tr>" in listed
    assert "title='speed: merges similar tokens" in listed
    outputs = callbacks.run("task(o)", "optimizations", None, [], "", "", "", "", 4, False, "s_min_uncond=14, "
                            "token_merging_ratio", 2, *form())
    seed, gallery, chart, metrics, findings, notes, info = outputs
    labels = [label for _, label in gallery]
    assert labels[:4] == ["quality settings", "negative guidance minimum sigma 14", "token merging ratio 0.5",
                          "all measured options on"]
    assert metrics["headers"][:3] == ["option", "value", "time Δ %"] and len(metrics["data"]) == 4
    assert "largest detail loss" in findings and "median of 2 timed run(s)" in notes
    assert "process peak RSS" in notes and "<b>on</b>, measured" in info and "<th>trades</th>" in info
    assert webui.shared.opts.token_merging_ratio == 0.5
    refused = callbacks.run("task(x)", "optimizations", None, [], "", "", "", "", 4, False, "tome", 1, *form())
    assert "options[0]" in refused[4] and "unknown option 'tome'" in refused[4]


def test_options_text_becomes_the_api_field():
    from lib_sdfix.webui.diagnose.tab import options_from_text

    assert options_from_text(" ") is None
    assert options_from_text("token_merging_ratio, s_min_uncond") == ["token_merging_ratio", "s_min_uncond"]
    assert options_from_text("token_merging_ratio=0.5; sd_vae_decode_method=TAESD, pad_cond_uncond=on, s_min_uncond") == {
        "token_merging_ratio": 0.5, "sd_vae_decode_method": "TAESD", "pad_cond_uncond": True, "s_min_uncond": None}
    body = body_from_form("optimizations", None, [], "", "", "", "", 4, True, form(), "token_merging_ratio=1", 3.0)
    assert body["options"] == {"token_merging_ratio": 1.0} and body["repeats"] == 3 and body["payload"]["seed"] == 4321


def test_step_strip_and_roundtrip_buttons(webui, callbacks):
    steps = callbacks.run("task(s)", "steps", None, [], "", "", "", "1,3", 4, False, "", 1, *form())
    labels = [label for _, label in steps[1]]
    assert labels == ["step 1/3", "step 3/3", "final image", "step strip"] and steps[3]["headers"][0] == "step"
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    roundtrip = callbacks.run("task(r)", "vae_roundtrip", image, ["fp32", "fp16"], "", "", "", "", 4, False, "", 1, *form())
    labels = [label for _, label in roundtrip[1]]
    assert labels[:3] == ["original", "fp32", "fp16"] and "fp16: difference vs fp32" in labels
    assert roundtrip[0] is not None  # no seed: the form's seed is left as it is (an update)


def test_the_hosts_callbacks_tick_the_devices_defaults(webui, callbacks, monkeypatch):
    from lib_sdfix.diagnose import roundtrip

    monkeypatch.setattr(roundtrip, "_fast_on_cpu", lambda dtype: False)
    assert callbacks.default_variants() == ["webui", "precision_guard", "fp32"]
    assert set(callbacks.variants()) >= {"fp16", "bf16"}
    box = _dtypes_box(callbacks)
    assert [VARIANT_CHOICES[v] for v in box.value] == ["webui", "precision_guard", "fp32"]


def test_use_last_output_and_generation(webui, callbacks):
    from lib_sdfix.webui.diagnose import last_output

    assert callbacks.last_generation() == {"prompt": "from params.txt"}
    last_output._LAST.clear()
    with pytest.warns(UserWarning, match="no image generated"):
        assert callbacks.last_image() == __import__("gradio").update()  # the image field is left as it is
    generated = webui.api.api.text2imgapi({"prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert callbacks.last_image() is generated.images[0]
