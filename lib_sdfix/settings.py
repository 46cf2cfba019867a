"""The one settings model of SDFix and its one fix table, read by every consumer.

Every option is declared once in :data:`OPTIONS` (type, default, allowed values, label, help text,
infotext key, older names); :class:`SDFixSettings` is generated from it.  Every fix is declared once
in :data:`FIXES`: its key is the option that turns it on and its name everywhere -- notes, the A/B
ablation, X/Y/Z axes, the diffusers audit cause it removes, the host hooks it needs.  Parsing is
strict: a wrong type, an unknown key or an out-of-range value raises :class:`SettingsError` naming
the field -- never a silent default.
"""
from __future__ import annotations

import itertools
import math
import reprlib
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Option",
    "OPTIONS",
    "PANEL_OPTIONS",
    "Fix",
    "FIXES",
    "UI_ARG_ORDER",
    "SDFixSettings",
    "SettingsError",
    "INFOTEXT_KEY",
    "NOTES_INFOTEXT_KEY",
    "REFINE_INFOTEXT_KEY",
    "OPTION_PREFIX",
    "defaults_from_options",
    "option",
    "fix",
    "describe",
]

INFOTEXT_KEY = "SDFix"
NOTES_INFOTEXT_KEY = "SDFix notes"
#: The late refine's own infotext entry, ``SDFix refine: 0.3``: written when it is on, holding its strength.
REFINE_INFOTEXT_KEY = "SDFix refine"


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
class Option:
    """Declaration of one option: what it accepts, how the UI shows it, its infotext key, older names."""

    name: str
    kind: type  # bool, str or float
    default: Any
    label: str
    help: str
    infotext: str  # short key in the "SDFix: ..." infotext entry; "" for an option with its own entry
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    aliases: Tuple[str, ...] = ()  # older API / Settings names, still accepted
    infotext_aliases: Tuple[str, ...] = ()  # older infotext keys, still pasted
    axis: bool = True  # an X/Y/Z plot axis

    def validate(self, value: Any) -> Any:
        """The value, checked (ints are accepted for float options); raises ValueError with the reason."""
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


@dataclass(frozen=True)
class Fix:
    """One fix.  ``key`` is its option and its name everywhere (notes, ablation variants, axes)."""

    key: str
    label: str  # short name for the UI, notes and the ablation ("precision guard only")
    cause: str  # the diffusers audit cause it removes (lib_sdfix.diffusers.CAUSES), "" if none
    patches: Tuple[str, ...]  # host hooks it needs while a generation runs: "decode", "encode", "resize", "sampler"


OPTIONS: Tuple[Option, ...] = (
    Option(
        "enabled", bool, True, "Enable SDFix",
        "Master switch. Off: SDFix changes nothing and the output is identical to the WebUI without it.",
        "on",
    ),
    Option(
        "precision_guard", bool, True, "Full-precision VAE decode",
        "Decode latents with TF32 and cuDNN autotuning off and the VAE in fp32, so skin, hair and eye "
        "highlights are not flattened into an oil-painting look. Flags are restored right after.",
        "guard",
    ),
    Option(
        "guard_encode", bool, True, "Full-precision VAE encode",
        "Same protection for the VAE encode of img2img/inpaint init images and of the Hires.fix "
        "upscaled image, so detail lost on the way in is not baked into the result.",
        "encode",
    ),
    Option(
        "hires_parity", bool, True, "Hires pass uses the first pass's sampler",
        "Run the Hires.fix pass with the same sampler and schedule type as the first pass; a different "
        "or uniform schedule at low denoising smooths away detail. Overrides are noted in the infotext.",
        "parity",
    ),
    Option(
        "post_resize", bool, True, "Sharp resize after the upscaler",
        "Resize an upscaler's native output to the Hires/img2img target in one high-quality pass, "
        "instead of a blurring filter or two resamplings in a row.",
        "resize",
    ),
    Option(
        "resize_filter", str, "LANCZOS", "Resize filter",
        "Filter for that single resize. LANCZOS keeps the most detail; BICUBIC is softer; BOX suits "
        "large reductions.",
        "filter", choices=("LANCZOS", "BICUBIC", "BOX"),
    ),
    Option(
        "vae_dtype", str, "fp32", "VAE dtype",
        "fp32: run the VAE in float32 for its decodes and encodes (recommended). auto: keep the dtype "
        "the WebUI chose (flags are still guarded).",
        "vae", choices=("fp32", "auto"), aliases=("decode_dtype",), infotext_aliases=("dtype",),
    ),
    Option(
        "latent_denoise_warning", float, 0.5, "Warn below this denoising with a Latent upscaler",
        "A Latent (bilinear) Hires upscaler with denoising strength below this value is a known blur "
        "source; SDFix notes it in the infotext (it never changes it silently). 0 turns the note off.",
        "warn", minimum=0.0, maximum=1.0, axis=False,  # it only changes a note, never the image
    ),
    Option(
        "late_refine", bool, False, "Late-step refine",
        "After the last sampling pass (the Hires pass with Hires.fix), add noise back to the finished latent "
        "at a late point of that pass's own schedule and run only its remaining steps again, with the same "
        "sampler, schedule, CFG and prompt. Repairs wrong textures and small shapes an upscaler cannot. "
        "Costs strength x steps extra steps.",
        "",  # its own entry: "SDFix refine: <strength>"
    ),
    Option(
        "late_refine_strength", float, 0.3, "Late refine strength",
        "Share of the pass's steps to run again (round(strength x steps)). About 0.2-0.3 repairs texture; "
        "wrong shapes (a face, a hand) need 0.5 or more, which also changes more of the image.",
        "", minimum=0.05, maximum=0.75,
    ),
    Option(
        "nan_watch", bool, False, "Watch for NaN/Inf values",
        "Check every sampling step and the VAE decode for NaN or infinite values and note the first step or "
        "stage where they appeared in the infotext. Changes no pixel; off by default (one extra check per step).",
        "nan",
    ),
)

