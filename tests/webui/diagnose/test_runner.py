"""The diagnosis runner (lib_sdfix.webui.diagnose) in stand-ins of the three hosts (tests/webui/fakes/).

Every sweep cell must be the image and infotext a plain txt2img API call with that cell's settings gives,
while the UNet runs only as often as the plan says; the step strip decodes each step's denoised
prediction through the guarded VAE; the round trip runs the host's own encode/decode in each precision
and leaves the VAE, its dtype attributes, the flags and the RNG exactly as they were; the NaN watch
finds the first step or stage with non-finite values, in diagnoses and (with the option) in generations.
"""
from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from lib_sdfix.settings import SDFixSettings

from ..support import assert_clean, decodes, diagnose, pixels, plain

pytest.importorskip("pydantic")
pytest.importorskip("fastapi")

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 3,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "DPM++ 2M"}
FP16, FP32 = torch.float16, torch.float32


# --- sweeps ----------------------------------------------------------------------------------------------


def test_precision_sweep_samples_once_and_each_cell_is_a_plain_generation(webui):
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="precision")
    result = run.result
    assert [c["name"] for c in result["cells"]] == ["precision-off", "precision-on"] and result["complete"]
    assert len(run.unet) == PAYLOAD["steps"]  # one sampling for both cells
    assert result["timings"]["samplings"] == 1 and result["timings"]["unet_steps"] == PAYLOAD["steps"]
    assert [r["kind"] for r in result["timings"]["runs"]] == ["full sampling", "decode only (shared sampling)"]
    assert decodes(run.vae) == [(FP16, FP16, True), (FP32, FP32, False)]  # off: the host's fp16; on: guarded
    assert_clean(webui)
    base = SDFixSettings()
    for cell, guard in zip(result["cells"], (False, True)):
        expected = plain(webui, PAYLOAD, base.changed(precision_guard=guard, guard_encode=guard))
        assert pixels(cell["image"]) == pixels(expected.image), cell["name"]
        assert cell["infotext"] == expected.infotext
    assert result["reference"] == "precision-on"
    assert [f.key for f in result["analysis"]["findings"]] == ["precision"]  # fp16 vs fp32 decodes differ
    assert result["analysis"]["nan"]["finite"] is True


def test_cfg_sweep_samples_each_value_and_matches_plain_generations(webui):
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="cfg_scale", values=[1, 5, 12])
    result = run.result
    assert result["timings"]["samplings"] == 3 and len(run.unet) == 3 * PAYLOAD["steps"]
    assert result["reference"] == "cfg-5"  # the payload's own CFG
    rows = {r["name"]: r for r in result["analysis"]["rows"]}
    assert rows["cfg-5"]["reference"] and rows["cfg-1"]["value"] == 1.0
    for cell in result["cells"]:
        expected = plain(webui, dict(PAYLOAD, cfg_scale=cell["value"]), SDFixSettings())
        assert pixels(cell["image"]) == pixels(expected.image) and f"CFG scale: {cell['value']:g}" in cell["infotext"]
    assert result["analysis"]["chart"].size[0] > 0 and set(result["analysis"]["heatmaps"]) == {"cfg-1", "cfg-12"}
    assert_clean(webui)


def test_sampler_and_schedule_sweeps_use_the_hosts_names(webui):
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="sampler_name", values=["Euler", "DPM++ 2M"])
    assert [c["label"] for c in run.result["cells"]] == ["Euler", "DPM++ 2M"]
    assert "Sampler: Euler" in run.result["cells"][0]["infotext"]
    run = diagnose(webui, kind="sweep", payload=dict(PAYLOAD, sampler_name="Euler"), axis="scheduler",
                   values=["Automatic", "Karras"])
    assert "Schedule type: Karras" in run.result["cells"][1]["infotext"]
    from lib_sdfix.settings import SettingsError

    with pytest.raises(SettingsError) as err:
        diagnose(webui, kind="sweep", payload=PAYLOAD, axis="sampler_name", values=["Euler", "Heun"])
    assert "values[1]" in err.value.problems


