"""lib_sdfix.names: what each name field of a txt2img payload accepts, as the hosts' lookups accept it,
and the checks of the A/B and diagnosis bodies that use it (host-free: the registries are passed in)."""
from __future__ import annotations

import pytest

from lib_sdfix import ab, names
from lib_sdfix.diagnose import request as diagnose_request
from lib_sdfix.limits.txt2img import check_txt2img_payload
from lib_sdfix.settings import SDFixSettings, SettingsError

CHEAP = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}
HIRES = dict(CHEAP, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.5)
SCHEDULERS = [("automatic", "Automatic", []), ("karras", "Karras", []), ("sgm_uniform", "SGM Uniform", ["SGMUniform"])]
TITLES = ["v1-5-pruned-emaonly.safetensors [6ce0161689]", "sdxl/realistic-v2.ckpt"]
ALIASES = {"v1-5-pruned-emaonly", "v1-5-pruned-emaonly.safetensors", "6ce0161689", *TITLES}


def registry(**kw):
    """An AUTOMATIC1111-like host: its lookups (substring match of titles, exact aliases) as lambdas."""
    return names.payload_names(["Euler", "Euler a", "DPM++ 2M"], SCHEDULERS, ["Latent", "None", "R-ESRGAN 4x+"], TITLES,
                               find_checkpoint=lambda v: v in ALIASES or any(v in t for t in TITLES),
                               checkpoint_alias=lambda v: v in ALIASES, styles=["Cinematic"], vae_files=["a.vae.pt"],
                               **kw)


def refused(payload, **kw):
    with pytest.raises(SettingsError) as err:
        check_txt2img_payload(payload, choices=registry(**kw))
    return err.value.problems


def test_a_names_canonical_form_aliases_and_unset_values():
    schedule = registry()["scheduler"]
    assert [schedule.canonical(v) for v in ("karras", "Karras", "", "KARRAS", "SGMUniform", 5)] == [
        "Karras", "Karras", "", None, None, None]
    assert "sgm_uniform" in schedule and "Karas" not in schedule and list(schedule) == ["Automatic", "Karras", "SGM Uniform"]
    message = schedule.unknown("karas")
    assert message.startswith("unknown schedule type 'karas'; did you mean Karras?") and "known: Automatic" in message
    assert "did you mean SGM Uniform" in schedule.unknown("SGMUniform")
    long = names.Names("style", [f"s{i}" for i in range(40)])
    assert "(24 more)" in long.unknown("x") and len(long) == 40


def test_sampler_names_as_the_hosts_split_them():
    a1111 = names.sampler_resolver(["Euler", "DPM++ 2M"], [["Karras", "karras"], ["SGM Uniform", "sgm_uniform", "SGMUniform"]])
    assert [a1111(v) for v in ("DPM++ 2M Karras", "Euler SGMUniform", "Euler karras", "Euler KARRAS", "Eulr Karras",
                               "Euler", "euler Karras")] == ["DPM++ 2M Karras", "Euler SGMUniform", "Euler karras",
                                                             None, None, None, None]
    reforge = names.sampler_resolver(["Euler", "Euler CFG++"], [["Karras", "karras"]], any_case=True,
                                     any_case_samplers=["Euler CFG++"])
    assert [reforge(v) for v in ("Euler KARRAS", "euler cfg++", "euler Karras")] == ["Euler KARRAS", "Euler CFG++", None]


