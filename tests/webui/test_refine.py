"""Late-step refine in the hosts (tests/webui/fakes/): the last pass's sampler runs the tail of its own
schedule again -- txt2img, the Hires pass, img2img, k-diffusion and timestep samplers, batches --
deterministically from each image's seed, counted by the progress bar, stopped by Interrupt."""
from __future__ import annotations

import pytest
from PIL import Image

from lib_sdfix.refine import refine_seed, refine_steps
from lib_sdfix.settings import NOTES_INFOTEXT_KEY, REFINE_INFOTEXT_KEY, SDFixSettings

from .fakes import Namespace, sigmas_automatic
from .support import compare, install_xyz_script, pixels, run, same

pytest.importorskip("pydantic")
pytest.importorskip("fastapi")

BASE = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 4321, "steps": 10,
        "width": 32, "height": 32, "cfg_scale": 5, "sampler_name": "Euler"}
REFINE = {"late_refine": True, "late_refine_strength": 0.3}
AB = dict(BASE, width=64, height=64)  # the A/B API's smallest image
HIRES = dict(BASE, enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=7)


def txt2img(env, settings=None, **fields):
    """One txt2img through the fakes' WebUI API; its images, infotexts and every UNet call."""
    from lib_sdfix.webui.hosts import current

    env.shared.sd_model.unet_calls.clear()
    env.shared.state.shown.clear()
    body = {**current().txt2img_defaults(), **BASE, **fields}
    if settings is not None:
        body["alwayson_scripts"] = {"SDFix": {"args": [settings]}}
    processed = env.api.api.text2imgapi(body)
    return Namespace(images=processed.images, infotexts=processed.infotexts, unet=list(env.shared.sd_model.unet_calls),
                     shown=list(env.shared.state.shown))


def img2img(env, settings, **fields):
    """One img2img generation of a 32x32 init image, SDFix set up as the WebUI's script hooks do."""
    env.shared.sd_model.unet_calls.clear()
    init = Image.new("RGB", (32, 32), (90, 140, 200))
    for xy in ((3, 4), (20, 9), (11, 25)):
        init.putpixel(xy, (250, 240, 10))
    values = {**BASE, "denoising_strength": 0.5, **fields}
    p = env.processing.StableDiffusionProcessingImg2Img(sd_model=env.shared.sd_model, init_images=[init],
                                                        do_not_save_samples=True, do_not_save_grid=True, **values)
    run(env, p, settings)
    env.shared.state.begin(job="img2img")
    try:
        processed = env.processing.process_images(p)
    finally:
        env.shared.state.end()
        p.close()
    return Namespace(images=processed.images, infotexts=processed.infotexts, unet=list(env.shared.sd_model.unet_calls), p=p)


def sigmas(calls, shape=None):
    return [c["sigma"] for c in calls if shape is None or c["shape"][-1] == shape]


def params(infotext):
    from .fakes import parse_generation_parameters

    return parse_generation_parameters(infotext)


# --- the tail of the pass's own schedule ----------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M"])
def test_txt2img_reruns_exactly_the_tail_of_its_schedule(webui, sampler):
    plain = txt2img(webui, {}, sampler_name=sampler)
    refined = txt2img(webui, REFINE, sampler_name=sampler)
    steps, count = BASE["steps"], refine_steps(0.3, BASE["steps"])
    assert count == round(0.3 * steps) == 3
    assert sigmas(refined.unet)[:steps] == sigmas(plain.unet)  # the pass itself is untouched
    assert sigmas(refined.unet)[steps:] == sigmas(plain.unet)[-count:]  # then its last 3 steps again
    fresh = [float(s) for s in sigmas_automatic(count)[:-1]]
    assert sigmas(refined.unet)[steps:] != fresh  # not a new, shorter schedule (what img2img by hand runs)
    assert pixels(refined.images[0]) != pixels(plain.images[0])
    assert same(webui, webui.before)  # create_sampler is the host's own again, nothing else is left


