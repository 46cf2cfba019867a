"""The A/B comparison, WebUI-free: ``request`` (the body, validated and bounded), ``plan`` (variants and
the sampling runs they share), ``notes`` (which fix changed what), ``output`` (metrics, heatmap, grid,
slider markup, saved files).  The host runs the plan (lib_sdfix.webui.ab); the tab, the API
route and the tests share this one implementation.
"""
from lib_sdfix.ab.notes import RunContext, effect_notes
from lib_sdfix.ab.output import (
    compare_html,
    compose_grid,
    heatmap,
    metrics_display,
    metrics_json,
    metrics_table,
    png_base64,
    save_comparison,
)
from lib_sdfix.ab.plan import (
    MAX_VARIANTS,
    MODES,
    DecodeConfig,
    SamplingGroup,
    Variant,
    count_decodes,
    count_runs,
    plan_variants,
    sampling_groups,
)
from lib_sdfix.ab.request import (
    MAX_LABEL_CHARS,
    ABRequest,
    ab_request_from_body,
    parse_variants,
    payload_from_infotext,
    resolve_seed,
    settings_from_infotext,
)
from lib_sdfix.limits import decode_image_field

__all__ = [
    "MODES", "MAX_VARIANTS", "MAX_LABEL_CHARS", "Variant", "plan_variants", "parse_variants", "DecodeConfig",
    "SamplingGroup", "sampling_groups", "count_runs", "count_decodes", "RunContext", "effect_notes",
    "metrics_table", "metrics_json", "metrics_display", "heatmap", "compose_grid", "png_base64", "compare_html",
    "save_comparison", "payload_from_infotext", "settings_from_infotext", "resolve_seed", "ABRequest",
    "ab_request_from_body", "decode_image_field",
]
