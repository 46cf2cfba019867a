"""lib_sdfix.diffusers.refine on tiny SD1.5 and SDXL pipelines: the tail of the latents' own schedule,
re-noised with the scheduler's add_noise, deterministic per image, nothing at zero steps."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.diffusers import harden, refine, refine_generators
from lib_sdfix.diffusers.refine import refine_steps_for
from lib_sdfix.refine import refine_seed
from lib_sdfix.settings import SettingsError

from .tiny_pipelines import HALF, one_thread, prompt_embeds_of, sd15_pair, sdxl_pair, service_flags  # noqa: F401

STEPS = 10
PROMPT = dict(prompt="a face", negative_prompt="blur", guidance_scale=5.0)


class UNetSteps:
    """The timesteps the UNet is called with (a forward pre-hook)."""

    def __init__(self, unet):
        self.seen = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.seen.append(float(torch.as_tensor(t).flatten()[0]))

    def take(self):
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture(scope="module")
def sd15():
    pipe, _ = sd15_pair(dtype=torch.float32)
    return pipe


def latents_of(pipe, seed=0, size=32, steps=STEPS, batch=1, **kwargs):
    generator = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    prompt = {**PROMPT, **kwargs}
    if batch > 1:
        prompt["prompt"], prompt["negative_prompt"] = [prompt["prompt"]] * batch, [prompt["negative_prompt"]] * batch
    with torch.no_grad():
        return pipe(height=size, width=size, num_inference_steps=steps, generator=generator if batch > 1 else generator[0],
                    output_type="latent", **prompt).images


def test_the_refine_reruns_the_tail_of_the_schedule_the_latents_were_made_on(sd15, monkeypatch):
    pipe = sd15
    added = []
    scheduler_class = type(pipe.scheduler)
    add_noise = scheduler_class.add_noise

    def spy(self, original, noise, timesteps):
        added.append((float(timesteps.flatten()[0]), self.sigmas[self.begin_index].item()))
        return add_noise(self, original, noise, timesteps)

    monkeypatch.setattr(scheduler_class, "add_noise", spy)
    unet = UNetSteps(pipe.unet)
    try:
        latents = latents_of(pipe)
        made = unet.take()
        sigmas = pipe.scheduler.sigmas.clone()
        refined = refine(pipe, latents, 0.3, generator=torch.Generator().manual_seed(5), **PROMPT)
        rerun = unet.take()
    finally:
        unet.handle.remove()
    count = refine_steps_for(0.3, STEPS)
    assert count == round(0.3 * STEPS) == 3 and len(made) == STEPS
    assert rerun == made[-count:]  # the same timesteps, the schedule's last three
    assert added == [(made[-count], sigmas[STEPS - count].item())]  # noised to that point, by the scheduler itself
    assert refined.shape == latents.shape and not torch.equal(refined, latents)
    assert type(pipe.scheduler) is scheduler_class and pipe.scheduler.num_inference_steps == STEPS  # pipe untouched


def test_same_generator_same_result_and_zero_steps_change_nothing(sd15):
    latents = latents_of(sd15)
    one = refine(sd15, latents, 0.5, generator=torch.Generator().manual_seed(3), **PROMPT)
    two = refine(sd15, latents, 0.5, generator=torch.Generator().manual_seed(3), **PROMPT)
    other = refine(sd15, latents, 0.5, generator=torch.Generator().manual_seed(4), **PROMPT)
    assert torch.equal(one, two) and not torch.equal(one, other)
    short = latents_of(sd15, steps=8)
    assert refine(sd15, short, 0.05, num_inference_steps=8, **PROMPT) is short  # round(0.4) = 0 steps


def test_a_batch_refines_each_image_with_its_own_generator(sd15):
    batch = latents_of(sd15, seed=10, batch=2)
    seeds = [10, 11]
    refined = refine(sd15, batch, 0.3, generator=refine_generators(seeds), prompt=["a face"] * 2,
                     negative_prompt=["blur"] * 2, guidance_scale=5.0)
    for i, seed in enumerate(seeds):
        alone = refine(sd15, batch[i:i + 1], 0.3, generator=refine_generators([seed]), **PROMPT)
        torch.testing.assert_close(refined[i:i + 1], alone, atol=1e-4, rtol=1e-4)
    assert refine_generators([10])[0].initial_seed() == refine_seed(10) != 10


def test_sdxl_reruns_the_tail_too():
    pipe, _ = sdxl_pair(dtype=torch.float32)
    unet = UNetSteps(pipe.unet)
    try:
        latents = latents_of(pipe, size=64, steps=6)
        made = unet.take()
        refined = refine(pipe, latents, 0.5, generator=torch.Generator().manual_seed(1), **PROMPT)
        rerun = unet.take()
    finally:
        unet.handle.remove()
    assert len(made) == 6 and rerun == made[-3:] and refined.shape == latents.shape


def test_a_hardened_half_pipeline_refines_with_the_callers_embeddings(sd15):
    pipe, img2img = sd15_pair()  # half UNet, fp32 text encoder: raw embeddings fail without the cast
    harden(pipe, img2img)
    embeds, negative = prompt_embeds_of(pipe)
    with torch.no_grad():
        latents = pipe(height=32, width=32, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                       prompt_embeds=embeds, negative_prompt_embeds=negative, output_type="latent").images
    refined = refine(pipe, latents, 0.3, prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert refined.dtype == HALF and refined.shape == latents.shape
    images = refine(pipe, latents, 0.3, output_type="pil", prompt_embeds=embeds, negative_prompt_embeds=negative)
    assert images[0].size == (32, 32)


def test_the_refine_after_an_img2img_pass_counts_the_steps_that_pass_ran():
    assert refine_steps_for(0.5, 20, denoise=0.35) == round(0.5 * int(20 * 0.35)) == 4
    assert refine_steps_for(0.75, 2) == 2  # every step: the strength passed to img2img stays at most 1


def test_bad_arguments_are_named(sd15):
    latents = torch.zeros(1, 4, 4, 4)
    with pytest.raises(SettingsError) as err:
        refine(sd15, latents, 0.9, **PROMPT)
    assert "strength" in err.value.problems
    with pytest.raises(TypeError, match="latents"):
        refine(sd15, latents, 0.3, num_inference_steps=10, latents=latents)
    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        refine(object(), latents, 0.3, num_inference_steps=10)
