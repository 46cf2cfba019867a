"""The sampling math: sigma schedules, k-diffusion samplers taking a schedule (Euler, Euler a, DPM++ 2M)
or two noise levels (DPM fast), and timestep samplers (DDIM walking ``get_timesteps`` down, UniPC laying
out its own grid) over ``sd_model.alphas_cumprod``."""
from __future__ import annotations

import math

import torch

SIGMA_MIN, SIGMA_MAX = 0.03, 14.6


def _sigmas(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values, values.new_zeros(1)])


def sigmas_automatic(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    return _sigmas(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def sigmas_karras(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _sigmas((hi + ramp * (lo - hi)) ** rho)


def sigmas_uniform(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    return _sigmas(torch.linspace(sigma_max, sigma_min, n))


def _euler(model, x, sigmas, extra_args, callback, noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _euler_ancestral(model, x, sigmas, extra_args, callback, noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        up = min(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
        down = (s_next ** 2 - up ** 2) ** 0.5
        x = x + (x - denoised) / s * (down - s)
        if s_next > 0:
            x = x + noise() * up
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _dpmpp_2m(model, x, sigmas, extra_args, callback, noise):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], **extra_args)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            d = denoised
            if old is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
            h_last = h
        old = denoised
        callback({"x": x, "i": i, "denoised": denoised})
    return x


def _dpm_fast(model, x, sigma_min, sigma_max, n, extra_args, callback, noise):
    """Like k-diffusion's sample_dpm_fast: no schedule taken, its own steps between two noise levels."""
    sigmas = _sigmas(torch.exp(torch.linspace(math.log(float(sigma_max)), math.log(float(sigma_min)), int(n))))
    return _euler(model, x, sigmas, extra_args, callback, noise)


SAMPLER_FUNCS = {"euler": _euler, "euler_ancestral": _euler_ancestral, "dpmpp_2m": _dpmpp_2m, "dpm_fast": _dpm_fast}


def _ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """sd_samplers_timesteps_impl.ddim's walk: timesteps ascend; the model runs at timesteps[len-1] .. [1]."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))]
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item(), **extra_args)
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
        callback({"x": x, "i": i, "denoised": pred_x0})
    return x


def _unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    """Like sd_samplers_timesteps_impl.unipc: takes the timesteps only for their count (and, in img2img,
    the last one as its start) and lays out its own time grid between start and end."""
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    start = float(timesteps[-1]) / 1000 + 1 / 1000 if is_img2img else 1.0
    grid = torch.linspace(start, 1 / 1000, len(timesteps) + 1)
    for i in range(len(timesteps)):
        t, t_next = int(float(grid[i]) * 1000) - 1, int(float(grid[i + 1]) * 1000) - 1
        e_t = model(x, float(t), **extra_args)
        a_t, a_next = float(alphas_cumprod[max(t, 0)]), float(alphas_cumprod[max(t_next, 0)])
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_next ** 0.5 * pred_x0 + (1 - a_next) ** 0.5 * e_t
        callback({"x": x, "i": i, "denoised": pred_x0})
    return x


TIMESTEP_FUNCS = {"ddim": _ddim, "unipc": _unipc}
