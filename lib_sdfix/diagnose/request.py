"""The diagnosis request: the body of POST /sdfix/v1/diagnose (and the tab's forms), validated and bounded.

A diagnosis runs generations while the WebUI's queue lock is held, like an A/B comparison, so every
field is bounded before anything runs: the txt2img fields by
:func:`lib_sdfix.limits.txt2img.check_txt2img_payload`, the image by
:func:`lib_sdfix.limits.images.decode_image_field`, and what a diagnosis adds -- how many values a
sweep may have, which steps a strip may show -- here.  Every refusal names the field.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from lib_sdfix.diagnose.optimizations import MAX_OPTIONS, MAX_REPEATS, UNSET
from lib_sdfix.diagnose.plan import AXES, DEFAULT_VALUES, Cell, sweep_cells, value_text
from lib_sdfix.diagnose.roundtrip import VARIANTS
from lib_sdfix.diagnose.speed_options import OPTION_NAMES, check_option_value, known_option
from lib_sdfix.image_input import ImageModeError, to_rgb8
from lib_sdfix.imaging.difference import valid_heatmap_gain
from lib_sdfix.limits.images import decode_image_field
from lib_sdfix.limits.txt2img import PAYLOAD_RULES, check_txt2img_payload
from lib_sdfix.limits.values import MAX_SIDE, MIN_SIDE, check_text, closest_names
from lib_sdfix.names import Names, canonical_name
from lib_sdfix.seeds import resolve_payload_seeds
from lib_sdfix.settings import SDFixSettings, SettingsError, describe

__all__ = ["KINDS", "MAX_SWEEP_VALUES", "MAX_STRIP_STEPS", "RoundTripRequest", "SweepRequest", "StepsRequest",
           "OptimizationsRequest", "check_options", "check_repeats",
           "diagnose_request_from_body", "default_strip_steps", "parse_value_list", "check_value", "check_values",
           "check_at", "check_variants", "default_values", "default_reference"]

KINDS = ("vae_roundtrip", "sweep", "steps", "optimizations")
#: Cells of one sweep: each may be a full sampling of up to 150 steps under the queue lock.
MAX_SWEEP_VALUES = 12
#: Intermediate decodes in one strip: each is a full VAE decode.
MAX_STRIP_STEPS = 16
#: The API model's default step count (the WebUI's StableDiffusionProcessing has steps=50).
API_DEFAULT_STEPS = 50

_COMMON = ("kind", "heatmap_gain", "save")
_FIELDS = {"vae_roundtrip": _COMMON + ("image", "dtypes"), "sweep": _COMMON + ("payload", "axis", "values", "reference"),
           "steps": _COMMON + ("payload", "at"), "optimizations": _COMMON + ("payload", "options", "repeats")}


@dataclass(frozen=True)
class RoundTripRequest:
    """Encode + decode ``image`` through the current VAE in each of ``variants`` (lib_sdfix.diagnose.roundtrip)."""

    image: Any
    variants: Tuple[str, ...]
    heatmap_gain: float = 4.0
    save: bool = False
    kind: str = "vae_roundtrip"


@dataclass(frozen=True)
class SweepRequest:
    """One generation with one variable swept over ``values``; ``reference`` is the value the others are compared with."""

    payload: Dict[str, Any]
    axis: str
    values: Tuple[Any, ...]
    reference: Any
    cells: Tuple[Cell, ...]
    heatmap_gain: float = 4.0
    save: bool = False
    kind: str = "sweep"

    @property
    def reference_cell(self) -> Cell:
        return self.cells[self.values.index(self.reference)]

    def with_resolved_seed(self, rng: Optional[random.Random] = None) -> "SweepRequest":
        return replace(self, payload=resolve_payload_seeds(self.payload, rng))


@dataclass(frozen=True)
class StepsRequest:
    """One generation whose denoised prediction is decoded at the steps ``at`` (empty: chosen from its steps)."""

    payload: Dict[str, Any]
    at: Tuple[int, ...]
    heatmap_gain: float = 4.0
    save: bool = False
    kind: str = "steps"

    @property
    def steps(self) -> int:
        return int(self.payload.get("steps", API_DEFAULT_STEPS))

    def with_resolved_seed(self, rng: Optional[random.Random] = None) -> "StepsRequest":
        return replace(self, payload=resolve_payload_seeds(self.payload, rng))


@dataclass(frozen=True)
class OptimizationsRequest:
    """The user's generation measured with their speed and memory options off, each on alone, and all on
    (lib_sdfix.diagnose.optimizations); ``options`` None: every switchable one that is on; else (name,
    value or UNSET for the user's own value)."""

    payload: Dict[str, Any]
    options: Optional[Tuple[Tuple[str, Any], ...]]
    repeats: int = 1
    heatmap_gain: float = 4.0
    save: bool = False
    kind: str = "optimizations"

    def with_resolved_seed(self, rng: Optional[random.Random] = None) -> "OptimizationsRequest":
        return replace(self, payload=resolve_payload_seeds(self.payload, rng))


def check_options(value: Any) -> Optional[Tuple[Tuple[str, Any], ...]]:
    """``options``: a list of names (each measured at the user's value) or an object name -> value to try
    (null: the user's value);
    every name must be in lib_sdfix.diagnose.speed_options (a 422 names an unknown one)."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [(f"options[{i}]", name, UNSET) for i, name in enumerate(value)]
    elif isinstance(value, Mapping):
        items = [(f"options.{str(name)[:64]}", name, item) for name, item in value.items()]
    else:
        raise SettingsError({"options": f"expected a list of option names or an object name -> value, got "
                                        f"{type(value).__name__} {describe(value)}"})
    if not items:
        raise SettingsError({"options": "expected at least one option (leave the field out to measure every option on)"})
    if len(items) > MAX_OPTIONS:
        raise SettingsError({"options": f"at most {MAX_OPTIONS} options per request, got {len(items)}"})
    problems: Dict[str, str] = {}
    out: List[Tuple[str, Any]] = []
    for path, name, item in items:
        option = known_option(name)
        if option is None:
            near = closest_names(name, OPTION_NAMES)
            problems[path] = f"unknown option {describe(name)}" + (f"; did you mean {near}?" if near else "")
            continue
        if any(name == key for key, _ in out):
            problems[path] = f"duplicate option {name!r}"
            continue
        if item is None:  # {"name": null}: the user's own value
            item = UNSET
        if item is not UNSET:
            try:
                item = check_option_value(option, item)
            except ValueError as err:
                problems[path] = str(err)
                continue
        out.append((name, item))
    if problems:
        raise SettingsError(problems)
    return tuple(out)


def check_repeats(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEATS:
        raise SettingsError({"repeats": f"expected a whole number 1-{MAX_REPEATS}, got {describe(value)}"})
    return value


def default_strip_steps(steps: int, count: int = 6) -> Tuple[int, ...]:
    """``count`` steps spread over 1..``steps``, the last one included (where the image is finished)."""
    if steps <= count:
        return tuple(range(1, steps + 1))
    return tuple(sorted({max(1, round(steps * (i + 1) / count)) for i in range(count)}))


def parse_value_list(text: str) -> List[Any]:
    """"1, 3, 7.5" or "Euler a; DPM++ 2M" from a text field: numbers where they parse, names otherwise."""
    sep = ";" if ";" in text else ","
    items = [part.strip() for part in str(text).split(sep)]
    out: List[Any] = []
    for item in items:
        if not item:
            continue
        try:
            number = float(item)
        except ValueError:
            out.append(item)
            continue
        out.append(int(number) if number.is_integer() and "." not in item else number)
    return out


def check_value(axis: str, value: Any, names: Optional[Collection[str]]) -> Any:
    """One swept value, normalised (CFG floats, step ints, names in their canonical form, precision
    booleans); ValueError says why not."""
    if axis in ("cfg_scale", "steps"):
        return PAYLOAD_RULES[axis].check(value)
    if axis == "precision":
        if value in ("on", "off") or isinstance(value, bool):
            return value in ("on", True)
        raise ValueError(f"expected \"on\" or \"off\", got {describe(value)}")
    checked = check_text(value, 1024, name=True)
    if not checked.strip():
        raise ValueError("expected a name, got empty text")
    if names is None:
        return checked
    canonical = canonical_name(names, checked)  # "karras" and "Karras" are one schedule type
    if canonical is None:
        if isinstance(names, Names):
            raise ValueError(names.unknown(value))
        raise ValueError(f"unknown {axis.replace('_', ' ')} {describe(value)}; known: {sorted(names)[:24]}")
    return canonical


def check_values(axis: str, values: Any, path: str, names: Optional[Collection[str]]) -> List[Any]:
    """The swept values, each checked by :func:`check_value`, unique once normalised (a schedule type's
    label and its name are one value: two cells would sample the same)."""
    if not isinstance(values, list):
        raise SettingsError({path: f"expected a list of values, got {type(values).__name__} {describe(values)}"})
    if not 2 <= len(values) <= MAX_SWEEP_VALUES:
        raise SettingsError({path: f"expected 2-{MAX_SWEEP_VALUES} values, got {len(values)}"})
    problems: Dict[str, str] = {}
    out: List[Any] = []
    where: List[int] = []
    for i, value in enumerate(values):
        try:
            checked = check_value(axis, value, names)
        except ValueError as err:
            problems[f"{path}[{i}]"] = str(err)
            continue
        if checked in out:
            first = where[out.index(checked)]
            problems[f"{path}[{i}]"] = f"duplicate value {value_text(axis, checked)!r} (the same as {path}[{first}])"
            continue
        out.append(checked)
        where.append(i)
    if problems:
        raise SettingsError(problems)
    return out


def default_values(axis: str, names: Optional[Collection[str]]) -> List[Any]:
    values = [check_value(axis, v, None) for v in DEFAULT_VALUES[axis]]
    if names is not None and axis in ("sampler_name", "scheduler"):
        known = [v for v in values if v in names]
        values = known if len(known) >= 2 else [n for n in names][:4]
    return values


def default_reference(axis: str, values: Sequence[Any], fields: Mapping[str, Any]) -> Any:
    """The user's own value when swept; else the most converged (most steps) or guarded (precision on) cell."""
    if not values:
        return None
    if axis in fields and fields[axis] in values:
        return fields[axis]
    if axis == "steps":
        return max(values)
    if axis == "precision" and True in values:
        return True
    return values[0]


def check_at(value: Any, steps: int) -> Tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SettingsError({"at": f"expected a list of step numbers, got {type(value).__name__} {describe(value)}"})
    if len(value) > MAX_STRIP_STEPS:
        raise SettingsError({"at": f"at most {MAX_STRIP_STEPS} steps, got {len(value)}"})
    problems: Dict[str, str] = {}
    out: List[int] = []
    rule = PAYLOAD_RULES["steps"]
    for i, item in enumerate(value):
        try:
            step = rule.check(item)
        except ValueError as err:
            problems[f"at[{i}]"] = str(err)
            continue
        if step > steps:
            problems[f"at[{i}]"] = f"step {step} is past the generation's {steps} steps"
        elif step in out:
            problems[f"at[{i}]"] = f"duplicate step {step}"
        else:
            out.append(step)
    if problems:
        raise SettingsError(problems)
    return tuple(sorted(out))


def check_variants(value: Any, supported: Optional[Collection[str]],
                   default: Optional[Collection[str]] = None) -> Tuple[str, ...]:
    allowed = [v for v in VARIANTS if supported is None or v in supported]
    if value is None:
        return tuple(v for v in allowed if default is None or v in default)
    if not isinstance(value, list) or not value:
        raise SettingsError({"dtypes": f"expected a non-empty list of {list(VARIANTS)}, got {describe(value)}"})
    problems: Dict[str, str] = {}
    out: List[str] = []
    for i, item in enumerate(value[:len(VARIANTS) + 1]):
        if item not in VARIANTS:
            problems[f"dtypes[{i}]"] = f"must be one of {list(VARIANTS)}, got {describe(item)}"
        elif item not in allowed:
            problems[f"dtypes[{i}]"] = f"{item} is not supported on this device (supported: {allowed})"
        elif item in out:
            problems[f"dtypes[{i}]"] = f"duplicate {item!r}"
        else:
            out.append(item)
    if len(value) > len(VARIANTS):
        problems["dtypes"] = f"at most {len(VARIANTS)} entries, got {len(value)}"
    if problems:
        raise SettingsError(problems)
    return tuple(v for v in VARIANTS if v in out)  # always in the same order


def diagnose_request_from_body(body: Any, base: SDFixSettings, *, choices: Optional[Mapping[str, Any]] = None,
                               extra_rules: Optional[Mapping[str, Any]] = None,
                               names: Optional[Mapping[str, Collection[str]]] = None,
                               supported_variants: Optional[Collection[str]] = None,
                               default_variants: Optional[Collection[str]] = None) -> Any:
    """Validate the JSON body of POST /sdfix/v1/diagnose before anything runs.

    ``{"kind": "vae_roundtrip", "image": base64, "dtypes": [...]}``, ``{"kind": "sweep", "payload": {...},
    "axis": ..., "values": [...], "reference": value}`` or ``{"kind": "steps", "payload": {...}, "at":
    [...]}``; all take ``heatmap_gain`` (1-64, default 4) and ``save`` (default false).  ``choices`` and
    ``extra_rules`` go to the payload check as for A/B; ``names`` maps "sampler_name"/"scheduler" to the
    names the host knows (checked for sweep values); ``supported_variants`` are the round-trip variants
    this device runs, ``default_variants`` those run when ``dtypes`` is not given.  Raises
    :class:`SettingsError` naming every offending field.
    """
    if not isinstance(body, Mapping):
        raise SettingsError({"body": f"expected a JSON object, got {type(body).__name__}"})
    kind = body.get("kind")
    if kind not in KINDS:
        raise SettingsError({"kind": f"must be one of {list(KINDS)}, got {describe(kind)}"})
    problems: Dict[str, str] = {}
    for key in [k for k in body if k not in _FIELDS[kind]][:10]:
        problems[str(key)] = f"unknown field for kind {kind!r}; expected {list(_FIELDS[kind])}"
    gain = body.get("heatmap_gain", 4.0)
    if not valid_heatmap_gain(gain):
        problems["heatmap_gain"] = f"must be a number between 1 and 64, got {describe(gain)}"
    save = body.get("save", False)
    if not isinstance(save, bool):
        problems["save"] = f"expected true or false, got {type(save).__name__} {describe(save)}"

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SettingsError as err:
            problems.update(err.problems)
            return None

    if kind == "vae_roundtrip":
        image = attempt(_check_image, body.get("image"))
        variants = attempt(check_variants, body.get("dtypes"), supported_variants, default_variants)
        if problems:
            raise SettingsError(problems)
        return RoundTripRequest(image, variants, float(gain), save)

    fields = None
    if "payload" not in body:
        problems["payload"] = "required: the txt2img fields (prompt, seed, steps, ...)"
    else:
        fields = attempt(lambda: check_txt2img_payload(body["payload"], "payload", choices=choices, extra_rules=extra_rules))
    if kind == "optimizations":
        options = attempt(check_options, body.get("options"))
        repeats = attempt(check_repeats, body.get("repeats", 1))
        if problems:
            raise SettingsError(problems)
        return OptimizationsRequest(fields, options, repeats, float(gain), save)
    if kind == "steps":
        at = attempt(check_at, body.get("at"), (fields or {}).get("steps", API_DEFAULT_STEPS)) if fields is not None else ()
        if problems:
            raise SettingsError(problems)
        return StepsRequest(fields, at, float(gain), save)

    axis = body.get("axis")
    values: List[Any] = []
    if axis not in AXES:
        problems["axis"] = f"must be one of {list(AXES)}, got {describe(axis)}"
    else:
        known = (names or {}).get(axis)
        raw = body.get("values")
        values = attempt(check_values, axis, raw, "values", known) if raw is not None else default_values(axis, known)
        values = values or []
    reference = default_reference(axis, values, fields or {})
    if "reference" in body and values:
        try:
            reference = check_value(axis, body["reference"], (names or {}).get(axis))
            if reference not in values:
                raise ValueError(f"must be one of the values {[value_text(axis, v) for v in values]}, "
                                 f"got {describe(body['reference'])}")
        except ValueError as err:
            problems["reference"] = str(err)
    if problems:
        raise SettingsError(problems)
    cells = sweep_cells(axis, values, base)
    return SweepRequest(fields, axis, tuple(values), reference, tuple(cells), float(gain), save)


def _check_image(value: Any) -> Any:
    """The image, cropped to multiples of 8 (the VAE's scale) and 64-2048 per side like a generation, with
    pixels that have an 8-bit meaning (:func:`lib_sdfix.image_input.to_rgb8`: 16-bit is scaled)."""
    if value is None:
        raise SettingsError({"image": "required: a base64-encoded PNG, JPEG or WebP image"})
    image = decode_image_field(value, "image")
    width, height = image.size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise SettingsError({"image": f"each side must be {MIN_SIDE}-{MAX_SIDE} pixels, got {width}x{height}"})
    try:
        to_rgb8(image)
    except ImageModeError as err:
        raise SettingsError({"image": str(err)}) from None
    return image