@pytest.mark.parametrize("fields", [{}, {"sampler_name": "DDIM"}, HIRES])
def test_the_refine_continues_the_pass_step_counter_prompt_editing_reads(webui, fields):
    plain = txt2img(webui, {}, **fields)
    refined = txt2img(webui, REFINE, **fields)
    count = round(0.3 * (fields.get("hr_second_pass_steps") or BASE["steps"]))
    tail = [(c["step"], c["total_steps"]) for c in plain.unet[-count:]]
    assert [(c["step"], c["total_steps"]) for c in refined.unet[-count:]] == tail  # [a:b:0.8] gives b, as in the pass
    assert tail[0][0] > 0 and same(webui, webui.before)


@pytest.mark.parametrize("strength, steps", [(0.05, 30), (0.25, 10), (0.35, 10), (0.5, 7), (0.75, 4), (0.3, 25)])
def test_the_count_is_round_strength_times_steps(webui, strength, steps):
    if webui.host != "a1111":
        pytest.skip("host-independent arithmetic")
    refined = txt2img(webui, {"late_refine": True, "late_refine_strength": strength}, steps=steps)
    assert len(refined.unet) - steps == round(strength * steps) == refine_steps(strength, steps)


def test_the_hires_pass_is_refined_before_its_decode(webui):
    plain = txt2img(webui, {}, **HIRES)
    refined = txt2img(webui, REFINE, **HIRES)
    steps, hires_steps = HIRES["steps"], HIRES["hr_second_pass_steps"]
    count = round(0.3 * hires_steps)
    assert sigmas(refined.unet, 32) == sigmas(plain.unet, 32) and len(sigmas(plain.unet, 32)) == steps
    hires = sigmas(refined.unet, 64)
    assert len(hires) == hires_steps + count == len(sigmas(plain.unet, 64)) + count
    assert hires[:hires_steps] == sigmas(plain.unet, 64) and hires[hires_steps:] == hires[hires_steps - count:hires_steps]
    # the decode saw the refined latent: the image differs, and only one final decode ran
    assert pixels(refined.images[0]) != pixels(plain.images[0]) and refined.images[0].size == (64, 64)
    assert f"{REFINE_INFOTEXT_KEY}: 0.3" in refined.infotexts[0]


def test_the_hires_pass_is_refined_with_its_own_sampler(webui):
    payload = dict(HIRES, hr_sampler_name="DPM++ 2M")  # parity off below: the Hires pass keeps DPM++ 2M (Karras)
    plain = txt2img(webui, {"hires_parity": False}, **payload)
    refined = txt2img(webui, {**REFINE, "hires_parity": False}, **payload)
    count = round(0.3 * payload["hr_second_pass_steps"])
    assert sigmas(refined.unet, 64)[-count:] == sigmas(plain.unet, 64)[-count:]
    assert "Hires sampler: DPM++ 2M" in refined.infotexts[0]


def test_img2img_reruns_the_tail_of_what_its_denoising_ran(webui):
    plain = img2img(webui, {})
    refined = img2img(webui, REFINE)
    ran = int(0.5 * BASE["steps"]) + 1  # the host's setup_img2img_steps: t_enc + 1
    count = round(0.3 * ran)
    assert len(sigmas(plain.unet)) == ran and len(sigmas(refined.unet)) == ran + count
    assert sigmas(refined.unet)[ran:] == sigmas(plain.unet)[-count:]
    assert pixels(refined.images[0]) != pixels(plain.images[0])
    assert refined.p.denoising_strength == 0.5  # the refine's own denoising does not outlive it
    assert same(webui, webui.before)


