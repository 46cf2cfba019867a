"""Settings to session to infotext: script args, the 422 on bad args, parity, notes, Settings defaults."""
from __future__ import annotations

import pytest

from lib_sdfix.settings import SDFixSettings

from .fakes import FakeP
from .support import make_env, run, same, xyz_cell


def test_sdfix_disable_flag(monkeypatch):
    env = make_env(monkeypatch)
    env.shared.cmd_opts.sdfix_disable = True
    script = env.glue.SDFixScript()
    assert script.show(False) is False
    p = FakeP()
    script.setup(p)
    script.process(p)
    assert same(env, env.before) and p.extra_generation_params == {}


@pytest.mark.parametrize("args,field", [
    ([{"precision_guard": "yes"}], "precision_guard"),
    ([{"nope": 1}], "nope"),
    ([True, 3], "precision_guard"),
    ([{"latent_denoise_warning": -1}], "latent_denoise_warning"),
    ([{"guard_previews": True}], "guard_previews"),
])
def test_bad_args_make_the_request_fail_with_422(webui, args, field):
    fastapi = pytest.importorskip("fastapi")
    p = FakeP()
    run(webui, p, *args)
    assert same(webui, webui.before)
    with pytest.raises(fastapi.HTTPException) as err:
        p.init([], [], [])
    assert err.value.status_code == 422
    assert field in err.value.detail and field in str(err.value)


def test_missing_args_mean_the_settings_defaults(webui):
    """Forge/reForge sometimes hand the first job after start no script args at all."""
    p = FakeP()
    run(webui, p)
    assert "guard=1" in p.extra_generation_params["SDFix"]()
    p.close()


def test_parity_resolves_the_hires_pass(webui):
    p = FakeP(enable_hr=True, sampler_name="DPM++ 2M", scheduler="Karras", hr_sampler_name="Euler",
              hr_scheduler="uniform", hr_upscaler="Fake 4x")
    run(webui, p)
    assert (p.hr_sampler_name, p.hr_scheduler) == (None, "Karras")
    notes = p.extra_generation_params["SDFix notes"]()
    assert "Hires sampler Euler -> DPM++ 2M" in notes and "Hires schedule Uniform -> Karras" in notes
    p.close()
    q = FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_sampler_name="Euler", hr_upscaler="Fake 4x")
    run(webui, q, {"hires_parity": False})
    assert q.hr_sampler_name == "Euler"
    q.close()


def test_parity_steps_aside_for_an_xyz_hires_sampler_axis(webui):
    script = webui.glue.SDFixScript()

    def generate(pc):
        script.process(pc)
        notes = pc.extra_generation_params["SDFix notes"]()
        script.postprocess(pc, None)
        return pc.hr_sampler_name, notes

    cell = xyz_cell("Hires sampler", lambda pc: setattr(pc, "hr_sampler_name", "Euler a"), generate)
    sampler, notes = cell(FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_upscaler="Fake 4x"))
    assert sampler == "Euler a" and "Hires sampler Euler a set by the X/Y/Z plot, kept" in notes
    other = xyz_cell("Steps", lambda pc: None, generate)
    sampler, _ = other(FakeP(enable_hr=True, sampler_name="DPM++ 2M", hr_sampler_name="Euler a", hr_upscaler="Fake 4x"))
    assert sampler is None  # an explicit UI choice is still overridden by parity (and noted)


def test_settings_defaults_and_cli_override_apply_to_named_args(webui):
    webui.shared.opts.sdfix_resize_filter = "BOX"
    webui.shared.cmd_opts.sdfix_vae_dtype = "auto"
    p = FakeP()
    run(webui, p, {"hires_parity": False})
    s = SDFixSettings.from_infotext(p.extra_generation_params["SDFix"]())
    assert (s.resize_filter, s.vae_dtype, s.hires_parity) == ("BOX", "auto", False)
    p.close()


def test_no_infotext_when_the_panel_option_is_off(webui):
    webui.shared.opts.sdfix_add_infotext = False
    p = FakeP()
    run(webui, p)
    assert "SDFix" not in p.extra_generation_params
    p.close()
