"""The A/B request: the API body (and the tab's form) validated, variants parsed, infotext to payload.

Every field is bounded before anything runs (lib_sdfix.limits): the comparison holds the WebUI's
queue lock, so one request must not be able to hold it for hours or exhaust memory.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

from lib_sdfix.ab.plan import MAX_VARIANTS, MODES, plan_variants
from lib_sdfix.imaging.difference import valid_heatmap_gain
from lib_sdfix.limits.txt2img import check_txt2img_payload
from lib_sdfix.limits.values import check_text
from lib_sdfix.parity import is_same_marker
from lib_sdfix.sampling_plan import Variant
from lib_sdfix.seeds import as_int, resolve_payload_seeds
from lib_sdfix.settings import SDFixSettings, SettingsError, describe

__all__ = ["MAX_LABEL_CHARS", "parse_variants", "ABRequest", "ab_request_from_body", "payload_from_infotext",
           "settings_from_infotext"]

#: A label is one line above a grid cell and a table row: more than this is never readable.
MAX_LABEL_CHARS = 128
# Variant names end up in file names and HTML ids: keep them portable.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def parse_variants(value: Any, base: SDFixSettings, path: str = "variants") -> List[Variant]:
    """Variants from the API: "ab", "ablation", ["ab"], or [{"name", "settings", "label"?}, ...].

    Each ``settings`` dict holds named SDFix options (missing ones come from ``base``).  Raises
    :class:`SettingsError` naming every offending field path, e.g. ``variants[1].settings.precision_guard``.
    """
    if isinstance(value, str):
        if value not in MODES:
            _fail(path, f"unknown mode {describe(value)}; expected one of {list(MODES)} or a list of variants")
        return plan_variants(value, base)
    if not isinstance(value, list):
        _fail(path, f"expected one of {list(MODES)} or a list of variants, got {type(value).__name__}")
    if not value:
        _fail(path, "must not be empty")
    if len(value) == 1 and isinstance(value[0], str):
        return parse_variants(value[0], base, f"{path}[0]")
    if len(value) > MAX_VARIANTS:
        _fail(path, f"at most {MAX_VARIANTS} variants, got {len(value)}")

    problems: Dict[str, str] = {}
    variants: List[Variant] = []
    seen: Dict[str, int] = {}
    for i, spec in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(spec, Mapping):
            problems[where] = f"expected an object {{\"name\": ..., \"settings\": {{...}}}}, got {type(spec).__name__}"
            continue
        unknown = [key for key in spec if key not in ("name", "label", "settings")]
        for key in unknown[:10]:
            problems[f"{where}.{key}"] = "unknown field; expected name, label, settings"
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems[f"{where}.name"] = (f"expected 1-32 letters, digits, '_', '-' or '.', starting with a letter or "
                                         f"digit, got {describe(name)}")
        elif name.casefold() in seen:  # names become file names: "a" and "A" collide on Windows/macOS
            problems[f"{where}.name"] = f"duplicate name {name!r} (also variants[{seen[name.casefold()]}])"
        else:
            seen[name.casefold()] = i
        label = spec.get("label", name)
        try:
            check_text(label, MAX_LABEL_CHARS, name=True)
            if not label.strip():
                raise ValueError(f"expected non-empty text, got {describe(label)}")
        except ValueError as err:
            if "label" in spec or f"{where}.name" not in problems:
                problems[f"{where}.label"] = str(err)
        options = spec.get("settings", {})
        settings = None
        if not isinstance(options, Mapping):
            problems[f"{where}.settings"] = f"expected an object of named SDFix options, got {type(options).__name__}"
        else:
            try:
                settings = SDFixSettings.from_mapping(options, base)
            except SettingsError as err:
                problems.update({f"{where}.settings.{k}": v for k, v in err.problems.items()})
        if settings is not None and f"{where}.name" not in problems and f"{where}.label" not in problems:
            variants.append(Variant(name, label, settings))
    if problems:
        raise SettingsError(problems)
    return variants


def _fail(where: str, why: str) -> None:
    raise SettingsError({where: why})


# --- infotext -> payload ----------------------------------------------------------------------------


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__} {value!r}")
    return value


# (infotext key, payload key, converter); Hires entries only apply when the image used Hires.fix.
_INFOTEXT_FIELDS = (
    ("Prompt", "prompt", _as_text),
    ("Negative prompt", "negative_prompt", _as_text),
    ("Steps", "steps", as_int),
    ("Sampler", "sampler_name", _as_text),
    ("Schedule type", "scheduler", _as_text),
    ("CFG scale", "cfg_scale", _as_float),
    ("Seed", "seed", as_int),
    ("Size-1", "width", as_int),
    ("Size-2", "height", as_int),
    ("Denoising strength", "denoising_strength", _as_float),
)
_HIRES_FIELDS = (
    ("Hires upscale", "hr_scale", _as_float),
    ("Hires resize-1", "hr_resize_x", as_int),
    ("Hires resize-2", "hr_resize_y", as_int),
    ("Hires upscaler", "hr_upscaler", _as_text),
    ("Hires steps", "hr_second_pass_steps", as_int),
    ("Hires sampler", "hr_sampler_name", _as_text),
    ("Hires schedule type", "hr_scheduler", _as_text),
    ("Hires prompt", "hr_prompt", _as_text),
    ("Hires negative prompt", "hr_negative_prompt", _as_text),
)


def _uses_hires(params: Mapping[str, Any]) -> bool:
    """As the WebUI's txt2img paste decides: a denoising strength plus a Hires entry (resize 0 = unset)."""
    if "Denoising strength" not in params:
        return False
    if "Hires upscale" in params or "Hires upscaler" in params:
        return True
    return str(params.get("Hires resize-1", 0)).strip() not in ("", "0")


