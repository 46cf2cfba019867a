"""Values a request may carry: the bounds the WebUI's UI sets, what a JSON number, text or ignored
container must be, and :class:`Rule` -- what one field accepts and where its bound comes from."""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Collection, List, Mapping, Optional, Tuple

from lib_sdfix.settings import describe

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
    "JSON_MAX_DEPTH",
    "JSON_MAX_VALUES",
    "JSON_MAX_CHARS",
    "MAX_PROBLEMS",
    "Rule",
    "check_text",
    "closest_names",
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
MAX_PROBLEMS = 50


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


def closest_names(key: Any, known: Collection[str]) -> str:
    """The known names nearest to ``key`` (only for short keys: difflib is quadratic)."""
    if not isinstance(key, str) or len(key) > 64:
        return ""
    return ", ".join(difflib.get_close_matches(key, list(known), n=3))
