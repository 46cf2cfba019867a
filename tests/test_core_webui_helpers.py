"""WebUI-free halves of the hooks: sessions, patching, one-pass resize, native upscale, UI pieces."""
from __future__ import annotations

import threading
import types

import pytest
from PIL import Image

from lib_sdfix.generation import (
    GenerationSession, bound_session, current_session, latent_upscale_note, resize_image_one_pass, upscale_natively,
)
from lib_sdfix.patching import PatchSet
from lib_sdfix.settings import SDFixSettings


def test_sessions_are_bound_to_their_thread():
    session = GenerationSession(SDFixSettings())
    seen = []
    with bound_session(session):
        assert current_session() is session
        t = threading.Thread(target=lambda: seen.append(current_session()))
        t.start(); t.join()
    assert seen == [None] and current_session() is None


def test_session_wants_respects_the_master_switch():
    assert GenerationSession(SDFixSettings()).wants("guard")
    assert not GenerationSession(SDFixSettings(enabled=False)).wants("guard")
    assert not GenerationSession(SDFixSettings(post_resize=False)).wants("resize")


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


def _img(w, h, mode="RGB"):
    return Image.effect_noise((w, h), 50).convert(mode)


def _x4(im):
    return im.resize((im.width * 4, im.height * 4), Image.NEAREST)


@pytest.mark.parametrize("source,scale,passes,size", [((64, 64), 2, 1, (256, 256)), ((16, 16), 20, 3, (1024, 1024)),
                                                      ((64, 64), 1, 1, (256, 256)), ((64, 64), 1.1, 0, (64, 64))])
def test_upscale_natively_runs_like_the_webui_loop(source, scale, passes, size):
    calls = []
    out = upscale_natively(_img(*source), scale, lambda im: calls.append(im.size) or _x4(im))
    assert len(calls) == passes and out.size == size


def test_upscale_natively_stops_when_interrupted_or_stuck():
    assert upscale_natively(_img(8, 8), 4, _x4, interrupted=lambda: True).size == (8, 8)
    calls = []
    upscale_natively(_img(8, 8), 4, lambda im: calls.append(1) or im)
    assert calls == [1]


def _resize_log(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((self.size, tuple(size), resample, kwargs.get("box")))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return calls


@pytest.mark.parametrize("mode,expected_main", [(0, (200, 120)), (1, (200, 200)), (2, (120, 120))])
def test_resize_modes_do_one_main_resample_from_native(monkeypatch, mode, expected_main):
    calls = _resize_log(monkeypatch)
    out = resize_image_one_pass(mode, _img(64, 64), 200, 120, lambda im, s: _x4(im), "LANCZOS")
    assert out.size == (200, 120)
    main = [c for c in calls if c[3] is None and c[0] == (256, 256)]
    assert [(c[1], c[2]) for c in main] == [(expected_main, Image.LANCZOS)]


def test_without_an_upscaler_the_hosts_lanczos_is_kept(monkeypatch):
    """The filter choice only concerns the resize after an upscaler; masks and plain resizes stay LANCZOS."""
    calls = _resize_log(monkeypatch)
    resize_image_one_pass(0, _img(64, 64), 100, 100, None, "BICUBIC")
    resize_image_one_pass(0, _img(64, 64, "L"), 100, 100, lambda im, s: pytest.fail("no upscaler for L"), "BOX")
    assert [(c[0], c[1], c[2]) for c in calls] == [((64, 64), (100, 100), Image.LANCZOS)] * 2


def test_downscale_never_runs_the_upscaler():
    out = resize_image_one_pass(0, _img(64, 64), 32, 32, lambda im, s: pytest.fail("scale < 1"), "LANCZOS")
    assert out.size == (32, 32)


def test_latent_note():
    bilinear = {"mode": "bilinear", "antialias": False}
    assert "bilinear" in latent_upscale_note("Latent", bilinear, 0.3, 0.5)
    assert latent_upscale_note("Latent", bilinear, 0.5, 0.5) is None
    assert latent_upscale_note("Latent", bilinear, 0.3, 0.0) is None
    assert latent_upscale_note("Latent (nearest)", {"mode": "nearest"}, 0.3, 0.5) is None
    assert latent_upscale_note("R-ESRGAN 4x+", None, 0.3, 0.5) is None


def test_ui_controls_build_with_the_webui_gradio():
    gr = pytest.importorskip("gradio")
    from lib_sdfix.settings import UI_ARG_ORDER
    from lib_sdfix.webui.controls import build_script_controls

    with gr.Blocks():
        controls = build_script_controls(SDFixSettings(resize_filter="BOX"), lambda item: f"sdfix_{item}")
    assert len(controls) == len(UI_ARG_ORDER)
    values = dict(zip(UI_ARG_ORDER, [c.value for c in controls]))
    assert values == SDFixSettings(resize_filter="BOX").as_dict()
    assert all(c.label for c in controls) and controls[0].elem_id == "sdfix_enabled"


def test_paste_and_axis_parsing():
    from lib_sdfix.settings import SettingsError
    from lib_sdfix.webui.controls import infotext_paste_value
    from lib_sdfix.webui.panel import settings_panel_options
    from lib_sdfix.webui.xyz import parse_axis_value

    text = SDFixSettings(hires_parity=False).to_infotext()
    assert infotext_paste_value({"SDFix": text}, "hires_parity") is False
    assert infotext_paste_value({"Steps": "20"}, "hires_parity") is None
    assert infotext_paste_value({"SDFix": "garbage=1"}, "enabled") is None
    assert infotext_paste_value({"SDFix": text + " weights=exact previews=0"}, "hires_parity") is False
    assert parse_axis_value("enabled", "Off") is False and parse_axis_value("resize_filter", "BOX") == "BOX"
    assert parse_axis_value("latent_denoise_warning", "0.3") == 0.3
    with pytest.raises(SettingsError, match="resize_filter"):
        parse_axis_value("resize_filter", "NEAREST")
    keys = [spec.key for spec in settings_panel_options()]
    assert keys[0] == "sdfix_enabled" and keys[-1] == "sdfix_add_infotext"
