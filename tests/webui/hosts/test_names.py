"""Every name field of an A/B or diagnosis payload is checked against the host's own registries before
anything runs (lib_sdfix.names, lib_sdfix.webui.hosts.names): a 422 naming the field, where the host would
fail inside the run (HTTP 500) or silently run something else -- and every spelling the host
accepts passes.  The fakes model each host's registries, aliases and case rules (fakes/samplers.py,
fakes/registries.py); the first test shows they fail or substitute as the hosts do.
"""
from __future__ import annotations

import copy

import pytest

from lib_sdfix.settings import SettingsError

from ..support import plain

pytest.importorskip("pydantic")
pytest.importorskip("fastapi")

PAYLOAD = {"prompt": "a portrait", "seed": 4321, "steps": 2, "width": 64, "height": 64, "cfg_scale": 5,
           "sampler_name": "DPM++ 2M"}
HIRES = dict(PAYLOAD, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=1)
NOWHERE = "sdfix-no-such-checkpoint"

#: (field, misspelled value, where the 422 points): each one the host fails on or replaces silently
BAD = [
    ("hr_sampler_name", "Eular a", "payload.hr_sampler_name"),
    ("hr_sampler_name", "DPM++ 2M Karras", "payload.hr_sampler_name"),  # create_sampler takes no suffix
    ("hr_checkpoint_name", NOWHERE, "payload.hr_checkpoint_name"),
    ("refiner_checkpoint", NOWHERE, "payload.refiner_checkpoint"),
    ("scheduler", "Karas", "payload.scheduler"),
    ("scheduler", "SGMUniform", "payload.scheduler"),  # an alias only counts as a sampler-name suffix
    ("hr_scheduler", "Karas", "payload.hr_scheduler"),
    ("hr_upscaler", "Fake 5x", "payload.hr_upscaler"),
    ("sampler_name", "Eular a", "payload.sampler_name"),
    ("sampler_name", "k_euler_a", "payload.sampler_name"),  # an alias: the API would run its first sampler
    ("sampler_index", "Eulr", "payload.sampler_index"),
    ("styles", ["Cinematc"], "payload.styles[0]"),
    ("override_settings", {"sd_model_checkpoint": NOWHERE}, "payload.override_settings.sd_model_checkpoint"),
]


def _client(webui):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_sdfix.webui.routes import on_app_started

    app = FastAPI()
    on_app_started(None, app)
    return TestClient(app)


def _bodies(payload):
    return {"/sdfix/v1/ab": {"payload": payload, "variants": "ab"},
            "/sdfix/v1/diagnose": {"kind": "steps", "payload": payload}}


#: Fields the host looks up inside the run and fails on (an assert, "Could not find ..."): HTTP 500.
FAILS_IN_THE_RUN = ("hr_sampler_name", "hr_checkpoint_name", "refiner_checkpoint", "hr_upscaler")
#: Fields the host silently replaces: the run equals the one with what stood in.
STOOD_IN = {"scheduler": HIRES, "styles": HIRES, "override_settings": HIRES, "sampler_name": dict(HIRES, sampler_name="Euler")}


@pytest.mark.parametrize("field,value,where", [c for c in BAD if c[0] != "sampler_index"])
def test_without_the_check_the_host_fails_in_the_run_or_runs_something_else(webui, field, value, where):
    """A plain txt2img API call of the fakes with these names, as the hosts answer it."""
    payload = copy.deepcopy(dict(HIRES, **{field: value}))  # the host pops an unknown checkpoint override
    if field in FAILS_IN_THE_RUN:
        with pytest.raises(Exception, match="bad sampler name|Could not find checkpoint|could not find upscaler"):
            plain(webui, payload, {"enabled": False})
        return
    result = plain(webui, payload, {"enabled": False})
    assert str(value) not in result.infotext
    if field in STOOD_IN:
        assert result.image.tobytes() == plain(webui, STOOD_IN[field], {"enabled": False}).image.tobytes()


@pytest.mark.parametrize("field,value,where", BAD)
def test_a_misspelled_name_is_a_422_naming_the_field(webui, field, value, where):
    client = _client(webui)
    webui.shared.sd_model.unet_calls.clear()
    for route, body in _bodies(dict(HIRES, **{field: value})).items():
        answer = client.post(route, json=body)
        assert answer.status_code == 422, (route, answer.text)
        assert f"{where}:" in answer.json()["detail"], (route, answer.json()["detail"])
        assert "unknown" in answer.json()["detail"]
    assert webui.shared.sd_model.unet_calls == []  # refused before anything ran


def test_the_422_suggests_the_hosts_spelling(webui):
    from lib_sdfix.webui.ab import request as ab_request

    cases = {"hr_sampler_name": ("Eular a", "Euler a"), "scheduler": ("karras ", "Karras"),
             "hr_scheduler": ("SGMUniform", "SGM Uniform"), "sampler_name": ("euler a", "Euler a"),
             "hr_checkpoint_name": ("v1-5-pruned-emaonyl", "v1-5-pruned-emaonly.safetensors [6ce0161689]")}
    for field, (bad, suggested) in cases.items():
        with pytest.raises(SettingsError) as err:
            ab_request.request_from_body({"payload": dict(HIRES, **{field: bad})})
        assert f"did you mean {suggested}" in err.value.problems[f"payload.{field}"], err.value.problems


