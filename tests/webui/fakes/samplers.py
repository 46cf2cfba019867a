"""``sd_samplers_common``'s Sampler and CFG denoiser, ``sd_schedulers``, the k-diffusion and timestep
sampler classes and ``sd_samplers``: the registry with its aliases, ``create_sampler`` and the hosts' name
parsing (reForge's own samplers in the same registry)."""
from __future__ import annotations

import dataclasses
import inspect
import types
from typing import Any, Callable

import torch

from .base import Namespace
from .sampling import (
    SAMPLER_FUNCS,
    SIGMA_MAX,
    SIGMA_MIN,
    TIMESTEP_FUNCS,
    sigmas_automatic,
    sigmas_karras,
    sigmas_uniform,
)
from .speed import skips_uncond


def install_samplers(module: Callable[..., types.ModuleType], host: str, shared: Any, ssc: Any) -> types.ModuleType:
    """The sampler and schedule modules of ``host`` (their base classes into ``ssc``); returns ``modules.sd_samplers``."""
    opts, state = shared.opts, shared.state

    # samplers
    class InterruptedException(BaseException):
        pass

    def setup_img2img_steps(p, steps=None):
        if opts.img2img_fix_steps or steps is not None:
            requested = steps or p.steps
            steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
            t_enc = requested - 1
        else:
            steps = p.steps
            t_enc = int(min(p.denoising_strength, 0.999) * steps)
        return steps, t_enc

    class CFGDenoiser:
        def __init__(self, sampler):
            self.sampler, self.steps, self.p = sampler, None, None
            self.step, self.total_steps = 0, None  # the hosts' prompt-editing step counter and its total

        def __call__(self, x, sigma, cond, uncond, cond_scale):
            if state.interrupted or state.skipped:
                raise InterruptedException
            if self.p is not None and skips_uncond(host, self.p, shared.opts, float(sigma), self.step):
                # NGMS: no negative prompt on this late step; the cond half alone (a real speedup)
                denoised = shared.sd_model.apply_model(x, sigma, cond)
                shared.sd_model.unet_calls[-1].update(step=self.step, total_steps=self.total_steps, uncond=False)
                self.step += 1
                self.sampler.last_latent = denoised
                return denoised
            out = shared.sd_model.apply_model(torch.cat([x, x]), sigma, torch.cat([cond, uncond]))
            shared.sd_model.unet_calls[-1].update(step=self.step, total_steps=self.total_steps)
            self.step += 1
            cond_out, uncond_out = out.chunk(2)  # the batch's conditional halves, then its unconditional ones
            denoised = uncond_out + cond_scale * (cond_out - uncond_out)
            self.sampler.last_latent = denoised
            return denoised

    class Sampler:
        def __init__(self, funcname):
            self.funcname, self.config, self.p = funcname, None, None
            self.last_latent = None
            self.stop_at = None
            self.model_wrap_cfg = CFGDenoiser(self)
            self.sampler_extra_args = {}

        def callback_state(self, d):
            if self.stop_at is not None and d["i"] > self.stop_at:
                raise InterruptedException
            state.sampling_step = d["i"]
            state.show()

        def launch_sampling(self, steps, func):
            self.model_wrap_cfg.steps = steps
            self.model_wrap_cfg.total_steps = steps  # config.total_steps(steps) of a first-order sampler
            state.sampling_steps, state.sampling_step = steps, 0
            try:
                return func()
            except InterruptedException:
                return self.last_latent

        def initialize(self, p):
            self.p = p
            self.model_wrap_cfg.p = p
            self.model_wrap_cfg.step = 0
            return {}

    ssc.InterruptedException = InterruptedException
    ssc.setup_img2img_steps = setup_img2img_steps
    ssc.Sampler = Sampler

    sd_schedulers = module("modules.sd_schedulers")

    @dataclasses.dataclass
    class Scheduler:
        name: str
        label: str
        function: Any
        default_rho: float = -1
        need_inner_model: bool = False
        aliases: list = None

    sd_schedulers.Scheduler = Scheduler
    sd_schedulers.schedulers = [Scheduler("automatic", "Automatic", None), Scheduler("uniform", "Uniform", sigmas_uniform),
                                Scheduler("karras", "Karras", sigmas_karras, default_rho=7.0),
                                Scheduler("sgm_uniform", "SGM Uniform", sigmas_uniform, aliases=["SGMUniform"])]
    sd_schedulers.schedulers_map = {**{x.name: x for x in sd_schedulers.schedulers},
                                    **{x.label: x for x in sd_schedulers.schedulers}}

    kdiffusion = module("modules.sd_samplers_kdiffusion")

    class KDiffusionSampler(Sampler):
        def __init__(self, funcname, sd_model, options=None):
            super().__init__(funcname)
            self.func = SAMPLER_FUNCS[funcname]
            self.model = sd_model

        def get_sigmas(self, p, steps):  # sd_samplers_kdiffusion.py: the schedule, and its infotext entries
            scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
            if scheduler_name == "Automatic":
                scheduler_name = self.config.options.get("scheduler", None)
            scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
            if scheduler is None or scheduler.function is None:
                return sigmas_automatic(steps)
            if scheduler.label != "Automatic" and not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler.label
            elif scheduler.label != p.extra_generation_params.get("Schedule type"):
                p.extra_generation_params["Hires schedule type"] = scheduler.label
            return scheduler.function(steps)

        def _launch(self, p, steps, x, schedule, conditioning, unconditional_conditioning):
            """schedule: what the function's parameters take (``sigmas``, or ``sigma_min``/``sigma_max``/``n``)."""
            self.initialize(p)
            self.sampler_extra_args = {"cond": conditioning, "uncond": unconditional_conditioning,
                                       "cond_scale": p.cfg_scale}
            self.last_latent = x
            parameters = inspect.signature(self.func).parameters
            kwargs = {k: v for k, v in schedule.items() if k in parameters}
            return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                                 callback=self.callback_state, noise=p.rng.next,
                                                                 **kwargs))

        def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps = steps or p.steps
            sigmas = self.get_sigmas(p, steps)
            schedule = {"sigmas": sigmas, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "n": steps}
            return self._launch(p, steps, x * sigmas[0], schedule, conditioning, unconditional_conditioning)

        def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps, t_enc = setup_img2img_steps(p, steps)
            sigmas = self.get_sigmas(p, steps)
            sigma_sched = sigmas[steps - t_enc - 1:]
            schedule = {"sigmas": sigma_sched, "sigma_min": sigma_sched[-2], "sigma_max": sigma_sched[0],
                        "n": len(sigma_sched) - 1}
            xi = x + noise * sigma_sched[0]
            if opts.img2img_extra_noise > 0:  # the host's "Extra noise" setting
                p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
                xi = xi + noise * opts.img2img_extra_noise
            return self._launch(p, t_enc + 1, xi, schedule, conditioning, unconditional_conditioning)

    kdiffusion.KDiffusionSampler = KDiffusionSampler

    timesteps_module = module("modules.sd_samplers_timesteps")

    class CompVisSampler(Sampler):
        """sd_samplers_timesteps.CompVisSampler: DDIM/UniPC over 1000-step timesteps; the denoiser's
        inner model is the SD model (its ``alphas_cumprod``)."""

        def __init__(self, funcname, sd_model):
            super().__init__(funcname)
            self.func = TIMESTEP_FUNCS[funcname]
            self.model_wrap = Namespace(inner_model=sd_model)
            self.model_wrap_cfg.inner_model = self.model_wrap

        def get_timesteps(self, p, steps):
            return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

        def _launch(self, p, steps, x, timesteps, conditioning, unconditional_conditioning, **extra):
            self.initialize(p)
            self.sampler_extra_args = {"cond": conditioning, "uncond": unconditional_conditioning,
                                       "cond_scale": p.cfg_scale}
            self.last_latent = x
            if "is_img2img" not in inspect.signature(self.func).parameters:
                extra.pop("is_img2img", None)
            return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, timesteps=timesteps,
                                                                 extra_args=self.sampler_extra_args,
                                                                 callback=self.callback_state, **extra))

        def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps, t_enc = setup_img2img_steps(p, steps)
            timesteps = self.get_timesteps(p, steps)
            alpha = self.model_wrap.inner_model.alphas_cumprod[timesteps[t_enc]]
            xi = x * alpha.sqrt() + noise * (1 - alpha).sqrt()
            return self._launch(p, t_enc + 1, xi, timesteps[:t_enc], conditioning, unconditional_conditioning,
                                is_img2img=True)

        def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
            steps = steps or p.steps
            return self._launch(p, steps, x, self.get_timesteps(p, steps), conditioning, unconditional_conditioning)

    timesteps_module.CompVisSampler = CompVisSampler

    sd_samplers = module("modules.sd_samplers")

    @dataclasses.dataclass
    class SamplerData:
        name: str
        constructor: Any
        aliases: list
        options: dict

    def sampler_data(name, funcname, aliases, options, cls=KDiffusionSampler):
        if cls is CompVisSampler:
            return SamplerData(name, lambda m: CompVisSampler(funcname, m), aliases, options)
        return SamplerData(name, lambda m: KDiffusionSampler(funcname, m, options), aliases, options)

    # the hosts' registries: names with their aliases (only the lowercased samplers_map and the UI read those)
    sd_samplers.all_samplers = [sampler_data("Euler", "euler", ["k_euler"], {}),
                                sampler_data("Euler a", "euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {}),
                                sampler_data("DPM++ 2M", "dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
                                sampler_data("DPM fast", "dpm_fast", ["k_dpm_fast"], {}),
                                sampler_data("DDIM", "ddim", ["ddim"], {}, CompVisSampler),
                                sampler_data("UniPC", "unipc", ["unipc"], {}, CompVisSampler)]
    alter = []
    if host == "reforge":  # modules_forge/forge_alter_samplers.py: reForge's own samplers, in the same registry
        alter = [sampler_data("Euler CFG++", "euler", ["euler_cfg_pp"], {})]
        module("modules_forge.forge_alter_samplers").samplers_data_alter = alter
        sd_samplers.all_samplers += alter
    sd_samplers.samplers = sd_samplers.all_samplers
    sd_samplers.all_samplers_map = {x.name: x for x in sd_samplers.all_samplers}
    sd_samplers.samplers_map = {alias.lower(): x.name for x in sd_samplers.all_samplers for alias in [x.name, *x.aliases]}
    sd_samplers.visible_sampler_names = lambda: [x.name for x in sd_samplers.samplers]

    def create_sampler(name, model):
        config = sd_samplers.all_samplers_map.get(name)
        assert config is not None, f"bad sampler name: {name}"
        sampler = config.constructor(model)
        sampler.config = config
        return sampler

    def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
        """Exact registry names, a schedule type's label/name/alias appended; anything else: the first
        sampler.  reForge: suffixes in any case, its own samplers by name in any case (their schedule
        lookup, which falls back to "Normal", is not modelled)."""
        default_sampler = sd_samplers.samplers[0]
        found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
        name = sampler_name or default_sampler.name
        own = next((x for x in alter if x.name.lower() == name.lower()), None)
        if own is not None:
            return own.name, found_scheduler.label
        for scheduler in sd_schedulers.schedulers:
            for option in [scheduler.label, scheduler.name, *(scheduler.aliases or [])]:
                if name.lower().endswith(" " + option.lower()) if host == "reforge" else name.endswith(" " + option):
                    found_scheduler = scheduler
                    name = name[0:-(len(option) + 1)]
                    break
        sampler = sd_samplers.all_samplers_map.get(name, default_sampler)
        if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
            found_scheduler = sd_schedulers.schedulers[0]
        return sampler.name, found_scheduler.label

    def fix_p_invalid_sampler_and_scheduler(p):
        p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)

    sd_samplers.create_sampler = create_sampler
    sd_samplers.get_sampler_and_scheduler = get_sampler_and_scheduler
    sd_samplers.fix_p_invalid_sampler_and_scheduler = fix_p_invalid_sampler_and_scheduler
    return sd_samplers
