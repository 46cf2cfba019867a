"""Seeds of a request: a random one (-1) drawn once, so every variant of a comparison and every cell of
a diagnosis renders the same noise, and the UI can show which seed that was."""
from __future__ import annotations

import math
import random
from typing import Any, Dict, Mapping, Optional

from lib_sdfix.settings import SettingsError

__all__ = ["SEED_RANGE", "as_int", "resolve_seed", "resolve_payload_seeds"]

#: The WebUI draws random seeds from [0, 4294967294).
SEED_RANGE = 4294967294


def as_int(value: Any) -> int:
    """An integer given as a number (12, 12.0) or as text ("12", " 12 ", "12.0"); ValueError otherwise
    (booleans and fractions too)."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
    raise ValueError(f"expected an integer, got {value!r}")


def resolve_seed(seed: Any, rng: Optional[random.Random] = None) -> int:
    """A concrete seed: -1 / None / "" (the WebUI's "random") draws one from ``rng``; others are checked.

    Called once per comparison, so every variant renders the same seed and the UI can show it.
    """
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        seed = -1
    try:
        value = as_int(seed)
    except ValueError as err:
        raise SettingsError({"seed": str(err)}) from None
    if value == -1:
        return (rng or random).randrange(SEED_RANGE)
    if value < 0:
        raise SettingsError({"seed": f"must be -1 (random) or a seed >= 0, got {value}"})
    return value


def resolve_payload_seeds(payload: Mapping[str, Any], rng: Optional[random.Random] = None) -> Dict[str, Any]:
    """A copy of a txt2img payload with a concrete seed (and subseed, when variation seeds are on)."""
    out = dict(payload)
    out["seed"] = resolve_seed(out.get("seed", -1), rng)
    strength = out.get("subseed_strength", 0)
    if "subseed" in out or (isinstance(strength, (int, float)) and strength):
        out["subseed"] = resolve_seed(out.get("subseed", -1), rng)
    return out