FIXES: Tuple[Fix, ...] = (
    Fix("precision_guard", "precision guard", "vae_precision", ("decode",)),
    Fix("guard_encode", "guard encode", "vae_precision", ("encode",)),
    Fix("hires_parity", "Hires parity", "scheduler_mismatch", ()),
    Fix("post_resize", "post-resize", "hires_resize", ("resize",)),
    # Not a cause a diffusers service can have (nothing is misconfigured): lib_sdfix.diffusers.refine
    # is called explicitly there.  In the WebUI it watches the samplers the host creates.
    Fix("late_refine", "late refine", "", ("sampler",)),
)

#: Options that exist only in the WebUI's Settings panel (not per generation, not in the API args).
PANEL_OPTIONS: Tuple[Option, ...] = (
    Option(
        "add_infotext", bool, True, "Add SDFix info to infotext",
        "Write what SDFix applied (and anything it could not apply) into the image's generation "
        "parameters, so pasting them restores the toggles.",
        "",
    ),
)

#: Settings-panel option key of an option: ``sdfix_<name>``.
OPTION_PREFIX = "sdfix_"

_BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}
_BY_ALIAS: Dict[str, Option] = {alias: o for o in OPTIONS for alias in o.aliases}
_BY_INFOTEXT: Dict[str, Option] = {key: o for o in OPTIONS for key in (o.infotext, *o.infotext_aliases) if key}
_FIXES_BY_KEY: Dict[str, Fix] = {f.key: f for f in FIXES}

#: Options that existed once: refused by name with the reason (an API client gets told, not ignored).
REMOVED_OPTIONS = {
    "guard_previews": "removed: live previews decode on another thread while the generation samples, and "
                      "guarding them would change the process-wide TF32 flags under that sampling",
}
#: Infotext entries that are not settings: what a generation ran with (``weights``, ``tiled``) or removed
#: options (``previews``) -- read past, so older images still paste.
INFOTEXT_RESULT_KEYS = ("weights", "tiled", "previews")

#: Order of the positional script args the UI sends (the WebUI passes component values in order).
UI_ARG_ORDER: Tuple[str, ...] = tuple(o.name for o in OPTIONS)


