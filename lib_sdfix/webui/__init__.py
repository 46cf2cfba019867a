"""SDFix inside a WebUI (AUTOMATIC1111 v1.10, Forge, reForge): the only package that imports the host.

``scripts/sdfix.py`` defines the AlwaysOn script and calls :func:`register`; everything else is
here, split by concern: ``host`` (the host interface and its three implementations), ``session``
and ``hooks`` (per-generation state and the replaced host functions), ``refine`` (the late refine
on the samplers the host creates), ``apply`` (settings to
session to infotext), ``comparison`` (the A/B runner), ``routes``, ``tab``, ``controls``,
``panel`` and ``xyz`` (UI pieces).
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

__all__ = ["register", "unload"]


def unload() -> None:
    """Before the WebUI unloads its scripts: every patched function back to the host's own."""
    from lib_sdfix.webui.session import PATCHES, thread_sessions

    for session in thread_sessions():
        session.finish()
    PATCHES.release_all()


def _callbacks() -> List[Tuple[str, str, Callable[..., Any]]]:
    from lib_sdfix.webui import panel, routes, tab, xyz

    return [
        ("on_ui_settings", "callbacks_ui_settings", panel.on_ui_settings),
        ("on_before_ui", "callbacks_before_ui", xyz.add_xyz_axes),
        ("on_script_unloaded", "callbacks_script_unloaded", unload),
        ("on_app_started", "callbacks_app_started", routes.on_app_started),
        ("on_ui_tabs", "callbacks_ui_tabs", tab.on_ui_tabs),
    ]


def register() -> None:
    """Register SDFix's callbacks once.  "Reload script bodies" re-runs the script without clearing
    callbacks (a full reload clears them first): registering only what is missing keeps both right."""
    from modules import script_callbacks

    from lib_sdfix.failsafe import log_once

    callback_map = getattr(script_callbacks, "callback_map", {})
    for register_name, map_key, fn in _callbacks():
        existing = callback_map.get(map_key, [])
        if any(getattr(c, "callback", None) is fn for c in existing):
            continue
        getattr(script_callbacks, register_name)(fn)
    try:
        from lib_sdfix.webui import xyz

        xyz.add_xyz_axes()  # --nowebui builds no UI, so on_before_ui never fires there
    except Exception as exc:  # noqa: BLE001
        log_once("xyz", f"could not add X/Y/Z axes: {exc}", exc)
