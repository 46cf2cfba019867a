"""Forge (lllyasviel/stable-diffusion-webui-forge): the VAE lives in ``sd_model.forge_objects.vae``.

``sd_model.first_stage_model`` is None there; the wrapper (``backend.patcher.vae.VAE``) casts the
latent to its own ``vae_dtype`` in ``decode_inner``/``encode_inner`` and runs its ``first_stage_model``.
Forge builds that VAE in bf16 on recent NVIDIA cards and leaves cuDNN TF32 on (PyTorch's default).
Its own: the VAE file comes from its extra modules, and its txt2img API has Hires modules and
distilled CFG fields.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from lib_sdfix.webui.hosts.base import has_module
from lib_sdfix.webui.hosts.names import forge_modules, payload_names
from lib_sdfix.webui.hosts.wrapper_vae import WrapperVaeHost

__all__ = ["ForgeHost"]


class ForgeHost(WrapperVaeHost):
    name = "forge"
    label = "Forge"

    @classmethod
    def matches(cls) -> bool:
        return has_module("modules_forge") and has_module("backend.patcher.vae")

    def wrapper_methods(self) -> Tuple[Any, str, str]:
        from backend.patcher import vae

        return vae.VAE, "decode_inner", "encode_inner"

    def vae_source_files(self) -> List[str]:
        # Extra modules (a VAE file chosen in the UI) override the checkpoint's VAE.
        extra = [f for f in getattr(self.shared.opts, "forge_additional_modules", None) or [] if isinstance(f, str)]
        vae_like = sorted(extra, key=lambda f: "vae" not in os.path.basename(f).lower())  # VAE files first, stable
        info = getattr(self.sd_model(), "sd_checkpoint_info", None)
        return vae_like + ([info.filename] if getattr(info, "filename", None) else [])

    def txt2img_defaults(self) -> Dict[str, Any]:
        # Forge's API raises on enable_hr unless this is a list ("Use same choices": no module change).
        return {"hr_additional_modules": ["Use same choices"]}

    def payload_names(self) -> Dict[str, Any]:
        # Forge manages the VAE through its modules: sd_vae is not read; Hires modules are names too.
        return {**payload_names(vae=False), "hr_additional_modules": forge_modules()}

    def txt2img_extra_fields(self) -> Dict[str, Any]:
        from lib_sdfix.limits.values import Rule

        cfg = "Forge's distilled CFG slider 0-30"
        return {"hr_additional_modules": Rule("names", "Forge's Hires module list (VAE / text encoder files)",
                                              maximum=16, nullable=True),
                "distilled_cfg_scale": Rule("float", cfg, minimum=0.0, maximum=30.0, nullable=True),
                "hr_distilled_cfg": Rule("float", cfg, minimum=0.0, maximum=30.0, nullable=True)}
