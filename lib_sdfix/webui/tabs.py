"""SDFix's tab in the WebUI (``on_ui_tabs``): the A/B comparison (ab.tab) and the Diagnose section
(diagnose.tab), each a sub-tab; their generation form is form.py's."""
from __future__ import annotations

from typing import Any, List

__all__ = ["build_sdfix_tab", "on_ui_tabs"]


def build_sdfix_tab(ab: Any, diagnose: Any) -> Any:
    """SDFix's one tab: the A/B comparison and the Diagnose section, each a sub-tab (the A/B part keeps
    its element ids, so its script and tests find it as before)."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Tabs(elem_id="sdfix_sections"):
            with gr.Tab("A/B comparison", elem_id="sdfix_section_ab"):
                ab.render()
            with gr.Tab("Diagnose", elem_id="sdfix_section_diagnose"):
                diagnose.render()
    return tab


def on_ui_tabs() -> List[Any]:
    """The WebUI's ``on_ui_tabs`` callback: SDFix's tab, built with the host's callbacks."""
    # The sections load when the WebUI builds its UI, not when it loads its scripts: the Diagnose
    # section's choices come from the analysis modules (lib_sdfix.diagnose.plan, numpy, PIL).
    from lib_sdfix.webui.ab import tab as ab_tab
    from lib_sdfix.webui.diagnose import tab as diagnose_tab

    ab_callbacks = ab_tab.host_callbacks()
    tab = build_sdfix_tab(ab_tab.build_ab_tab(ab_callbacks),
                          diagnose_tab.build_diagnose_tab(diagnose_tab.host_callbacks(ab_callbacks)))
    return [(tab, "SDFix", "sdfix_ab")]
