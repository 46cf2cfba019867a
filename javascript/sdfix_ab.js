// SDFix A/B comparison widget: enhances every `.sdfix-compare` block that lib_sdfix.ab.compare_html
// renders (two <img>, data-role="a" and "b") into a slider (B clipped over A) or a side-by-side view,
// both with one shared zoom/pan transform. Plain JS, no build step; the WebUI loads it into the page.
// Why here: Gradio (3.41 in AUTOMATIC1111 and reForge, 4.40 in Forge) has no component for synchronized
// zoom or a comparison slider.
(function () {
    "use strict";

    var MIN_SCALE = 1;
    var MAX_SCALE = 32;
    var KEY_ZOOM = 1.25;
    var SLIDER_STEP = 2; // percent per arrow key
    var PAN_STEP = 0.1; // viewport fractions per arrow key
    var PIXELATED_FROM = 4; // show hard pixels from this zoom on: that is where detail is judged
    var READY_ATTR = "data-sdfix-ready";

    // --- pure math (exported for the tests) ------------------------------------------------------
    // A view is {scale, x, y}: content point u (0..1 of the viewport, image fit to it at scale 1)
    // is shown at x + scale * u. Units are viewport fractions, so one view fits any viewport size
    // and both modes.

    function clamp(value, lo, hi) {
        return Math.min(hi, Math.max(lo, value));
    }

    function identityView() {
        return {scale: 1, x: 0, y: 0};
    }

    // Keep the content covering the viewport: x, y in [1 - scale, 0].
    function clampPan(view) {
        var scale = clamp(view.scale, MIN_SCALE, MAX_SCALE);
        return {scale: scale, x: clamp(view.x, 1 - scale, 0), y: clamp(view.y, 1 - scale, 0)};
    }

    // Zoom by `factor` keeping the content point under (px, py) (viewport fractions) where it is.
    function zoomAtPoint(view, factor, px, py) {
        var scale = clamp(view.scale * factor, MIN_SCALE, MAX_SCALE);
        var ratio = scale / view.scale;
        return clampPan({scale: scale, x: px - (px - view.x) * ratio, y: py - (py - view.y) * ratio});
    }

    function panBy(view, dx, dy) {
        return clampPan({scale: view.scale, x: view.x + dx, y: view.y + dy});
    }

    // Slider position (percent from the left) of a pointer at clientX over a box at left..left+width.
    function sliderPercent(clientX, left, width) {
        if (!(width > 0)) return 50;
        return clamp((clientX - left) / width * 100, 0, 100);
    }

    // Zoom factor of one wheel event: smooth for trackpads, ~1.2x per mouse notch.
    function wheelFactor(deltaY, deltaMode) {
        var pixels = deltaY * (deltaMode === 1 ? 16 : deltaMode === 2 ? 400 : 1);
        return Math.exp(-clamp(pixels, -400, 400) * 0.0015);
    }

    // What a key does in `mode` ("slider" or "side"); null for keys the widget leaves alone.
    // Slider mode: Left/Right move the divider (Home/End: ends), Shift+arrows pan.
    // Both modes: + / = zoom in, - / _ zoom out, 0 resets.
    function keyAction(key, mode, shiftKey) {
        if (key === "+" || key === "=") return {kind: "zoom", factor: KEY_ZOOM};
        if (key === "-" || key === "_") return {kind: "zoom", factor: 1 / KEY_ZOOM};
        if (key === "0") return {kind: "reset"};
        var pan = {ArrowLeft: [1, 0], ArrowRight: [-1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1]}[key];
        if (mode === "slider" && !shiftKey) {
            if (key === "ArrowLeft") return {kind: "slider", delta: -SLIDER_STEP};
            if (key === "ArrowRight") return {kind: "slider", delta: SLIDER_STEP};
            if (key === "Home") return {kind: "sliderTo", value: 0};
            if (key === "End") return {kind: "sliderTo", value: 100};
            return null;
        }
        if (pan) {
            var step = mode === "side" && shiftKey ? PAN_STEP * 4 : PAN_STEP;
            // The arrow moves the view over the image: the content moves the other way.
            return {kind: "pan", dx: pan[0] * step, dy: pan[1] * step};
        }
        return null;
    }

    // New widget state {mode, slider, view} after `action`; keyboard zoom is about the centre.
    function applyAction(state, action) {
        var next = {mode: state.mode, slider: state.slider, view: state.view};
        if (!action) return next;
        if (action.kind === "zoom") next.view = zoomAtPoint(state.view, action.factor, 0.5, 0.5);
        else if (action.kind === "reset") next.view = identityView();
        else if (action.kind === "pan") next.view = panBy(state.view, action.dx, action.dy);
        else if (action.kind === "slider") next.slider = clamp(state.slider + action.delta, 0, 100);
        else if (action.kind === "sliderTo") next.slider = clamp(action.value, 0, 100);
        return next;
    }

    function transformCSS(view) {
        return "translate(" + view.x * 100 + "%, " + view.y * 100 + "%) scale(" + view.scale + ")";
    }

    // --- DOM -------------------------------------------------------------------------------------------

    function el(tag, className, text) {
        var node = document.createElement(tag);
        if (className) node.className = className;
        if (text !== undefined) node.textContent = text;
        return node;
    }

    function findImage(root, role) {
        var images = root.querySelectorAll("img");
        for (var i = 0; i < images.length; i++) {
            if (images[i].getAttribute("data-role") === role) return images[i];
        }
        return null;
    }

    // Drag with Pointer Events (mouse, touch and pen alike; every browser the WebUI supports has them).
    function onDrag(target, start, move, end) {
        var active = null;
        target.addEventListener("pointerdown", function (e) {
            if (e.button !== 0) return;
            active = e.pointerId;
            target.setPointerCapture(e.pointerId);
            start(e);
            e.preventDefault();
        });
        target.addEventListener("pointermove", function (e) {
            if (e.pointerId === active) move(e);
        });
        var stop = function (e) {
            if (e.pointerId === active) {
                active = null;
                end(e);
            }
        };
        target.addEventListener("pointerup", stop);
        target.addEventListener("pointercancel", stop);
    }

    // Turn one `.sdfix-compare` block into the widget; returns its controller, or null if it lacks images.
    function enhance(root) {
        if (root.getAttribute(READY_ATTR) === "1") return null;
        var imgA = findImage(root, "a");
        var imgB = findImage(root, "b");
        if (!imgA || !imgB) return null;
        root.setAttribute(READY_ATTR, "1");

        var state = {mode: root.getAttribute("data-mode") === "side" ? "side" : "slider", slider: 50, view: identityView()};

        var toolbar = el("div", "sdfix-compare-toolbar");
        var modeButton = el("button", "sdfix-compare-mode");
        modeButton.setAttribute("type", "button");
        var resetButton = el("button", "sdfix-compare-reset", "Reset zoom (0)");
        resetButton.setAttribute("type", "button");
        var zoomLabel = el("span", "sdfix-compare-zoom", "100%");
        toolbar.appendChild(modeButton);
        toolbar.appendChild(resetButton);
        toolbar.appendChild(zoomLabel);

        var views = el("div", "sdfix-compare-views");
        var panes = [];
        [[imgA, "a"], [imgB, "b"]].forEach(function (pair) {
            var view = el("div", "sdfix-compare-view");
            view.setAttribute("data-view", pair[1]);
            var layer = el("div", "sdfix-compare-layer");
            layer.appendChild(pair[0]); // moves the original <img>: its data URL is decoded once
            view.appendChild(layer);
            view.appendChild(el("div", "sdfix-compare-caption", pair[0].getAttribute("alt") || pair[1].toUpperCase()));
            views.appendChild(view);
            panes.push({view: view, layer: layer});
        });
        var handle = el("div", "sdfix-compare-handle");
        handle.setAttribute("role", "slider");
        handle.setAttribute("aria-valuemin", "0");
        handle.setAttribute("aria-valuemax", "100");
        handle.setAttribute("aria-label", "A/B divider");
        views.appendChild(handle);

        var fallback = root.querySelector(".sdfix-compare-fallback");
        if (fallback && fallback.parentNode) fallback.parentNode.removeChild(fallback);
        root.appendChild(toolbar);
        root.appendChild(views);

        function render() {
            var transform = transformCSS(state.view);
            panes.forEach(function (pane) {
                pane.layer.style.transform = transform;
            });
            panes[1].view.style.clipPath = state.mode === "slider" ? "inset(0 0 0 " + state.slider + "%)" : "";
            handle.style.left = state.slider + "%";
            handle.setAttribute("aria-valuenow", String(Math.round(state.slider)));
            root.setAttribute("data-mode", state.mode);
            modeButton.textContent = state.mode === "slider" ? "Side by side" : "Slider";
            zoomLabel.textContent = Math.round(state.view.scale * 100) + "%";
            if (state.view.scale >= PIXELATED_FROM) root.classList.add("sdfix-compare-pixelated");
            else root.classList.remove("sdfix-compare-pixelated");
        }

        function apply(action) {
            state = applyAction(state, action);
            render();
        }

        modeButton.addEventListener("click", function () {
            state = {mode: state.mode === "slider" ? "side" : "slider", slider: state.slider, view: state.view};
            render();
        });
        resetButton.addEventListener("click", function () {
            apply({kind: "reset"});
        });

        root.addEventListener("keydown", function (e) {
            var action = keyAction(e.key, state.mode, !!e.shiftKey);
            if (!action) return;
            if (e.preventDefault) e.preventDefault();
            apply(action);
        });

        panes.forEach(function (pane) {
            var view = pane.view;
            var last = null;
            var panning = false;
            onDrag(view, function (e) {
                if (root.focus) root.focus({preventScroll: true});
                panning = state.mode === "side" || !!e.shiftKey;
                last = {x: e.clientX, y: e.clientY};
                if (!panning) {
                    var rect = view.getBoundingClientRect();
                    apply({kind: "sliderTo", value: sliderPercent(e.clientX, rect.left, rect.width)});
                }
            }, function (e) {
                var rect = view.getBoundingClientRect();
                if (panning) {
                    if (rect.width > 0 && rect.height > 0) {
                        apply({kind: "pan", dx: (e.clientX - last.x) / rect.width, dy: (e.clientY - last.y) / rect.height});
                    }
                    last = {x: e.clientX, y: e.clientY};
                } else {
                    apply({kind: "sliderTo", value: sliderPercent(e.clientX, rect.left, rect.width)});
                }
            }, function () {
                last = null;
            });

            view.addEventListener("wheel", function (e) {
                var rect = view.getBoundingClientRect();
                if (!(rect.width > 0 && rect.height > 0)) return;
                if (e.preventDefault) e.preventDefault();
                var px = (e.clientX - rect.left) / rect.width;
                var py = (e.clientY - rect.top) / rect.height;
                state = {mode: state.mode, slider: state.slider, view: zoomAtPoint(state.view, wheelFactor(e.deltaY, e.deltaMode), px, py)};
                render();
            }, {passive: false});

            view.addEventListener("dblclick", function () {
                apply({kind: "reset"});
            });
        });

        render();
        return {
            root: root,
            state: function () {
                return {mode: state.mode, slider: state.slider, view: {scale: state.view.scale, x: state.view.x, y: state.view.y}};
            },
        };
    }

    function appRoot() {
        return typeof window.gradioApp === "function" ? window.gradioApp() : document;
    }

    // Enhance every block not done yet (Gradio replaces the gr.HTML markup on each update).
    function enhanceAll(scope) {
        var found = (scope || appRoot()).querySelectorAll(".sdfix-compare");
        var done = [];
        for (var i = 0; i < found.length; i++) {
            var controller = enhance(found[i]);
            if (controller) done.push(controller);
        }
        return done;
    }

    window.sdfixAB = {
        MIN_SCALE: MIN_SCALE,
        MAX_SCALE: MAX_SCALE,
        clampPan: clampPan,
        zoomAtPoint: zoomAtPoint,
        panBy: panBy,
        sliderPercent: sliderPercent,
        wheelFactor: wheelFactor,
        keyAction: keyAction,
        applyAction: applyAction,
        transformCSS: transformCSS,
        enhance: enhance,
        enhanceAll: enhanceAll,
    };

    // The WebUI calls onAfterUiUpdate callbacks after Gradio changes the page (its script.js, loaded
    // before extension scripts, defines it).
    window.onAfterUiUpdate(function () {
        enhanceAll();
    });
})();

// Run buttons of SDFix's tab (A/B and Diagnose): register the job id so the WebUI's own progress bar
// (and its Interrupt) follow the run, as the txt2img tab's submit() does -- Gradio has no hook for the
// WebUI's progress requests, so this is the one part of the tab that needs script.
function sdfixSubmitWithProgress(prefix, args) {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById(prefix + "_results"), gradioApp().getElementById(prefix + "_gallery"), function () {});
    var submitted = create_submit_args(args);
    submitted[0] = id;
    return submitted;
}

function sdfixABSubmit() {
    return sdfixSubmitWithProgress("sdfix_ab", arguments);
}

function sdfixDiagnoseSubmit() {
    return sdfixSubmitWithProgress("sdfix_dg", arguments);
}
