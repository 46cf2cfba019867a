"""What Forge and reForge share: the VAE is a wrapper object in ``sd_model.forge_objects.vae``.

The wrapper keeps the torch module in ``first_stage_model`` and casts the input to its own ``vae_dtype``
before running it, so that attribute (before ``modules.devices.dtype_vae``) decides the VAE's precision.
Both forks run ``process_images`` under ``torch.inference_mode`` and take ``resize_image(...,
force_RGBA=False)``, which converts RGBA to RGB unless it is set.  They differ in the wrapper's class
and the methods that cast and run it (:meth:`WrapperVaeHost.wrapper_methods`).
"""
from __future__ import annotations

from typing import Any, List, Set, Tuple

from lib_sdfix.webui.hosts.base import Host, PatchTarget

__all__ = ["WrapperVaeHost"]


class WrapperVaeHost(Host):
    """A host whose VAE is a wrapper in ``forge_objects.vae`` (Forge, reForge)."""

    def wrapper_methods(self) -> Tuple[Any, str, str]:
        """(the wrapper's class, its decode method, its encode method): where the wrapper casts its
        input to ``vae_dtype`` and runs the module, whoever calls it."""
        raise NotImplementedError

    def vae_wrapper(self, sd_model: Any = None) -> Any:
        model = sd_model if sd_model is not None else self.sd_model()
        return getattr(getattr(model, "forge_objects", None), "vae", None)

    def vae_module(self, sd_model: Any = None, wrapper: Any = None) -> Any:
        wrapper = wrapper if wrapper is not None else self.vae_wrapper(sd_model)
        return getattr(wrapper, "first_stage_model", None)

    def vae_dtype_attrs(self, wrapper: Any = None) -> List[Tuple[Any, str]]:
        from modules import devices

        wrapper = wrapper if wrapper is not None else self.vae_wrapper()
        attrs = [(devices, "dtype_vae")]
        if wrapper is not None and hasattr(wrapper, "vae_dtype"):
            attrs.insert(0, (wrapper, "vae_dtype"))
        return attrs

    def patch_targets(self, hooks: Set[str]) -> List[PatchTarget]:
        targets = super().patch_targets(hooks)
        if "decode" in hooks or "encode" in hooks:
            wrapper, decode, encode = self.wrapper_methods()
            if "decode" in hooks:
                targets.append((wrapper, decode, "wrapper_decode"))
            if "encode" in hooks:
                targets.append((wrapper, encode, "wrapper_encode"))
        return targets

    def no_grad(self) -> Any:
        import torch

        return torch.inference_mode()  # modules/processing.py: process_images runs under inference_mode

    def resize_extra_keywords(self) -> Tuple[str, ...]:
        return ("force_RGBA",)

    def resize_converts_rgba(self) -> bool:
        return True
