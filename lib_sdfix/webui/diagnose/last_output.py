"""The last image the user generated, for the round trip's "Use last output" (diagnose.tab).

The AlwaysOn script's ``postprocess`` hands each generation here; an A/B or diagnosis run's own
generations are not the user's output (lib_sdfix.webui.ab.sampling.in_progress).
"""
from __future__ import annotations

from typing import Any, Dict

from lib_sdfix.webui.ab import sampling

__all__ = ["remember", "image"]

_LAST: Dict[str, Any] = {}


def remember(processed: Any) -> None:
    """Keep (a reference to) the first image of the user's generation ``processed``."""
    if sampling.in_progress():
        return
    images = getattr(processed, "images", None) or []
    index = getattr(processed, "index_of_first_image", 0)
    if len(images) > index:
        _LAST["image"] = images[index]


def image() -> Any:
    """The last image :func:`remember` kept; None before the first generation."""
    return _LAST.get("image")
