"""POST /sdfix/v1/diagnose and the Diagnose section of SDFix's tab in a real WebUI (the three kinds).

Sweep cells are checked against plain txt2img generations of the same settings (pixels equal), and the
UNet calls the observer records against what the plan says (cells that differ only in SDFix's decode
share one sampling).  The browser part needs Playwright and a system Chromium, as test_browser.py.
"""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .conftest import AUTH, encode_png, open_diagnose_section, screens_folder

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 2,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler"}
OFF = {"enabled": True, "precision_guard": False, "guard_encode": False}


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def _payload(webui):
    """PAYLOAD plus the fields this host's API needs."""
    return {**{k: v for k, v in webui.body().items() if k not in ("send_images", "save_images")}, **PAYLOAD}


def _diagnose(webui, body):
    webui.ok("POST", "/sdfix-observer/reset")
    answer = webui.ok("POST", "/sdfix/v1/diagnose", body)
    return answer, webui.ok("GET", "/sdfix-observer/records")


def test_precision_sweep_samples_once_and_each_cell_is_a_plain_generation(webui):
    flags_before = webui.flags()
    answer, records = _diagnose(webui, {"kind": "sweep", "payload": _payload(webui), "axis": "precision"})
    cells = {c["name"]: c for c in answer["cells"]}
    assert answer["complete"] and list(cells) == ["precision-off", "precision-on"]
    assert answer["timings"]["samplings"] == 1 and answer["reference"] == "precision-on"
    plain_off = webui.txt2img([OFF], **PAYLOAD)
    plain_on = webui.txt2img([{"enabled": True}], **PAYLOAD)
    assert len(records["unet"]) == len(plain_off.records["unet"]) > 0  # one sampling for both cells
    assert pixels(cells["precision-off"]["image"]) == plain_off.pixels()
    assert pixels(cells["precision-on"]["image"]) == plain_on.pixels()
    assert cells["precision-on"]["metrics"]["psnr"] == "inf"
    assert all(k in cells["precision-off"]["metrics"] for k in ("psnr", "ssim", "high_frequency_energy",
                                                                "laplacian_variance"))
    assert answer["grid"] and answer["chart"] and answer["nan_watch"]["finite"] is True
    for finding in answer["findings"]:
        assert finding["likelihood"] in ("likely", "possible") and finding["text"]
    assert webui.flags() == flags_before


def test_cfg_sweep_samples_each_value(webui):
    answer, records = _diagnose(webui, {"kind": "sweep", "payload": _payload(webui), "axis": "cfg_scale",
                                        "values": [3, 7], "reference": 7})
    assert [c["name"] for c in answer["cells"]] == ["cfg-3", "cfg-7"] and answer["timings"]["samplings"] == 2
    for cell, cfg in zip(answer["cells"], (3, 7)):
        plain = webui.txt2img(**dict(PAYLOAD, cfg_scale=cfg))
        assert pixels(cell["image"]) == plain.pixels()
    assert len(records["unet"]) == 2 * len(plain.records["unet"])


def test_step_strip_decodes_the_chosen_steps(webui):
    answer, _ = _diagnose(webui, {"kind": "steps", "payload": _payload(webui), "at": [1, 2]})
    names = [c["name"] for c in answer["cells"]]
    assert names == ["step-1", "step-2", "final"] and answer["complete"] and answer["strip"]
    rows = [c["metrics"] for c in answer["cells"][:2]]
    assert [r["step"] for r in rows] == [1, 2] and all("high_frequency_energy" in r for r in rows)
    assert pixels(answer["cells"][-1]["image"]) == webui.txt2img(**PAYLOAD).pixels()


def test_vae_roundtrip_of_an_image_in_each_precision(webui):
    flags_before = webui.flags()
    image = webui.txt2img(**dict(PAYLOAD, width=128, height=128)).image()
    answer, records = _diagnose(webui, {"kind": "vae_roundtrip", "image": encode_png(image)})
    names = [c["name"] for c in answer["cells"]]
    assert names[:3] == ["webui", "precision_guard", "fp32"] and answer["complete"]
    assert answer["original"] and not records["unet"]  # no sampling: the VAE alone
    rows = {c["name"]: c["metrics"] for c in answer["cells"]}
    assert rows["fp32"]["psnr_vs_fp32"] == "inf" and isinstance(rows["webui"]["psnr"], float)
    assert all(c["heatmaps"]["original"] for c in answer["cells"])
    assert webui.flags() == flags_before
    assert all(s["original"] for s in webui.ok("GET", "/sdfix-observer/functions").values())


@pytest.mark.parametrize("body,field", [
    ({"kind": "x"}, "kind"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "seed"}, "axis"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "cfg_scale", "values": [1, 99]}, "values[1]"),
    ({"kind": "sweep", "payload": PAYLOAD, "axis": "steps", "values": list(range(1, 40))}, "values"),
    ({"kind": "sweep", "payload": dict(PAYLOAD, steps=500), "axis": "precision"}, "payload.steps"),
    ({"kind": "steps", "payload": PAYLOAD, "at": [1, 9]}, "at[1]"),
    ({"kind": "vae_roundtrip", "image": "not base64"}, "image"),
    ({"kind": "vae_roundtrip", "dtypes": ["fp8"]}, "dtypes[0]"),
    ({"kind": "steps", "payload": PAYLOAD, "heatmap_gain": 1000}, "heatmap_gain"),
])
def test_bad_bodies_get_422_naming_the_field(webui, body, field):
    status, answer = webui.call("POST", "/sdfix/v1/diagnose", body)
    assert status == 422, answer
    assert field in str(answer["detail"]) and "Traceback" not in str(answer)


def test_the_route_sits_behind_the_api_auth(webui):
    status, _ = webui.call("POST", "/sdfix/v1/diagnose", {"kind": "x"}, auth=False)
    assert status == (401 if AUTH else 422)


def test_diagnose_section_runs_a_sweep_in_the_browser(page, tmp_path, webui):

    if AUTH:
        pytest.skip("the UI itself is not behind --api-auth; run this against a WebUI without it")
    open_diagnose_section(page, webui, "diagnose browser portrait", 778)
    page.locator("#sdfix_dg_kinds button").filter(has_text="Sweep").first.click()
    page.locator("#sdfix_dg_values textarea, #sdfix_dg_values input").first.fill("3, 7")
    page.locator("#sdfix_dg_run_sweep").click()
    page.wait_for_function("() => (document.querySelector('#sdfix_dg_metrics') || {}).innerText?.includes('CFG 7')",
                           timeout=600_000)
    assert "Findings" in page.locator("#sdfix_dg_findings").first.inner_text()  # gradio 3 repeats a Markdown's id inside
    assert page.locator("#sdfix_dg_gallery img").count() >= 2
    shot = screens_folder(tmp_path) / f"sdfix-diagnose-tab-{webui.mode}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