def test_ddim_walks_the_last_timesteps_again(webui):
    plain = txt2img(webui, {}, sampler_name="DDIM")
    refined = txt2img(webui, REFINE, sampler_name="DDIM")
    ran = len(plain.unet)  # DDIM evaluates the model at timesteps[len - 1] .. [1]
    count = round(0.3 * BASE["steps"])
    assert sigmas(refined.unet)[:ran] == sigmas(plain.unet)
    assert sigmas(refined.unet)[ran:] == sigmas(plain.unet)[-count:] == [301.0, 201.0, 101.0]
    assert pixels(refined.images[0]) != pixels(plain.images[0])


def test_ddim_img2img_never_reaches_above_the_timesteps_its_pass_walked(webui):
    fields = dict(sampler_name="DDIM", steps=4, denoising_strength=0.75)  # t_enc 3: the pass walks 2 steps
    strong = {"late_refine": True, "late_refine_strength": 0.75}  # round(0.75 x 4) = 3, one more than it walked
    plain, refined = img2img(webui, {}, **fields), img2img(webui, strong, **fields)
    ran = len(plain.unet)
    assert ran == 2 and sigmas(refined.unet)[:ran] == sigmas(plain.unet)
    assert sigmas(refined.unet)[ran:] == sigmas(plain.unet)  # its whole walk again, nothing above it


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
@pytest.mark.parametrize("mode", ["txt2img", "hires", "img2img"])
def test_refine_runs_when_another_extension_wraps_the_samplers_call(webui, monkeypatch, sampler, mode):
    """The hosts call ``sampler.sample(p, x, conditioning, unconditional_conditioning, image_conditioning=...)``
    positionally; an extension's ``(*args, **kwargs)`` wrapper around it hides the parameter names."""
    import modules.sd_samplers_kdiffusion as kdiffusion
    import modules.sd_samplers_timesteps as timesteps

    owner = timesteps.CompVisSampler if sampler == "DDIM" else kdiffusion.KDiffusionSampler
    for method in ("sample", "sample_img2img"):
        def wrapper(self, *args, _original=getattr(owner, method), **kwargs):
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(owner, method, wrapper)
    strong = {"late_refine": True, "late_refine_strength": 0.5}
    if mode == "img2img":
        plain, refined = img2img(webui, {}, sampler_name=sampler), img2img(webui, strong, sampler_name=sampler)
    else:
        fields = dict(HIRES if mode == "hires" else {}, sampler_name=sampler)
        plain, refined = txt2img(webui, {}, **fields), txt2img(webui, strong, **fields)
    assert len(refined.unet) > len(plain.unet)
    assert "SDFix notes" not in params(refined.infotexts[0]), params(refined.infotexts[0])
    assert params(refined.infotexts[0])[REFINE_INFOTEXT_KEY] == "0.5"


def test_ddim_with_no_schedule_step_left_notes_that_nothing_ran(webui):
    # txt2img DDIM 1 step: the schedule has one timestep, no interval to start from
    plain = txt2img(webui, {}, sampler_name="DDIM", steps=1)
    refined = txt2img(webui, {"late_refine": True, "late_refine_strength": 0.75}, sampler_name="DDIM", steps=1)
    assert len(refined.unet) == len(plain.unet) and pixels(refined.images[0]) == pixels(plain.images[0])
    assert params(refined.infotexts[0])["SDFix notes"] == \
        "skipped: late_refine (the pass's schedule (1 step) leaves no step to run again)"
    # img2img DDIM at a low denoising: the pass walks one timestep (t_enc 1)
    fields = dict(sampler_name="DDIM", steps=4, denoising_strength=0.3)
    plain, refined = img2img(webui, {}, **fields), img2img(webui, {"late_refine": True, "late_refine_strength": 0.5}, **fields)
    assert len(refined.unet) == len(plain.unet) and pixels(refined.images[0]) == pixels(plain.images[0])
    notes = params(refined.infotexts[0])["SDFix notes"]
    assert notes.startswith("skipped: late_refine (the img2img pass's schedule (") and "leaves no step" in notes