def test_hires_names_are_not_looked_up_without_hires(webui):
    from lib_sdfix.webui.ab import request as ab_request

    payload = dict(PAYLOAD, enable_hr=False, hr_sampler_name="Eular a", hr_scheduler="Karas", hr_upscaler="Fake 5x",
                   hr_checkpoint_name=NOWHERE)
    assert ab_request.request_from_body({"payload": payload}).payload["hr_sampler_name"] == "Eular a"
    with pytest.raises(SettingsError, match="payload.refiner_checkpoint"):  # looked up in every generation
        ab_request.request_from_body({"payload": dict(payload, refiner_checkpoint=NOWHERE)})


def test_every_spelling_the_host_accepts_passes_and_runs(webui):
    """Names, labels, aliases where the host reads them, partial checkpoint titles, "unset" values."""
    from lib_sdfix.webui.ab import request as ab_request

    client = _client(webui)
    accepted = dict(HIRES, sampler_name="Euler karras", scheduler="karras", hr_sampler_name="Euler a",
                    hr_scheduler="sgm_uniform", hr_checkpoint_name="v1-5-pruned-emaonly", refiner_checkpoint="None",
                    styles=["Cinematic"], override_settings={"sd_model_checkpoint": "realistic-v2"})
    request = ab_request.request_from_body({"payload": accepted})
    assert request.payload["scheduler"] == "Karras" and request.payload["hr_scheduler"] == "SGM Uniform"
    assert request.payload["sampler_name"] == "Euler karras"  # the host's API splits it
    answer = client.post("/sdfix/v1/ab", json={"payload": accepted, "variants": "ab"})
    assert answer.status_code == 200 and answer.json()["complete"], answer.text
    same = dict(HIRES, hr_sampler_name="Use same sampler", hr_scheduler="Use same scheduler",
                hr_checkpoint_name="Use same checkpoint", refiner_checkpoint="", scheduler="")
    request = ab_request.request_from_body({"payload": same})
    assert request.payload["hr_sampler_name"] is None and request.payload["hr_scheduler"] is None
    answer = client.post("/sdfix/v1/ab", json={"payload": same, "variants": "ab"})  # the API would assert on it
    assert answer.status_code == 200 and answer.json()["complete"], answer.text
    for title in webui.sd_models.checkpoints_list:
        ab_request.request_from_body({"payload": dict(HIRES, hr_checkpoint_name=title, refiner_checkpoint=title)})


def test_each_hosts_own_rules(webui):
    """reForge: schedule suffixes and its own samplers in any case; Forge: Hires modules by file name,
    sd_vae not read; AUTOMATIC1111 and reForge: sd_vae must name a VAE file."""
    from lib_sdfix.webui.ab import request as ab_request

    def refused(**fields):
        try:
            ab_request.request_from_body({"payload": dict(HIRES, **fields)})
        except SettingsError as err:
            return list(err.problems)
        return []

    reforge, forge = webui.host == "reforge", webui.host == "forge"
    assert refused(sampler_name="Euler KARRAS") == ([] if reforge else ["payload.sampler_name"])
    if reforge:
        request = ab_request.request_from_body({"payload": dict(HIRES, sampler_name="euler cfg++")})
        assert request.payload["sampler_name"] == "Euler CFG++"
        assert refused(hr_sampler_name="euler cfg++") == ["payload.hr_sampler_name"]  # create_sampler: exact
    vae = {"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}
    assert refused(override_settings=vae) == [] and refused(override_settings={"sd_vae": "None"}) == []
    assert refused(override_settings={"sd_vae": "vae-ft-mse.safetensors"}) == (
        [] if forge else ["payload.override_settings.sd_vae"])
    if forge:
        assert refused(hr_additional_modules=["ae.safetensors", "/elsewhere/clip_l.safetensors"]) == []
        assert refused(hr_additional_modules=["ae.safetensors", "ae.sft"]) == ["payload.hr_additional_modules[1]"]
        assert compare_null_modules(webui)
    else:
        assert refused(hr_additional_modules=["ae.safetensors"]) == ["payload.hr_additional_modules"]  # no such field


def compare_null_modules(webui):
    """Forge: an explicit null Hires module list is the API's default (it would be a TypeError in the run)."""
    answer = _client(webui).post("/sdfix/v1/ab", json={"payload": dict(HIRES, hr_additional_modules=None)})
    return answer.status_code == 200 and answer.json()["complete"]


def test_a_sweep_over_two_spellings_of_one_schedule_is_refused(webui):
    client = _client(webui)
    body = {"kind": "sweep", "payload": PAYLOAD, "axis": "scheduler", "values": ["karras", "Karras"]}
    answer = client.post("/sdfix/v1/diagnose", json=body)
    assert answer.status_code == 422 and "values[1]: duplicate value 'Karras'" in answer.json()["detail"]
    body = dict(body, values=["Automatic", "automatic", "Uniform"])
    assert "values[1]" in client.post("/sdfix/v1/diagnose", json=body).json()["detail"]
    body = dict(body, values=["Karas", "Karras"])
    answer = client.post("/sdfix/v1/diagnose", json=body)
    assert answer.status_code == 422 and "values[0]: unknown schedule type 'Karas'" in answer.json()["detail"]
    from lib_sdfix.webui.diagnose import runner

    request = runner.request_from_body(dict(body, values=["karras", "uniform"], reference="uniform"))
    assert request.values == ("Karras", "Uniform") and request.reference == "Uniform"
    assert [c.name for c in request.cells] == [c.name for c in runner.request_from_body(
        dict(body, values=["Karras", "Uniform"])).cells]
    with pytest.raises(SettingsError, match=r"values\[1\]"):
        runner.request_from_body(dict(body, axis="sampler_name", values=["Euler", "k_euler"]))
