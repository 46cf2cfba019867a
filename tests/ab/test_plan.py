"""lib_sdfix.ab.plan: the variants of a mode."""

import pytest

from lib_sdfix.ab import plan_variants
from lib_sdfix.settings import SDFixSettings, SettingsError

TOGGLES = ("precision_guard", "guard_encode", "hires_parity", "post_resize", "late_refine")


def _on(settings):
    return tuple(name for name in TOGGLES if settings.enabled and getattr(settings, name))


# --- variants ------------------------------------------------------------------------------------


def test_ab_plan_is_sdfix_off_then_the_users_settings_on():
    base = SDFixSettings(enabled=False, hires_parity=False, resize_filter="BICUBIC", vae_dtype="auto")
    a, b = plan_variants("ab", base)
    assert (a.name, b.name) == ("A", "B")
    assert a.settings.enabled is False and _on(a.settings) == ()
    assert b.settings == base.changed(enabled=True)
    assert _on(b.settings) == ("precision_guard", "guard_encode", "post_resize")


def test_ablation_plan_is_baseline_each_fix_alone_and_all():
    base = SDFixSettings(resize_filter="BOX", post_resize=False)
    variants = plan_variants("ablation", base)
    assert [v.name for v in variants] == ["baseline", "precision_guard", "guard_encode", "hires_parity", "post_resize",
                                          "late_refine", "all"]
    assert [_on(v.settings) for v in variants] == [
        (), ("precision_guard",), ("guard_encode",), ("hires_parity",), ("post_resize",), ("late_refine",), TOGGLES]
    assert all(v.settings.resize_filter == "BOX" for v in variants)
    assert len({v.label for v in variants}) == 7 and variants[1].label == "precision guard only"
    assert variants[5].label == "late refine only" and variants[5].settings.late_refine_strength == 0.3


def test_refine_plan_is_the_users_sdfix_without_and_with_the_late_refine():
    base = SDFixSettings(enabled=False, hires_parity=False, late_refine_strength=0.55)
    a, refine = plan_variants("refine", base)
    assert (a.name, refine.name) == ("A", "refine") and "0.55" in refine.label
    assert a.settings == base.changed(enabled=True, late_refine=False)
    assert refine.settings == base.changed(enabled=True, late_refine=True)


def test_unknown_mode_is_rejected():
    with pytest.raises(SettingsError) as err:
        plan_variants("abc", SDFixSettings())
    assert "variants" in err.value.problems