@pytest.mark.parametrize("sampler, why", [("UniPC", "UniPC lays out its own steps"), ("DPM fast", "DPM fast lays out")])
def test_samplers_that_cannot_start_mid_schedule_are_skipped_and_noted(webui, sampler, why):
    plain = txt2img(webui, {}, sampler_name=sampler)
    refined = txt2img(webui, REFINE, sampler_name=sampler)
    assert len(refined.unet) == len(plain.unet) and pixels(refined.images[0]) == pixels(plain.images[0])
    notes = params(refined.infotexts[0])["SDFix notes"]
    assert notes.startswith("skipped: late_refine (") and why in notes


def test_a_strength_that_rounds_to_no_step_leaves_the_image_bit_identical(webui):
    plain = txt2img(webui, {}, steps=8)
    refined = txt2img(webui, {"late_refine": True, "late_refine_strength": 0.05}, steps=8)  # round(0.4) = 0
    assert len(refined.unet) == 8 and pixels(refined.images[0]) == pixels(plain.images[0])
    assert params(refined.infotexts[0])["SDFix notes"] == \
        "skipped: late_refine (strength 0.05 x 8 steps rounds to 0 steps)"
    assert params(refined.infotexts[0])[REFINE_INFOTEXT_KEY] == "0.05"  # the setting is still what was asked


# --- noise: from each image's seed ------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_refined_image_and_another_seed_another(webui):
    first, again = txt2img(webui, REFINE), txt2img(webui, REFINE)
    assert pixels(first.images[0]) == pixels(again.images[0])
    other = txt2img(webui, REFINE, seed=BASE["seed"] + 7)
    assert pixels(other.images[0]) != pixels(first.images[0])
    assert refine_seed(BASE["seed"]) not in (BASE["seed"], BASE["seed"] + 1)  # not the image's own starting noise


def test_a_batch_refines_each_image_with_its_own_seed(webui):
    batch = txt2img(webui, REFINE, batch_size=2)
    assert [params(t)["Seed"] for t in batch.infotexts] == [str(BASE["seed"]), str(BASE["seed"] + 1)]
    for index in (0, 1):
        alone = txt2img(webui, REFINE, seed=BASE["seed"] + index)
        assert pixels(batch.images[index]) == pixels(alone.images[0]), index
    # the same holds over batch counts (n_iter): the second batch's image is its seed's own
    counted = txt2img(webui, REFINE, n_iter=2)
    assert pixels(counted.images[1]) == pixels(txt2img(webui, REFINE, seed=BASE["seed"] + 1).images[0])


def test_the_noise_is_the_hosts_seeded_noise_of_the_refine_seed(webui, monkeypatch):
    drawn = []
    image_rng = webui.rng.ImageRNG

    class Spy(image_rng):
        def __init__(self, shape, seeds, *args, **kwargs):
            drawn.append(list(seeds))
            super().__init__(shape, seeds, *args, **kwargs)

    monkeypatch.setattr(webui.rng, "ImageRNG", Spy)
    txt2img(webui, REFINE, batch_size=2)
    assert drawn[-1] == [refine_seed(BASE["seed"]), refine_seed(BASE["seed"] + 1)]


def test_img2img_extra_noise_is_not_added_to_the_refine(webui):
    opts = webui.shared.opts
    exact = txt2img(webui, REFINE)
    opts.img2img_extra_noise = 0.5
    try:
        noisy = txt2img(webui, REFINE)
        assert opts.img2img_extra_noise == 0.5  # the user's setting, as it was
    finally:
        opts.img2img_extra_noise = 0.0
    assert pixels(noisy.images[0]) == pixels(exact.images[0])  # noised to the schedule's own level only
    assert "Extra noise" not in params(noisy.infotexts[0])  # a txt2img image does not claim img2img's setting


# --- progress, Interrupt, Skip ------------------------------------------------------------------------------