def test_interrupting_a_sweep_keeps_what_was_rendered(webui):
    def interrupt(count):
        if count == 3:  # during the second cell's sampling
            webui.shared.state.interrupt()

    webui.shared.sd_model.unet_hook = interrupt
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="steps", values=[2, 5, 8])
    assert not run.result["complete"] and [c["name"] for c in run.result["cells"]] == ["steps-2"]
    assert run.result["analysis"]["rows"] == []  # the reference (8 steps) never rendered
    assert any("reference cell was not rendered" in n for n in run.result["notes"])
    assert_clean(webui)


# --- the step strip ------------------------------------------------------------------------------------------


def test_step_strip_decodes_each_denoised_prediction_through_the_guard(webui):
    run = diagnose(webui, kind="steps", payload=dict(PAYLOAD, steps=4), at=[1, 2, 4])
    result = run.result
    assert [c["name"] for c in result["cells"]] == ["step-1", "step-2", "step-4", "final"] and result["complete"]
    assert result["timings"]["samplings"] == 1 and len(run.unet) == 4
    # the generation's own decode (SDFix's defaults: guarded), then three guarded decodes of the predictions
    assert decodes(run.vae) == [(FP32, FP32, False)] * 4
    images = {c["name"]: c["image"] for c in result["cells"]}
    assert pixels(images["step-1"]) != pixels(images["step-2"])
    # DPM++ 2M's last step returns its prediction: step 4 decodes to the final image
    assert pixels(images["step-4"]) == pixels(images["final"])
    expected = plain(webui, dict(PAYLOAD, steps=4), SDFixSettings())
    assert pixels(images["final"]) == pixels(expected.image)
    assert [r["step"] for r in result["analysis"]["rows"]] == [1, 2, 4] and result["analysis"]["strip"] is not None
    assert_clean(webui)


def test_step_strip_defaults_and_steps_the_sampler_never_reached(webui):
    run = diagnose(webui, kind="steps", payload=dict(PAYLOAD, steps=12))
    assert run.result["at"] == [2, 4, 6, 8, 10, 12]
    assert [c["name"] for c in run.result["cells"]][-1] == "final"


# --- the VAE round trip --------------------------------------------------------------------------------------


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((160, 40, 260, 136))  # 100x96: cropped to 96x96


