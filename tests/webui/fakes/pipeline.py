"""The generation pipeline: ``process_images`` and everything a txt2img or img2img generation runs.

AUTOMATIC1111 v1.10.1's modules/processing.py, sd_samplers*.py, scripts.py and api/ in their call
order, cut down to what a txt2img generation does with one image:

  process_images(p): scripts.before_process -> override_settings -> fix_p_invalid_sampler_and_scheduler
    -> process_images_inner(p): seed -> prompts -> scripts.process -> p.init -> per batch:
       rng -> scripts.before_process_batch/process_batch -> conds -> p.sample -> scripts.post_sample
       -> decode_latent_batch (unless already decoded) -> scripts.postprocess_batch(_list)
       -> per image: scripts.postprocess_image -> ..._after_composite -> create_infotext
    -> Processed -> scripts.postprocess
  txt2img p.sample: create_sampler -> rng.next -> scripts.process_before_every_sampling
    -> sampler.sample (get_sigmas writes "Schedule type", initialize(p), launch_sampling(steps, func))
    -> with Hires: decode_latent_batch -> resize_image -> images_tensor_to_samples (non-latent upscaler)
       or latent interpolate -> sample_hr_pass: create_sampler -> scripts.before_hr
       -> sampler.sample_img2img -> launch_sampling -> decode_latent_batch -> DecodedSamples

The "UNet" is ``shared.sd_model.apply_model``: a cheap deterministic function that records every call
in ``shared.sd_model.unet_calls``.  The fake VAE keeps the spatial size, so latents are as large as
their image (OPT_F = 1).  Host differences kept: Forge's ``hr_additional_modules`` (its Hires pass
raises TypeError unless it is a list) and extra API fields, Forge's float32 Hires encode input,
``decode_latent_batch`` (AUTOMATIC1111: one decode per image, ``devices.test_for_nans`` on the latent
and each image with the fp32 retry of "Automatically revert VAE to 32-bit floats"; Forge/reForge: the
batch in one decode, no check).  Module-level functions are called through ``processing.`` as the
hosts' own module globals are, so a patched one is seen.
"""
from __future__ import annotations

import contextlib
import random
import types
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .api import install_api
from .infotext import install_infotext_utils, make_create_infotext
from .models import install_unet
from .processing import OPT_F, processing_classes
from .samplers import install_samplers
from .scripts import install_scripts
from .speed import token_merging_ratio