def test_the_progress_bar_counts_the_refine_and_never_goes_back(webui):
    state = webui.shared.state
    seen = []
    launch = webui.sd_samplers_common.Sampler.launch_sampling

    def spy(self, steps, func):
        seen.append((steps, state.job_no, state.job_count))
        return launch(self, steps, func)

    webui.sd_samplers_common.Sampler.launch_sampling = spy
    try:
        refined = txt2img(webui, REFINE, n_iter=2)
        hires = txt2img(webui, REFINE, **HIRES)
    finally:
        webui.sd_samplers_common.Sampler.launch_sampling = launch
    # two batches: pass and refine (3 steps) each, as jobs 0-3 of 4
    assert seen[:4] == [(10, 0, 4), (3, 1, 4), (10, 2, 4), (3, 3, 4)]
    assert refined.shown == sorted(refined.shown) and refined.shown[-1] == 1.0
    assert seen[4:] == [(10, 0, 3), (7, 1, 3), (2, 2, 3)]  # first pass, Hires pass, its refine
    assert hires.shown == sorted(hires.shown) and hires.shown[-1] == 1.0


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_or_skip_while_refining_keeps_the_pass_image(webui, flag):
    plain = txt2img(webui, {})
    state = webui.shared.state

    def press(calls):
        if calls == BASE["steps"] + 1:  # the refine's first step has run
            setattr(state, flag, True)

    webui.shared.sd_model.unet_hook = press
    try:
        stopped = txt2img(webui, REFINE)
    finally:
        webui.shared.sd_model.unet_hook = None
    assert len(stopped.unet) == BASE["steps"] + 1  # the refine stopped at its next step
    assert pixels(stopped.images[0]) == pixels(plain.images[0])
    assert "late_refine: stopped while refining; the image is the pass's own" in params(stopped.infotexts[0])["SDFix notes"]
    assert same(webui, webui.before)


def test_interrupt_during_the_pass_skips_the_refine(webui):
    state = webui.shared.state
    webui.shared.sd_model.unet_hook = lambda calls: setattr(state, "interrupted", calls == 4 or state.interrupted)
    try:
        stopped = txt2img(webui, REFINE)
    finally:
        webui.shared.sd_model.unet_hook = None
    assert len(stopped.unet) == 4


def test_a_failing_refine_never_breaks_the_generation(webui, monkeypatch):
    from lib_sdfix.webui.hosts import current

    plain = txt2img(webui, {})

    def broken(*args, **kwargs):
        raise RuntimeError("no noise today")

    monkeypatch.setattr(type(current()), "seeded_noise", broken)
    failed = txt2img(webui, REFINE)
    assert pixels(failed.images[0]) == pixels(plain.images[0])  # the pass's own image, decoded as usual
    assert len(failed.unet) == BASE["steps"]
    assert "not applied: late_refine (RuntimeError: no noise today)" in params(failed.infotexts[0])["SDFix notes"]
    assert same(webui, webui.before)


@pytest.mark.parametrize("method", ["final_pass", "next_job"])
def test_a_host_call_failing_around_the_pass_never_breaks_it(webui, monkeypatch, method):
    from lib_sdfix.webui.hosts import current

    plain = txt2img(webui, {})

    def broken(*args, **kwargs):
        raise AttributeError("the host moved")

    monkeypatch.setattr(type(current()), method, broken)
    failed = txt2img(webui, REFINE)
    assert pixels(failed.images[0]) == pixels(plain.images[0]) and len(failed.unet) == BASE["steps"]
    assert "not applied: late_refine (AttributeError: the host moved)" in params(failed.infotexts[0])["SDFix notes"]


# --- settings: infotext, paste, API, X/Y/Z --------------------------------------------------------------------


