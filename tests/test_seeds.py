"""lib_sdfix.seeds: a random seed drawn once per request, payload seeds."""
import random

import pytest

from lib_sdfix.seeds import resolve_payload_seeds, resolve_seed
from lib_sdfix.settings import SettingsError


def test_resolve_seed():
    expected = random.Random(5).randrange(4294967294)
    assert resolve_seed(-1, random.Random(5)) == expected
    assert resolve_seed(None, random.Random(5)) == expected == resolve_seed("", random.Random(5))
    assert resolve_seed("-1", random.Random(5)) == expected
    assert resolve_seed(42, random.Random(5)) == 42 and resolve_seed("42", None) == 42 and resolve_seed(7.0) == 7
    assert 0 <= resolve_seed(-1) < 4294967294
    for bad in (True, "abc", -5, 1.5, [1]):
        with pytest.raises(SettingsError) as err:
            resolve_seed(bad, random.Random(0))
        assert "seed" in err.value.problems


def test_payload_seeds_are_concrete_and_the_subseed_only_with_variation():
    rng = random.Random(3)
    out = resolve_payload_seeds({"prompt": "x", "seed": -1}, rng)
    assert out["prompt"] == "x" and 0 <= out["seed"] < 4294967294 and "subseed" not in out
    out = resolve_payload_seeds({"seed": 5, "subseed_strength": 0.5}, rng)
    assert out["seed"] == 5 and 0 <= out["subseed"] < 4294967294
    assert resolve_payload_seeds({"seed": 5, "subseed": 9}, rng)["subseed"] == 9
