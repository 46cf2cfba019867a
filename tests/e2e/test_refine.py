"""Late-step refine in real WebUIs, observed from the inside (the observer records every UNet call and
its timestep): txt2img, txt2img + Hires, img2img through the API, the infotext and its paste-back.

Which steps ran is read from the timesteps the UNet saw: the refine's calls must be exactly the last
calls of the pass it refines (same timesteps, in the same order), as many as round(strength x steps).
"""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from lib_sdfix.settings import REFINE_INFOTEXT_KEY

from .conftest import encode_png

STEPS = 10
REFINE = {"late_refine": True, "late_refine_strength": 0.3}
HIRES = dict(enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=6)


def calls(result, latent_width=None):
    """The UNet calls of a generation, as (latent width, timestep)."""
    return [(u["shape"][-1], u["t"]) for u in result.records["unet"]
            if latent_width is None or u["shape"][-1] == latent_width]


def per_step(plain, steps, latent_width=None):
    """UNet calls per sampling step (1 when cond and uncond run as one batch, 2 otherwise)."""
    count = len(calls(plain, latent_width))
    assert count and count % steps == 0, (count, steps)
    return count // steps


def assert_tail(plain, refined, steps, strength, latent_width=None):
    """The refined generation = the plain one's calls, then the last round(strength x steps) steps again."""
    before, after = calls(plain, latent_width), calls(refined, latent_width)
    extra = round(strength * steps) * per_step(plain, steps, latent_width)
    assert len(after) == len(before) + extra, (len(before), len(after), extra)
    assert after[:len(before)] == before
    assert after[len(before):] == before[len(before) - extra:]


