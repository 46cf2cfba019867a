"""The A/B comparison, WebUI-free: ``request`` (the body, validated and bounded), ``plan`` (the variants
of a mode; the sampling runs they share: :mod:`lib_sdfix.sampling_plan`), ``notes`` (which fix changed
what), ``output`` (the metrics document, the tab's table, the slider markup, the saved set; the
pictures and the metrics table themselves: :mod:`lib_sdfix.imaging`).  The host runs the plan
(lib_sdfix.webui.ab); the tab, the API route and the tests share this one implementation.
"""
from lib_sdfix.ab.notes import RunContext, effect_notes
from lib_sdfix.ab.output import compare_html, metrics_display, metrics_json, save_comparison
from lib_sdfix.ab.plan import MAX_VARIANTS, MODES, plan_variants
from lib_sdfix.ab.request import (
    MAX_LABEL_CHARS,
    ABRequest,
    ab_request_from_body,
    parse_variants,
    payload_from_infotext,
    settings_from_infotext,
)

__all__ = [
    "MODES", "MAX_VARIANTS", "MAX_LABEL_CHARS", "plan_variants", "parse_variants", "RunContext", "effect_notes",
    "metrics_json", "metrics_display", "compare_html", "save_comparison", "payload_from_infotext",
    "settings_from_infotext", "ABRequest", "ab_request_from_body",
]
