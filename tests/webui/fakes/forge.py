"""Forge's and reForge's VAE wrappers (``backend.patcher.vae.VAE``, ``ldm_patched.modules.sd.VAE``), each
casting to its own ``vae_dtype``; the model decodes and encodes through ``forge_objects.vae``."""
from __future__ import annotations

import types
from typing import Any, Callable

import torch

from .base import Namespace


def install_vae_wrapper(module: Callable[..., types.ModuleType], host: str, model: Any, vae: torch.nn.Module,
                        dtype: torch.dtype) -> Any:
    """The host's VAE class in its package and a wrapper of ``vae`` in ``model.forge_objects``; returns it."""
    class Wrapper:
        def __init__(self, module, vae_dtype):
            self.first_stage_model, self.vae_dtype = module, vae_dtype

        def _decode(self, samples):
            return (self.first_stage_model.decode(samples.to(self.vae_dtype)).float() + 1.0) / 2.0

        def _encode(self, pixels):
            return self.first_stage_model.encode((2.0 * pixels - 1.0).to(self.vae_dtype)).float()

    if host == "forge":
        class VAE(Wrapper):
            def decode_inner(self, samples):
                return self._decode(samples)

            def decode(self, samples):
                return self.decode_inner(samples)

            def encode_inner(self, pixels):
                return self._encode(pixels)

            def encode(self, pixels):
                return self.encode_inner(pixels)

        module("backend", package=True)
        module("backend.patcher", package=True)
        module("backend.patcher.vae").VAE = VAE
        model.first_stage_model = None
    else:
        class VAE(Wrapper):
            def decode(self, samples, vae_options={}):  # noqa: B006 -- reForge's signature
                return self._decode(samples)

            def encode(self, pixels):
                return self._encode(pixels)

        module("ldm_patched", package=True)
        module("ldm_patched.modules", package=True)
        module("ldm_patched.modules.sd").VAE = VAE
        model.first_stage_model = vae
    module("modules_forge", package=True)
    wrapper = VAE(vae, dtype)
    model.forge_objects = Namespace(vae=wrapper)
    model.decode_first_stage = lambda x: (model.forge_objects.vae.decode(x) * 2.0 - 1.0).to(x)
    model.encode_first_stage = lambda x: model.forge_objects.vae.encode(x * 0.5 + 0.5).to(x)
    model.get_first_stage_encoding = lambda z: z
    return wrapper