def pixels_of(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def test_txt2img_reruns_the_tail_of_its_own_schedule(webui):
    plain = webui.txt2img([{}], steps=STEPS)
    refined = webui.txt2img([REFINE], steps=STEPS)
    assert_tail(plain, refined, STEPS, 0.3)
    assert refined.params()[REFINE_INFOTEXT_KEY] == "0.3"
    assert "SDFix notes" not in refined.params()
    assert refined.pixels() != plain.pixels()
    assert webui.txt2img([REFINE], steps=STEPS).pixels() == refined.pixels()  # the same seed, the same image
    assert webui.ok("GET", "/sdfix/v1/status")["environment"]["patched_now"] == []


def test_karras_schedule_and_another_sampler(webui):
    fields = dict(steps=STEPS, sampler_name="DPM++ 2M", scheduler="Karras")
    assert_tail(webui.txt2img([{}], **fields), webui.txt2img([{**REFINE, "late_refine_strength": 0.5}], **fields),
                STEPS, 0.5)


def test_txt2img_with_hires_refines_the_hires_pass_before_its_decode(webui):
    plain = webui.txt2img([{}], steps=STEPS, **HIRES)
    refined = webui.txt2img([REFINE], steps=STEPS, **HIRES)
    first, hires = 64 // 8, 128 // 8
    assert calls(refined, first) == calls(plain, first)  # the first pass is untouched
    assert_tail(plain, refined, HIRES["hr_second_pass_steps"], 0.3, hires)
    assert len(refined.vae("decoder")) == len(plain.vae("decoder"))  # no extra decode: the refined latent is it
    assert refined.image().size == (128, 128) and refined.pixels() != plain.pixels()
    assert refined.params()[REFINE_INFOTEXT_KEY] == "0.3"


def test_img2img_through_the_api(webui):
    init = encode_png(Image.effect_noise((64, 64), 40).convert("RGB"))
    fields = dict(init_images=[init], denoising_strength=0.5, steps=STEPS)
    plain = webui.img2img([{}], **fields)
    refined = webui.img2img([REFINE], **fields)
    ran = int(0.5 * STEPS) + 1  # what the host's setup_img2img_steps runs for this denoising
    assert_tail(plain, refined, ran, 0.3)
    assert refined.params()[REFINE_INFOTEXT_KEY] == "0.3" and refined.pixels() != plain.pixels()


def test_a_strength_rounding_to_no_step_is_bit_identical_and_noted(webui):
    plain = webui.txt2img([{}], steps=8)
    refined = webui.txt2img([{"late_refine": True, "late_refine_strength": 0.05}], steps=8)
    assert refined.pixels() == plain.pixels() and len(calls(refined)) == len(calls(plain))
    assert "late_refine (strength 0.05 x 8 steps rounds to 0 steps)" in refined.params()["SDFix notes"]


def test_a_sampler_that_cannot_start_mid_schedule_is_skipped_and_noted(webui):
    if webui.host != "a1111":
        pytest.skip("UniPC's grid is the same code in every host; checked once")
    plain = webui.txt2img([{}], steps=STEPS, sampler_name="UniPC")
    refined = webui.txt2img([REFINE], steps=STEPS, sampler_name="UniPC")
    assert refined.pixels() == plain.pixels()
    assert "skipped: late_refine (UniPC lays out its own steps" in refined.params()["SDFix notes"]


def test_a_batch_refines_each_image_with_its_own_seed(webui):
    batch = webui.txt2img([REFINE], steps=STEPS, batch_size=2)
    alone = webui.txt2img([REFINE], steps=STEPS, seed=1235)
    # Batched convolutions may round differently from single ones: the same image within a few levels.
    a = batch.image(1).convert("RGB").tobytes()
    b = alone.image().convert("RGB").tobytes()
    assert max(abs(x - y) for x, y in zip(a, b)) <= 3
    assert batch.image(0).convert("RGB").tobytes() != a


def test_infotext_round_trip_through_png_info_and_the_infotext_field(webui):
    first = webui.txt2img([{"late_refine": True, "late_refine_strength": 0.45}], steps=STEPS)
    info = webui.ok("POST", "/sdapi/v1/png-info", {"image": first.payload["images"][0]})
    assert info["parameters"][REFINE_INFOTEXT_KEY] == "0.45"
    if webui.host == "forge":
        return  # Forge's API fails on any "infotext" field (isinstance with list[str]), SDFix or not
    # the API's "infotext" field fills SDFix's controls from the pasted text, as the paste button does
    second = webui.txt2img(infotext=first.infotext, steps=STEPS)
    assert second.params()[REFINE_INFOTEXT_KEY] == "0.45" and second.pixels() == first.pixels()
    # an image made without the refine switches it off when pasted
    without = webui.txt2img([{}], steps=STEPS)
    third = webui.txt2img(infotext=without.infotext, steps=STEPS)
    assert REFINE_INFOTEXT_KEY not in third.params() and third.pixels() == without.pixels()


@pytest.mark.parametrize("args, field", [
    ([{"late_refine": True, "late_refine_strength": 0.9}], "late_refine_strength"),
    ([{"late_refine": True, "late_refine_strength": 0.01}], "late_refine_strength"),
    ([{"late_refine": "yes"}], "late_refine"),
])
def test_bad_values_fail_with_422_naming_the_field(webui, args, field):
    status, body = webui.call("POST", "/sdapi/v1/txt2img", webui.body(prompt="x", steps=1,
                                                                     alwayson_scripts={"sdfix": {"args": args}}))
    assert status == 422 and field in body["detail"], body


def test_xyz_axes_are_registered(webui):
    labels = webui.ok("GET", "/sdfix-observer/xyz-axes")
    assert "SDFix: late refine" in labels and "SDFix: late refine strength" in labels


def test_ab_refine_mode_matches_plain_generations(webui):
    payload = {**{k: v for k, v in webui.body().items() if k not in ("send_images", "save_images")}, "steps": STEPS}
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": payload, "variants": "refine"})
    assert result["complete"] and [r["kind"] for r in result["plan"]] == ["full sampling", "refine only (shared passes)"]
    assert pixels_of(result["images"]["A"]) == webui.txt2img([{"late_refine": False}], steps=STEPS).pixels()
    assert pixels_of(result["images"]["refine"]) == webui.txt2img([{"late_refine": True}], steps=STEPS).pixels()
    assert any(note.startswith("late_refine: ") and "re-ran the last 3 of 10 steps" in note for note in result["notes"])


# Every sampler family docs/refine.md names: k-diffusion (Euler), DDIM, DDIM CFG++ (its own function), PLMS.
# The hosts call ``sampler.sample``/``sample_img2img`` positionally: the refine must find its pass's call.
FAMILIES = ["Euler", "DDIM", "DDIM CFG++", "PLMS"]
FAMILY_STEPS = 6


def _family_run(webui, mode, sampler, sdfix):
    fields = dict(steps=FAMILY_STEPS, sampler_name=sampler)
    if mode == "img2img":
        init = encode_png(Image.effect_noise((64, 64), 40).convert("RGB"))
        return webui.img2img(sdfix, init_images=[init], denoising_strength=0.75, **fields)
    if mode == "hires":
        fields.update(HIRES, hr_second_pass_steps=4)
    return webui.txt2img(sdfix, **fields)


@pytest.mark.parametrize("mode", ["txt2img", "hires", "img2img"])
@pytest.mark.parametrize("sampler", FAMILIES)
def test_every_sampler_family_refines_its_last_pass(webui, sampler, mode):
    if sampler == "DDIM CFG++" and webui.host != "a1111":
        available = {s["name"] for s in webui.ok("GET", "/sdapi/v1/samplers")}
        if sampler not in available:
            pytest.skip(f"{webui.host} has no {sampler}")
    plain = _family_run(webui, mode, sampler, [{}])
    refined = _family_run(webui, mode, sampler, [{"late_refine": True, "late_refine_strength": 0.5}])
    before, after = calls(plain), calls(refined)
    extra = after[len(before):]
    assert after[:len(before)] == before  # the passes themselves are untouched
    assert extra, (sampler, mode, "the refine ran no step")
    last_width = before[-1][0]
    assert all(width == last_width for width, _ in extra)  # it refines the last pass, at its size
    assert {t for _, t in extra} <= {t for width, t in before if width == last_width}  # on that pass's schedule
    assert "SDFix notes" not in refined.params(), refined.params()
    assert refined.params()[REFINE_INFOTEXT_KEY] == "0.5" and refined.pixels() != plain.pixels()


def test_ddim_with_no_step_left_to_refine_says_so(webui):
    plain = webui.txt2img([{}], steps=1, sampler_name="DDIM")
    refined = webui.txt2img([{"late_refine": True, "late_refine_strength": 0.75}], steps=1, sampler_name="DDIM")
    assert refined.pixels() == plain.pixels() and len(calls(refined)) == len(calls(plain))
    assert "skipped: late_refine (the pass's schedule (1 step) leaves no step to run again)" \
        in refined.params()["SDFix notes"]
