"""The SD model: the fake VAEs (recording what they see when they run), ``shared.sd_model`` with its VAE as
each host holds it (Forge's and reForge's wrappers are in forge.py), the counting "UNet", the noise
schedule and the "text encoder"."""
from __future__ import annotations

import threading
import types
import zlib
from typing import Any, Callable, Dict, List

import torch

from ...flags import flag_record
from .base import Namespace
from .forge import install_vae_wrapper


class FakeVAE(torch.nn.Module):
    """A conv "VAE" that records what it sees when it runs.

    Like the ldm AutoencoderKL (a PyTorch Lightning module) it caches its dtype: ``.dtype`` is only
    updated by ``.to()``, not by casting the weights in place.  Like torch, a conv whose input dtype
    differs from its weight dtype raises.
    """

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)
        self._dtype = torch.float32
        self.to(dtype)
        self.seen: List[Dict[str, Any]] = []
        self.half_overflow = False  # decoding in fp16 overflows to NaN, as a real fp16 VAE can on some latents
        # Forge/reForge load the VAE under inference_mode: its weights are inference tensors, and their
        # layers fail outside inference_mode (what a real Forge VAE raised when called under no_grad)
        self.needs_inference_mode = False

    def to(self, *args, **kwargs):
        dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
        if dtype is not None:
            self._dtype = dtype
        return super().to(*args, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _run(self, part: str, layer: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"part": part, "input": x.dtype, "weight": layer.weight.dtype,
                          "thread": threading.current_thread().name, **flag_record()})
        if self.needs_inference_mode and not torch.is_inference_mode_enabled():
            raise RuntimeError("Inference tensors do not track version counter.")
        if x.dtype != layer.weight.dtype:
            raise RuntimeError(f"Input type ({x.dtype}) and bias type ({layer.weight.dtype}) should be the same")
        return layer(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self._run("decoder", self.conv, z)
        if self.half_overflow and self.conv.weight.dtype == torch.float16:
            out = out * float("nan")
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", self.enc, x)


class FakeLdmVAE(FakeVAE):
    """A FakeVAE whose decode/encode run a small real ldm-layout network (``tests/ldm_vae.py``), so the
    tiled fp32 path (:mod:`lib_sdfix.vae.call`) has a decoder and an encoder to plan and run."""

    def __init__(self, dtype: torch.dtype, seed: int = 0):
        torch.nn.Module.__init__(self)
        from tests.ldm_vae import LdmVAE

        net = LdmVAE(seed=seed)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.quant_conv, self.post_quant_conv = net.quant_conv, net.post_quant_conv
        self._dtype = torch.float32
        self.to(dtype)
        self.seen = []
        self.half_overflow = False
        self.needs_inference_mode = False

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._run("decoder", self.post_quant_conv, z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", self.quant_conv, self.encoder(x)).chunk(2, dim=1)[0]


def install_model(module: Callable[..., types.ModuleType], host: str, dtype: torch.dtype, devices: Any, shared: Any,
                  ldm_vae: bool = False) -> Any:
    """``shared.sd_model`` of ``host`` with a fresh fake VAE; returns the model."""
    # the model and its VAE, per host
    vae = FakeLdmVAE(dtype) if ldm_vae else FakeVAE(dtype)
    vae.needs_inference_mode = host != "a1111"
    model = Namespace(is_sdxl=False, sd_checkpoint_info=Namespace(filename=None))
    model.get_first_stage_encoding = lambda z: z * 0.18215
    if host == "a1111":
        model.first_stage_model = vae

        def model_decode(z):
            if devices.unet_needs_upcast:  # sd_hijack_unet's first_stage_sub
                z = z.to(devices.dtype_vae)
            return model.first_stage_model.decode(z)

        def model_encode(x):
            if devices.unet_needs_upcast:
                x = x.to(devices.dtype_vae)
            return model.first_stage_model.encode(x)

        model.decode_first_stage, model.encode_first_stage = model_decode, model_encode
    else:
        install_vae_wrapper(module, host, model, vae, dtype)
    shared.sd_model = model
    return model


def install_unet(model: Any) -> None:
    """The "UNet" (``model.apply_model``): a cheap deterministic function that records every call in
    ``model.unet_calls``; ``unet_hook`` and ``unet_output`` let tests interrupt, fail or change it."""
    model.unet_calls = []
    model.unet_hook = None  # called with the call count after each UNet call (tests interrupt or fail there)
    model.alphas_cumprod = alphas_cumprod_sd()
    model.unet_output = None  # (call count, output) -> output: tests put NaN or detail into the prediction

    def apply_model(x, sigma, cond):
        model.unet_calls.append({"shape": tuple(x.shape), "sigma": float(sigma), "thread": threading.current_thread().name})
        if model.unet_hook is not None:
            model.unet_hook(len(model.unet_calls))
        out = torch.tanh(x / (float(sigma) ** 2 + 1) ** 0.5 + cond) * 0.9
        ratio = getattr(model, "tome_ratio", 0.0)
        if ratio:  # token merging: merged tokens share a value, fine detail flattens
            out = out * (1 - ratio) + out.mean(dim=(2, 3), keepdim=True) * ratio
        if getattr(model, "attention", None) == "V1":  # another attention kernel: the same math, other rounding
            out = out * (1 + 1e-3)
        return out if model.unet_output is None else model.unet_output(len(model.unet_calls), out)

    model.apply_model = apply_model


def alphas_cumprod_sd() -> torch.Tensor:
    """SD's 1000-step scaled-linear noise schedule (what ``sd_model.alphas_cumprod`` holds)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def text_conditioning(texts) -> torch.Tensor:
    """The "text encoder": a small tensor per prompt, determined by that prompt alone."""
    def encode(text):
        g = torch.Generator().manual_seed(zlib.crc32(text.encode("utf-8")))
        return 0.3 * torch.randn((1, 4, 1, 1), generator=g)

    return torch.cat([encode(text) for text in texts])