def test_infotext_pastes_back_into_the_controls_and_the_api(webui):
    from lib_sdfix.webui.controls import infotext_paste_value

    refined = txt2img(webui, {"late_refine": True, "late_refine_strength": 0.45})
    pasted = params(refined.infotexts[0])
    assert pasted[REFINE_INFOTEXT_KEY] == "0.45"
    assert infotext_paste_value(pasted, "late_refine") is True
    assert infotext_paste_value(pasted, "late_refine_strength") == 0.45
    without = params(txt2img(webui, {}).infotexts[0])
    assert REFINE_INFOTEXT_KEY not in without
    assert infotext_paste_value(without, "late_refine") is False  # made without it: switched off
    assert infotext_paste_value(without, "late_refine_strength") is None  # and its slider left alone
    assert infotext_paste_value({"Steps": "20"}, "late_refine") is None  # made without SDFix
    assert infotext_paste_value({**pasted, REFINE_INFOTEXT_KEY: "2.0"}, "late_refine") is None  # unreadable

    # The WebUI API's "infotext" field goes through the same paste functions into the script's args.
    again = txt2img(webui, None, infotext=refined.infotexts[0])
    assert params(again.infotexts[0])[REFINE_INFOTEXT_KEY] == "0.45"
    assert pixels(again.images[0]) == pixels(refined.images[0])


def test_api_values_are_checked_and_a_bad_one_fails_with_422_naming_it(webui):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as err:
        txt2img(webui, {"late_refine": True, "late_refine_strength": 0.9})
    assert err.value.status_code == 422 and "late_refine_strength" in err.value.detail
    with pytest.raises(HTTPException) as err:
        txt2img(webui, {"late_refine": "yes"})
    assert err.value.status_code == 422 and "late_refine" in err.value.detail
    # positional args (the UI's list) reach the new options at the end
    args = SDFixSettings(late_refine=True, late_refine_strength=0.5).as_args()
    assert f"{REFINE_INFOTEXT_KEY}: 0.5" in txt2img(webui, None, alwayson_scripts={"SDFix": {"args": args}}).infotexts[0]


def test_settings_panel_default_turns_it_on(webui):
    webui.shared.opts.sdfix_late_refine = True
    webui.shared.opts.sdfix_late_refine_strength = 0.6
    try:
        refined = txt2img(webui, {})
    finally:
        del webui.shared.opts.sdfix_late_refine, webui.shared.opts.sdfix_late_refine_strength
    assert params(refined.infotexts[0])[REFINE_INFOTEXT_KEY] == "0.6" and len(refined.unet) == 10 + 6


def test_xyz_axes_switch_it_and_set_its_strength(webui):
    from lib_sdfix.webui import xyz as xyz_module
    from lib_sdfix.webui.apply import OVERRIDES_ATTR

    axes = {label: (option, choices) for label, option, choices in xyz_module.XYZ_AXES}
    assert axes["SDFix: late refine"] == ("late_refine", ("on", "off"))
    assert axes["SDFix: late refine strength"] == ("late_refine_strength", ())
    assert xyz_module.parse_axis_value("late_refine_strength", 0.55) == 0.55
    with pytest.raises(ValueError, match="late_refine_strength"):
        xyz_module.parse_axis_value("late_refine_strength", "0.8")

    xyz = install_xyz_script(webui)
    xyz_module.add_xyz_axes()
    strength = next(o for o in xyz.axis_options if o.label == "SDFix: late refine strength")
    assert strength.type is float and strength.choices is None
    switch = next(o for o in xyz.axis_options if o.label == "SDFix: late refine")
    p = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **BASE)
    switch.apply(p, "on", ["off", "on"])
    strength.apply(p, 0.5, [0.2, 0.5])
    assert getattr(p, OVERRIDES_ATTR) == {"late_refine": True, "late_refine_strength": 0.5}
    run(webui, p, {})
    assert p.extra_generation_params[REFINE_INFOTEXT_KEY] == "0.5"
    p.close()
    # a strength axis alone turns the refine on in its cells; an on/off axis still decides when there is one
    alone = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **BASE)
    strength.apply(alone, 0.4, [0.2, 0.4])
    assert getattr(alone, OVERRIDES_ATTR) == {"late_refine": True, "late_refine_strength": 0.4}
    off = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **BASE)
    switch.apply(off, "off", ["off", "on"])
    strength.apply(off, 0.4, [0.2, 0.4])
    assert getattr(off, OVERRIDES_ATTR) == {"late_refine": False, "late_refine_strength": 0.4}
    alone.close(), off.close()