def test_roundtrip_runs_each_precision_through_the_hosts_own_encode_and_decode(webui, photo):
    rng = torch.get_rng_state()
    run = diagnose(webui, kind="vae_roundtrip", image=png(photo), dtypes=["webui", "precision_guard", "fp32", "fp16", "bf16"])
    result = run.result
    assert result["variants"] == ["webui", "precision_guard", "fp32", "fp16", "bf16"] and result["complete"]
    seen = [(r["part"], r["input"], r["weight"], r["cudnn_tf32"]) for r in run.vae]
    BF16 = torch.bfloat16
    assert seen == [("encoder", FP16, FP16, True), ("decoder", FP16, FP16, True),  # the host as it runs
                    ("encoder", FP32, FP32, False), ("decoder", FP32, FP32, False),  # SDFix's guard
                    ("encoder", FP32, FP32, False), ("decoder", FP32, FP32, False),
                    ("encoder", FP16, FP16, False), ("decoder", FP16, FP16, False),
                    ("encoder", BF16, BF16, False), ("decoder", BF16, BF16, False)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert_clean(webui)
    rows = {r["name"]: r for r in result["analysis"]["rows"]}
    assert rows["original"]["reference"] and result["original"].size == (96, 96)
    # the guard hands the encoded latent back in the host's dtype (its sampler expects it): close to fp32, not equal
    assert 60 < rows["precision_guard"]["psnr_vs_fp32"] < float("inf") and rows["fp32"]["psnr_vs_fp32"] == float("inf")
    assert set(result["cells"][0]["heatmaps"]) == {"original", "fp32"}
    assert any("cropped from 100x96" in note for note in result["notes"])
    json.dumps(__import__("lib_sdfix.webui.diagnose.runner", fromlist=["x"]).api_response(result), allow_nan=False)


def test_roundtrip_of_a_16_bit_png_measures_the_image_not_white(webui):
    import numpy as np

    ramp = np.linspace(0, 65535, 96 * 64).round().astype(np.uint16).reshape(64, 96)
    run = diagnose(webui, kind="vae_roundtrip", image=png(Image.fromarray(ramp)), dtypes=["fp32"])
    original = np.asarray(run.result["original"])
    assert run.result["original"].mode == "RGB" and original.min() == 0 and original.max() == 255
    assert 120 < original.mean() < 135, "a 0-65535 ramp is mid-grey on average, not white"
    encoded = [r for r in run.vae if r["part"] == "encoder"]
    assert len(encoded) == 1 and any("scaled to 8 bits" in note for note in run.result["notes"])
    assert_clean(webui)


@pytest.mark.parametrize("bf16_kernels", [False, True])
def test_roundtrip_without_dtypes_leaves_out_what_this_cpu_is_slow_at_and_says_so(webui, photo, monkeypatch, bf16_kernels):
    from lib_sdfix.diagnose import roundtrip

    monkeypatch.setattr(roundtrip, "_fast_on_cpu", lambda dtype: dtype == "bf16" and bf16_kernels)
    run = diagnose(webui, kind="vae_roundtrip", image=png(photo))
    slow = "fp16" if bf16_kernels else "fp16 and bf16"
    expected = ["webui", "precision_guard", "fp32"] + (["bf16"] if bf16_kernels else [])
    assert run.result["variants"] == expected and run.result["complete"]
    assert {r["weight"] for r in run.vae} <= ({FP16, FP32, torch.bfloat16} if bf16_kernels else {FP16, FP32})
    assert len(run.vae) == 2 * len(expected)  # nothing else ran
    note = next(n for n in run.result["notes"] if "not run" in n)
    assert note.startswith(f"{slow} not run: this CPU has no fast {slow} kernels") and "under Precisions" in note
    named = diagnose(webui, kind="vae_roundtrip", image=png(photo), dtypes=["fp32", "bf16"])
    assert named.result["variants"] == ["fp32", "bf16"] and not any("not run" in n for n in named.result["notes"])


def test_roundtrip_refuses_a_precision_the_device_cannot_run(webui, photo, monkeypatch):
    from lib_sdfix.diagnose import roundtrip
    from lib_sdfix.settings import SettingsError

    monkeypatch.setattr(roundtrip, "_runs", lambda device, dtype: dtype != "bf16")
    with pytest.raises(SettingsError) as err:
        diagnose(webui, kind="vae_roundtrip", image=png(photo), dtypes=["fp32", "bf16"])
    assert "not supported on this device" in err.value.problems["dtypes[1]"]


# --- NaN watch ----------------------------------------------------------------------------------------------


def nan_from(call):
    return lambda count, out: out * float("nan") if count >= call else out


def test_nan_in_sampling_is_found_at_its_step(webui):
    webui.shared.sd_model.unet_output = nan_from(2)
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="cfg_scale", values=[3, 5])
    nan = run.result["analysis"]["nan"]
    assert nan["first"]["stage"] == "sampling" and nan["first"]["step"] == 2 and nan["first"]["steps"] == 3
    finding = next(f for f in run.result["analysis"]["findings"] if f.key == "non_finite")
    assert "sampling step 2 of 3" in finding.text and finding.likelihood == "likely"
    if webui.host == "a1111":  # its own check stops the generation: the cells fail, the watch says where
        assert run.result["cells"] == [] and any("stopped the generation" in n for n in run.result["notes"])
    else:  # Forge/reForge check nothing: the NaN image comes out (black)
        assert len(run.result["cells"]) == 2
    assert_clean(webui)


def test_a_half_vae_that_overflows_is_found_at_the_decode(webui):
    webui.vae.half_overflow = True
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="precision")
    nan = run.result["analysis"]["nan"]
    assert nan["first"]["stage"] == "vae decode" and nan["first"]["cell"] == "precision-off"
    finding = next(f for f in run.result["analysis"]["findings"] if f.key == "non_finite")
    assert "VAE" in finding.cause
    if webui.host == "a1111":  # "Automatically revert VAE to 32-bit floats" decoded again, and for good
        assert webui.devices.dtype_vae == FP32
    else:
        assert pixels(run.result["cells"][0]["image"]) != pixels(run.result["cells"][1]["image"])


