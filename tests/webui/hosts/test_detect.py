"""The host detection, and what the two wrapper-VAE hosts (Forge, reForge) share and keep their own."""
from __future__ import annotations

import sys

import pytest


def test_host_detection_by_what_the_host_has(webui):
    from lib_sdfix.webui.hosts import current

    assert current().name == webui.host


@pytest.mark.parametrize("hooks", [{"decode"}, {"encode"}, {"decode", "encode", "sampler"}, {"resize"}])
def test_the_vae_patches_name_each_hosts_own_wrapper_methods(webui, hooks):
    from lib_sdfix.webui.hosts import current
    from lib_sdfix.webui.hosts.a1111 import A1111Host
    from lib_sdfix.webui.hosts.wrapper_vae import WrapperVaeHost

    host = current()
    shared = A1111Host.patch_targets(host, hooks)  # the modules.* layer every host keeps
    own = host.patch_targets(hooks)[len(shared):]
    assert host.patch_targets(hooks)[:len(shared)] == shared
    if webui.host == "a1111":
        assert not isinstance(host, WrapperVaeHost) and own == []
        return
    assert isinstance(host, WrapperVaeHost)
    wrapper = (sys.modules["backend.patcher.vae"] if webui.host == "forge" else sys.modules["ldm_patched.modules.sd"]).VAE
    methods = {"forge": ("decode_inner", "encode_inner"), "reforge": ("decode", "encode")}[webui.host]
    wanted = [(wrapper, methods[0], "wrapper_decode")] * ("decode" in hooks) + \
        [(wrapper, methods[1], "wrapper_encode")] * ("encode" in hooks)
    assert own == wanted
    assert host.vae_wrapper() is webui.wrapper and host.vae_module() is webui.vae
    assert host.vae_dtype_attrs()[0] == (webui.wrapper, "vae_dtype")


def test_forge_and_reforge_keep_their_own_sources_and_api_fields(webui):
    from lib_sdfix.webui.hosts import current

    host = current()
    webui.shared.opts.forge_additional_modules = ["/models/VAE/ae.safetensors"]
    forge = webui.host == "forge"
    assert ("/models/VAE/ae.safetensors" in host.vae_source_files()) == forge
    assert ("hr_additional_modules" in host.txt2img_defaults()) == forge
    assert ("distilled_cfg_scale" in host.txt2img_extra_fields()) == forge
