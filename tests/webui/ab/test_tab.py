"""The A/B tab's form mapping and layout (gradio 3.41, as the WebUI pins it)."""
import pytest

from lib_sdfix.webui.ab.tab import MODE_CHOICES, TabCallbacks, build_ab_tab
from lib_sdfix.webui.form import FORM_FIELDS, form_from_payload, payload_from_form


def _values(**overrides):
    values = {key: default for key, _, default in FORM_FIELDS}
    values.update(overrides)
    return [values[key] for key, _, _ in FORM_FIELDS]


def test_payload_without_hires_drops_hires_fields_and_same_markers():
    payload = payload_from_form(_values(prompt="cat", seed=12.0, steps=3.0))
    assert payload["prompt"] == "cat" and payload["seed"] == 12 and isinstance(payload["steps"], int)
    assert "hr_upscaler" not in payload and "hr_sampler_name" not in payload and payload["enable_hr"] is False


def test_payload_with_hires_keeps_explicit_hires_sampler():
    payload = payload_from_form(_values(enable_hr=True, hr_sampler_name="DPM++ 2M", hr_scheduler="Use same scheduler"))
    assert payload["hr_upscaler"] == "Latent" and payload["hr_sampler_name"] == "DPM++ 2M"
    assert "hr_scheduler" not in payload


def test_form_updates_from_payload():
    pytest.importorskip("gradio")
    updates = form_from_payload({"prompt": "dog", "seed": 5, "enable_hr": False})
    keys = [key for key, _, _ in FORM_FIELDS]
    assert updates[keys.index("prompt")]["value"] == "dog" and updates[keys.index("seed")]["value"] == 5
    assert "value" not in updates[keys.index("steps")]  # untouched
    assert updates[keys.index("hr_sampler_name")]["value"] == "Use same sampler"


def test_tab_builds_with_the_webui_gradio():
    gr = pytest.importorskip("gradio")
    calls = []
    callbacks = TabCallbacks(samplers=lambda: ["Euler", "Euler a"], schedulers=lambda: ["Automatic", "Karras"],
                             upscalers=lambda: ["Latent", "R-ESRGAN 4x+"], last_generation=lambda: {},
                             payload_from_text=lambda text: {}, run=lambda *a: calls.append(a), interrupt=lambda: None)
    tab = build_ab_tab(callbacks)
    assert isinstance(tab, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in tab.blocks.values()}
    for needed in ("sdfix_ab_run", "sdfix_ab_use_last", "sdfix_ab_results", "sdfix_ab_compare", "sdfix_ab_metrics",
                   "sdfix_ab_gallery", "sdfix_ab_interrupt", "sdfix_ab_mode", *[f"sdfix_ab_{k}" for k, _, _ in FORM_FIELDS]):
        assert needed in ids, needed
    mode = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == "sdfix_ab_mode")
    assert [MODE_CHOICES[c if isinstance(c, str) else c[0]] for c in mode.choices] == ["ab", "ablation", "refine"]
