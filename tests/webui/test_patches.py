"""The one hold / release of SDFix's replacements of host functions (lib_sdfix.webui.patches)."""
from __future__ import annotations

import types

import pytest

from lib_sdfix.webui import patches


def _owner():
    owner = types.SimpleNamespace(f=lambda: "host", g=lambda: "host")
    return owner, owner.f, owner.g


def _factory(original):
    return lambda: "sdfix"


def test_hold_installs_until_the_last_holder_releases():
    owner, f, g = _owner()
    first = patches.hold([(owner, "f", _factory), (owner, "g", _factory)])
    second = patches.hold([(owner, "f", _factory)])
    assert owner.f() == owner.g() == "sdfix" and sorted(patches.active()) == ["SimpleNamespace.f", "SimpleNamespace.g"]
    first()
    first()  # idempotent: the second holder keeps its patch
    assert owner.f() == "sdfix" and owner.g is g
    second()
    assert owner.f is f and patches.active() == []


def test_a_target_that_cannot_be_held_releases_the_others_and_raises():
    owner, f, g = _owner()

    def broken(original):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        patches.hold([(owner, "f", _factory), (owner, "g", broken)])
    assert owner.f is f and owner.g is g and patches.active() == []


def test_held_releases_after_the_block_even_when_it_raises():
    owner, f, _ = _owner()
    with pytest.raises(KeyError):
        with patches.held([(owner, "f", _factory)]):
            assert owner.f() == "sdfix"
            raise KeyError("x")
    assert owner.f is f and patches.active() == []
