"""SDFix's WebUI callbacks, registered once (:func:`register`), and what undoes SDFix when the WebUI
unloads its scripts (:func:`unload`)."""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

from lib_sdfix.failsafe import log_once
from lib_sdfix.webui import panel, patches, routes, tabs, xyz
from lib_sdfix.webui.session import thread_sessions

__all__ = ["register", "unload"]


def unload() -> None:
    """Before the WebUI unloads its scripts: every patched function back to the host's own."""
    for session in thread_sessions():
        session.finish()
    patches.release_all()


def _callbacks() -> List[Tuple[str, str, Callable[..., Any]]]:
    return [
        ("on_ui_settings", "callbacks_ui_settings", panel.on_ui_settings),
        ("on_before_ui", "callbacks_before_ui", xyz.add_xyz_axes),
        ("on_script_unloaded", "callbacks_script_unloaded", unload),
        ("on_app_started", "callbacks_app_started", routes.on_app_started),
        ("on_ui_tabs", "callbacks_ui_tabs", tabs.on_ui_tabs),
    ]


def register() -> None:
    """Register SDFix's callbacks once.  "Reload script bodies" re-runs the script without clearing
    callbacks (a full reload clears them first): registering only what is missing keeps both right."""
    from modules import script_callbacks

    callback_map = getattr(script_callbacks, "callback_map", {})
    for register_name, map_key, fn in _callbacks():
        existing = callback_map.get(map_key, [])
        if any(getattr(c, "callback", None) is fn for c in existing):
            continue
        getattr(script_callbacks, register_name)(fn)
    try:
        xyz.add_xyz_axes()  # --nowebui builds no UI, so on_before_ui never fires there
    except Exception as exc:  # noqa: BLE001
        log_once("xyz", f"could not add X/Y/Z axes: {exc}", exc)