class _SettingsModel:
    """Validated SDFix options.  Build with :meth:`from_mapping`, :meth:`from_args` or :meth:`from_infotext`."""

    def __post_init__(self) -> None:
        problems = {}
        for o in OPTIONS:
            try:
                object.__setattr__(self, o.name, o.validate(getattr(self, o.name)))
            except ValueError as err:
                problems[o.name] = str(err)
        if problems:
            raise SettingsError(problems)

    # -- fixes ----------------------------------------------------------------------------------

    def wants(self, fix_key: str) -> bool:
        """Whether fix ``fix_key`` is on (SDFix enabled and its option set)."""
        return bool(self.enabled and getattr(self, _FIXES_BY_KEY[fix_key].key))  # KeyError: no such fix

    def fixes_on(self) -> List[str]:
        """The keys of the fixes that are on, in :data:`FIXES` order."""
        return [f.key for f in FIXES if self.wants(f.key)]

    @property
    def upcast(self) -> bool:
        """Whether the VAE runs in fp32 for its guarded calls."""
        return self.vae_dtype == "fp32"

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Optional["SDFixSettings"] = None) -> "SDFixSettings":
        """Named values (API dict); missing keys come from ``base`` (the Settings defaults).  Older
        names (``decode_dtype``) are read as their option."""
        if not isinstance(values, Mapping):
            raise SettingsError({"args": f"expected an object of named options, got {type(values).__name__}"})
        problems: Dict[str, str] = {}
        named: Dict[str, Any] = {}
        for key, value in values.items():
            option = _BY_NAME.get(key) or _BY_ALIAS.get(key)
            if key in REMOVED_OPTIONS:
                problems[str(key)] = REMOVED_OPTIONS[key]
            elif option is None:
                problems[str(key)] = f"unknown option; known options are {list(UI_ARG_ORDER)}"
                if len(problems) >= 50:  # a dict of 100,000 unknown keys needs no 100,000 entries
                    break
            elif option.name in named:
                problems[str(key)] = f"given twice (also as {option.name!r} or one of its older names)"
            else:
                named[option.name] = value
        if problems:
            raise SettingsError(problems)
        return replace(base or cls(), **named)

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
        """The value of the ``SDFix`` infotext entry: ``on=1 guard=1 ... filter=LANCZOS warn=0.5`` (options
        with an entry of their own are in :meth:`infotext_entries`).

        Holds no commas or colons, so the WebUI writes it unquoted and reads it back intact.
        """
        parts = []
        for o in OPTIONS:
            if not o.infotext:
                continue
            value = getattr(self, o.name)
            if o.kind is bool:
                text = "1" if value else "0"
            elif o.kind is float:
                text = repr(value)
            else:
                text = value
            parts.append(f"{o.infotext}={text}")
        return " ".join(parts)

    def infotext_entries(self) -> Dict[str, str]:
        """Every SDFix infotext entry of these settings: ``SDFix``, and ``SDFix refine`` when the late
        refine is on (its strength)."""
        entries = {INFOTEXT_KEY: self.to_infotext()}
        if self.wants("late_refine"):
            entries[REFINE_INFOTEXT_KEY] = format(self.late_refine_strength, "g")
        return entries

    @classmethod
    def from_infotext_params(cls, params: Mapping[str, Any], base: Optional["SDFixSettings"] = None
                             ) -> Optional["SDFixSettings"]:
        """The settings pasted generation parameters hold (their ``SDFix`` and ``SDFix refine``
        entries), or None when they hold neither (an image made without SDFix).

        An image with an ``SDFix`` entry but no ``SDFix refine`` was made without the late refine.
        Raises :class:`SettingsError` naming the entry that cannot be read.
        """
        text, refine = params.get(INFOTEXT_KEY), params.get(REFINE_INFOTEXT_KEY)
        if text is None and refine is None:
            return None
        settings = cls.from_infotext(text, base) if text is not None else (base or cls())
        if refine is None:
            return settings.changed(late_refine=False)
        try:
            strength = float(str(refine).strip().strip('"'))
        except ValueError:
            raise SettingsError({REFINE_INFOTEXT_KEY: f"expected a number, got {describe(refine)}"}) from None
        try:
            return settings.changed(late_refine=True, late_refine_strength=strength)
        except SettingsError as err:
            raise SettingsError({REFINE_INFOTEXT_KEY: "; ".join(err.problems.values())}) from None

    @classmethod
    def from_infotext(cls, text: str, base: Optional["SDFixSettings"] = None) -> "SDFixSettings":
        """Parse the value written by :meth:`to_infotext` (older keys included); keys it lacks come from ``base``."""
        if not isinstance(text, str):
            raise SettingsError({INFOTEXT_KEY: f"expected text, got {type(text).__name__}"})
        values: Dict[str, Any] = {}
        problems: Dict[str, str] = {}
        for token in text.strip().strip('"').split():
            key, sep, raw = token.partition("=")
            if sep and key in INFOTEXT_RESULT_KEYS:
                continue
            option = _BY_INFOTEXT.get(key)
            if not sep or option is None:
                problems[key or token] = f"unknown SDFix infotext entry {describe(token)}"
                continue
            try:
                values[option.name] = _parse_infotext_value(option, raw)
            except ValueError as err:
                problems[option.name] = str(err)
        if problems:
            raise SettingsError(problems)
        return cls.from_mapping(values, base)


SDFixSettings = make_dataclass(
    "SDFixSettings",
    [(o.name, o.kind, field(default=o.default)) for o in OPTIONS],
    bases=(_SettingsModel,),
    frozen=True,
    namespace={"__doc__": _SettingsModel.__doc__, "__module__": __name__},
)


def _parse_infotext_value(option: Option, raw: str) -> Any:
    if option.kind is bool:
        if raw not in ("0", "1"):
            raise ValueError(f"expected 0 or 1, got {describe(raw)}")
        return raw == "1"
    if option.kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {describe(raw)}") from None
    return raw


_MISSING = object()


def defaults_from_options(read: Callable[[str, Any], Any]) -> "SDFixSettings":
    """The Settings-panel defaults: ``read(option_key, default)`` for every option (an older name's
    stored value where the current one was never saved).

    A stored value that no longer validates (edited config.json, older version) raises
    :class:`SettingsError` naming the option.
    """
    values = {}
    for o in OPTIONS:
        value = read(OPTION_PREFIX + o.name, _MISSING)
        for alias in o.aliases:
            if value is _MISSING:
                value = read(OPTION_PREFIX + alias, _MISSING)
        values[o.name] = o.default if value is _MISSING else value
    try:
        return SDFixSettings.from_mapping(values)
    except SettingsError as err:
        raise SettingsError({OPTION_PREFIX + k: v for k, v in err.problems.items()}) from None


def option(name: str) -> Option:
    """The declaration of option ``name``."""
    return _BY_NAME[name]


def fix(key: str) -> Fix:
    """The declaration of fix ``key``."""
    return _FIXES_BY_KEY[key]
