"""lib_sdfix.limits.overrides: the options a request may override, each in its range, and those refused."""
import pytest

from lib_sdfix.limits.overrides import OVERRIDE_REFUSED, OVERRIDE_RULES, check_override_settings

from .support import CHEAP, accepted, refused

# --- override_settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(OVERRIDE_REFUSED))
def test_path_and_file_options_are_refused(key):
    problems = refused(dict(CHEAP, override_settings={key: "x"}), f"override_settings.{key}")
    assert problems[f"payload.override_settings.{key}"].startswith("not allowed: ")


def test_unknown_and_pathlike_override_keys_are_refused():
    problems = check_override_settings({"my_extension_output_dir": "/tmp", "made_up_option": 1,
                                        "CLIP_stop_at_last_layer": 2})
    assert "path" in problems["payload.override_settings.my_extension_output_dir"]
    assert "not an option" in problems["payload.override_settings.made_up_option"]
    assert "did you mean CLIP_stop_at_last_layers" in problems["payload.override_settings.CLIP_stop_at_last_layer"]
    assert check_override_settings("x") == {"payload.override_settings": "expected an object of option names and "
                                                                         "values, got str"}
    assert check_override_settings(None) == {} and check_override_settings({}) == {}
    assert len(check_override_settings({f"k{i}": 1 for i in range(1000)})) <= 51


# Defaults from shared_options.py: every allowed option accepts the WebUI's own default.
DEFAULTS = {
    "CLIP_stop_at_last_layers": 1, "sdxl_clip_l_skip": False, "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
    "sd_vae": "Automatic", "emphasis": "Original", "randn_source": "GPU", "tiling": False, "face_restoration": False,
    "hires_fix_refiner_pass": "second pass", "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_extra_noise": 0.0, "s_min_uncond": 0.0,
    "s_min_uncond_all": False, "token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0, "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False, "use_old_scheduling": False, "use_downcasted_alpha_bar": False,
    "refiner_switch_by_sample_steps": False, "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0,
    "s_tmax": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3, "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default", "skip_early_cond": 0.0, "beta_dist_alpha": 0.6, "beta_dist_beta": 0.6,
}


def test_allowed_overrides_accept_the_webui_defaults_and_refuse_the_rest():
    assert set(DEFAULTS) == set(OVERRIDE_RULES) and not set(OVERRIDE_RULES) & set(OVERRIDE_REFUSED)
    assert accepted(dict(CHEAP, override_settings=DEFAULTS))["override_settings"] == DEFAULTS
    assert all(override.reason for override in OVERRIDE_RULES.values())
    for key, default in DEFAULTS.items():
        where = f"payload.override_settings.{key}"
        for bad in ([default], {"v": default}):
            assert "JSON scalar" in refused(dict(CHEAP, override_settings={key: bad}))[where]
        wrong = "text" if not isinstance(default, str) else 3
        assert where in refused(dict(CHEAP, override_settings={key: wrong}))
        if isinstance(default, bool):
            refused(dict(CHEAP, override_settings={key: 1}), f"override_settings.{key}")
        if isinstance(default, float) or (isinstance(default, int) and not isinstance(default, bool)):
            rule = OVERRIDE_RULES[key].rule
            for out in (rule.maximum + 1, rule.minimum - 1, float("nan")):
                refused(dict(CHEAP, override_settings={key: out}), f"override_settings.{key}")
    refused(dict(CHEAP, override_settings={"CLIP_stop_at_last_layers": 13}), "override_settings.CLIP_stop_at_last_layers")
    refused(dict(CHEAP, override_settings={"CLIP_stop_at_last_layers": 2.5}), "override_settings.CLIP_stop_at_last_layers")
    refused(dict(CHEAP, override_settings={"sd_vae": "a\x00b"}), "override_settings.sd_vae")


def test_options_are_always_restored():
    accepted(dict(CHEAP, override_settings_restore_afterwards=True))
    assert "must be true" in refused(dict(CHEAP, override_settings_restore_afterwards=False),
                                     "override_settings_restore_afterwards")["payload.override_settings_restore_afterwards"]
    refused(dict(CHEAP, override_settings_restore_afterwards="no"), "override_settings_restore_afterwards")
