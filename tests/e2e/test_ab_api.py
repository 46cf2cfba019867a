"""The A/B routes (/sdfix/v1/ab, /sdfix/v1/status) in a real WebUI, checked against plain generations."""
from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from lib_sdfix.settings import FIXES

from .conftest import AUTH

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 2,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler"}


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def test_status_reports_version_settings_and_environment(webui):
    status = webui.ok("GET", "/sdfix/v1/status")
    assert status["version"] and status["settings"]["precision_guard"] is True
    env = status["environment"]
    assert env["torch"] and env["flag_api"] in ("legacy", "fp32_precision", "both")
    assert env["host"] == webui.host and env["vae_weights"]["mode"] in ("fp32", "upcast", "exact")
    if webui.spec.precision:
        assert env["precision"] == webui.spec.precision
    assert env["flags"]["cudnn.allow_tf32"] is True  # what the WebUI set on an Ampere+ GPU
    assert env["patched_now"] == []


def _payload(webui):
    """PAYLOAD plus the fields this host's API needs."""
    return {**{k: v for k, v in webui.body().items() if k not in ("send_images", "save_images")}, **PAYLOAD}


def test_ab_shares_the_sampling_and_matches_plain_generations(webui):
    flags_before = webui.ok("GET", "/sdfix-observer/flags")
    webui.ok("POST", "/sdfix-observer/reset")
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": _payload(webui), "variants": "ab"})
    assert result["complete"] and result["runs"] == 1 and [v["name"] for v in result["variants"]] == ["A", "B"]
    records = webui.ok("GET", "/sdfix-observer/records")
    decodes = [r for r in records["vae"] if r["part"] == "decoder"]
    assert [r["flags"]["cudnn.allow_tf32"] for r in decodes] == [True, False]  # A as the WebUI, B guarded

    plain_off = webui.txt2img([{"enabled": False}], **PAYLOAD)
    assert len(records["unet"]) == len(plain_off.records["unet"]) > 0  # one sampling for both variants
    plain_on = webui.txt2img([{"enabled": True}], **PAYLOAD)
    assert pixels(result["images"]["A"]) == plain_off.pixels()
    assert pixels(result["images"]["B"]) == plain_on.pixels()
    assert "SDFix: on=1" in result["infotexts"]["B"] and "SDFix" not in result["infotexts"]["A"]
    metrics = result["metrics"]["variants"]
    assert {m["name"] for m in metrics} == {"A", "B"} and metrics[0]["psnr"] == "inf"
    assert all(k in metrics[1] for k in ("psnr", "ssim", "laplacian_variance", "high_frequency_energy", "time_s"))
    assert base64.b64decode(result["heatmap"])[:8] == b"\x89PNG\r\n\x1a\n"
    if webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_weights_dtype"] != "torch.float32":  # they differ
        assert pixels(result["images"]["A"]) != pixels(result["images"]["B"])
        assert any("changed" in note for note in result["notes"])
    assert webui.ok("GET", "/sdfix-observer/flags") == flags_before
    assert all(s["original"] for s in webui.ok("GET", "/sdfix-observer/functions").values())


def test_ablation_and_saving(webui):
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": _payload(webui), "variants": "ablation", "save": True})
    names = [v["name"] for v in result["variants"]]
    assert names == ["baseline", *(f.key for f in FIXES), "all"]
    assert result["runs"] == 2  # one sampling shared by all; the late refine (alone, and in "all") once after it
    assert any(note.startswith("hires_parity: no effect") for note in result["notes"])
    saved = result["saved"]
    assert "sdfix-ab" in saved["grid"]
    if os.path.exists(os.path.dirname(saved["grid"])):  # same machine as the WebUI
        assert os.path.isfile(saved["grid"]) and os.path.isfile(saved["metrics"])
        image = Image.open(saved["images"]["all"])
        assert "SDFix: on=1" in image.info["parameters"]