def test_every_name_field_is_checked_and_named():
    payload = dict(HIRES, sampler_name="Eular a", hr_sampler_name="Eular a", scheduler="Karas", hr_scheduler="Karas",
                   hr_upscaler="R-ESRGAN 4x", hr_checkpoint_name="nowhere", refiner_checkpoint="nowhere",
                   styles=["Cinematic", "Cinematc"], override_settings={"sd_model_checkpoint": "v1-5", "sd_vae": "b.vae.pt"})
    problems = refused(payload)
    assert sorted(problems) == sorted(f"payload.{k}" for k in (
        "sampler_name", "hr_sampler_name", "scheduler", "hr_scheduler", "hr_upscaler", "hr_checkpoint_name",
        "refiner_checkpoint", "styles[1]", "override_settings.sd_model_checkpoint", "override_settings.sd_vae"))
    assert problems["payload.hr_sampler_name"].startswith("unknown sampler 'Eular a'; did you mean Euler a,")
    assert "did you mean R-ESRGAN 4x+" in problems["payload.hr_upscaler"]
    assert list(refused(dict(CHEAP, sampler_index="k_euler"))) == ["payload.sampler_index"]  # an alias: not read


def test_accepted_names_come_back_canonical_and_hires_names_only_count_with_hires():
    fields = check_txt2img_payload(dict(HIRES, scheduler="karras", hr_scheduler="sgm_uniform", sampler_name="Euler karras",
                                        hr_sampler_name="Use same sampler", hr_checkpoint_name="v1-5",
                                        refiner_checkpoint="None", override_settings={"sd_model_checkpoint": "6ce0161689",
                                                                                      "sd_vae": "auto"}),
                                   choices=registry())
    assert (fields["scheduler"], fields["hr_scheduler"], fields["sampler_name"]) == ("Karras", "SGM Uniform", "Euler karras")
    assert fields["hr_sampler_name"] is None and fields["hr_checkpoint_name"] == "v1-5"
    off = dict(CHEAP, enable_hr=False, hr_sampler_name="Eular a", hr_scheduler="Karas", hr_upscaler="?", hr_checkpoint_name="?")
    assert check_txt2img_payload(off, choices=registry())["hr_scheduler"] == "Karas"  # the host does not read it
    assert list(refused(dict(off, refiner_checkpoint="?"))) == ["payload.refiner_checkpoint"]  # read in every run
    fields = check_txt2img_payload(dict(HIRES, hr_scheduler="", hr_sampler_name="None"), choices=registry())
    assert fields["hr_scheduler"] is None and fields["hr_sampler_name"] is None  # "as the first pass"


def test_the_ab_body_refuses_them_before_anything_runs():
    body = {"payload": dict(HIRES, hr_sampler_name="Eular a", hr_scheduler="Karas")}
    with pytest.raises(SettingsError) as err:
        ab.ab_request_from_body(body, SDFixSettings(), choices=registry())
    assert set(err.value.problems) == {"payload.hr_sampler_name", "payload.hr_scheduler"}


def sweep(values, axis="scheduler", **body):
    known = names.sweep_names(registry())
    return diagnose_request.diagnose_request_from_body({"kind": "sweep", "payload": CHEAP, "axis": axis, "values": values,
                                                        **body}, SDFixSettings(), choices=registry(), names=known)


def test_a_sweep_counts_a_schedules_label_and_name_as_one_value():
    with pytest.raises(SettingsError) as err:
        sweep(["karras", "Karras"])
    assert err.value.problems == {"values[1]": "duplicate value 'Karras' (the same as values[0])"}
    with pytest.raises(SettingsError) as err:
        sweep(["Karas", "Automatic", "automatic"])
    assert set(err.value.problems) == {"values[0]", "values[2]"} and "values[1]" in err.value.problems["values[2]"]
    request = sweep(["karras", "sgm_uniform"], reference="sgm_uniform")
    assert request.values == ("Karras", "SGM Uniform") and request.reference == "SGM Uniform"
    with pytest.raises(SettingsError, match=r"values\[1\]"):
        sweep(["Euler", "Euler Karras"], axis="sampler_name")  # a cell's sampler is one registry sampler
    with pytest.raises(SettingsError, match="payload.scheduler"):
        diagnose_request.diagnose_request_from_body({"kind": "steps", "payload": dict(CHEAP, scheduler="Karas")},
                                                    SDFixSettings(), choices=registry())
