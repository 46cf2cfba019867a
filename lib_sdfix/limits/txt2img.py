"""Bounds on what one API request may ask the WebUI to do through SDFix: txt2img fields, option
overrides, images.

Why: SDFix's A/B route runs generations while holding the WebUI's queue lock, so a single request
with a huge size or step count, an option override that writes files elsewhere, or a value that
only fails deep inside the WebUI (HTTP 500) could take the WebUI down for everyone.  The numbers
are the WebUI v1.10.1 UI's own ranges (``modules/ui.py`` and friends), so everything a user can do
in the txt2img tab passes; where the WebUI has no bound, the one chosen here says why.  Every
refusal is a :class:`~lib_sdfix.settings.SettingsError` naming the field path, e.g.
``payload.width``, which the routes answer with HTTP 422.  (Over the usual ~400 lines: most of it
is the tables -- one rule per txt2img field and per overridable option, each with its source.)
"""
from __future__ import annotations

import base64
import binascii
import difflib
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from lib_sdfix.names import check_payload_names
from lib_sdfix.settings import SettingsError, describe

__all__ = [
    "MIN_SIDE",
    "MAX_SIDE",
    "SIDE_STEP",
    "MAX_STEPS",
    "MAX_SEED",
    "MAX_PROMPT_CHARS",
    "MAX_INFOTEXT_CHARS",
    "MAX_NAME_CHARS",
    "MAX_STYLES",
    "MAX_IMAGE_PIXELS",
    "IMAGE_FORMATS",
    "Rule",
    "PAYLOAD_RULES",
    "OVERRIDE_RULES",
    "OVERRIDE_REFUSED",
    "check_txt2img_payload",
    "check_override_settings",
    "hires_size",
    "check_text",
    "decode_image_field",
    "max_base64_chars",
]

#: Width/height sliders: 64-2048 in steps of 8 (ui.py, txt2img and img2img).  Latents are 1/8 of the
#: image, so other sizes are silently cut by the WebUI.
MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 2048, 8
#: Sampling steps slider (processing_scripts/sampler.py) and Hires steps slider (ui.py).
MAX_STEPS = 150
#: Seeds are 32-bit: the WebUI draws random ones below 4294967294 (processing.get_fixed_seed) and
#: writes them into infotexts; -1 means random.
MAX_SEED = 4294967295
#: The WebUI sets no prompt limit (its textbox is unbounded, CLIP chunking takes any number of
#: 75-token chunks).  It writes the infotext of a JPEG/WebP output as one EXIF segment (at most
#: 65,535 bytes, UTF-16 via piexif's "unicode" UserComment: about 32,767 characters), so longer
#: parameters cannot be saved and pasted back; the four prompt fields at 8,000 each fit in it.
MAX_PROMPT_CHARS = 8000
#: The same EXIF segment, for a whole infotext.
MAX_INFOTEXT_CHARS = 32767
#: Names the WebUI looks up (samplers, upscalers, checkpoint titles with sub-folders and hash):
#: none comes near this; it only keeps a lookup key from being megabytes long.
MAX_NAME_CHARS = 1024
#: The WebUI sets no limit on applied styles; each one is merged into the prompt.
MAX_STYLES = 64
#: The largest image the UI lets a user make in one pass (2048 x 2048).
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
#: What the WebUI writes (samples_format png/jpg/webp); exotic decoders stay out of reach.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
#: Containers the comparison ignores (other extensions' args, script_args, comments) are only
#: bounded: depth, number of values, text (room for one base64 image, see JSON_MAX_CHARS).
JSON_MAX_DEPTH = 16
JSON_MAX_VALUES = 10000