# --- the A/B runner ---------------------------------------------------------------------------------------------


def test_refine_comparison_shares_the_pass_and_runs_only_the_refine(webui):
    result = compare(webui, AB, "refine").result
    assert [(r["variants"], r["kind"]) for r in result["plan"]] == [
        (["A"], "full sampling"), (["refine"], "refine only (shared passes)")]
    assert len(webui.shared.sd_model.unet_calls) == BASE["steps"] + 3 and result["runs"] == 2
    for name, settings in (("A", {}), ("refine", REFINE)):
        alone = txt2img(webui, settings, width=64, height=64)
        assert pixels(result["images"][name]) == pixels(alone.images[0]), name
        assert result["infotexts"][name] == alone.infotexts[0], name
    note = next(n for n in result["notes"] if n.startswith("late_refine:"))
    assert note.startswith("late_refine: changed ") and "vs A: SDFix on, no late refine" in note
    assert note.endswith("re-ran the last 3 of 10 steps (strength 0.3)")
    assert same(webui, webui.before)


@pytest.mark.parametrize("typed, expanded, plotted, left_out", [
    # what the WebUI's float range syntax hands the axis's confirm: np.arange(start, end + step, step)
    ("0.2-0.6 (+0.2)", [0.2, 0.4, 0.6000000000000001, 0.8000000000000002], [0.2, 0.4, 0.6], "0.8"),
    ("0.05-0.75 (+0.1)", [0.05, 0.15000000000000002, 0.25, 0.35000000000000003, 0.45, 0.55,
                          0.6500000000000001, 0.7500000000000002], [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75], None),
    ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.30000000000000004, 0.4], [0.1, 0.2, 0.3, 0.4], None),
])
def test_xyz_strength_axis_takes_the_webuis_float_ranges(webui, typed, expanded, plotted, left_out):
    from lib_sdfix.webui import xyz as xyz_module
    from lib_sdfix.webui.apply import AXIS_NOTES_ATTR, OVERRIDES_ATTR

    xyz = install_xyz_script(webui)
    xyz_module.add_xyz_axes()
    strength = next(o for o in xyz.axis_options if o.label == "SDFix: late refine strength")
    p = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **BASE)
    values = list(expanded)
    strength.confirm(p, values)  # the plot then runs exactly this list
    assert values == plotted
    notes = getattr(p, AXIS_NOTES_ATTR, None)
    if left_out is None:
        assert notes is None
    else:
        assert notes == [f"X/Y/Z late_refine_strength {left_out} left out (outside 0.05-0.75)"]
        strength.apply(p, values[-1], values)
        run(webui, p, {})
        assert f"X/Y/Z late_refine_strength {left_out} left out" in p.extra_generation_params[NOTES_INFOTEXT_KEY]()
        assert getattr(p, OVERRIDES_ATTR)["late_refine_strength"] == values[-1]
    p.close()


def test_xyz_strength_axis_refuses_a_plot_with_no_value_in_range(webui):
    from lib_sdfix.settings import SettingsError
    from lib_sdfix.webui import xyz as xyz_module

    xyz = install_xyz_script(webui)
    xyz_module.add_xyz_axes()
    strength = next(o for o in xyz.axis_options if o.label == "SDFix: late refine strength")
    p = webui.processing.StableDiffusionProcessingTxt2Img(sd_model=webui.shared.sd_model, **BASE)
    for values in ([0.8, 1.0], [0.0], ["lots"], [float("nan")]):
        with pytest.raises(SettingsError, match="late_refine_strength"):
            strength.confirm(p, list(values))
    p.close()
