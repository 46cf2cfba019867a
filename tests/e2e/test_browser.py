"""A person's path through the A/B section of the "SDFix" tab in a real browser (Debian's chromium via Playwright).

Needs SDFIX_E2E_URL, the ``playwright`` Python package and a system Chromium (SDFIX_E2E_CHROMIUM,
default /usr/bin/chromium; no browser download).  Screenshots go to SDFIX_E2E_SCREENSHOTS
(default: pytest's tmp dir) and their paths are printed.
"""
from __future__ import annotations

import re

import pytest

from .conftest import AUTH, screens_folder


def test_ab_tab_use_last_run_slider_zoom(page, tmp_path, webui):
    if AUTH:
        pytest.skip("the UI itself is not behind --api-auth; run this against a WebUI without it")
    webui.txt2img(prompt="browser test portrait", seed=777)  # becomes "the last txt2img" (params.txt)
    page.goto(page.sdfix_url, timeout=120_000)
    # the top-level tab button (gradio 3: .tab-nav button; gradio 4 on Forge: button[role=tab])
    # SDFix's tab ("SDFix"; its A/B section is the first sub-tab, open by default)
    page.locator("#tabs button").filter(has_text=re.compile(r"^\s*SDFix\s*$")).first.click(timeout=120_000)
    page.locator("#sdfix_ab_use_last").click()
    page.wait_for_function("() => document.querySelector('#sdfix_ab_prompt textarea').value.includes('browser test')",
                           timeout=60_000)
    assert page.locator("#sdfix_ab_seed input").input_value() == "777"
    page.locator("#sdfix_ab_run").click()
    page.wait_for_selector(".sdfix-compare[data-sdfix-ready]", timeout=600_000)
    compare = page.locator(".sdfix-compare").first
    box = compare.bounding_box()
    assert box and box["width"] > 50
    # drag the slider to 25 %
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    left = compare.locator(".sdfix-compare-handle").evaluate("el => parseFloat(el.style.left)")
    assert 15 < left < 35, left
    # zoom in with the wheel and with "+"
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.mouse.wheel(0, -400)
    compare.focus()
    page.keyboard.press("+")
    zoom = int(compare.locator(".sdfix-compare-zoom").inner_text().rstrip("%"))
    assert zoom > 100, zoom
    metrics = page.locator("#sdfix_ab_metrics").inner_text()
    assert "PSNR" in metrics
    shot = screens_folder(tmp_path) / f"sdfix-ab-tab-{webui.mode}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
