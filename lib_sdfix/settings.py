"""The one settings model of SDFix, shared by the UI, the Settings panel, the infotext and the API.

Every option is declared once in :data:`FIELDS` with its type, default, allowed values and help
text.  Parsing is strict: a wrong type, an unknown key or an out-of-range value raises
:class:`SettingsError` naming the field -- never a silent default.
"""
from __future__ import annotations

import itertools
import math
import reprlib
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Field",
    "FIELDS",
    "UI_ARG_ORDER",
    "SDFixSettings",
    "SettingsError",
    "INFOTEXT_KEY",
    "NOTES_INFOTEXT_KEY",
    "PANEL_FIELDS",
    "OPTION_PREFIX",
    "defaults_from_options",
    "describe",
]

INFOTEXT_KEY = "SDFix"
NOTES_INFOTEXT_KEY = "SDFix notes"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6


def describe(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters and three levels: error messages quote what a
    client sent, and a megabyte string or a deeply nested list must not come back whole."""
    return _REPR.repr(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


#: Problems spelled out in the message (all stay in ``problems``); the rest are counted.
_SHOWN_PROBLEMS = 20


class SettingsError(ValueError):
    """Invalid SDFix settings; ``problems`` maps each offending field to what is wrong with it.

    The message (what the routes answer with) names at most 20 problems, each cut to a few
    hundred characters, so a hostile body cannot make the answer huge.
    """

    def __init__(self, problems: Mapping[str, str]):
        self.problems = dict(problems)
        shown = itertools.islice(self.problems.items(), _SHOWN_PROBLEMS)
        detail = "; ".join(f"{_clip(str(name), 120)}: {_clip(str(why), 300)}" for name, why in shown)
        if len(self.problems) > _SHOWN_PROBLEMS:
            detail += f"; and {len(self.problems) - _SHOWN_PROBLEMS} more"
        # Field names echo the client's keys: a lone surrogate in one would make the JSON answer
        # unencodable (HTTP 500), so the message spells it as an escape.
        detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(f"invalid SDFix settings -- {detail}")

    @property
    def fields(self) -> List[str]:
        return list(self.problems)


@dataclass(frozen=True)
class Field:
    """Declaration of one option."""

    name: str
    kind: type  # bool, str or float
    default: Any
    label: str
    help: str
    infotext: str  # short key in the "SDFix: ..." infotext fragment
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    def validate(self, value: Any) -> Any:
        """The value, checked (ints are accepted for float fields); raises ValueError with the reason."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {type(value).__name__} {describe(value)}")
            return value
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {type(value).__name__} {describe(value)}")
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
            if math.isnan(number) or not (self.minimum <= number <= self.maximum):
                raise ValueError(f"must be between {self.minimum:g} and {self.maximum:g}, got {describe(value)}")
            return number
        if not isinstance(value, str):
            raise ValueError(f"expected one of {list(self.choices)}, got {type(value).__name__} {describe(value)}")
        if value not in self.choices:
            raise ValueError(f"must be one of {list(self.choices)}, got {describe(value)}")
        return value


FIELDS: Tuple[Field, ...] = (
    Field(
        "enabled", bool, True, "Enable SDFix",
        "Master switch. Off: SDFix changes nothing and the output is identical to the WebUI without it.",
        "on",
    ),
    Field(
        "precision_guard", bool, True, "Full-precision VAE decode",
        "Decode latents with TF32 and cuDNN autotuning off and the VAE in fp32, so skin, hair and eye "
        "highlights are not flattened into an oil-painting look. Flags are restored right after.",
        "guard",
    ),
    Field(
        "guard_encode", bool, True, "Full-precision VAE encode",
        "Same protection for the VAE encode of img2img/inpaint init images and of the Hires.fix "
        "upscaled image, so detail lost on the way in is not baked into the result.",
        "encode",
    ),
    Field(
        "hires_parity", bool, True, "Hires pass uses the first pass's sampler",
        "Run the Hires.fix pass with the same sampler and schedule type as the first pass; a different "
        "or uniform schedule at low denoising smooths away detail. Overrides are noted in the infotext.",
        "parity",
    ),
    Field(
        "post_resize", bool, True, "Sharp resize after the upscaler",
        "Resize an upscaler's native output to the Hires/img2img target in one high-quality pass, "
        "instead of a blurring filter or two resamplings in a row.",
        "resize",
    ),
    Field(
        "resize_filter", str, "LANCZOS", "Resize filter",
        "Filter for that single resize. LANCZOS keeps the most detail; BICUBIC is softer; BOX suits "
        "large reductions.",
        "filter", choices=("LANCZOS", "BICUBIC", "BOX"),
    ),
    Field(
        "decode_dtype", str, "fp32", "VAE decode dtype",
        "fp32: run the VAE in float32 during decode/encode (recommended). auto: keep the dtype the "
        "WebUI chose (flags are still guarded).",
        "dtype", choices=("fp32", "auto"),
    ),
    Field(
        "latent_denoise_warning", float, 0.5, "Warn below this denoising with a Latent upscaler",
        "A Latent (bilinear) Hires upscaler with denoising strength below this value is a known blur "
        "source; SDFix notes it in the infotext (it never changes it silently). 0 turns the note off.",
        "warn", minimum=0.0, maximum=1.0,
    ),
)

