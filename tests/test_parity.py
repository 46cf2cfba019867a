"""Hires parity resolver: same-markers, explicit overrides under parity, and parity off."""
import pytest

from lib_sdfix.parity import AUTOMATIC, SAME_SAMPLER, SAME_SCHEDULER, latent_upscale_note, resolve_hires_sampling


@pytest.mark.parametrize("hr_sampler", [None, "", SAME_SAMPLER])
@pytest.mark.parametrize("hr_scheduler", [None, "", SAME_SCHEDULER])
@pytest.mark.parametrize("parity", [True, False])
def test_same_markers_resolve_to_the_first_pass(hr_sampler, hr_scheduler, parity):
    got = resolve_hires_sampling("DPM++ 2M", "Karras", hr_sampler, hr_scheduler, parity)
    assert (got.sampler, got.scheduler, got.overridden, got.note) == ("DPM++ 2M", "Karras", False, "")


def test_parity_overrides_an_explicit_different_sampler_and_schedule_and_says_so():
    got = resolve_hires_sampling("DPM++ 2M", "Karras", "Euler", "Uniform", parity=True)
    assert (got.sampler, got.scheduler) == ("DPM++ 2M", "Karras")
    assert got.sampler_overridden and got.scheduler_overridden
    assert got.note == "Hires sampler Euler -> DPM++ 2M; Hires schedule Uniform -> Karras"


def test_parity_off_keeps_explicit_choices():
    got = resolve_hires_sampling("DPM++ 2M", "Karras", "Euler", "Uniform", parity=False)
    assert (got.sampler, got.scheduler, got.overridden, got.note) == ("Euler", "Uniform", False, "")


def test_explicit_choice_equal_to_first_pass_is_not_an_override():
    got = resolve_hires_sampling("Euler a", "Automatic", "Euler a", "Automatic", parity=True)
    assert not got.overridden and got.note == ""


def test_automatic_is_an_explicit_schedule_choice():
    got = resolve_hires_sampling("Euler", "Karras", None, AUTOMATIC, parity=True)
    assert got.scheduler == "Karras" and got.scheduler_overridden and not got.sampler_overridden
    assert got.note == "Hires schedule Automatic -> Karras"


def test_missing_first_pass_schedule_means_automatic():
    got = resolve_hires_sampling("Euler", None, None, "Karras", parity=True)
    assert got.scheduler == AUTOMATIC and got.scheduler_overridden


def test_latent_note():
    bilinear = {"mode": "bilinear", "antialias": False}
    assert "bilinear" in latent_upscale_note("Latent", bilinear, 0.3, 0.5)
    assert latent_upscale_note("Latent", bilinear, 0.5, 0.5) is None
    assert latent_upscale_note("Latent", bilinear, 0.3, 0.0) is None
    assert latent_upscale_note("Latent (nearest)", {"mode": "nearest"}, 0.3, 0.5) is None
    assert latent_upscale_note("R-ESRGAN 4x+", None, 0.3, 0.5) is None
