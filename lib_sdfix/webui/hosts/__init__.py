"""The WebUIs SDFix runs in, one module each, and which one this process is (:func:`current`).

``base`` (:class:`Host`: the one interface between SDFix and its host, with what every host shares),
``a1111`` (AUTOMATIC1111 v1.10: the VAE is the model's ``first_stage_model``), ``wrapper_vae`` (what
Forge and reForge share: a VAE wrapper object in ``forge_objects.vae``), ``forge``, ``reforge`` and
``names`` (the registries of names the running host keeps, for its payload fields).  The implementation
is picked at first use by what the host has (its packages), never by a version string.
"""
from __future__ import annotations

import functools

from lib_sdfix.webui.hosts.a1111 import A1111Host
from lib_sdfix.webui.hosts.base import Host, PatchTarget
from lib_sdfix.webui.hosts.forge import ForgeHost
from lib_sdfix.webui.hosts.reforge import ReForgeHost

__all__ = ["Host", "PatchTarget", "current", "detect"]


@functools.lru_cache(maxsize=None)
def detect() -> Host:
    """The host implementation for the WebUI this process runs."""
    for host in (ForgeHost, ReForgeHost):
        if host.matches():
            return host()
    return A1111Host()


def current() -> Host:
    return detect()
