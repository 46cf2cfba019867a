"""lib_sdfix.patching: temporary patches that restore the host's own object, never stack, keep the original."""
import types

import pytest

from lib_sdfix.patching import PatchSet


def test_patchset_restores_identity_and_counts_users():
    mod = types.SimpleNamespace(fn=lambda: "orig")
    original = mod.fn
    patches = PatchSet()
    built = []
    patches.acquire(mod, "fn", lambda orig: built.append(orig) or (lambda: "patched"))
    patches.acquire(mod, "fn", lambda orig: pytest.fail("factory must run once"))
    assert mod.fn() == "patched" and built == [original]
    patches.release(mod, "fn")
    assert mod.fn() == "patched"
    patches.release(mod, "fn")
    assert mod.fn is original and patches.active() == []


def test_patchset_class_attribute_inherited_and_own():
    class Base:
        def f(self):
            return "base"

    class Child(Base):
        pass

    patches = PatchSet()
    patches.acquire(Child, "f", lambda orig: lambda self: "patched")
    assert Child().f() == "patched" and Base().f() == "base"
    patches.release(Child, "f")
    assert "f" not in vars(Child) and Child().f() == "base"


def test_patchset_leaves_a_patch_stacked_on_top_of_ours():
    mod = types.SimpleNamespace(fn=lambda: "orig")
    patches = PatchSet()
    patches.acquire(mod, "fn", lambda orig: lambda: "ours")
    theirs = lambda: "theirs"  # noqa: E731
    mod.fn = theirs
    patches.release(mod, "fn")
    assert mod.fn is theirs
