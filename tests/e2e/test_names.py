"""The name fields of /sdfix/v1/ab and /sdfix/v1/diagnose bodies in a real WebUI: a misspelled sampler,
schedule type, upscaler, checkpoint or style is a 422 naming the field before anything runs (the host
itself would answer 500 or silently run something else) -- and every name the host lists is accepted.

Acceptance is checked without generating: each body also carries a bad ``heatmap_gain``, so the 422
must name that field alone (the validators report every problem of a body at once).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

PAYLOAD = {"prompt": "a portrait", "negative_prompt": "blurry", "seed": 4321, "steps": 2, "width": 64, "height": 64,
           "cfg_scale": 5, "sampler_name": "Euler"}
HIRES = {"enable_hr": True, "hr_upscaler": "Latent", "hr_scale": 2, "denoising_strength": 0.6, "hr_second_pass_steps": 1}
NOWHERE = "sdfix-e2e-no-such-checkpoint"
ROUTES = ("/sdfix/v1/ab", "/sdfix/v1/diagnose")

BAD = [
    ("hr_sampler_name", "Eular a", "payload.hr_sampler_name"),
    ("hr_checkpoint_name", NOWHERE, "payload.hr_checkpoint_name"),
    ("refiner_checkpoint", NOWHERE, "payload.refiner_checkpoint"),
    ("scheduler", "Karas", "payload.scheduler"),
    ("hr_scheduler", "Karas", "payload.hr_scheduler"),
    ("hr_upscaler", "Latent (nearets)", "payload.hr_upscaler"),
    ("sampler_name", "Eular a", "payload.sampler_name"),
    ("styles", ["sdfix-e2e-no-such-style"], "payload.styles[0]"),
    ("override_settings", {"sd_model_checkpoint": NOWHERE}, "payload.override_settings.sd_model_checkpoint"),
]


def _payload(webui, **fields: Any) -> Dict[str, Any]:
    """PAYLOAD with Hires, plus the fields this host's API needs."""
    base = {k: v for k, v in webui.body().items() if k not in ("send_images", "save_images")}
    return {**base, **PAYLOAD, **HIRES, **fields}


def _body(route: str, payload: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    if route.endswith("/ab"):
        return {"payload": payload, "variants": "ab", **extra}
    return {"kind": "steps", "payload": payload, **extra}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field,value,where", BAD, ids=[c[0] + "-" + str(i) for i, c in enumerate(BAD)])
def test_a_misspelled_name_is_a_422_naming_the_field(webui, route, field, value, where):
    webui.ok("POST", "/sdfix-observer/reset")
    status, answer = webui.call("POST", route, _body(route, _payload(webui, **{field: value})))
    assert status == 422, (status, str(answer)[:500])
    assert f"{where}:" in answer["detail"] and "unknown" in answer["detail"] and "Traceback" not in str(answer)
    assert webui.ok("GET", "/sdfix-observer/records")["unet"] == []  # refused before anything ran


def test_a_sweep_over_two_spellings_of_one_schedule_is_a_422(webui):
    body = {"kind": "sweep", "payload": _payload(webui, enable_hr=False), "axis": "scheduler", "values": ["karras", "Karras"]}
    status, answer = webui.call("POST", "/sdfix/v1/diagnose", body)
    assert status == 422 and "values[1]: duplicate value 'Karras'" in answer["detail"], answer
    status, answer = webui.call("POST", "/sdfix/v1/diagnose", dict(body, values=["Karas", "Karras"]))
    assert status == 422 and "values[0]: unknown schedule type 'Karas'" in answer["detail"], answer


def _listed(webui) -> List[Tuple[str, Any]]:
    """(field, value) for every name the host's own API lists: samplers, schedule types (name and label),
    upscalers and latent modes, checkpoints (title and model name), styles, Forge's modules."""
    cases: List[Tuple[str, Any]] = []
    for sampler in webui.ok("GET", "/sdapi/v1/samplers"):
        cases += [("sampler_name", sampler["name"]), ("hr_sampler_name", sampler["name"])]
    for schedule in webui.ok("GET", "/sdapi/v1/schedulers"):
        cases += [(field, schedule[key]) for field in ("scheduler", "hr_scheduler") for key in ("name", "label")]
    modes = [m["name"] for m in webui.ok("GET", "/sdapi/v1/latent-upscale-modes")]
    cases += [("hr_upscaler", name) for name in modes + [u["name"] for u in webui.ok("GET", "/sdapi/v1/upscalers")]]
    for model in webui.ok("GET", "/sdapi/v1/sd-models"):
        for field in ("hr_checkpoint_name", "refiner_checkpoint"):
            cases += [(field, model["title"]), (field, model["model_name"])]
        cases.append(("override_settings", {"sd_model_checkpoint": model["title"]}))
    cases += [("styles", [style["name"]]) for style in webui.ok("GET", "/sdapi/v1/prompt-styles")]
    if webui.host == "forge":
        cases += [("hr_additional_modules", [m["model_name"]]) for m in webui.ok("GET", "/sdapi/v1/sd-modules")]
    else:
        cases += [("override_settings", {"sd_vae": vae["model_name"]}) for vae in webui.ok("GET", "/sdapi/v1/sd-vae")]
    unset = [("hr_sampler_name", "Use same sampler"), ("hr_scheduler", "Use same scheduler"), ("scheduler", "Automatic"),
             ("hr_checkpoint_name", "Use same checkpoint"), ("refiner_checkpoint", "None"),
             ("sampler_name", "Euler Karras"), ("override_settings", {"sd_vae": "Automatic"})]
    return cases + unset


@pytest.mark.parametrize("route", ROUTES)
def test_every_name_the_host_lists_is_accepted(webui, route):
    refused = []
    for field, value in _listed(webui):
        status, answer = webui.call("POST", route, _body(route, _payload(webui, **{field: value}), heatmap_gain=0))
        detail = str(answer.get("detail") if isinstance(answer, dict) else answer)
        if status != 422 or "payload." in detail or "heatmap_gain" not in detail:
            refused.append((field, value, status, detail[:300]))
    assert refused == []


def test_a_hires_comparison_with_the_hosts_other_spellings_runs(webui):
    """Schedule names for labels, "as the first pass" markers (the host's own API would assert on
    "Use same sampler"), no refiner: the comparison runs and the schedule is the one asked for."""
    payload = _payload(webui, scheduler="karras", hr_scheduler="Use same scheduler", hr_sampler_name="Use same sampler",
                       hr_checkpoint_name="Use same checkpoint", refiner_checkpoint="None")
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": payload, "variants": "ab"})
    assert result["complete"] and all("Schedule type: Karras" in text for text in result["infotexts"].values())