def install_pipeline(module: Callable[..., types.ModuleType], host: str, shared: Any, devices: Any, ssc: Any,
                     processing: Any, images: Any, sd_models: Any) -> None:
    """The generation of ``host``: the "UNet", samplers, schedulers, scripts, processing and the txt2img API."""
    opts = shared.opts
    for key, value in dict(outdir_samples="", outdir_txt2img_samples="outputs/txt2img-images",
                           outdir_txt2img_grids="outputs/txt2img-grids", samples_filename_pattern="",
                           samples_save=True, face_restoration=False, tiling=False, img2img_fix_steps=False,
                           inpainting_mask_weight=1.0, enable_pnginfo=True, CLIP_stop_at_last_layers=1,
                           eta_noise_seed_delta=0).items():
        setattr(opts, key, value)
    state = shared.state
    install_unet(shared.sd_model)
    install_infotext_utils(module)

    # rng
    rng = module("modules.rng")

    class ImageRNG:
        def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
            self.shape, self.seeds, self.subseeds, self.subseed_strength = tuple(shape), seeds, subseeds, subseed_strength
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
            self.sub_generators = [torch.Generator().manual_seed(int(s)) for s in (subseeds or seeds)]

        def next(self):
            xs = []
            for g, sg in zip(self.generators, self.sub_generators):
                noise = torch.randn(self.shape, generator=g)
                if self.subseed_strength:
                    sub = torch.randn(self.shape, generator=sg)
                    noise = (1 - self.subseed_strength) * noise + self.subseed_strength * sub
                xs.append(noise)
            return torch.stack(xs)

    rng.ImageRNG = ImageRNG

    sd_samplers = install_samplers(module, host, shared, ssc)

    # scripts
    scripts = module("modules.scripts")
    install_scripts(scripts)

    # processing
    class DecodedSamples(list):
        already_decoded = True

    def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
        samples = DecodedSamples()
        if host != "a1111":  # Forge/reForge: the batch in one decode, check_for_nans ignored
            for sample in processing.decode_first_stage(model, batch).to(target_device or batch.device):
                samples.append(sample)
            return samples
        if check_for_nans:
            devices.test_for_nans(batch, "unet")
        for i in range(batch.shape[0]):
            sample = processing.decode_first_stage(model, batch[i:i + 1])[0]  # the module's name, as patched
            if check_for_nans:
                try:
                    devices.test_for_nans(sample, "vae")
                except devices.NansException:
                    # "Automatically revert VAE to 32-bit floats": for good, then decode again
                    if not opts.auto_vae_precision or devices.dtype_vae == torch.float32:
                        raise
                    devices.dtype_vae = torch.float32
                    model.first_stage_model.to(devices.dtype_vae)
                    batch = batch.to(devices.dtype_vae)
                    sample = processing.decode_first_stage(model, batch[i:i + 1])[0]
            samples.append(sample.to(target_device) if target_device is not None else sample)
        return samples

    def get_fixed_seed(seed):
        if seed == "" or seed is None:
            seed = -1
        elif isinstance(seed, str):
            try:
                seed = int(seed)
            except Exception:  # noqa: BLE001 -- as the WebUI's get_fixed_seed
                seed = -1
        if seed == -1:
            return int(random.randrange(4294967294))
        return seed

    create_infotext = make_create_infotext(shared, processing)

    class Processed:
        def __init__(self, p, images_list, seed=-1, info="", subseed=None, index_of_first_image=0, infotexts=None):
            self.images, self.seed, self.subseed, self.info = images_list, seed, subseed, info
            self.prompt, self.negative_prompt, self.steps = p.prompt, p.negative_prompt, p.steps
            self.sampler_name, self.width, self.height = p.sampler_name, p.width, p.height
            self.batch_size, self.extra_generation_params = p.batch_size, p.extra_generation_params
            self.all_prompts, self.all_negative_prompts = p.all_prompts, p.all_negative_prompts
            self.all_seeds, self.all_subseeds = p.all_seeds, p.all_subseeds
            self.index_of_first_image = index_of_first_image
            self.infotexts = infotexts or [info] * len(images_list)

        def infotext(self, p, index):
            return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                                   position_in_batch=index % self.batch_size, iteration=index // self.batch_size)

    StableDiffusionProcessing, StableDiffusionProcessingTxt2Img, StableDiffusionProcessingImg2Img = processing_classes(
        host, shared, devices, ssc, processing, images, sd_models, sd_samplers, rng)

    def process_images(p):
        if p.scripts is not None:
            p.scripts.before_process(p)
        stored_opts = {k: getattr(opts, k) for k in p.override_settings if hasattr(opts, k)}
        try:
            if sd_models.checkpoint_aliases.get(p.override_settings.get("sd_model_checkpoint")) is None:
                p.override_settings.pop("sd_model_checkpoint", None)  # silently: the loaded model runs
            for k, v in p.override_settings.items():  # A1111/reForge: opts.set; Forge: set_config -> opts.set
                opts.set(k, v, is_api=True, run_callbacks=False)
            # A1111: sd_models.apply_token_merging here; Forge/reForge patch the U-Net in sample()
            p.sd_model.tome_ratio = token_merging_ratio(p, opts)
            sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
            res = processing.process_images_inner(p)
        finally:
            p.sd_model.tome_ratio = 0.0
            if p.override_settings_restore_afterwards:
                for k, v in stored_opts.items():
                    if host == "forge":  # set_config(stored_opts): with the onchange callbacks
                        opts.set(k, v)
                    else:
                        setattr(opts, k, v)
        return res

    def process_images_inner(p):
        seed = get_fixed_seed(p.seed)
        subseed = get_fixed_seed(p.subseed)
        if p.restore_faces is None:
            p.restore_faces = opts.face_restoration
        if p.tiling is None:
            p.tiling = opts.tiling
        if p.refiner_checkpoint not in (None, "", "None", "none"):
            if sd_models.get_closet_checkpoint_match(p.refiner_checkpoint) is None:
                raise Exception(f"Could not find checkpoint with name {p.refiner_checkpoint}")
        if host != "reforge":  # fill_fields_from_opts: the field, else the option (after the overrides)
            p.s_min_uncond = p.s_min_uncond if p.s_min_uncond is not None else opts.s_min_uncond
        p.setup_prompts()
        p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
        p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
        if p.scripts is not None:
            p.scripts.process(p)
        infotexts, output_images = [], []
        # A1111: no_grad and ema_scope; Forge and reForge: inference_mode (modules/processing.py)
        with torch.no_grad() if host == "a1111" else torch.inference_mode():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
            if state.job_count == -1:
                state.job_count = p.n_iter
            for n in range(p.n_iter):
                p.iteration = n
                if state.skipped:
                    state.skipped = False
                if state.interrupted or state.stopping_generation:
                    break
                p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
                p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
                p.rng = rng.ImageRNG((4, p.height // OPT_F, p.width // OPT_F), p.seeds, subseeds=p.subseeds,
                                     subseed_strength=p.subseed_strength)
                if p.scripts is not None:
                    p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                if p.scripts is not None:
                    p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.setup_conds()
                with devices.without_autocast() if devices.unet_needs_upcast else contextlib.nullcontext():
                    samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                                            subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
                if p.scripts is not None:
                    ps = scripts.PostSampleArgs(samples_ddim)
                    p.scripts.post_sample(p, ps)
                    samples_ddim = ps.samples
                if getattr(samples_ddim, "already_decoded", False):
                    x_samples_ddim = samples_ddim
                else:
                    devices.test_for_nans(samples_ddim, "unet")
                    if opts.sd_vae_decode_method != "Full":
                        p.extra_generation_params["VAE Decoder"] = opts.sd_vae_decode_method
                    x_samples_ddim = processing.decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu,
                                                                    check_for_nans=True)
                x_samples_ddim = torch.stack(x_samples_ddim).float()
                x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
                state.nextjob()
                if p.scripts is not None:
                    p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                    batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                    p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                    x_samples_ddim = batch_params.images

                def infotext(index=0, use_main_prompt=False):
                    return processing.create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt,
                                                      index=index, all_negative_prompts=p.negative_prompts)

                for i, x_sample in enumerate(x_samples_ddim):
                    p.batch_index = i
                    x_sample = (255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                    image = Image.fromarray(x_sample)
                    if p.scripts is not None:
                        pp = scripts.PostprocessImageArgs(image)
                        p.scripts.postprocess_image(p, pp)
                        image = pp.image
                    if p.scripts is not None:
                        pp = scripts.PostprocessImageArgs(image)
                        p.scripts.postprocess_image_after_composite(p, pp)
                        image = pp.image
                    text = infotext(i)
                    infotexts.append(text)
                    if opts.enable_pnginfo:
                        image.info["parameters"] = text
                    output_images.append(image)
            if not infotexts:
                infotexts.append(Processed(p, []).infotext(p, 0))
        res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0],
                        subseed=p.all_subseeds[0], index_of_first_image=0, infotexts=infotexts)
        if p.scripts is not None:
            p.scripts.postprocess(p, res)
        return res

    processing.opt_f = OPT_F
    processing.DecodedSamples = DecodedSamples
    processing.decode_latent_batch = decode_latent_batch
    processing.get_fixed_seed = get_fixed_seed
    processing.create_infotext = create_infotext
    processing.infotext_errors = []
    processing.Processed = Processed
    processing.StableDiffusionProcessing = StableDiffusionProcessing
    processing.StableDiffusionProcessingTxt2Img = StableDiffusionProcessingTxt2Img
    processing.StableDiffusionProcessingImg2Img = StableDiffusionProcessingImg2Img
    processing.process_images = process_images
    processing.process_images_inner = process_images_inner

    install_api(module, shared, sd_samplers, scripts, processing, host)
