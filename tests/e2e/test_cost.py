"""POST /sdfix/v1/diagnose {"kind": "optimizations"} in a real WebUI: the cost of the user's speed options.

The user's options are set through the WebUI's own ``/sdapi/v1/options`` (as Settings does) and restored
after each test.  Each cell must be what a plain txt2img call with those ``override_settings`` gives (pixels
equal); TAESD shares the reference's sampling (the observer counts the U-Net's forwards); every option is
back to the user's value after the run, after an Interrupt in the middle of it too.  TAESD needs the
WebUI's decoder file (``models/VAE-taesd``; ``tests/e2e/make_taesd.py`` writes a random-weight one): the
test skips it with a note when the file is missing.
"""
from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

PAYLOAD = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 4,
           "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler"}


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def _payload(webui, **fields):
    return {**{k: v for k, v in webui.body().items() if k not in ("send_images", "save_images")}, **PAYLOAD, **fields}


@pytest.fixture
def user_options(webui):
    """Set options as the user would in Settings; every one is set back after the test."""
    before = webui.ok("GET", "/sdapi/v1/options")
    touched = []

    def set_options(**values):
        touched.extend(values)
        webui.ok("POST", "/sdapi/v1/options", values)
        now = webui.ok("GET", "/sdapi/v1/options")
        assert {k: now[k] for k in values} == values
        return values

    yield set_options
    if touched:
        webui.ok("POST", "/sdapi/v1/options", {k: before[k] for k in touched if k in before})


def _taesd(webui, options):
    """The decode method option, where this WebUI has its TAESD decoder file (else a note and nothing)."""
    listed = {o["key"]: o for o in options}
    item = listed.get("sd_vae_decode_method")
    if item is None or item["status"] == "not in this WebUI":
        return None
    if "decoder" in item.get("note", "") and "is not there" in item["note"]:
        print(f"TAESD not measured: {item['note']} (tests/e2e/make_taesd.py writes a random-weight one)")
        return None
    return item


def _listing(webui):
    """The options the route lists, from a request that names nothing on (a reference-only plan is cheap)."""
    status, answer = webui.call("POST", "/sdfix/v1/diagnose", {"kind": "optimizations", "payload": _payload(webui, steps=1),
                                                              "options": ["token_merging_ratio"]})
    assert status == 200, answer
    return answer["options"]


def test_the_cost_of_each_option_and_all_on_then_the_users_values_back(webui, user_options):
    taesd = _taesd(webui, _listing(webui))
    mine = {"token_merging_ratio": 0.5, "s_min_uncond": 2.0}
    if taesd is not None:
        mine["sd_vae_decode_method"] = "TAESD"
    user_options(**mine)
    webui.ok("POST", "/sdfix-observer/reset")
    answer = webui.ok("POST", "/sdfix/v1/diagnose", {"kind": "optimizations", "payload": _payload(webui)})
    records = webui.ok("GET", "/sdfix-observer/records")
    after = webui.ok("GET", "/sdapi/v1/options")
    assert {k: after[k] for k in mine} == mine  # every option back to the user's value
    names = [c["name"] for c in answer["cells"]]
    expected = ["reference", "token-merging-ratio-0-5", "s-min-uncond-2"] + \
        (["sd-vae-decode-method-taesd"] if taesd else []) + ["all-on"]
    assert names == expected and answer["complete"], answer["notes"]
    rows = {c["name"]: c["metrics"] for c in answer["cells"]}
    for name in names[1:]:
        assert rows[name]["time_delta_pct"] is not None and rows[name]["verdict"], rows[name]
    assert rows["token-merging-ratio-0-5"]["psnr"] != float("inf")  # token merging changes the image
    assert answer["chart"] and answer["grid"] and answer["memory"]["measures"].startswith("process peak RSS")
    listed = {o["key"]: o for o in answer["options"]}
    assert listed["token_merging_ratio"]["status"] == "measured" and listed["token_merging_ratio"]["value"] == 0.5
    runs = [r["kind"] for r in answer["timings"]["runs"]]
    assert runs[0] == "warm-up (not timed)"
    samplings = 4  # reference, token merging, NGMS, all on; TAESD shares the reference's sampling
    assert runs.count("full generation") == samplings
    if taesd:
        assert rows["sd-vae-decode-method-taesd"]["shared_sampling_with"] == "reference"
        assert sum(k.startswith("decode only") for k in runs) == 2  # the reference's decode, then TAESD's
    if webui.host == "a1111":  # one U-Net forward per step (cond and uncond batched): the plan's samplings
        assert len(records["unet"]) == 2 + samplings * PAYLOAD["steps"]
    # each cell is the image a plain txt2img call with those options gives
    overrides = {"reference": {"token_merging_ratio": 0.0, "s_min_uncond": 0.0},
                 "token-merging-ratio-0-5": {"token_merging_ratio": 0.5, "s_min_uncond": 0.0}}
    if taesd:
        for v in overrides.values():
            v["sd_vae_decode_method"] = "Full"
        overrides["sd-vae-decode-method-taesd"] = {"token_merging_ratio": 0.0, "s_min_uncond": 0.0,
                                                   "sd_vae_decode_method": "TAESD"}
    cells = {c["name"]: c for c in answer["cells"]}
    for name, override in overrides.items():
        plain = webui.txt2img(**{k: v for k, v in PAYLOAD.items() if k != "negative_prompt"},
                              negative_prompt=PAYLOAD["negative_prompt"], override_settings=override)
        assert pixels(cells[name]["image"]) == plain.pixels(), name
    after = webui.ok("GET", "/sdapi/v1/options")
    assert {k: after[k] for k in mine} == mine


