"""The processing classes (``modules.processing``): ``StableDiffusionProcessing``, its txt2img subclass with
the Hires pass (latent interpolate, or decode -> ``resize_image`` -> ``images_tensor_to_samples``) returning
decoded samples, and img2img without a mask (``init`` encodes the init image, ``sample`` runs
``sample_img2img``).  Forge's extra fields (``distilled_cfg_scale``, ``hr_additional_modules``, ...) are
there on Forge only."""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import numpy as np
import torch
from PIL import Image

from .models import text_conditioning

OPT_F = 1


def processing_classes(host: str, shared: Any, devices: Any, ssc: Any, processing: Any, images: Any, sd_models: Any,
                       sd_samplers: Any, rng: Any) -> Tuple[type, type, type]:
    """Fresh StableDiffusionProcessing, StableDiffusionProcessingTxt2Img and StableDiffusionProcessingImg2Img."""
    opts, state = shared.opts, shared.state

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessing:
        sd_model: object = None
        outpath_samples: str = None
        outpath_grids: str = None
        prompt: str = ""
        prompt_for_display: str = None
        negative_prompt: str = ""
        styles: list = None
        seed: int = -1
        subseed: int = -1
        subseed_strength: float = 0
        seed_resize_from_h: int = -1
        seed_resize_from_w: int = -1
        seed_enable_extras: bool = True
        sampler_name: str = None
        scheduler: str = None
        batch_size: int = 1
        n_iter: int = 1
        steps: int = 50
        cfg_scale: float = 7.0
        if host == "forge":
            distilled_cfg_scale: float = 3.5
        width: int = 512
        height: int = 512
        restore_faces: bool = None
        tiling: bool = None
        do_not_save_samples: bool = False
        do_not_save_grid: bool = False
        extra_generation_params: dict = None
        overlay_images: list = None
        eta: float = None
        do_not_reload_embeddings: bool = False
        denoising_strength: float = None
        ddim_discretize: str = None
        s_min_uncond: float = None
        s_churn: float = None
        s_tmax: float = None
        s_tmin: float = None
        s_noise: float = None
        override_settings: dict = None
        override_settings_restore_afterwards: bool = True
        sampler_index: int = None
        refiner_checkpoint: str = None
        refiner_switch_at: float = None
        disable_extra_networks: bool = False
        firstpass_image: object = None
        comments: dict = None

        scripts_value: object = dataclasses.field(default=None, init=False)
        script_args_value: list = dataclasses.field(default=None, init=False)
        scripts_setup_complete: bool = dataclasses.field(default=False, init=False)
        is_api: bool = dataclasses.field(default=False, init=False)
        is_hr_pass: bool = dataclasses.field(default=False, init=False)
        sampler: object = dataclasses.field(default=None, init=False)
        closed: bool = dataclasses.field(default=False, init=False)

        def __post_init__(self):
            self.comments = {}
            self.styles = self.styles or []
            self.extra_generation_params = self.extra_generation_params or {}
            self.override_settings = self.override_settings or {}
            self.script_args = self.script_args or {}
            self.c = self.uc = None
            self.rng = None
            self.all_prompts = self.all_negative_prompts = self.all_seeds = self.all_subseeds = None
            self.prompts = self.negative_prompts = self.seeds = self.subseeds = None
            self.iteration = 0

        @property
        def scripts(self):
            return self.scripts_value

        @scripts.setter
        def scripts(self, value):
            self.scripts_value = value
            if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
                self.setup_scripts()

        @property
        def script_args(self):
            return self.script_args_value

        @script_args.setter
        def script_args(self, value):
            self.script_args_value = value
            if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
                self.setup_scripts()

        def setup_scripts(self):
            self.scripts_setup_complete = True
            self.scripts.setup_scrips(self, is_ui=not self.is_api)

        def save_samples(self):
            return opts.samples_save and not self.do_not_save_samples

        def setup_prompts(self):
            size = self.batch_size * self.n_iter
            self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(self.prompt, self.styles)] * size
            self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(self.negative_prompt,
                                                                                              self.styles)] * size
            self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

        def setup_conds(self):
            self.c = text_conditioning(self.prompts)
            self.uc = text_conditioning(self.negative_prompts)

        def txt2img_image_conditioning(self, x, width=None, height=None):
            return x.new_zeros(x.shape[0], 5, 1, 1)

        def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
            return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

        def init(self, all_prompts, all_seeds, all_subseeds):
            pass

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            raise NotImplementedError

        def close(self):
            self.sampler = None
            self.c = self.uc = None
            self.closed = True

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
        enable_hr: bool = False
        denoising_strength: float = 0.75
        firstphase_width: int = 0
        firstphase_height: int = 0
        hr_scale: float = 2.0
        hr_upscaler: str = None
        hr_second_pass_steps: int = 0
        hr_resize_x: int = 0
        hr_resize_y: int = 0
        hr_checkpoint_name: str = None
        if host == "forge":
            hr_additional_modules: list = None
        hr_sampler_name: str = None
        hr_scheduler: str = None
        hr_prompt: str = ""
        hr_negative_prompt: str = ""
        if host == "forge":
            hr_cfg: float = 1.0
            hr_distilled_cfg: float = 3.5
        force_task_id: str = None

        def __post_init__(self):
            super().__post_init__()
            self.hr_upscale_to_x = self.hr_upscale_to_y = self.truncate_x = self.truncate_y = 0
            self.latent_scale_mode = None
            self.hr_c = self.hr_uc = None
            if self.firstphase_width != 0 or self.firstphase_height != 0:
                self.hr_upscale_to_x, self.hr_upscale_to_y = self.width, self.height
                self.width, self.height = self.firstphase_width, self.firstphase_height

        def calculate_target_resolution(self):
            if self.hr_resize_x == 0 and self.hr_resize_y == 0:
                self.extra_generation_params["Hires upscale"] = self.hr_scale
                self.hr_upscale_to_x = int(self.width * self.hr_scale)
                self.hr_upscale_to_y = int(self.height * self.hr_scale)
            else:
                self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
                if self.hr_resize_y == 0:
                    self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
                elif self.hr_resize_x == 0:
                    self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
                else:
                    if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
                        self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
                    else:
                        self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
                    self.truncate_x = (self.hr_upscale_to_x - self.hr_resize_x) // OPT_F
                    self.truncate_y = (self.hr_upscale_to_y - self.hr_resize_y) // OPT_F

        def setup_prompts(self):
            super().setup_prompts()
            if not self.enable_hr:
                return
            size = self.batch_size * self.n_iter
            self.all_hr_prompts = [self.hr_prompt or self.prompt] * size
            self.all_hr_negative_prompts = [self.hr_negative_prompt or self.negative_prompt] * size

        def setup_conds(self):
            super().setup_conds()
            if self.enable_hr:
                n = self.iteration * self.batch_size
                self.hr_prompts = self.all_hr_prompts[n:n + self.batch_size]
                self.hr_negative_prompts = self.all_hr_negative_prompts[n:n + self.batch_size]

        def calculate_hr_conds(self):
            self.hr_c = text_conditioning(self.hr_prompts)
            self.hr_uc = text_conditioning(self.hr_negative_prompts)

        def init(self, all_prompts, all_seeds, all_subseeds):
            if not self.enable_hr:
                return
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            if self.hr_checkpoint_name and self.hr_checkpoint_name != "Use same checkpoint":
                info = sd_models.get_closet_checkpoint_match(self.hr_checkpoint_name)
                if info is None:
                    raise Exception(f"Could not find checkpoint with name {self.hr_checkpoint_name}")
                self.extra_generation_params["Hires checkpoint"] = info.short_title  # (the model switch is not modelled)
            if host == "forge" and isinstance(self.hr_additional_modules, list):
                if self.hr_additional_modules == []:
                    self.extra_generation_params["Hires Module 1"] = "Built-in"
                elif "Use same choices" in self.hr_additional_modules:
                    self.extra_generation_params["Hires Module 1"] = "Use same choices"
            if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
                self.extra_generation_params["Hires sampler"] = self.hr_sampler_name

            def get_hr_prompt(p, index, prompt_text, **kwargs):
                hr_prompt = p.all_hr_prompts[index]
                return hr_prompt if hr_prompt != prompt_text else None

            def get_hr_negative_prompt(p, index, negative_prompt, **kwargs):
                hr_negative_prompt = p.all_hr_negative_prompts[index]
                return hr_negative_prompt if hr_negative_prompt != negative_prompt else None

            self.extra_generation_params["Hires prompt"] = get_hr_prompt
            self.extra_generation_params["Hires negative prompt"] = get_hr_negative_prompt
            self.extra_generation_params["Hires schedule type"] = None  # set by get_sigmas
            if self.hr_scheduler is None:
                self.hr_scheduler = self.scheduler
            if self.hr_upscaler is not None:
                self.latent_scale_mode = shared.latent_upscale_modes.get(self.hr_upscaler, None)
            else:
                self.latent_scale_mode = shared.latent_upscale_modes.get(shared.latent_upscale_default_mode, "nearest")
            if self.latent_scale_mode is None and not any(x.name == self.hr_upscaler for x in shared.sd_upscalers):
                raise Exception(f"could not find upscaler named {self.hr_upscaler}")
            self.calculate_target_resolution()
            if not state.processing_has_refined_job_count:
                if state.job_count == -1:
                    state.job_count = self.n_iter
                state.job_count = state.job_count * 2
                state.processing_has_refined_job_count = True
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
            if self.hr_upscaler is not None:
                self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            x = self.rng.next()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
            samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning,
                                          image_conditioning=self.txt2img_image_conditioning(x))
            if not self.enable_hr:
                return samples
            if self.latent_scale_mode is None:
                decoded_samples = torch.stack(processing.decode_latent_batch(self.sd_model, samples, target_device=devices.cpu,
                                                                  check_for_nans=True)).to(dtype=torch.float32)
            else:
                decoded_samples = None
            if host == "forge" and "Use same choices" not in self.hr_additional_modules:  # TypeError for None
                pass  # a module change would reload the model here
            return self.sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)

        def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
            if state.interrupted:
                return samples
            self.is_hr_pass = True
            target_width, target_height = self.hr_upscale_to_x, self.hr_upscale_to_y
            self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
            if self.latent_scale_mode is not None:
                samples = torch.nn.functional.interpolate(samples, size=(target_height // OPT_F, target_width // OPT_F),
                                                          mode=self.latent_scale_mode["mode"],
                                                          antialias=self.latent_scale_mode["antialias"])
                if getattr(self, "inpainting_mask_weight", opts.inpainting_mask_weight) < 1.0:
                    image_conditioning = self.img2img_image_conditioning(processing.decode_first_stage(self.sd_model, samples), samples)
                else:
                    image_conditioning = self.txt2img_image_conditioning(samples)
            else:
                lowres_samples = torch.clamp((decoded_samples + 1.0) / 2.0, min=0.0, max=1.0)
                batch_images = []
                for x_sample in lowres_samples:
                    x_sample = (255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                    image = Image.fromarray(x_sample)
                    image = images.resize_image(0, image, target_width, target_height, upscaler_name=self.hr_upscaler)
                    batch_images.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))
                decoded_samples = torch.from_numpy(np.array(batch_images))
                decoded_samples = decoded_samples.to(shared.device, dtype=devices.dtype_vae if host == "a1111" else torch.float32)
                samples = processing.images_tensor_to_samples(decoded_samples, ssc.approximation_indexes.get(opts.sd_vae_encode_method))
                image_conditioning = self.img2img_image_conditioning(decoded_samples, samples)
            state.nextjob()
            samples = samples[:, :, self.truncate_y // 2:samples.shape[2] - (self.truncate_y + 1) // 2,
                              self.truncate_x // 2:samples.shape[3] - (self.truncate_x + 1) // 2]
            self.rng = rng.ImageRNG(samples.shape[1:], self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength)
            noise = self.rng.next()
            self.calculate_hr_conds()
            if self.scripts is not None:
                self.scripts.before_hr(self)
                self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
            samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                                  steps=self.hr_second_pass_steps or self.steps,
                                                  image_conditioning=image_conditioning)
            self.sampler = None
            decoded_samples = processing.decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            self.is_hr_pass = False
            return decoded_samples

        def close(self):
            super().close()
            self.hr_c = self.hr_uc = None

    @dataclasses.dataclass(repr=False)
    class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
        """img2img without a mask: init creates the sampler and encodes the init image; sample runs
        ``sample_img2img`` from it with the batch's noise."""

        init_images: list = None
        resize_mode: int = 0
        denoising_strength: float = 0.75
        image_cfg_scale: float = None
        mask: object = None

        def __post_init__(self):
            super().__post_init__()
            self.init_latent = self.image_conditioning = None

        def init(self, all_prompts, all_seeds, all_subseeds):
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
            image = images.resize_image(self.resize_mode, self.init_images[0].convert("RGB"), self.width, self.height)
            array = np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0)
            batch = torch.from_numpy(np.stack([array] * self.batch_size)).to(shared.device, dtype=devices.dtype_vae)
            self.init_latent = processing.images_tensor_to_samples(batch, ssc.approximation_indexes.get(opts.sd_vae_encode_method),
                                                                   self.sd_model)
            self.image_conditioning = self.img2img_image_conditioning(batch * 2 - 1, self.init_latent)

        def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
            x = self.rng.next()
            if self.scripts is not None:
                self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning,
                                                           uc=unconditional_conditioning)
            return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                               image_conditioning=self.image_conditioning)

    return StableDiffusionProcessing, StableDiffusionProcessingTxt2Img, StableDiffusionProcessingImg2Img
