"""AUTOMATIC1111 WebUI v1.10: the VAE is the model's ``first_stage_model`` and runs in ``devices.dtype_vae``."""
from __future__ import annotations

from typing import Any, List, Tuple

from lib_sdfix.webui.hosts.base import Host

__all__ = ["A1111Host"]


class A1111Host(Host):
    name = "a1111"
    label = "AUTOMATIC1111"

    @classmethod
    def matches(cls) -> bool:
        return True

    def vae_wrapper(self, sd_model: Any = None) -> Any:
        return None

    def vae_module(self, sd_model: Any = None, wrapper: Any = None) -> Any:
        model = sd_model if sd_model is not None else self.sd_model()
        return getattr(model, "first_stage_model", None)

    def vae_dtype_attrs(self, wrapper: Any = None) -> List[Tuple[Any, str]]:
        # --upcast-sampling's hijack casts the latent to devices.dtype_vae inside decode_first_stage, and
        # the full encode moves the VAE to it: both follow this attribute.
        from modules import devices

        return [(devices, "dtype_vae")]

    def encode_result_dtype(self) -> Any:
        import torch
        from modules import devices

        if getattr(devices, "unet_needs_upcast", False):
            return torch.float32  # the upcast hijack returns fp32 latents from get_first_stage_encoding
        return devices.dtype_vae
