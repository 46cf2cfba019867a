"""javascript/sdfix_ab.js under Node: the pure zoom/pan/slider math and the widget on a fake DOM.

No browser and no npm packages: tests/js/vm_runner.js loads the script into a ``vm`` context with a
small fake ``window``/``document`` and runs a snippet of test code; the result comes back as JSON.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lib_sdfix.ab import compare_html
from lib_sdfix.imaging import png_base64

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "javascript" / "sdfix_ab.js"
RUNNER = ROOT / "tests" / "js" / "vm_runner.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_js(body: str):
    proc = subprocess.run([NODE, str(RUNNER), str(SCRIPT)], input=body, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def markup():
    from PIL import Image

    a = png_base64(Image.new("RGB", (8, 4), (10, 20, 30)))
    b = png_base64(Image.new("RGB", (8, 4), (200, 20, 30)))
    return compare_html(a, b, ("A: SDFix off", 'B: "on" <all>'))


def test_script_loads_without_webui_or_observer_and_exports_the_math():
    out = run_js("""
        const page = load();
        const ab = page.window.sdfixAB;
        return Object.keys(ab).sort();
    """)
    for name in ["zoomAtPoint", "clampPan", "sliderPercent", "keyAction", "applyAction", "wheelFactor", "enhance", "enhanceAll"]:
        assert name in out


def test_zoom_at_point_keeps_the_point_under_the_cursor_fixed():
    out = run_js("""
        const ab = load().window.sdfixAB;
        let worst = 0, cases = 0;
        const views = [{scale: 1, x: 0, y: 0}, {scale: 2, x: -0.5, y: -0.25}, {scale: 5, x: -3.9, y: 0}];
        for (const view of views) for (const factor of [1.1, 1.5, 3]) for (const px of [0, 0.1, 0.5, 0.93, 1])
            for (const py of [0, 0.3, 1]) {
                const next = ab.zoomAtPoint(view, factor, px, py);
                // content point under the cursor: u = (p - x) / scale, before and after
                worst = Math.max(worst, Math.abs((px - view.x) / view.scale - (px - next.x) / next.scale),
                                        Math.abs((py - view.y) / view.scale - (py - next.y) / next.scale));
                cases++;
            }
        const once = ab.zoomAtPoint({scale: 1, x: 0, y: 0}, 2, 0.25, 0.75);
        return {worst, cases, once};
    """)
    assert out["cases"] == 135 and out["worst"] < 1e-12
    assert out["once"] == {"scale": 2, "x": -0.25, "y": -0.75}


def test_zoom_is_limited_and_zooming_out_recentres():
    out = run_js("""
        const ab = load().window.sdfixAB;
        return {
            out: ab.zoomAtPoint({scale: 2, x: -1, y: -0.5}, 0.1, 0.9, 0.9),
            max: ab.zoomAtPoint({scale: 30, x: 0, y: 0}, 4, 0, 0).scale,
            partial: ab.zoomAtPoint({scale: 4, x: -3, y: 0}, 0.5, 1, 0),
            limits: [ab.MIN_SCALE, ab.MAX_SCALE],
        };
    """)
    assert out["out"] == {"scale": 1, "x": 0, "y": 0}
    assert out["max"] == 32 and out["limits"] == [1, 32]
    # zooming out at the right edge keeps the right edge in view: x stays at its limit 1 - scale
    assert out["partial"] == {"scale": 2, "x": -1, "y": 0}


def test_clamp_pan_keeps_the_image_covering_the_viewport():
    out = run_js("""
        const ab = load().window.sdfixAB;
        return [
            ab.clampPan({scale: 1, x: 0.3, y: -0.2}),
            ab.clampPan({scale: 3, x: -5, y: 1}),
            ab.clampPan({scale: 3, x: -1.2, y: -0.4}),
            ab.clampPan({scale: 0.5, x: 0.2, y: 0}),
            ab.panBy({scale: 2, x: -0.5, y: -0.5}, -0.8, 0.3),
        ];
    """)
    assert out[0] == {"scale": 1, "x": 0, "y": 0}
    assert out[1] == {"scale": 3, "x": -2, "y": 0}
    assert out[2] == {"scale": 3, "x": -1.2, "y": -0.4}
    assert out[3] == {"scale": 1, "x": 0, "y": 0}
    assert out[4]["x"] == -1 and out[4]["y"] == pytest.approx(-0.2)


def test_slider_position_from_pointer():
    out = run_js("""
        const ab = load().window.sdfixAB;
        return [ab.sliderPercent(150, 100, 200), ab.sliderPercent(100, 100, 200), ab.sliderPercent(50, 100, 200),
                ab.sliderPercent(900, 100, 200), ab.sliderPercent(120, 100, 0), ab.sliderPercent(300, 100, 200)];
    """)
    assert out == [25, 0, 0, 100, 50, 100]


def test_keyboard_mapping():
    out = run_js("""
        const ab = load().window.sdfixAB;
        const keys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "+", "=", "-", "_", "0", "Home", "End", "a", "Enter"];
        const table = {};
        for (const mode of ["slider", "side"]) for (const shift of [false, true])
            table[mode + (shift ? "+shift" : "")] = keys.map((k) => ab.keyAction(k, mode, shift));
        return table;
    """)
    slider, side = out["slider"], out["side"]
    assert slider[0] == {"kind": "slider", "delta": -2} and slider[1] == {"kind": "slider", "delta": 2}
    assert slider[2] is None and slider[3] is None  # up/down do nothing in slider mode
    assert slider[9] == {"kind": "sliderTo", "value": 0} and slider[10] == {"kind": "sliderTo", "value": 100}
    for table in out.values():
        assert table[4]["kind"] == table[5]["kind"] == "zoom" and table[4]["factor"] > 1
        assert table[6]["kind"] == table[7]["kind"] == "zoom" and table[6]["factor"] == pytest.approx(1 / table[4]["factor"])
        assert table[8] == {"kind": "reset"}
        assert table[11] is None and table[12] is None
    # side by side: arrows pan (the view moves the way the arrow points, so the content moves back)
    assert side[0] == {"kind": "pan", "dx": 0.1, "dy": 0} and side[1] == {"kind": "pan", "dx": -0.1, "dy": 0}
    assert side[2] == {"kind": "pan", "dx": 0, "dy": 0.1} and side[3] == {"kind": "pan", "dx": 0, "dy": -0.1}
    assert side[9] is None
    assert out["side+shift"][1] == {"kind": "pan", "dx": pytest.approx(-0.4), "dy": 0}
    assert out["slider+shift"][1] == {"kind": "pan", "dx": -0.1, "dy": 0}  # Shift pans in slider mode


def test_apply_action_and_wheel():
    out = run_js("""
        const ab = load().window.sdfixAB;
        let s = {mode: "side", slider: 50, view: {scale: 1, x: 0, y: 0}};
        s = ab.applyAction(s, ab.keyAction("+", "side", false));
        const zoomed = s.view;
        s = ab.applyAction(s, ab.keyAction("ArrowRight", "side", false));
        const panned = s.view;
        for (let i = 0; i < 50; i++) s = ab.applyAction(s, ab.keyAction("ArrowRight", "side", false));
        const edge = s.view;
        s = ab.applyAction(s, ab.keyAction("0", "side", false));
        let t = {mode: "slider", slider: 99, view: {scale: 1, x: 0, y: 0}};
        t = ab.applyAction(t, ab.keyAction("ArrowRight", "slider", false));
        return {zoomed, panned, edge, reset: s.view, slider: t.slider,
                wheelIn: ab.wheelFactor(-100, 0), wheelOut: ab.wheelFactor(100, 0), lines: ab.wheelFactor(-3, 1),
                css: ab.transformCSS({scale: 2, x: -0.5, y: -0.25})};
    """)
    assert out["zoomed"]["scale"] == 1.25
    assert out["zoomed"]["x"] == pytest.approx(0.5 - 0.5 * 1.25)  # about the centre
    assert out["panned"]["x"] == pytest.approx(out["zoomed"]["x"] - 0.1)
    assert out["edge"]["x"] == pytest.approx(-0.25)  # stops at the right edge (1 - scale)
    assert out["reset"] == {"scale": 1, "x": 0, "y": 0}
    assert out["slider"] == 100
    assert out["wheelIn"] > 1 > out["wheelOut"] and out["wheelIn"] * out["wheelOut"] == pytest.approx(1)
    assert out["lines"] == pytest.approx(out["wheelIn"] ** 0.48)
    assert out["css"] == "translate(-50%, -25%) scale(2)"


def test_widget_enhances_compare_html_via_the_webui_hook(markup):
    out = run_js("""
        const page = load();
        const host = page.document.body.appendChild(page.document.createElement("div"));
        parseInto(host, %s);
        const root = host.querySelector(".sdfix-compare");
        const before = root.querySelectorAll("img").map((i) => i.getAttribute("data-role"));
        const hooks = page.hooks.afterUpdate.length;
        page.hooks.afterUpdate.forEach((fn) => fn());
        const layers = root.querySelectorAll(".sdfix-compare-layer");
        const views = root.querySelectorAll(".sdfix-compare-view");
        const result = {
            hooks, before,
            ready: root.getAttribute("data-sdfix-ready"),
            fallbackGone: root.querySelector(".sdfix-compare-fallback") === null,
            layerImages: layers.map((l) => l.children[0].getAttribute("data-role")),
            captions: root.querySelectorAll(".sdfix-compare-caption").map((c) => c.textContent),
            mode: root.getAttribute("data-mode"),
            clip0: views[1].style.clipPath,
        };
        root.dispatch("keydown", {key: "ArrowRight"});
        result.clipKey = views[1].style.clipPath;
        result.handle = root.querySelector(".sdfix-compare-handle").style.left;
        views[0].rect = {left: 100, top: 0, width: 200, height: 100};
        views[0].dispatch("pointerdown", {button: 0, pointerId: 1, clientX: 250, clientY: 50});
        views[0].dispatch("pointermove", {pointerId: 1, clientX: 280, clientY: 50});
        result.clipDrag = views[1].style.clipPath;
        views[0].dispatch("pointerup", {pointerId: 1, clientX: 280, clientY: 50});
        views[0].dispatch("pointermove", {pointerId: 1, clientX: 120, clientY: 50});
        result.clipAfterUp = views[1].style.clipPath;
        const wheel = views[0].dispatch("wheel", {deltaY: -300, deltaMode: 0, clientX: 150, clientY: 25});
        result.wheelPrevented = wheel.defaultPrevented;
        result.transforms = layers.map((l) => l.style.transform);
        result.zoomText = root.querySelector(".sdfix-compare-zoom").textContent;
        root.querySelector(".sdfix-compare-mode").dispatch("click");
        result.sideMode = root.getAttribute("data-mode");
        result.sideClip = views[1].style.clipPath;
        result.buttonText = root.querySelector(".sdfix-compare-mode").textContent;
        views[1].rect = {left: 300, top: 0, width: 200, height: 100};
        views[1].dispatch("pointerdown", {button: 0, pointerId: 2, clientX: 400, clientY: 50});
        views[1].dispatch("pointermove", {pointerId: 2, clientX: 380, clientY: 40});
        result.pannedTransforms = layers.map((l) => l.style.transform);
        const key = root.dispatch("keydown", {key: "0"});
        result.resetTransform = layers[0].style.transform;
        result.resetPrevented = key.defaultPrevented;
        result.ignored = root.dispatch("keydown", {key: "x"}).defaultPrevented;
        page.hooks.afterUpdate.forEach((fn) => fn());
        result.controlsAfterSecondUpdate = root.querySelectorAll(".sdfix-compare-toolbar").length;
        return result;
    """ % json.dumps(markup))
    assert out["hooks"] == 1 and out["before"] == ["a", "b"]
    assert out["ready"] == "1" and out["fallbackGone"]
    assert out["layerImages"] == ["a", "b"]  # the original <img> nodes moved into the zoom layers
    assert out["captions"] == ["A: SDFix off", 'B: "on" <all>']
    assert out["mode"] == "slider" and out["clip0"] == "inset(0 0 0 50%)"
    assert out["clipKey"] == "inset(0 0 0 52%)" and out["handle"] == "52%"
    assert out["clipDrag"] == "inset(0 0 0 90%)"
    assert out["clipAfterUp"] == "inset(0 0 0 90%)"  # moves after pointerup are not a drag
    assert out["wheelPrevented"]
    assert out["transforms"][0] == out["transforms"][1] and "scale(1.5" in out["transforms"][0]
    assert out["zoomText"] == "157%"
    assert out["sideMode"] == "side" and out["sideClip"] == "" and out["buttonText"] == "Slider"
    a, b = out["pannedTransforms"]
    assert a == b and a != out["transforms"][0]  # a drag on B pans A too: one shared transform
    assert out["resetTransform"] == "translate(0%, 0%) scale(1)" and out["resetPrevented"]
    assert out["ignored"] is False
    assert out["controlsAfterSecondUpdate"] == 1  # not enhanced twice


def test_blocks_without_both_images_are_left_alone():
    out = run_js("""
        const page = load();
        const host = page.document.body.appendChild(page.document.createElement("div"));
        parseInto(host, '<div class="sdfix-compare"><img data-role="a" src="x"></div>');
        const done = page.window.sdfixAB.enhanceAll(host);
        return {done: done.length, ready: host.children[0].getAttribute("data-sdfix-ready")};
    """)
    assert out == {"done": 0, "ready": None}


def test_style_css_is_scoped_under_sdfix_compare():
    import re

    css = re.sub(r"/\*.*?\*/", "", (ROOT / "style.css").read_text(), flags=re.S)
    selectors = [s.strip() for block in re.findall(r"([^{}]+)\{", css) for s in block.split(",")]
    assert len(selectors) > 10
    assert all(s.startswith(".sdfix-compare") for s in selectors), [s for s in selectors if not s.startswith(".sdfix-compare")]
    for cls in ("sdfix-compare-fallback", "sdfix-compare-view", "sdfix-compare-layer", "sdfix-compare-handle"):
        assert "." + cls in css
