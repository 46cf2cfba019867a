"""lib_sdfix.ab.notes: which fix changed something, and why one could not."""

from PIL import ImageFilter

from lib_sdfix.ab import (
    RunContext,
    effect_notes,
    plan_variants,
)
from lib_sdfix.settings import SDFixSettings

# --- effect notes ----------------------------------------------------------------------------------


def _ablation_images(photo, changed=("precision_guard",)):
    variants = plan_variants("ablation", SDFixSettings())
    sharper = photo.filter(ImageFilter.UnsharpMask(2, 80, 0))
    images = {v.name: (sharper if v.name in changed or v.name == "all" else photo.copy()) for v in variants}
    return variants, images


def test_effect_notes_compare_each_fix_alone_with_the_baseline(photo):
    variants, images = _ablation_images(photo)
    context = RunContext(hires=True, upscaler="R-ESRGAN 4x+", first_sampler="DPM++ 2M", first_scheduler="Karras",
                         hires_sampler="Use same sampler", hires_scheduler="Use same scheduler")
    notes = effect_notes(variants, images, context)
    guard = next(n for n in notes if n.startswith("precision_guard:"))
    assert guard.startswith("precision_guard: changed ") and "% of pixels" in guard
    assert "guard_encode: no effect in this run" in notes  # an encode happened, it just changed nothing
    assert "hires_parity: no effect, first and Hires sampler already equal" in notes
    assert "post_resize: no effect in this run" in notes
    assert any(n.startswith("all fixes: changed") and n.endswith("vs baseline (SDFix off)") for n in notes)


def test_effect_notes_explain_why_a_fix_could_not_act(photo):
    variants, images = _ablation_images(photo, changed=())
    latent = RunContext(hires=True, upscaler="Latent", first_sampler="Euler a", hires_sampler="DPM++ 2M")
    notes = effect_notes(variants, images, latent)
    assert "precision_guard: no effect in this run" in notes
    assert "guard_encode: no effect, no VAE encode happened (latent Hires upscaler, not img2img)" in notes
    assert "post_resize: no effect, no upscaler model ran (Latent)" in notes
    assert "hires_parity: no effect in this run" in notes  # samplers differ: nothing explains it
    no_hires = effect_notes(variants, images, RunContext(first_sampler="Euler a"))
    assert "hires_parity: no effect, no Hires pass" in no_hires and "post_resize: no effect, no upscaler ran" in no_hires


def test_effect_notes_in_ab_mode_use_the_run_shape(photo):
    variants = plan_variants("ab", SDFixSettings())
    images = {"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}
    notes = effect_notes(variants, images, RunContext(hires=False))
    assert notes[0].startswith("B: SDFix on: changed") and notes[0].endswith("vs A: SDFix off")
    assert "hires_parity: no effect, no Hires pass" in notes
    assert "post_resize: no effect, no upscaler ran" in notes
    assert "guard_encode: no effect, no VAE encode happened (no Hires pass, not img2img)" in notes
    assert not any(n.startswith("precision_guard:") for n in notes)  # not measured alone, nothing rules it out
    same = effect_notes(variants, {"A": photo, "B": photo.copy()}, RunContext(hires=True, upscaler="R-ESRGAN 4x+",
                                                                             first_sampler="Euler", hires_sampler="Euler"))
    assert same == ["B: SDFix on: identical to A: SDFix off", "hires_parity: no effect, first and Hires sampler already equal"]


def test_effect_notes_for_the_plain_none_upscaler_depend_on_the_filter(photo):
    context = RunContext(hires=True, upscaler="None")
    lanczos = plan_variants("ab", SDFixSettings())
    box = plan_variants("ab", SDFixSettings(resize_filter="BOX"))
    images = {"A": photo, "B": photo.copy()}
    assert any(n.startswith("post_resize: no effect, no upscaler model ran (None)") for n in effect_notes(lanczos, images, context))
    assert not any(n.startswith("resize:") for n in effect_notes(box, images, context))


def test_run_context_sampler_equality():
    assert RunContext(hires=False, first_sampler="Euler").sampler_already_equal is None
    assert RunContext(hires=True).sampler_already_equal is None
    assert RunContext(hires=True, first_sampler="Euler", first_scheduler="Karras",
                      hires_sampler="Euler", hires_scheduler="Karras").sampler_already_equal is True
    assert RunContext(hires=True, first_sampler="Euler", first_scheduler="Karras",
                      hires_scheduler="Automatic").sampler_already_equal is False
    assert RunContext(hires=True, first_sampler="Euler", hires_sampler="DPM++ 2M").sampler_already_equal is False
    assert RunContext(hires=True, upscaler="Latent (bicubic antialiased)").latent_upscaler
    assert RunContext(hires=True).latent_upscaler and not RunContext(hires=True, upscaler="4x-UltraSharp").latent_upscaler
