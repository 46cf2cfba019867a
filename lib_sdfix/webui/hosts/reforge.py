"""reForge (Panchovix/stable-diffusion-webui-reForge): a ComfyUI-style VAE in ``forge_objects.vae``.

The wrapper (``ldm_patched.modules.sd.VAE``) casts the input to its ``vae_dtype`` in ``decode`` and
``encode`` (not through ``decode_inner``); ``sd_model.first_stage_model`` is its inner module.  On a
recent NVIDIA card that wrapper runs in bf16 while ``modules.devices.dtype_vae`` says fp32, so the
wrapper's attribute, not the WebUI's, decides.  Its Upscaler loop stops one pass earlier than
AUTOMATIC1111's when the image already exceeds the target.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from lib_sdfix.webui.hosts.base import has_module
from lib_sdfix.webui.hosts.names import payload_names
from lib_sdfix.webui.hosts.wrapper_vae import WrapperVaeHost

__all__ = ["ReForgeHost"]


class ReForgeHost(WrapperVaeHost):
    name = "reforge"
    label = "reForge"

    @classmethod
    def matches(cls) -> bool:
        return has_module("modules_forge") and has_module("ldm_patched.modules.sd")

    def wrapper_methods(self) -> Tuple[Any, str, str]:
        from ldm_patched.modules import sd

        return sd.VAE, "decode", "encode"

    def upscale_stop(self, scale: float) -> Callable[[Any, int, int, int], bool]:
        # Before a pass: stop if already strictly larger (and scale != 1); after a pass: stop once big enough.
        return lambda im, w, h, i: (im.width > w and im.height > h and scale != 1) or (i > 0 and im.width >= w and im.height >= h)

    def payload_names(self) -> Dict[str, Any]:
        # reForge's get_sampler_and_scheduler: schedule suffixes in any case, its own samplers by name in any case.
        from modules_forge import forge_alter_samplers

        return payload_names(suffix_any_case=True,
                             any_case_samplers=[s.name for s in forge_alter_samplers.samplers_data_alter])
