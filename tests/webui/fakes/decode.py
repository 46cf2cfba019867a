"""The VAE's entry points with each host's casts: ``sd_samplers_common``'s ``samples_to_images_tensor``,
``decode_first_stage`` and ``images_tensor_to_samples``, and the two names ``modules.processing`` imports
from it (SDFix patches both modules' names)."""
from __future__ import annotations

import types
from typing import Any, Callable, Tuple

import torch


def install_first_stage(module: Callable[..., types.ModuleType], host: str, devices: Any,
                        shared: Any) -> Tuple[types.ModuleType, types.ModuleType]:
    """``modules.sd_samplers_common`` and ``modules.processing`` (with the imported names); returns both."""
    # sd_samplers_common: the decode/encode entry points, with each host's casts
    ssc = module("modules.sd_samplers_common")
    ssc.approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}

    def samples_to_images_tensor(sample, approximation=None, model=None):
        if approximation is None or (shared.state.interrupted and shared.opts.live_preview_fast_interrupt):
            approximation = ssc.approximation_indexes.get(shared.opts.show_progress_type, 0)
            if host != "a1111" and approximation == 0:
                approximation = 1
        if approximation != 0:
            return torch.zeros(sample.shape[0], 3, *sample.shape[2:])  # a preview approximation
        model = model or shared.sd_model
        with torch.no_grad():
            if host == "a1111":
                return model.decode_first_stage(sample.to(model.first_stage_model.dtype))
            return model.decode_first_stage(sample)

    def decode_first_stage(model, x):
        if host == "a1111":
            x = x.to(devices.dtype_vae)
        return ssc.samples_to_images_tensor(x, ssc.approximation_indexes.get(shared.opts.sd_vae_decode_method, 0), model)

    def images_tensor_to_samples(image, approximation=None, model=None):
        if approximation is None:
            approximation = ssc.approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
        if approximation == 3:
            return torch.zeros(image.shape[0], 4, image.shape[2] // 8 or 1, image.shape[3] // 8 or 1)
        model = model or shared.sd_model
        if host == "a1111":
            model.first_stage_model.to(devices.dtype_vae)
        image = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1
        with torch.no_grad():
            latent = model.get_first_stage_encoding(model.encode_first_stage(image))
        return latent.float() if host == "a1111" and devices.unet_needs_upcast else latent

    ssc.samples_to_images_tensor = samples_to_images_tensor
    ssc.decode_first_stage = decode_first_stage
    ssc.images_tensor_to_samples = images_tensor_to_samples

    # processing imports the two functions by name, as the hosts do
    processing = module("modules.processing")
    processing.decode_first_stage = decode_first_stage
    processing.images_tensor_to_samples = images_tensor_to_samples
    return ssc, processing
