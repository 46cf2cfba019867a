"""``override_settings``: the WebUI options a request may override, each within its range, and those it
may not (paths, file names, saving, the network), each with its reason."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping

from lib_sdfix.limits.values import MAX_PROBLEMS, MAX_SEED, Rule, closest_names

__all__ = ["Override", "OVERRIDE_RULES", "OVERRIDE_REFUSED", "check_override_settings"]


@dataclass(frozen=True)
class Override:
    """An option a request may override: the values it accepts and why a comparison may change it."""

    rule: Rule
    reason: str


_INFOTEXT = "a generation parameter the WebUI restores from infotext ({}) into override_settings"


def _opt(rule_kind: str, label: str, *args: Any, **kw: Any) -> Override:
    reason = _INFOTEXT.format(f"'{label}'") if label else kw.pop("reason")
    if rule_kind == "int":
        return Override(Rule("int", "shared_options.py", args[0], args[1]), reason)
    if rule_kind == "float":
        return Override(Rule("float", "shared_options.py", args[0], args[1]), reason)
    if rule_kind == "choice":
        return Override(Rule("choice", "shared_options.py", choices=tuple(args)), reason)
    if rule_kind == "name":
        return Override(Rule("name", "shared_options.py"), reason)
    return Override(Rule("bool", "shared_options.py"), reason)


#: Options a comparison may override, with their range (the Settings slider or choices in
#: shared_options.py) and why: they are the ones that change how one image is generated -- the
#: WebUI marks them with an infotext name and restores them from a pasted infotext the same way.
OVERRIDE_RULES: Dict[str, Override] = {
    "CLIP_stop_at_last_layers": _opt("int", "Clip skip", 1, 12),
    "sdxl_clip_l_skip": _opt("bool", "", reason="Clip skip for SDXL's second text encoder; changes only the prompt encoding"),
    "sd_model_checkpoint": _opt("name", "Model hash"),
    "sd_vae": _opt("name", "VAE"),
    "emphasis": _opt("choice", "Emphasis", "None", "Ignore", "Original", "No norm"),
    "randn_source": _opt("choice", "RNG", "GPU", "CPU", "NV"),
    "tiling": _opt("bool", "Tiling"),
    "face_restoration": _opt("bool", "Face restoration"),
    "hires_fix_refiner_pass": _opt("choice", "Hires refiner", "first pass", "second pass", "both passes"),
    "sd_vae_encode_method": _opt("choice", "VAE Encoder", "Full", "TAESD"),
    "sd_vae_decode_method": _opt("choice", "VAE Decoder", "Full", "TAESD"),
    "inpainting_mask_weight": _opt("float", "Conditional mask weight", 0.0, 1.0),
    "initial_noise_multiplier": _opt("float", "Noise multiplier", 0.0, 1.5),
    "img2img_extra_noise": _opt("float", "Extra noise", 0.0, 1.0),
    "s_min_uncond": _opt("float", "NGMS", 0.0, 15.0),
    "s_min_uncond_all": _opt("bool", "NGMS all steps"),
    "token_merging_ratio": _opt("float", "Token merging ratio", 0.0, 0.9),
    "token_merging_ratio_hr": _opt("float", "Token merging ratio hr", 0.0, 0.9),
    "pad_cond_uncond": _opt("bool", "Pad conds"),
    "pad_cond_uncond_v0": _opt("bool", "Pad conds v0"),
    "use_old_scheduling": _opt("bool", "Old prompt editing timelines"),
    "use_downcasted_alpha_bar": _opt("bool", "Downcast alphas_cumprod"),
    "refiner_switch_by_sample_steps": _opt("bool", "Refiner switch by sampling steps"),
    "eta_ddim": _opt("float", "Eta DDIM", 0.0, 1.0),
    "eta_ancestral": _opt("float", "Eta", 0.0, 1.0),
    "s_churn": _opt("float", "Sigma churn", 0.0, 100.0),
    "s_tmin": _opt("float", "Sigma tmin", 0.0, 10.0),
    "s_tmax": _opt("float", "Sigma tmax", 0.0, 999.0),
    "s_noise": _opt("float", "Sigma noise", 0.0, 1.1),
    # Free number fields in the Settings; 0 = default.  Trained schedules stay far below these
    # (SD: sigma 0.03-14.6; zero-terminal-SNR ~4,500): only nonsense is refused.
    "sigma_min": _opt("float", "Schedule min sigma", 0.0, 10000.0),
    "sigma_max": _opt("float", "Schedule max sigma", 0.0, 10000.0),
    "rho": _opt("float", "Schedule rho", 0.0, 100.0),
    "eta_noise_seed_delta": _opt("int", "ENSD", 0, MAX_SEED),  # added to the 32-bit seed
    "always_discard_next_to_last_sigma": _opt("bool", "Discard penultimate sigma"),
    "sgm_noise_multiplier": _opt("bool", "SGM noise multiplier"),
    "uni_pc_variant": _opt("choice", "UniPC variant", "bh1", "bh2", "vary_coeff"),
    "uni_pc_skip_type": _opt("choice", "UniPC skip type", "time_uniform", "time_quadratic", "logSNR"),
    "uni_pc_order": _opt("int", "UniPC order", 1, 50),
    "uni_pc_lower_order_final": _opt("bool", "UniPC lower order final"),
    "sd_noise_schedule": _opt("choice", "Noise Schedule", "Default", "Zero Terminal SNR"),
    "skip_early_cond": _opt("float", "Skip Early CFG", 0.0, 1.0),
    "beta_dist_alpha": _opt("float", "Beta scheduler alpha", 0.01, 1.0),
    "beta_dist_beta": _opt("float", "Beta scheduler beta", 0.01, 1.0),
}

_PATH = "its value is a file system path"
_PATTERN = "its value is a file-name pattern"
_WRITES = "it makes the WebUI write files outside the comparison"

#: Options refused with their reason: from shared_options.py, every option whose value is a path or
#: a file-name pattern, or that writes, names or deletes files, or reaches the network.  The WebUI
#: applies override_settings with ``opts.set`` for the whole request (and keeps them when not
#: restored), so any of these would move or add files on the server.
OVERRIDE_REFUSED: Dict[str, str] = {
    **{key: _PATH for key in (
        "outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
        "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids", "outdir_save", "outdir_init_images",
        "temp_dir", "font", "restore_config_state_file", "profiling_filename")},
    **{key: _PATTERN for key in (
        "samples_filename_pattern", "directories_filename_pattern", "grid_zip_filename_pattern",
        "directories_max_prompt_words", "dataset_filename_word_regex", "dataset_filename_join_string")},
    **{key: _WRITES for key in (
        "samples_save", "grid_save", "save_to_dirs", "grid_save_to_dirs", "use_save_to_dirs_for_ui",
        "save_images_before_face_restoration", "save_images_before_highres_fix",
        "save_images_before_color_correction", "save_mask", "save_mask_composite", "save_init_img", "save_txt",
        "save_write_log_csv", "save_incomplete_images", "export_for_4chan", "img_downscale_threshold",
        "target_side_length", "samples_format", "grid_format", "save_images_add_number",
        "save_images_replace_action", "grid_extended_filename", "grid_only_if_multiple", "use_original_name_batch",
        "use_upscaler_name_as_suffix", "profiling_enable", "training_write_csv_every",
        "training_enable_tensorboard", "training_tensorboard_save_images", "save_training_settings_to_txt",
        "save_optimizer_state", "save_selected_only")},
    "clean_temp_dir_at_start": "it deletes files",
    "list_hidden_files": "it changes which files on disk the WebUI loads models from",
    "open_dir_button_choice": "it chooses which server directory the WebUI opens",
    "api_enable_requests": "it lets the WebUI fetch URLs (the WebUI refuses it through the API as well)",
    "api_forbid_local_requests": "it lets the WebUI fetch local URLs (the WebUI refuses it through the API as well)",
    "api_useragent": "it changes the WebUI's network requests (the WebUI refuses it through the API as well)",
    "disabled_extensions": "it changes which extensions load, saved to the WebUI's config",
    "disable_all_extensions": "it changes which extensions load, saved to the WebUI's config",
}

# Extensions add options too: a name like these is refused as a path/saving option.
_PATHLIKE_RE = re.compile(r"dir|path|file|folder|save|pattern|outdir", re.IGNORECASE)


def check_override_settings(value: Any, path: str = "payload.override_settings") -> Dict[str, str]:
    """Problems of an ``override_settings`` object: {field path: why}, empty when it is fine.

    Values must be JSON scalars within the option's range (:data:`OVERRIDE_RULES`); options that
    name paths or write files (:data:`OVERRIDE_REFUSED`, or named like one) and options not in the
    table are refused -- the WebUI itself fails with HTTP 500 on an option it does not know.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {path: f"expected an object of option names and values, got {type(value).__name__}"}
    problems: Dict[str, str] = {}
    for key, option in value.items():
        if len(problems) >= MAX_PROBLEMS:
            problems[path] = f"{len(value)} options; stopped after {MAX_PROBLEMS} problems"
            break
        where = f"{path}.{key}"
        if key in OVERRIDE_REFUSED:
            problems[where] = f"not allowed: {OVERRIDE_REFUSED[key]}"
            continue
        if key not in OVERRIDE_RULES:
            if isinstance(key, str) and _PATHLIKE_RE.search(key):
                problems[where] = "not allowed: names a path, a file name or saving"
            else:
                near = closest_names(key, OVERRIDE_RULES)
                problems[where] = ("not an option a comparison may override (the README lists them)"
                                   + (f"; did you mean {near}?" if near else ""))
            continue
        if isinstance(option, (list, dict)) or not (option is None or isinstance(option, (str, int, float, bool))):
            problems[where] = f"must be a JSON scalar (text, number, true/false), got {type(option).__name__}"
            continue
        try:
            OVERRIDE_RULES[key].rule.check(option)
        except ValueError as err:
            problems[where] = str(err)
    return problems