def test_hires_comparison_with_the_same_sampler_samples_once(webui):
    """SDFix off vs on with the default "use same sampler" and a latent upscaler differ only in the
    decode: one sampling (first pass and Hires pass), the other variant decoded from it."""
    payload = dict(_payload(webui), enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6,
                   hr_second_pass_steps=1)
    webui.ok("POST", "/sdfix-observer/reset")
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": payload, "variants": "ab"})
    unet = webui.ok("GET", "/sdfix-observer/records")["unet"]
    assert result["complete"] and result["runs"] == 1
    assert [r["kind"] for r in result["plan"]] == ["full sampling", "decode only (shared sampling)"]
    plain_off = webui.txt2img([{"enabled": False}], **payload)
    plain_on = webui.txt2img([{"enabled": True}], **payload)
    assert len(unet) == len(plain_off.records["unet"]) > 0
    assert pixels(result["images"]["A"]) == plain_off.pixels()
    assert pixels(result["images"]["B"]) == plain_on.pixels()


def test_hires_comparison_shares_the_first_pass(webui):
    payload = dict(_payload(webui), enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6,
                   hr_second_pass_steps=1, hr_sampler_name="DPM++ 2M")
    webui.ok("POST", "/sdfix-observer/reset")
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": payload, "variants": "ab"})
    unet = webui.ok("GET", "/sdfix-observer/records")["unet"]
    assert result["complete"] and result["runs"] == 2  # one first pass shared, one Hires pass per variant
    assert [r["kind"] for r in result["plan"]] == ["full sampling", "Hires pass (shared first pass)"]
    assert "Hires sampler DPM++ 2M -> Euler" in result["infotexts"]["B"]
    assert "Hires sampler: DPM++ 2M" in result["infotexts"]["A"]

    plain_off = webui.txt2img([{"enabled": False}], **payload)
    plain_on = webui.txt2img([{"enabled": True}], **payload)
    assert pixels(result["images"]["A"]) == plain_off.pixels()
    assert pixels(result["images"]["B"]) == plain_on.pixels()

    def first_pass_calls(calls):
        return [c for c in calls if c["shape"][-1] == PAYLOAD["width"] // 8]

    assert len(first_pass_calls(unet)) == len(first_pass_calls(plain_off.records["unet"])) > 0  # sampled once
    assert len(unet) == len(plain_off.records["unet"]) + len(plain_on.records["unet"]) - len(first_pass_calls(unet))


@pytest.mark.parametrize("body,field", [
    ({"payload": PAYLOAD, "variants": "abc"}, "variants"),
    ({"payload": PAYLOAD, "heatmap_gain": 100}, "heatmap_gain"),
    ({"payload": PAYLOAD, "bogus": 1}, "bogus"),
    ({"payload": "prompt"}, "payload"),
    ({"payload": dict(PAYLOAD, alwayson_scripts={"sdfix": {"args": []}})}, "payload.alwayson_scripts.sdfix"),
    ({"payload": dict(PAYLOAD, steps="many")}, "payload.steps"),
    ({"payload": PAYLOAD, "variants": [{"name": "x", "settings": {"precision_guard": "yes"}}]},
     "variants[0].settings.precision_guard"),
])
def test_bad_bodies_get_422_naming_the_field(webui, body, field):
    status, answer = webui.call("POST", "/sdfix/v1/ab", body)
    assert status == 422, answer
    assert field in str(answer["detail"]) and "Traceback" not in str(answer)


def test_routes_require_the_webui_credentials_with_api_auth(webui):
    status, _ = webui.call("GET", "/sdfix/v1/status", auth=False)
    sdapi, _ = webui.call("GET", "/sdapi/v1/samplers", auth=False)
    if AUTH:
        assert status == 401 and sdapi == 401
        assert webui.call("GET", "/sdfix/v1/status")[0] == 200
        bad = AUTH.split(":")[0] + ":wrong"
        import urllib.request
        request = urllib.request.Request(webui.url + "/sdfix/v1/status", headers={
            "Authorization": "Basic " + base64.b64encode(bad.encode()).decode()})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 401
    else:
        assert status == 200 and sdapi == 200