#: Options that exist only in the WebUI's Settings panel (not per generation, not in the API args).
PANEL_FIELDS: Tuple[Field, ...] = (
    Field(
        "add_infotext", bool, True, "Add SDFix info to infotext",
        "Write what SDFix applied (and anything it could not apply) into the image's generation "
        "parameters, so pasting them restores the toggles.",
        "",
    ),
)

#: Settings-panel option key of a field: ``sdfix_<name>``.
OPTION_PREFIX = "sdfix_"

_BY_NAME: Dict[str, Field] = {f.name: f for f in FIELDS}
_BY_INFOTEXT: Dict[str, Field] = {f.infotext: f for f in FIELDS}

#: Options that existed once: refused by name with the reason (an API client gets told, not ignored).
REMOVED_OPTIONS = {
    "guard_previews": "removed: live previews decode on another thread while the generation samples, and "
                      "guarding them would change the process-wide TF32 flags under that sampling",
}
#: Infotext entries that are not settings: what a generation ran with (``weights``) or removed
#: options (``previews``) -- read past, so older images still paste.
INFOTEXT_RESULT_KEYS = ("weights", "previews")

#: Order of the positional script args the UI sends (the WebUI passes component values in order).
UI_ARG_ORDER: Tuple[str, ...] = tuple(f.name for f in FIELDS)