def payload_from_infotext(params: Mapping[str, Any]) -> Dict[str, Any]:
    """A txt2img API payload from the WebUI's parsed infotext (``parse_generation_parameters``).

    Only entries present are set, with API types (ints, floats); Hires entries only when the image
    used Hires.fix (``enable_hr``); "Use same sampler"/"Use same scheduler" are left out (the
    API's default means the same); "Clip skip" becomes an ``override_settings`` entry.  A legacy
    sampler name such as "DPM++ 2M Karras" without "Schedule type" is passed on as is: the WebUI
    API splits it.  SDFix's entries are not part of the payload: see :func:`settings_from_infotext`.
    Raises :class:`SettingsError` naming each entry whose value has the wrong type.
    """
    if not isinstance(params, Mapping):
        raise SettingsError({"params": f"expected parsed generation parameters, got {type(params).__name__}"})
    payload: Dict[str, Any] = {}
    problems: Dict[str, str] = {}
    hires = _uses_hires(params)
    table = _INFOTEXT_FIELDS + (_HIRES_FIELDS if hires else ())
    for key, target, convert in table:
        if key not in params or params[key] is None:
            continue
        try:
            value = convert(params[key])
        except ValueError as err:
            problems[key] = str(err)
            continue
        # "as the first pass": the API's defaults already say that
        if target in ("hr_sampler_name", "hr_scheduler") and is_same_marker(value):
            continue
        if target in ("hr_prompt", "hr_negative_prompt") and not value.strip():
            continue
        payload[target] = value
    if "Clip skip" in params:
        try:
            payload["override_settings"] = {"CLIP_stop_at_last_layers": as_int(params["Clip skip"])}
        except ValueError as err:
            problems["Clip skip"] = str(err)
    if problems:
        raise SettingsError(problems)
    payload["enable_hr"] = hires
    if hires and "hr_scale" not in payload and not payload.get("hr_resize_x") and not payload.get("hr_resize_y"):
        payload["hr_scale"] = 2.0  # the WebUI's default when the infotext names no Hires size
    return payload


def settings_from_infotext(params: Mapping[str, Any], base: SDFixSettings) -> SDFixSettings:
    """The SDFix settings an image was made with (its "SDFix" and "SDFix refine" entries), else ``base``.

    Raises :class:`SettingsError` when an entry is there but unreadable.
    """
    settings = SDFixSettings.from_infotext_params(params, base)
    return base if settings is None else settings


# --- the API body ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ABRequest:
    """A validated POST /sdfix/v1/ab body.  ``payload`` is the caller's txt2img fields (a copy)."""

    payload: Dict[str, Any]
    variants: Tuple[Variant, ...]
    heatmap_gain: float = 4.0
    save: bool = False

    @property
    def reference(self) -> Variant:
        return self.variants[0]

    def with_resolved_seed(self, rng: Optional[random.Random] = None) -> "ABRequest":
        """A copy whose payload has a concrete seed (and subseed, when variation seeds are on), so
        every variant renders the same noise."""
        return replace(self, payload=resolve_payload_seeds(self.payload, rng))


_BODY_FIELDS = ("payload", "variants", "heatmap_gain", "save")


def ab_request_from_body(body: Any, base: SDFixSettings, *,
                         choices: Optional[Mapping[str, Any]] = None,
                         extra_rules: Optional[Mapping[str, Any]] = None) -> ABRequest:
    """Validate the JSON body of POST /sdfix/v1/ab (and of the A/B tab's form) before anything runs.

    ``{"payload": {txt2img fields}, "variants": "ab" | "ablation" | [...] (default "ab"),
    "heatmap_gain": 1-64 (default 4), "save": bool (default false)}``.  Every payload field is
    bounded as the WebUI's UI bounds it (:func:`lib_sdfix.limits.txt2img.check_txt2img_payload`: sizes,
    steps, prompts, option overrides; unknown fields refused); ``choices`` (optional) maps name
    fields to the names the WebUI knows, e.g. ``{"hr_upscaler": [...]}``.  The request's payload is
    the checked, normalised copy.  Raises :class:`SettingsError` naming every offending field
    path (``payload.width``, ``variants[1].label``, ...).
    """
    if not isinstance(body, Mapping):
        raise SettingsError({"body": f"expected a JSON object, got {type(body).__name__}"})
    problems: Dict[str, str] = {}
    unknown = [key for key in body if key not in _BODY_FIELDS]
    for key in unknown[:10]:
        problems[str(key)] = f"unknown field; expected {list(_BODY_FIELDS)}"

    fields: Dict[str, Any] = {}
    if "payload" not in body:
        problems["payload"] = "required: the txt2img fields (prompt, seed, steps, ...)"
    else:
        try:
            fields = check_txt2img_payload(body["payload"], "payload", choices=choices, extra_rules=extra_rules)
        except SettingsError as err:
            problems.update(err.problems)

    variants: List[Variant] = []
    try:
        variants = parse_variants(body.get("variants", "ab"), base)
    except SettingsError as err:
        problems.update(err.problems)

    gain = body.get("heatmap_gain", 4.0)
    if not valid_heatmap_gain(gain):
        problems["heatmap_gain"] = f"must be a number between 1 and 64, got {describe(gain)}"

    save = body.get("save", False)
    if not isinstance(save, bool):
        problems["save"] = f"expected true or false, got {type(save).__name__} {describe(save)}"

    if problems:
        raise SettingsError(problems)
    return ABRequest(fields, tuple(variants), float(gain), save)