def test_nan_watch_option_notes_the_first_step_in_the_infotext(webui):
    from lib_sdfix.webui import patches

    active = []
    webui.shared.sd_model.unet_hook = lambda count: active.append(patches.active())
    clean = plain(webui, PAYLOAD, {"nan_watch": True})
    assert 'nan watch: all values finite (3 sampling checks, 1 latent check, 1 vae decode check)' in clean.infotext
    assert "nan=1" in clean.infotext and any("processing.decode_latent_batch" in a for a in active[0])
    active.clear()
    off = plain(webui, PAYLOAD, {})
    assert "nan watch" not in off.infotext and "nan=0" in off.infotext
    assert not any("decode_latent_batch" in name for name in active[0])  # option off: nothing patched for it
    assert pixels(off.image) == pixels(clean.image)  # the watch changes no pixel
    if webui.host == "a1111":
        webui.shared.cmd_opts.disable_nan_check = True  # else the host itself stops the generation
    webui.shared.sd_model.unet_output = nan_from(2)
    webui.shared.sd_model.unet_hook = None
    broken = plain(webui, PAYLOAD, {"nan_watch": True})
    assert "nan watch: first NaN at sampling step 2 of 3" in broken.infotext
    assert "later also in latent, vae decode" in broken.infotext
    assert_clean(webui)


def test_nan_watch_follows_both_passes_of_a_hires_generation(webui):
    hires = dict(PAYLOAD, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=2)
    if webui.host == "a1111":
        webui.shared.cmd_opts.disable_nan_check = True
    webui.shared.sd_model.unet_output = nan_from(4)  # the first Hires step (3 first-pass calls)
    result = plain(webui, hires, {"nan_watch": True})
    assert "first NaN at hires sampling step 1 of 2" in result.infotext


def test_nan_watch_names_the_late_refine_steps_as_such(webui):
    """The refine's steps are neither the first pass's nor a Hires pass (there is none here)."""
    if webui.host == "a1111":
        webui.shared.cmd_opts.disable_nan_check = True
    refine = {"nan_watch": True, "late_refine": True, "late_refine_strength": 0.67}  # 2 of 3 steps again
    webui.shared.sd_model.unet_output = nan_from(4)  # the refine's first step (3 first-pass calls)
    result = plain(webui, PAYLOAD, refine)
    assert "first NaN at late refine step" in result.infotext and "hires" not in result.infotext
    webui.shared.opts.sdfix_late_refine, webui.shared.opts.sdfix_late_refine_strength = True, 0.67  # Settings
    try:
        run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="cfg_scale", values=[3, 5])
    finally:
        del webui.shared.opts.sdfix_late_refine, webui.shared.opts.sdfix_late_refine_strength
    nan = run.result["analysis"]["nan"]
    assert nan["first"]["stage"] == "late refine", nan
    assert "hires" not in repr(run.result["analysis"]).lower()


# --- the last output, saving, routes --------------------------------------------------------------------------


def test_last_output_is_the_users_generation_not_a_diagnosis(webui):
    from lib_sdfix.webui.diagnose import last_output

    generated = plain(webui, PAYLOAD, {})
    assert pixels(last_output.image()) == pixels(generated.image)
    diagnose(webui, kind="sweep", payload=dict(PAYLOAD, seed=99), axis="precision")
    assert pixels(last_output.image()) == pixels(generated.image)


def test_saving_under_outputs_sdfix_diagnose(webui, tmp_path, photo):
    webui.shared.opts.outdir_samples = str(tmp_path)
    first = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="precision", save=True).result["saved"]
    second = diagnose(webui, kind="vae_roundtrip", image=png(photo), dtypes=["webui", "fp32"], save=True).result["saved"]
    folder = tmp_path / "sdfix-diagnose"
    assert first["grid"] == str(folder / "00000-sweep-4321-grid.png")
    assert second["grid"] == str(folder / "00001-vae-roundtrip-grid.png")
    with Image.open(first["images"]["precision-on"]) as image:
        assert "SDFix: on=1" in image.info["parameters"]
    document = json.loads(open(first["metrics"]).read())
    assert document["format"] == "sdfix-diagnose/1" and document["axis"] == "precision"
    assert document["findings"][0]["key"] == "precision" and document["timings"]["samplings"] == 1
    assert {"chart", "heatmap-precision-off"} <= set(first["extras"])
    assert set(second["images"]) == {"original", "webui", "fp32"} and "heatmap-webui-vs-fp32" in second["extras"]