@dataclass(frozen=True)
class SDFixSettings:
    """Validated SDFix options.  Build with :meth:`from_mapping`, :meth:`from_args` or :meth:`from_infotext`."""

    enabled: bool = True
    precision_guard: bool = True
    guard_encode: bool = True
    hires_parity: bool = True
    post_resize: bool = True
    resize_filter: str = "LANCZOS"
    decode_dtype: str = "fp32"
    latent_denoise_warning: float = 0.5

    def __post_init__(self) -> None:
        problems = {}
        for f in FIELDS:
            try:
                object.__setattr__(self, f.name, f.validate(getattr(self, f.name)))
            except ValueError as err:
                problems[f.name] = str(err)
        if problems:
            raise SettingsError(problems)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Optional["SDFixSettings"] = None) -> "SDFixSettings":
        """Named values (API dict); missing keys come from ``base`` (the Settings defaults)."""
        if not isinstance(values, Mapping):
            raise SettingsError({"args": f"expected an object of named options, got {type(values).__name__}"})
        problems = {}
        for key in values:
            if key in REMOVED_OPTIONS:
                problems[str(key)] = REMOVED_OPTIONS[key]
            elif key not in _BY_NAME:
                problems[str(key)] = f"unknown option; known options are {list(UI_ARG_ORDER)}"
                if len(problems) >= 50:  # a dict of 100,000 unknown keys needs no 100,000 entries
                    break
        if problems:
            raise SettingsError(problems)
        return replace(base or cls(), **dict(values))

    @classmethod
    def from_args(cls, args: Sequence[Any], base: Optional["SDFixSettings"] = None) -> "SDFixSettings":
        """Script args as the WebUI passes them.

        Accepts the positional list the UI sends (in :data:`UI_ARG_ORDER`, a shorter list takes
        the rest from ``base``), or a list whose first item is a dict of named options (what API
        clients send: ``[{"precision_guard": true}]``; the WebUI pads the list with UI defaults,
        which are ignored).
        """
        if not isinstance(args, (list, tuple)):
            raise SettingsError({"args": f"expected a list of values, got {type(args).__name__}"})
        args = list(args)
        if args and isinstance(args[0], Mapping):
            # The WebUI API fills the slots after the dict with the UI defaults: they are not the client's.
            return cls.from_mapping(args[0], base)
        if len(args) > len(UI_ARG_ORDER):
            raise SettingsError({"args": f"expected at most {len(UI_ARG_ORDER)} positional values {list(UI_ARG_ORDER)}, got {len(args)}"})
        if any(isinstance(a, Mapping) for a in args):
            raise SettingsError({"args": "pass named options as the only argument: [{\"name\": value, ...}]"})
        return replace(base or cls(), **dict(zip(UI_ARG_ORDER, args)))

    def as_args(self) -> List[Any]:
        """Positional args in :data:`UI_ARG_ORDER` (inverse of :meth:`from_args`)."""
        return [getattr(self, name) for name in UI_ARG_ORDER]

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in UI_ARG_ORDER}

    def changed(self, **values: Any) -> "SDFixSettings":
        """A copy with some options changed (validated)."""
        return self.from_mapping(values, self)

    # -- infotext -----------------------------------------------------------------------------

    def to_infotext(self) -> str:
        """The value of the ``SDFix`` infotext entry: ``on=1 guard=1 ... filter=LANCZOS warn=0.5``.

        Holds no commas or colons, so the WebUI writes it unquoted and reads it back intact.
        """
        parts = []
        for f in FIELDS:
            value = getattr(self, f.name)
            if f.kind is bool:
                text = "1" if value else "0"
            elif f.kind is float:
                text = repr(value)
            else:
                text = value
            parts.append(f"{f.infotext}={text}")
        return " ".join(parts)

    @classmethod
    def from_infotext(cls, text: str, base: Optional["SDFixSettings"] = None) -> "SDFixSettings":
        """Parse the value written by :meth:`to_infotext`; keys it lacks come from ``base``."""
        if not isinstance(text, str):
            raise SettingsError({INFOTEXT_KEY: f"expected text, got {type(text).__name__}"})
        values: Dict[str, Any] = {}
        problems: Dict[str, str] = {}
        for token in text.strip().strip('"').split():
            key, sep, raw = token.partition("=")
            if sep and key in INFOTEXT_RESULT_KEYS:
                continue
            field = _BY_INFOTEXT.get(key)
            if not sep or field is None:
                problems[key or token] = f"unknown SDFix infotext entry {describe(token)}"
                continue
            try:
                values[field.name] = _parse_infotext_value(field, raw)
            except ValueError as err:
                problems[field.name] = str(err)
        if problems:
            raise SettingsError(problems)
        return cls.from_mapping(values, base)


def _parse_infotext_value(field: Field, raw: str) -> Any:
    if field.kind is bool:
        if raw not in ("0", "1"):
            raise ValueError(f"expected 0 or 1, got {describe(raw)}")
        return raw == "1"
    if field.kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {describe(raw)}") from None
    return raw


def defaults_from_options(read: Callable[[str, Any], Any]) -> SDFixSettings:
    """The Settings-panel defaults: ``read(option_key, default)`` for every generation field.

    A stored value that no longer validates (edited config.json, older version) raises
    :class:`SettingsError` naming the option.
    """
    values = {f.name: read(OPTION_PREFIX + f.name, f.default) for f in FIELDS}
    try:
        return SDFixSettings.from_mapping(values)
    except SettingsError as err:
        raise SettingsError({OPTION_PREFIX + k: v for k, v in err.problems.items()}) from None


def field(name: str) -> Field:
    """The declaration of option ``name``."""
    return _BY_NAME[name]


assert tuple(f.name for f in fields(SDFixSettings)) == UI_ARG_ORDER, "FIELDS and SDFixSettings disagree"
assert all(getattr(SDFixSettings(), f.name) == f.default for f in FIELDS), "defaults disagree"
