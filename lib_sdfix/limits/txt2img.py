"""The txt2img fields of a request: one rule per field of the WebUI's txt2img API model, with its
source, and the check of a whole payload (unknown fields, one image, the Hires size, option
overrides, the host's names)."""
from __future__ import annotations

from typing import Any, Collection, Dict, Mapping, Optional, Tuple

from lib_sdfix.limits.overrides import check_override_settings
from lib_sdfix.limits.values import (
    MAX_INFOTEXT_CHARS,
    MAX_PROBLEMS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_STYLES,
    MIN_SIDE,
    SIDE_STEP,
    Rule,
    closest_names,
)
from lib_sdfix.names import check_payload_names
from lib_sdfix.settings import SettingsError

__all__ = ["PAYLOAD_RULES", "hires_size", "check_txt2img_payload"]


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
            if unknown <= MAX_PROBLEMS:
                near = closest_names(key, rules)
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
    if unknown > MAX_PROBLEMS:
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