def max_base64_chars(max_pixels: int) -> int:
    """Longest base64 text an image of ``max_pixels`` can need: 8-bit RGBA stored uncompressed
    (PNG's worst case) plus row filter bytes, chunk overhead and MIME line breaks."""
    raw = max_pixels * 4 + max_pixels // 64 + 65536
    encoded = 4 * ((raw + 2) // 3)
    return encoded + encoded // 64 + 256


#: Total text in one ignored container: one base64 image of the largest size.
JSON_MAX_CHARS = max_base64_chars(MAX_IMAGE_PIXELS)
#: Problems collected per container before the rest is summarised: a body with 100,000 unknown
#: keys must not cost 100,000 suggestions.
_MAX_PROBLEMS = 50


# --- values ---------------------------------------------------------------------------------------


def _integer(value: Any) -> int:
    """A JSON integer (12 or 12.0: JSON has one number type); bool, text and fractions refused."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {type(value).__name__} {describe(value)}")


def _number(value: Any) -> float:
    """A finite JSON number; bool, text, NaN and infinities refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__} {describe(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"number out of range: {describe(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {describe(value)}")
    return number


def check_text(value: Any, max_chars: int, *, name: bool = False) -> str:
    """Text of at most ``max_chars`` that the WebUI can write out: valid Unicode (a lone surrogate
    breaks every UTF-8 encode: infotext, PNG chunks, logs), no NUL; ``name``: no control characters."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__} {describe(value)}")
    if len(value) > max_chars:
        raise ValueError(f"at most {max_chars} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (an unpaired surrogate)") from None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if name and _CONTROL_RE.search(value):
        raise ValueError(f"must not contain control characters, got {describe(value)}")
    return value


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _json_problem(value: Any, path: str) -> Optional[Tuple[str, str]]:
    """(path, why) of the first thing in ``value`` beyond the bounds of an ignored container."""
    stack: List[Tuple[Any, str, int]] = [(value, path, 0)]
    seen = chars = 0
    while stack:
        item, where, depth = stack.pop()
        seen += 1
        if seen > JSON_MAX_VALUES:
            return path, f"more than {JSON_MAX_VALUES} values"
        if isinstance(item, Mapping):
            if depth >= JSON_MAX_DEPTH:
                return where, f"nested deeper than {JSON_MAX_DEPTH} levels"
            for key, sub in item.items():
                if not isinstance(key, str) or len(key) > MAX_NAME_CHARS:
                    return where, f"keys must be text of at most {MAX_NAME_CHARS} characters"
                stack.append((sub, f"{where}.{key}", depth + 1))
        elif isinstance(item, list):
            if depth >= JSON_MAX_DEPTH:
                return where, f"nested deeper than {JSON_MAX_DEPTH} levels"
            stack.extend((sub, f"{where}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, str):
            try:
                check_text(item, JSON_MAX_CHARS)
            except ValueError as err:
                return where, str(err)
            chars += len(item)
            if chars > JSON_MAX_CHARS:
                return path, f"more than {JSON_MAX_CHARS} characters of text in all"
        elif isinstance(item, float) and not math.isfinite(item):
            return where, f"expected a finite number, got {describe(item)}"
        elif item is not None and not isinstance(item, (bool, int, float)):
            return where, f"expected JSON data, got {type(item).__name__}"
    return None


@dataclass(frozen=True)
class Rule:
    """What one field accepts, and where the bound comes from.

    ``kind``: "int", "float", "bool", "text" (``maximum`` characters), "name", "names" (a list of
    at most ``maximum`` names), "choice" or "json" (an ignored container, only bounded).  ``also``
    lists values accepted outside the range (0 = unset, -1 = random).
    """

    kind: str
    source: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: int = 1
    also: Tuple[Any, ...] = ()
    nullable: bool = False
    choices: Tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        """The value, normalised (12.0 -> 12 for integers, floats for numbers); ValueError says why not."""
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"must not be null; expected {self.describe()}")
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type(value).__name__} {describe(value)}")
            return value
        if kind == "int":
            number = _integer(value)
            if number in self.also:
                return number
            if not self.minimum <= number <= self.maximum or number % self.step:
                raise ValueError(f"must be {self.describe()}, got {describe(value)}")
            return number
        if kind == "float":
            number = _number(value)
            if not self.minimum <= number <= self.maximum:
                raise ValueError(f"must be {self.describe()}, got {describe(value)}")
            return number
        if kind == "text":
            return check_text(value, int(self.maximum))
        if kind == "name":
            return check_text(value, MAX_NAME_CHARS, name=True)
        if kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"must be one of {list(self.choices)}, got {describe(value)}")
            return value
        if kind == "names":
            if not isinstance(value, list):
                raise ValueError(f"expected a list of names, got {type(value).__name__} {describe(value)}")
            if len(value) > self.maximum:
                raise ValueError(f"at most {int(self.maximum)} names, got {len(value)}")
            for i, item in enumerate(value):
                try:
                    check_text(item, MAX_NAME_CHARS, name=True)
                except ValueError as err:
                    raise ValueError(f"item {i}: {err}") from None
            return list(value)
        if kind == "json":
            problem = _json_problem(value, "")
            if problem:
                where, why = problem
                raise ValueError(f"{where.lstrip('.')}: {why}" if where else why)
            return value
        raise AssertionError(kind)

    def describe(self) -> str:
        """The accepted values in words, for messages and the README table."""
        if self.kind == "int":
            also = "".join(f"{a} or " for a in self.also)
            step = f" in steps of {self.step}" if self.step != 1 else ""
            text = f"{also}{self.minimum:g}-{self.maximum:g}{step}"
        elif self.kind == "float":
            text = f"a number {self.minimum:g}-{self.maximum:g}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "text":
            text = f"text of at most {int(self.maximum)} characters"
        elif self.kind == "name":
            text = f"a name of at most {MAX_NAME_CHARS} characters"
        elif self.kind == "names":
            text = f"a list of at most {int(self.maximum)} names"
        elif self.kind == "choice":
            text = f"one of {list(self.choices)}"
        else:
            text = f"JSON data, at most {JSON_MAX_DEPTH} levels deep and {JSON_MAX_VALUES} values"
        return text + (" or null" if self.nullable else "")


def _int(lo: int, hi: int, source: str, **kw: Any) -> Rule:
    return Rule("int", source, lo, hi, **kw)


def _float(lo: float, hi: float, source: str, **kw: Any) -> Rule:
    return Rule("float", source, lo, hi, **kw)


def _bool(source: str, **kw: Any) -> Rule:
    return Rule("bool", source, **kw)


def _name(source: str) -> Rule:
    return Rule("name", source, nullable=True)


_PROMPT = Rule("text", "WebUI: no limit; SDFix: MAX_PROMPT_CHARS (fits the WebUI's JPEG/WebP infotext)",
               maximum=MAX_PROMPT_CHARS)
_SIDE = "ui.py width/height sliders 64-2048 step 8"
_IGNORED = "not used by the comparison (it renders SDFix's variants only); bounded so it cannot be huge"

#: Every field of the WebUI's txt2img API model (api/models.py: StableDiffusionProcessingTxt2Img's
#: init fields minus API_NOT_ALLOWED, plus the API's extra fields), with what the comparison accepts.
#: ``nullable`` where the WebUI's own default is null; a null elsewhere fails inside the WebUI.
PAYLOAD_RULES: Dict[str, Rule] = {
    "prompt": _PROMPT,
    "negative_prompt": _PROMPT,
    "hr_prompt": _PROMPT,
    "hr_negative_prompt": _PROMPT,
    "styles": Rule("names", "WebUI: no limit; SDFix: MAX_STYLES", maximum=MAX_STYLES, nullable=True),
    "seed": _int(0, MAX_SEED, "32-bit seeds, processing.get_fixed_seed; null = -1", also=(-1,), nullable=True),
    "subseed": _int(0, MAX_SEED, "as seed", also=(-1,), nullable=True),
    "subseed_strength": _float(0, 1, "processing_scripts/seed.py Variation strength slider 0-1"),
    "seed_resize_from_h": _int(0, MAX_SIDE, "processing_scripts/seed.py slider 0-2048 step 8; API default -1 (off)",
                               step=SIDE_STEP, also=(-1,)),
    "seed_resize_from_w": _int(0, MAX_SIDE, "processing_scripts/seed.py slider 0-2048 step 8; API default -1 (off)",
                               step=SIDE_STEP, also=(-1,)),
    "sampler_name": _name("a sampler name (the glue checks it exists)"),
    "sampler_index": _name("a sampler name (legacy API field)"),
    "scheduler": _name("a schedule type name"),
    "batch_size": _int(1, 8, "ui.py Batch size slider 1-8; A/B compares one image: 1"),
    "n_iter": _int(1, 100, "ui.py Batch count slider (gradio's default maximum 100); A/B compares one image: 1"),
    "steps": _int(1, MAX_STEPS, "processing_scripts/sampler.py Sampling steps slider 1-150"),
    "cfg_scale": _float(1, 30, "ui.py CFG Scale slider 1-30"),
    "width": _int(MIN_SIDE, MAX_SIDE, _SIDE, step=SIDE_STEP),
    "height": _int(MIN_SIDE, MAX_SIDE, _SIDE, step=SIDE_STEP),
    "restore_faces": _bool("checkbox", nullable=True),
    "tiling": _bool("checkbox", nullable=True),
    "do_not_save_samples": _bool("the comparison never saves through the WebUI"),
    "do_not_save_grid": _bool("the comparison never saves through the WebUI"),
    "eta": _float(0, 1, "shared_options.py eta_ancestral/eta_ddim sliders 0-1", nullable=True),
    "denoising_strength": _float(0, 1, "ui.py Denoising strength slider 0-1"),
    "s_min_uncond": _float(0, 15, "shared_options.py s_min_uncond slider 0-15", nullable=True),
    "s_churn": _float(0, 100, "shared_options.py s_churn slider 0-100", nullable=True),
    "s_tmax": _float(0, 999, "shared_options.py s_tmax slider 0-999", nullable=True),
    "s_tmin": _float(0, 10, "shared_options.py s_tmin slider 0-10", nullable=True),
    "s_noise": _float(0, 1.1, "shared_options.py s_noise slider 0-1.1", nullable=True),
    "override_settings": Rule("json", "see OVERRIDE_RULES", nullable=True),  # checked by check_override_settings
    "override_settings_restore_afterwards": _bool("the comparison always restores the options: true only"),
    "refiner_checkpoint": _name("a checkpoint title"),
    "refiner_switch_at": _float(0.01, 1, "processing_scripts/refiner.py Switch at slider 0.01-1", nullable=True),
    "disable_extra_networks": _bool("checkbox"),
    "firstpass_image": Rule("json", "refused unless null: the comparison renders every variant from the prompt "
                                    "(the WebUI's API passes it on undecoded, as text)", nullable=True),
    "comments": Rule("json", _IGNORED + " (the WebUI resets it too)", nullable=True),
    "enable_hr": _bool("checkbox"),
    "firstphase_width": _int(MIN_SIDE, MAX_SIDE, "legacy Hires first-pass size: 0, or as width", step=SIDE_STEP, also=(0,)),
    "firstphase_height": _int(MIN_SIDE, MAX_SIDE, "legacy Hires first-pass size: 0, or as height", step=SIDE_STEP, also=(0,)),
    "hr_scale": _float(1, 4, "ui.py Upscale by slider 1-4"),
    "hr_upscaler": _name("an upscaler name"),
    "hr_second_pass_steps": _int(0, MAX_STEPS, "ui.py Hires steps slider 0-150"),
    "hr_resize_x": _int(MIN_SIDE, MAX_SIDE, "ui.py Resize width to slider 0-2048 step 8 (0 = unset; below 64 is no image size)",
                        step=SIDE_STEP, also=(0,)),
    "hr_resize_y": _int(MIN_SIDE, MAX_SIDE, "ui.py Resize height to slider 0-2048 step 8 (0 = unset; below 64 is no image size)",
                        step=SIDE_STEP, also=(0,)),
    "hr_checkpoint_name": _name("a checkpoint title"),
    "hr_sampler_name": _name("a sampler name"),
    "hr_scheduler": _name("a schedule type name"),
    "force_task_id": _name(_IGNORED),
    "script_name": _name(_IGNORED),
    "script_args": Rule("json", _IGNORED, nullable=True),
    "send_images": _bool(_IGNORED),
    "save_images": _bool(_IGNORED + "; use the body's \"save\""),
    "alwayson_scripts": Rule("json", "other extensions' AlwaysOn script args, run in every variant as the WebUI's "
                                     "API runs them; sdfix refused: each variant carries its settings", nullable=True),
    "infotext": Rule("text", _IGNORED + "; MAX_INFOTEXT_CHARS", maximum=MAX_INFOTEXT_CHARS, nullable=True),
}


# --- override_settings ------------------------------------------------------------------------------

_INFOTEXT = "a generation parameter the WebUI restores from infotext ({}) into override_settings"


def _opt(rule_kind: str, label: str, *args: Any, **kw: Any) -> Tuple[Rule, str]:
    reason = _INFOTEXT.format(f"'{label}'") if label else kw.pop("reason")
    if rule_kind == "int":
        return Rule("int", "shared_options.py", args[0], args[1]), reason
    if rule_kind == "float":
        return Rule("float", "shared_options.py", args[0], args[1]), reason
    if rule_kind == "choice":
        return Rule("choice", "shared_options.py", choices=tuple(args)), reason
    if rule_kind == "name":
        return Rule("name", "shared_options.py"), reason
    return Rule("bool", "shared_options.py"), reason


#: Options a comparison may override, with their range (the Settings slider or choices in
#: shared_options.py) and why: they are the ones that change how one image is generated -- the
#: WebUI marks them with an infotext name and restores them from a pasted infotext the same way.
OVERRIDE_RULES: Dict[str, Tuple[Rule, str]] = {
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
        if len(problems) >= _MAX_PROBLEMS:
            problems[path] = f"{len(value)} options; stopped after {_MAX_PROBLEMS} problems"
            break
        where = f"{path}.{key}"
        if key in OVERRIDE_REFUSED:
            problems[where] = f"not allowed: {OVERRIDE_REFUSED[key]}"
            continue
        if key not in OVERRIDE_RULES:
            if isinstance(key, str) and _PATHLIKE_RE.search(key):
                problems[where] = "not allowed: names a path, a file name or saving"
            else:
                near = _closest(key, OVERRIDE_RULES)
                problems[where] = ("not an option a comparison may override (the README lists them)"
                                   + (f"; did you mean {near}?" if near else ""))
            continue
        if isinstance(option, (list, dict)) or not (option is None or isinstance(option, (str, int, float, bool))):
            problems[where] = f"must be a JSON scalar (text, number, true/false), got {type(option).__name__}"
            continue
        try:
            OVERRIDE_RULES[key][0].check(option)
        except ValueError as err:
            problems[where] = str(err)
    return problems


def _closest(key: Any, known: Collection[str]) -> str:
    """The known names nearest to ``key`` (only for short keys: difflib is quadratic)."""
    if not isinstance(key, str) or len(key) > 64:
        return ""
    return ", ".join(difflib.get_close_matches(key, list(known), n=3))


# --- the whole payload ----------------------------------------------------------------------------


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> Tuple[int, int]:
    """The size the Hires pass upscales to, as processing.calculate_target_resolution computes it
    (before cropping to an explicit resize target)."""
    if resize_x == 0 and resize_y == 0:
        return int(width * scale), int(height * scale)
    if resize_y == 0:
        return resize_x, resize_x * height // width
    if resize_x == 0:
        return resize_y * width // height, resize_y
    if width / height < resize_x / resize_y:
        return resize_x, resize_x * height // width
    return resize_y * width // height, resize_y


def check_txt2img_payload(payload: Any, path: str = "payload", *,
                          choices: Optional[Mapping[str, Collection[str]]] = None,
                          extra_rules: Optional[Mapping[str, "Rule"]] = None) -> Dict[str, Any]:
    """The txt2img fields of an A/B body, checked against :data:`PAYLOAD_RULES`; a normalised copy.

    Unknown fields are refused (the WebUI's API model would ignore them: a typo such as "step"
    would silently compare something else).  Besides each field's own range: A/B compares one
    image (batch_size and n_iter 1); the Hires size stays within 64-2048 per side (the UI's largest
    width/height; the UI itself allows 2048 x 4); ``override_settings`` per
    :func:`check_override_settings`; ``firstpass_image`` and ``alwayson_scripts.sdfix`` are refused.
    ``choices`` maps a name field to the names the host accepts there (a :class:`lib_sdfix.names.Names`
    or a list, e.g. ``{"hr_upscaler": [...]}``: the WebUI fails with HTTP 500 on an unknown Hires
    upscaler and silently replaces an unknown schedule type), checked by
    :func:`lib_sdfix.names.check_payload_names`; accepted names come back in their canonical form.
    ``extra_rules`` adds the fields a fork's API model has beyond AUTOMATIC1111's (Forge's
    ``hr_additional_modules``).  Raises :class:`SettingsError`.
    """
    rules = {**PAYLOAD_RULES, **(extra_rules or {})}
    if not isinstance(payload, Mapping):
        raise SettingsError({path: f"expected an object of txt2img fields, got {type(payload).__name__}"})
    problems: Dict[str, str] = {}
    fields: Dict[str, Any] = {}
    unknown = 0
    for key, value in payload.items():
        where = f"{path}.{key}"
        rule = rules.get(key) if isinstance(key, str) else None
        if rule is None:
            unknown += 1
            if unknown <= _MAX_PROBLEMS:
                near = _closest(key, rules)
                problems[where] = "unknown txt2img field" + (f"; did you mean {near}?" if near else "")
            continue
        if key == "firstpass_image" and value is not None:
            problems[where] = "not supported: the comparison renders every variant from the prompt"
            continue
        if key == "override_settings":
            found = check_override_settings(value, where)
            problems.update(found)
            if not found:
                fields[key] = dict(value) if value is not None else None
            continue
        try:
            fields[key] = rule.check(value)
        except ValueError as err:
            problems[where] = str(err)
    if unknown > _MAX_PROBLEMS:
        problems[path] = f"{unknown} unknown fields"

    def ok(*keys: str) -> bool:
        return all(f"{path}.{k}" not in problems for k in keys)

    for key in ("batch_size", "n_iter"):
        if ok(key) and fields.get(key, 1) != 1:
            problems[f"{path}.{key}"] = f"A/B compares one image: must be 1, got {fields[key]}"
    if fields.get("override_settings_restore_afterwards") is False:
        problems[f"{path}.override_settings_restore_afterwards"] = (
            "must be true: the comparison always restores the options it overrides")
    scripts = fields.get("alwayson_scripts")
    if scripts is not None and not isinstance(scripts, Mapping):
        problems[f"{path}.alwayson_scripts"] = f"expected an object, got {type(scripts).__name__}"
    elif scripts:
        for name in scripts:
            if str(name).lower() == "sdfix":  # the WebUI matches script titles case-insensitively
                problems[f"{path}.alwayson_scripts.{name}"] = "not allowed here: each variant carries its SDFix settings"
    first_w, first_h = fields.get("firstphase_width", 0), fields.get("firstphase_height", 0)
    if ok("firstphase_width", "firstphase_height") and (first_w == 0) != (first_h == 0):
        problems[f"{path}.firstphase_width" if first_w else f"{path}.firstphase_height"] = (
            "set both firstphase_width and firstphase_height, or neither")
    hires_fields = ("width", "height", "hr_scale", "hr_resize_x", "hr_resize_y", "firstphase_width", "firstphase_height")
    if fields.get("enable_hr") is True and ok(*hires_fields):
        width, height = (first_w, first_h) if first_w or first_h else (fields.get("width", 512), fields.get("height", 512))
        rx, ry = fields.get("hr_resize_x", 0), fields.get("hr_resize_y", 0)
        size = hires_size(width, height, fields.get("hr_scale", 2.0), rx, ry)
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in size):
            # Name a field the client sent: the one setting the Hires size, else what it multiplies.
            named = ("hr_resize_x", "hr_resize_y") if rx or ry else ("hr_scale", "width", "height", "firstphase_width")
            culprit = next((k for k in named if fields.get(k)), "enable_hr")
            problems[f"{path}.{culprit}"] = (f"the Hires pass would be {size[0]}x{size[1]} from {width}x{height}; "
                                             f"each side must be {MIN_SIDE}-{MAX_SIDE}")
    problems.update(check_payload_names(fields, choices or {}, path))
    if problems:
        raise SettingsError(problems)
    return fields


# --- images -------------------------------------------------------------------------------------

_WHITESPACE_RE = re.compile(r"[ \t\r\n]+")


def decode_image_field(value: Any, field_path: str, max_pixels: int = MAX_IMAGE_PIXELS, *,
                       max_chars: Optional[int] = None) -> Any:
    """A base64 image from an API body as a loaded PIL image, or :class:`SettingsError` naming ``field_path``.

    Accepts plain base64 or a ``data:image/...;base64,`` URL (as the WebUI does), PNG, JPEG or WebP
    (:data:`IMAGE_FORMATS`; no URLs are fetched).  Refused before any pixel is decoded: text longer
    than such an image can need (``max_chars``, default :func:`max_base64_chars`), bad base64, data
    Pillow cannot identify, and a header claiming more than ``max_pixels`` pixels -- a few bytes
    can claim 100000x100000 and would take gigabytes to decode.  The check is SDFix's own: Pillow's
    global ``Image.MAX_IMAGE_PIXELS`` may be off (the WebUI's X/Y/Z plot script sets it to None).
    Damaged pixel data is refused too.
    """
    from PIL import Image

    def fail(why: str) -> None:
        raise SettingsError({field_path: why})

    if not isinstance(value, str):
        fail(f"expected a base64-encoded PNG, JPEG or WebP image (text), got {type(value).__name__} {describe(value)}")
    limit = max_chars if max_chars is not None else max_base64_chars(max_pixels)
    if len(value) > limit:
        fail(f"{len(value)} characters is more than an image of at most {max_pixels} pixels needs ({limit})")
    text = value
    if text.startswith(("http://", "https://")):
        fail("URLs are not fetched: send the image itself, base64-encoded")
    if text.startswith("data:"):
        comma = text.find(",", 0, 256)
        header = text[:comma] if comma >= 0 else ""
        if not (header.startswith("data:image/") and header.endswith(";base64")):
            fail("expected plain base64 or a data:image/...;base64, URL")
        text = text[comma + 1:]
    text = _WHITESPACE_RE.sub("", text)
    if not text:
        fail("empty: expected a base64-encoded image")
    if len(text) % 4 == 1:
        fail("not valid base64 (wrong length)")
    text += "=" * (-len(text) % 4)  # clients often drop the padding
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        fail("not valid base64")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as err:
        fail(f"image header claims more than {max_pixels} pixels ({err})")
    except Exception:  # noqa: BLE001 -- any parse failure of untrusted bytes means "not an image"
        fail(f"not a {', '.join(IMAGE_FORMATS)} image")
    width, height = image.size
    if width < 1 or height < 1:
        fail(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        fail(f"image header claims {width}x{height} = {width * height} pixels; at most {max_pixels}")
    try:
        image.load()
    except Exception:  # noqa: BLE001 -- truncated or corrupt pixel data
        fail(f"damaged {image.format} image data")
    return image
