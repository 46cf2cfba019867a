"""Tiny random-weight diffusers pipelines wired like a service whose txt2img and img2img pipelines
share their components, probes that record what the VAE and UNet actually see from inside their
forward passes, and the fixtures and calls the diffusers tests share."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Tuple

import pytest
import torch

from lib_sdfix.cli.tiny import byte_level_clip_tokenizer, tiny_esrgan_state_dict, tiny_sd15_components

from ..flags import flag_record, set_webui_flags

HALF = torch.bfloat16  # the CPU's half precision; fp16 kernels on a CPU are slow
STEPS = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is as fast, and stays fast while other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def service_flags():
    """The service's flags for the test, the process's own afterwards."""
    from lib_sdfix.precision import read_flags, restore_flags

    before = read_flags()
    set_webui_flags()  # TF32 and cuDNN autotuning on, as services switch them on for speed on Ampere GPUs
    yield
    restore_flags(before)


@pytest.fixture(scope="module")
def upscaler_file(tmp_path_factory):
    """A tiny random x4 upscaler in Real-ESRGAN's layout, as .safetensors."""
    import safetensors.torch

    path = tmp_path_factory.mktemp("upscaler") / "tiny-realesrgan-x4.safetensors"
    safetensors.torch.save_file(tiny_esrgan_state_dict(), str(path))
    return path


def prompt_embeds_of(pipe):
    """What Compel hands over with an fp32 text encoder: raw fp32 embeddings."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt="a face", device="cpu", num_images_per_prompt=1,
                                  do_classifier_free_guidance=True, negative_prompt="blur")[:2]


def run_txt2img(pipe, size=64, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("negative_prompt", "blur")
    return pipe(height=size, width=size, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="pil", **kwargs).images[0]


def run_img2img(img2img, image, **kwargs):
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("negative_prompt", "blur")
    return img2img(image=image, strength=0.6, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                   output_type="pil", **kwargs).images[0]


def sd15_pair(text_encoder_dtype=torch.float32, dtype=HALF, scheduler_mismatch=True, offload=False,
              tokenizer_dir=None) -> Tuple[Any, Any]:
    """txt2img + img2img sharing every module; DPM++ 2M Karras on txt2img only unless ``scheduler_mismatch``
    is off."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    components = tiny_sd15_components(tokenizer_dir=tokenizer_dir)
    components["unet"].to(dtype)
    components["vae"].to(dtype)
    components["text_encoder"].to(text_encoder_dtype)
    pipe = StableDiffusionPipeline(**components)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    karras = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++", final_sigmas_type="sigma_min"
    )
    pipe.scheduler = karras
    if not scheduler_mismatch:
        img2img.scheduler = karras
    for p in (pipe, img2img):
        p.set_progress_bar_config(disable=True)
        if offload:
            p.enable_model_cpu_offload(device="cpu")
    return pipe, img2img


def sdxl_pair(text_encoder_dtype=torch.float32, dtype=HALF, tokenizer_dir=None) -> Tuple[Any, Any]:
    """A tiny SDXL-architecture pair (two text encoders, pooled embeddings, time ids)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = byte_level_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8,
    ).to(dtype)
    vae = AutoencoderKL(
        sample_size=64, latent_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, force_upcast=True,
    ).to(dtype)
    config = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, projection_dim=32, bos_token_id=512,
                  eos_token_id=513, pad_token_id=513)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config)).to(text_encoder_dtype)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config)).to(text_encoder_dtype)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    for p in (pipe, img2img):
        p.set_progress_bar_config(disable=True)
    return pipe, img2img


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class Probe:
    """Forward pre-hooks that write down, at the moment a module runs, its weights' dtype, its
    input's dtype and the process's precision flags."""

    def __init__(self) -> None:
        self.seen: List[Dict[str, Any]] = []
        self._handles: List[Any] = []

    def watch(self, label: str, module: torch.nn.Module) -> "Probe":
        def hook(mod, args, kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            record = {
                "part": label,
                "weight": next(mod.parameters()).dtype,
                "input": tensors[0].dtype if tensors else None,
                **flag_record(),
                "autocast": _autocast_on(),
            }
            for name in ("encoder_hidden_states", "added_cond_kwargs"):
                if name in kwargs:
                    record[name] = kwargs[name]
            if "encoder_hidden_states" in record and isinstance(record["encoder_hidden_states"], torch.Tensor):
                record["encoder_hidden_states"] = record["encoder_hidden_states"].dtype
            if isinstance(record.get("added_cond_kwargs"), dict):
                record["added_cond_kwargs"] = {k: v.dtype for k, v in record["added_cond_kwargs"].items()}
            self.seen.append(record)

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def of(self, part: str) -> List[Dict[str, Any]]:
        return [r for r in self.seen if r["part"] == part]

    def clear(self) -> None:
        self.seen.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextlib.contextmanager
def probe(**modules: torch.nn.Module):
    p = Probe()
    for label, module in modules.items():
        p.watch(label, module)
    try:
        yield p
    finally:
        p.close()


def enable_offload_like_diffusers_0_27(pipe: Any, device: str = "cpu") -> None:
    """What ``enable_model_cpu_offload`` did up to diffusers 0.27: chain new hooks onto the
    modules without removing the ones already there (a second pipeline over the same modules
    stacks a second hook on each)."""
    from accelerate import cpu_offload_with_hook

    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    pipe._all_hooks = []
    hook = None
    for name in pipe.model_cpu_offload_seq.split("->"):
        model = modules.pop(name, None)
        if model is not None:
            _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hook)
            pipe._all_hooks.append(hook)
    for model in modules.values():
        _, extra = cpu_offload_with_hook(model, device)
        pipe._all_hooks.append(extra)


def enable_sequential_offload(pipe: Any) -> None:
    """What ``pipe.enable_sequential_cpu_offload()`` does, with the CPU as the execution device.

    diffusers passes the device as "cpu:0"; there ``Parameter.to("cpu:0")`` returns a plain tensor,
    and accelerate then fails at the second forward of every offloaded module, SDFix or not.  On a
    GPU the device is "cuda:0" and nothing of the kind happens; "cpu" behaves like it.
    """
    from accelerate import cpu_offload

    for name, model in pipe.components.items():
        if isinstance(model, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload:
            cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)
