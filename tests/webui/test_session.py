"""Sessions and patches never outlive their job: dead X/Y/Z cells, nested generations, copies of p,
another extension's patches, script reloads."""
from __future__ import annotations

import gc
import threading

import pytest
from PIL import Image

from lib_sdfix.settings import SDFixSettings
from lib_sdfix.webui.session import GenerationSession, bound_session, current_session

from .fakes import FakeP
from .support import recording_resize, run, same, xyz_cell


def test_a_dead_xyz_cell_leaves_nothing_behind(webui, monkeypatch):
    """The plot swallows a cell's exception and never closes the cell's p: no patch, no session may
    outlive it -- a later upscale (Extras) must run exactly as the host's own."""
    script = webui.glue.SDFixScript()

    def generate(pc):
        script.process(pc, {"resize_filter": "BOX"})
        raise RuntimeError("cell failed")

    cell = xyz_cell("Steps", lambda pc: None, generate)
    assert isinstance(cell(FakeP()), RuntimeError)
    gc.collect()
    calls = recording_resize(monkeypatch)
    data = webui.shared.sd_upscalers[1]
    data.scaler.upscale(Image.new("RGB", (64, 64)), 1.5, data.data_path)  # Extras, after the plot
    assert all(call[2] != Image.BOX for call in calls)
    assert same(webui, webui.before)


def test_nested_generation_keeps_the_outer_session(webui):
    """An extension may run a second generation from inside a hook of the first (ADetailer does)."""
    from lib_sdfix.webui.session import current_session

    outer, inner = FakeP(), FakeP()
    run(webui, outer)
    run(webui, inner, {"post_resize": False})
    assert current_session().owner is inner
    inner.close()
    assert current_session().owner is outer
    outer.close()
    assert current_session() is None and same(webui, webui.before)


def test_a_copy_of_p_gets_its_own_session_and_closes_only_itself(webui):
    import copy

    from lib_sdfix.webui.session import session_of

    p = FakeP()
    run(webui, p)
    pc = copy.copy(p)
    run(webui, pc, {"resize_filter": "BOX"})
    assert session_of(pc) is not session_of(p)
    pc.close()
    assert session_of(p) is not None and not p.closed
    p.close()
    assert p.closed and same(webui, webui.before)


def test_another_extensions_patch_on_top_never_nests_or_loses_the_original(webui):
    """It wraps SDFix's replacement at the start of a generation and puts back what it saw at the end."""
    original = webui.images.resize_image
    for _ in range(3):
        p = FakeP()
        run(webui, p)
        theirs_saw = webui.images.resize_image
        webui.images.resize_image = lambda *a, _inner=theirs_saw, **k: _inner(*a, **k)
        p.close()
        webui.images.resize_image = theirs_saw  # their cleanup
    q = FakeP()
    run(webui, q)
    q.close()
    assert webui.images.resize_image is original


def test_reloading_the_script_body_registers_callbacks_once(webui):
    import importlib.util

    from .fakes import ROOT

    for _ in range(2):
        spec = importlib.util.spec_from_file_location("sdfix_reloaded", ROOT / "scripts" / "sdfix.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    for key, callbacks in webui.script_callbacks.callback_map.items():
        names = [c.callback for c in callbacks]
        assert len(names) == len(set(names)), key
    assert len(webui.script_callbacks.callback_map["callbacks_app_started"]) == 1


def test_sessions_are_bound_to_their_thread():
    session = GenerationSession(SDFixSettings())
    seen = []
    with bound_session(session):
        assert current_session() is session
        t = threading.Thread(target=lambda: seen.append(current_session()))
        t.start()
        t.join()
    assert seen == [None] and current_session() is None


def test_session_wants_respects_the_master_switch():
    assert GenerationSession(SDFixSettings()).wants("precision_guard")
    assert not GenerationSession(SDFixSettings(enabled=False)).wants("precision_guard")
    assert not GenerationSession(SDFixSettings(post_resize=False)).wants("post_resize")
    with pytest.raises(KeyError):
        GenerationSession(SDFixSettings()).wants("guard")  # the old short name is no fix key
