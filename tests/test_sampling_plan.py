"""lib_sdfix.sampling_plan: the sampling runs variants share (their variants from lib_sdfix.ab.plan)."""

from lib_sdfix.ab import plan_variants
from lib_sdfix.sampling_plan import DecodeConfig, Variant, count_decodes, count_runs, sampling_groups
from lib_sdfix.settings import SDFixSettings

# --- work sharing ----------------------------------------------------------------------------


def test_ab_without_hires_is_one_sampling_and_two_decodes():
    variants = plan_variants("ab", SDFixSettings())
    groups = sampling_groups(variants, hires=False, latent_upscaler=False)
    assert len(groups) == 1 and groups[0].key == () and groups[0].variants == tuple(variants)
    assert count_runs(groups) == 1 and count_decodes(groups) == 2
    plain, guarded = groups[0].decodes
    assert plain == DecodeConfig(False) and guarded == DecodeConfig(True, "fp32")
    assert groups[0].variants_for(plain) == (variants[0],) and groups[0].variants_for(guarded) == (variants[1],)


def test_ablation_without_hires_shares_one_sampling_and_decodes_per_decode_config():
    variants = plan_variants("ablation", SDFixSettings())
    variants.append(Variant("auto", "guard in auto dtype", SDFixSettings(vae_dtype="auto")))
    variants.append(Variant("off-auto", "off, auto", SDFixSettings(enabled=False, vae_dtype="auto")))
    group, refined = sampling_groups(variants, hires=False, latent_upscaler=False)
    assert (group.key, refined.key) == ((), (("late_refine", 0.3),))
    assert count_runs([group]) == 1 and count_runs([group, refined]) == 2  # one sampling, one refine after it
    # unguarded (baseline, encode, parity, resize, off-auto), guarded fp32 (guard), guarded auto
    assert group.decodes == (DecodeConfig(False), DecodeConfig(True, "fp32"), DecodeConfig(True, "auto"))
    assert [v.name for v in group.variants_for(DecodeConfig(False))] == [
        "baseline", "guard_encode", "hires_parity", "post_resize", "off-auto"]
    # the late refine samples again: its variants share only among themselves
    assert [v.name for v in refined.variants] == ["late_refine", "all"]
    assert refined.decodes == (DecodeConfig(False), DecodeConfig(True, "fp32"))
    assert refined.refine == 0.3 and group.refine is None and refined.pass_key == group.pass_key == ()


def test_hires_with_latent_upscaler_shares_everything_but_parity():
    variants = plan_variants("ablation", SDFixSettings())
    groups = sampling_groups(variants, hires=True, latent_upscaler=True)
    assert [[v.name for v in g.variants] for g in groups] == [
        ["baseline", "precision_guard", "guard_encode", "post_resize"], ["hires_parity"], ["late_refine"], ["all"]]
    assert [g.key for g in groups] == [(("hires_parity", False),), (("hires_parity", True),),
                                       (("hires_parity", False), ("late_refine", 0.3)),
                                       (("hires_parity", True), ("late_refine", 0.3))]
    assert count_runs(groups) == 5  # one first pass + two Hires passes + two refines
    assert count_decodes(groups) == 5
    # Sampler already equal: parity cannot change the Hires pass, so it is shared too.
    same = sampling_groups(variants, hires=True, latent_upscaler=True, parity_changes_sampler=False)
    assert len(same) == 2 and count_runs(same) == 3


def test_hires_with_an_upscaler_model_groups_by_what_the_hires_pass_starts_from():
    base = SDFixSettings()
    variants = plan_variants("ablation", base)
    groups = sampling_groups(variants, hires=True, latent_upscaler=False)
    assert len(groups) == 7 and count_runs(groups) == 9  # first pass, 6 Hires passes, 2 refines
    assert all(len(g.decodes) == 1 for g in groups)
    # Filter and dtype only matter where a fix uses them.
    extra = [
        Variant("off-box", "off, BOX", base.changed(enabled=False, resize_filter="BOX", vae_dtype="auto")),
        Variant("resize-box", "resize BOX", variants[4].settings.changed(resize_filter="BOX")),
        Variant("guard-auto", "guard auto", variants[1].settings.changed(vae_dtype="auto")),
    ]
    groups = sampling_groups(variants + extra, hires=True, latent_upscaler=False)
    names = [[v.name for v in g.variants] for g in groups]
    assert ["baseline", "off-box"] in names
    assert ["post_resize"] in names and ["resize-box"] in names and ["precision_guard"] in names and ["guard-auto"] in names
    assert sorted(v.name for g in groups for v in g.variants) == sorted(v.name for v in variants + extra)


def test_groups_and_empty_input():
    assert sampling_groups([], hires=True, latent_upscaler=False) == [] and count_runs([]) == 0
    variants = plan_variants("ab", SDFixSettings())
    groups = sampling_groups(variants, hires=True, latent_upscaler=False)
    assert [g.variants for g in groups] == [(variants[0],), (variants[1],)]
    assert count_runs(groups) == 3


def test_a_late_refine_never_shares_its_final_latent_with_another_strength_or_none():
    base = SDFixSettings()
    variants = [Variant("off", "off", base.changed(late_refine=False)),
                Variant("r3", "0.3", base.changed(late_refine=True, late_refine_strength=0.3)),
                Variant("r3-auto", "0.3 auto", base.changed(late_refine=True, vae_dtype="auto")),
                Variant("r5", "0.5", base.changed(late_refine=True, late_refine_strength=0.5)),
                Variant("disabled", "SDFix off, refine set", base.changed(enabled=False, late_refine=True))]
    for hires in (False, True):
        groups = sampling_groups(variants, hires=hires, latent_upscaler=True, parity_changes_sampler=False)
        assert [[v.name for v in g.variants] for g in groups] == [["off", "disabled"], ["r3", "r3-auto"], ["r5"]]
        assert len({g.pass_key for g in groups}) == 1  # everything before the refine is shared
        assert count_runs(groups) == (2 if hires else 1) + 2
