"""The user's speed and memory options as this WebUI has them now (lib_sdfix.diagnose.speed_options lists
them per host), and switching a cell's changes on for one generation.

Read, never guessed: an option is "available" where the running host has it (``opts.data_labels``, a
``cmd_opts`` attribute); its value is the user's (the payload's ``override_settings`` or txt2img field
where the request sets it, else the option).  Switching follows each option's ``how``: ``override``
options go into the generation's ``override_settings`` (the host sets and restores them; a txt2img
field of the same name the request sets is changed with it), ``setting`` options are set with the host's ``onchange``
for the run and set back the same way -- also on an exception or an interrupt.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from lib_sdfix.diagnose.optimizations import FoundOption
from lib_sdfix.diagnose.speed_options import options_for
from lib_sdfix.failsafe import log_once
from lib_sdfix.webui.hosts import current

__all__ = ["found_options", "cell_fields", "switched_settings", "SwitchError"]


class SwitchError(RuntimeError):
    """A ``setting`` option the host refused to switch (its onchange failed and the host set it back)."""


def _choices(key: str) -> Optional[Tuple[str, ...]]:
    """The names a text option accepts, as its Settings control lists them (a callable in the WebUI)."""
    info = current().shared.opts.data_labels.get(key)
    args = getattr(info, "component_args", None)
    try:
        args = args() if callable(args) else args
    except Exception as exc:  # noqa: BLE001 -- a listing must not break the diagnosis
        log_once(f"speed-choices-{key}", f"SDFix: cannot list the choices of {key}: {exc}", exc)
        return None
    choices = (args or {}).get("choices") if isinstance(args, Mapping) else None
    return tuple(str(c) for c in choices) if choices else None


def _taesd_missing() -> Optional[str]:
    """Why the WebUI cannot decode with TAESD here (its decoder file is fetched on first use), or None."""
    host = current()
    try:
        from modules import paths_internal, sd_vae_taesd
    except ImportError:
        return None
    model = host.sd_model()
    name = ("taesd3_decoder.pth" if getattr(model, "is_sd3", False) else
            "taesdxl_decoder.pth" if getattr(model, "is_sdxl", False) else "taesd_decoder.pth")
    if name in getattr(sd_vae_taesd, "sd_vae_taesd_models", {}):
        return None
    path = os.path.join(paths_internal.models_path, "VAE-taesd", name)
    if os.path.exists(path):
        return None
    return f"the TAESD decoder {path} is not there (the WebUI would download it at the first TAESD decode)"


def _note(key: str, value: Any) -> str:
    if key == "cross_attention_optimization":
        try:
            from modules import sd_hijack

            method = getattr(sd_hijack.model_hijack, "optimization_method", None)
            return f"in use: {method}" if method else ""
        except ImportError:
            return ""
    return ""


def found_options(payload: Mapping[str, Any]) -> List[FoundOption]:
    """Every option of this host's table with the user's value, or marked missing where this host lacks it."""
    host = current()
    opts = host.shared.opts
    overrides = payload.get("override_settings") or {}
    found: List[FoundOption] = []
    for option in options_for(host.name):
        key = option.key
        if option.how == "start":
            present = hasattr(host.shared.cmd_opts, key)
            value = host.cmd_opt(key) if present else None
            value = bool(value) if option.values[0] == "bool" and present else value
            if key == "no_half_vae" and not value and host.cmd_opt("no_half"):
                # --no-half runs every model in fp32, the VAE included: nothing to trade here
                found.append(FoundOption(option, True, present, "implied by --no-half"))
                continue
            found.append(FoundOption(option, value, present))
            continue
        if key not in opts.data_labels:
            found.append(FoundOption(option, None, False))
            continue
        value = getattr(opts, key)
        if option.field and payload.get(key) is not None:
            value = payload[key]
        elif key in overrides:
            value = overrides[key]
        blocked = ""
        if key == "sd_vae_decode_method":
            blocked = _taesd_missing() or ""
        choices = _choices(key) if option.values[0] == "text" else None
        found.append(FoundOption(option, value, True, _note(key, value), choices, blocked))
    return found


def cell_fields(fields: Mapping[str, Any], changes: Mapping[str, Any], found: Mapping[str, FoundOption]) -> Dict[str, Any]:
    """The generation's txt2img fields with a cell's ``override``/``field`` changes in them."""
    out = dict(fields)
    overrides = dict(out.get("override_settings") or {})
    for key, value in changes.items():
        option = found[key].option
        if option.how == "override":
            overrides[key] = value
            if option.field and out.get(key) is not None:
                out[key] = value  # the request's field wins over the option
    out["override_settings"] = overrides
    out["override_settings_restore_afterwards"] = True
    return out


@contextlib.contextmanager
def switched_settings(changes: Mapping[str, Any], found: Mapping[str, FoundOption]) -> Iterator[None]:
    """The cell's ``setting`` options set with the host's onchange for the block, then set back the same way."""
    opts = current().shared.opts
    restore: List[Tuple[str, Any]] = []
    try:
        for key, value in changes.items():
            if found[key].option.how != "setting" or getattr(opts, key) == value:
                continue
            old = getattr(opts, key)
            opts.set(key, value)
            if getattr(opts, key) != value:
                raise SwitchError(f"the WebUI did not switch {key} to {value!r}")
            restore.append((key, old))
        yield
    finally:
        for key, old in reversed(restore):
            try:
                opts.set(key, old)
            except Exception as exc:  # noqa: BLE001 -- set back every other option first
                log_once(f"speed-restore-{key}", f"SDFix: could not set {key} back to {old!r}: {exc}", exc)