@pytest.mark.parametrize("auth", [None, "sdfix:secret"])
def test_diagnose_route_validates_runs_and_sits_behind_the_api_auth(webui, auth):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from lib_sdfix.webui.routes import on_app_started

    webui.shared.cmd_opts.api_auth = auth
    app = fastapi.FastAPI()
    on_app_started(None, app)
    client = testclient.TestClient(app)
    creds = ("sdfix", "secret") if auth else None
    if auth:
        assert client.post("/sdfix/v1/diagnose", json={"kind": "steps"}).status_code == 401
    bad = client.post("/sdfix/v1/diagnose", json={"kind": "sweep", "payload": {"prompt": "x", "steps": 500},
                                                  "axis": "cfg_scale", "values": [1, 99]}, auth=creds)
    assert bad.status_code == 422
    assert "payload.steps" in bad.json()["detail"] and "values[1]" in bad.json()["detail"]
    ok = client.post("/sdfix/v1/diagnose", json={"kind": "sweep", "payload": PAYLOAD, "axis": "precision"}, auth=creds)
    assert ok.status_code == 200, ok.text
    answer = ok.json()
    assert [c["name"] for c in answer["cells"]] == ["precision-off", "precision-on"]
    assert base64.b64decode(answer["cells"][0]["image"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert answer["cells"][1]["metrics"]["psnr"] == "inf" and answer["findings"][0]["key"] == "precision"
    assert answer["timings"]["samplings"] == 1 and answer["grid"] and answer["chart"]
    assert webui.shared.state.job == ""  # the route ended its job


def test_without_the_api_there_is_no_diagnose_route(webui):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from lib_sdfix.webui.routes import on_app_started

    webui.shared.cmd_opts.api = False
    app = fastapi.FastAPI()
    on_app_started(None, app)
    assert testclient.TestClient(app).post("/sdfix/v1/diagnose", json={"kind": "steps"}).status_code == 404


HOSTILE = [
    ([1, 2], "body"),
    ({"kind": {"a": 1}}, "kind"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "steps", "values": list(range(1, 100001))}, "values"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "cfg_scale", "values": [1, 10 ** 400]}, "values[1]"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "sampler_name", "values": ["Euler", "x" * 100000]}, "values[1]"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "cfg_scale", "values": [3, 7], "reference": {"a": []}}, "reference"),
    ({"kind": "sweep", "payload": dict(PAYLOAD, batch_size=8), "axis": "precision"}, "payload.batch_size"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "precision", "values": ["on", "on"]}, "values[1]"),
    ({"kind": "steps", "payload": PAYLOAD, "at": list(range(1, 100001))}, "at"),
    ({"kind": "steps", "payload": PAYLOAD, "at": "all"}, "at"),
    ({"kind": "steps", "payload": PAYLOAD, "save": "yes"}, "save"),
    ({"kind": "vae_roundtrip", "image": "A" * 64}, "image"),
    ({"kind": "vae_roundtrip", "image": None, "dtypes": ["fp32"] * 50}, "dtypes"),
    ({"kind": "vae_roundtrip", "at": [1]}, "at"),
]


@pytest.mark.parametrize("body,field", HOSTILE)
def test_hostile_bodies_get_422_naming_the_field_and_run_nothing(webui, body, field):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from lib_sdfix.webui.routes import on_app_started

    app = fastapi.FastAPI()
    on_app_started(None, app)
    webui.shared.sd_model.unet_calls.clear()
    answer = testclient.TestClient(app).post("/sdfix/v1/diagnose", json=body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert field in detail and len(detail) < 4000 and "Traceback" not in detail
    assert webui.shared.sd_model.unet_calls == [] and webui.shared.state.job == ""


def test_precision_cells_and_findings_name_fixes_by_their_keys(webui):
    from lib_sdfix.settings import FIXES

    keys = {f.key for f in FIXES}
    run = diagnose(webui, kind="sweep", payload=PAYLOAD, axis="precision")
    off, on = run.request.cells
    assert {k for k in keys if off.settings.wants(k) != on.settings.wants(k)} == {"precision_guard", "guard_encode"}
    assert all(key in off.label for key in ("precision_guard", "guard_encode"))
    for finding in run.result["analysis"]["findings"]:
        assert set(finding.fixes) <= keys
    assert run.result["analysis"]["findings"][0].fixes == ("precision_guard", "guard_encode")