def test_an_interrupt_mid_run_keeps_what_was_rendered_and_restores_every_option(webui, user_options):
    mine = user_options(token_merging_ratio=0.5, s_min_uncond=2.0)
    result = {}

    def post():
        result["answer"] = webui.call("POST", "/sdfix/v1/diagnose",
                                      {"kind": "optimizations", "payload": _payload(webui, steps=8), "repeats": 2})

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        progress = webui.ok("GET", "/sdapi/v1/progress?skip_current_image=true")["state"]
        if progress.get("job") == "sdfix_diagnose" and progress.get("job_no", 0) >= 3:
            break
        time.sleep(0.2)
    webui.ok("POST", "/sdapi/v1/interrupt")
    thread.join(600)
    status, answer = result["answer"]
    assert status == 200, answer
    assert not answer["complete"] and any("interrupted" in n for n in answer["notes"])
    after = webui.ok("GET", "/sdapi/v1/options")
    assert {k: after[k] for k in mine} == mine
    # and the next generation is the user's own: token merging and NGMS on, as before the diagnosis
    webui.ok("POST", "/sdfix-observer/reset")
    again = webui.txt2img(**{k: v for k, v in PAYLOAD.items()})
    assert again.payload["images"]
    params = again.params()
    assert params.get("Token merging ratio") == "0.5" and params.get("NGMS") == "2.0", params


def test_refusals_name_the_field(webui):
    for body, field in (({"options": ["token_merging"]}, "options[0]"),
                        ({"options": {"token_merging_ratio": 2}}, "options.token_merging_ratio"),
                        ({"repeats": 9}, "repeats"), ({"options": [f"x{i}" for i in range(13)]}, "options")):
        status, answer = webui.call("POST", "/sdfix/v1/diagnose", {"kind": "optimizations", "payload": _payload(webui), **body})
        assert status == 422 and field in str(answer), (body, status, answer)
    if webui.host == "a1111":
        status, answer = webui.call("POST", "/sdfix/v1/diagnose", {"kind": "optimizations", "payload": _payload(webui),
                                                                   "options": {"cross_attention_optimization": "flash"}})
        assert status == 422 and "options.cross_attention_optimization" in str(answer)


def test_a_host_option_that_is_missing_is_listed_not_refused(webui):
    status, answer = webui.call("POST", "/sdfix/v1/diagnose", {"kind": "optimizations", "payload": _payload(webui, steps=1),
                                                              "options": ["hypertile_enable_unet", "medvram"]})
    assert status == 200, answer
    listed = {o["key"]: o for o in answer["options"]}
    if webui.host == "a1111":
        assert listed["medvram"]["status"] == "only at start"
        assert any("medvram: reported, not measured" in n for n in answer["notes"])
    else:
        assert "hypertile_enable_unet" not in listed and any("hypertile_enable_unet: not in this WebUI" in n
                                                             for n in answer["notes"])
    assert [c["name"] for c in answer["cells"]] == ["reference"]


def test_cost_of_speed_section_in_the_browser(page, tmp_path, webui, user_options):
    from .conftest import AUTH, open_diagnose_section, screens_folder

    if AUTH:
        pytest.skip("the UI itself is not behind --api-auth; run this against a WebUI without it")
    user_options(token_merging_ratio=0.5)
    open_diagnose_section(page, webui, "cost browser portrait", 779, steps=2)
    page.locator("#sdfix_dg_kinds button").filter(has_text="Cost of speed").first.click()
    page.locator("#sdfix_dg_list_options").click()
    page.wait_for_function("() => (document.querySelector('#sdfix_dg_speed_options') || {}).innerText?.includes('token_merging_ratio')",
                           timeout=60_000)
    page.locator("#sdfix_dg_run_optimizations").click()
    page.wait_for_function("() => (document.querySelector('#sdfix_dg_metrics') || {}).innerText?.includes('token merging ratio 0.5')",
                           timeout=600_000)
    assert "largest detail loss" in page.locator("#sdfix_dg_findings").first.inner_text() or \
        "Findings" in page.locator("#sdfix_dg_findings").first.inner_text()
    assert page.locator("#sdfix_dg_gallery img").count() >= 2
    assert webui.ok("GET", "/sdapi/v1/options")["token_merging_ratio"] == 0.5
    shot = screens_folder(tmp_path) / f"sdfix-cost-of-speed-{webui.mode}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
