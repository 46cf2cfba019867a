"""What the VAE tests share: small modules, bit-for-bit comparisons, and the two VAE layouts the
tiled executor knows (ldm, diffusers)."""
from __future__ import annotations

import pytest
import torch

HALF = torch.bfloat16  # what the CPU computes in half precision


class Tiny(torch.nn.Module):
    """Convolutions (one 1x1, stored as a matrix in other layouts), a norm, a floating and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.proj = torch.nn.Conv2d(4, 4, 1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.register_buffer("scale", torch.randn(4))
        self.register_buffer("steps", torch.arange(5))

    def forward(self, x):
        return self.norm(self.proj(self.conv(x))) * self.scale.view(1, -1, 1, 1)


def tiny(seed: int = 0) -> Tiny:
    """Random values everywhere (no two tensors alike, none exactly representable in half precision)."""
    torch.manual_seed(seed)
    module = Tiny()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module.eval()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern: equality here is bit for bit (-0.0 != 0.0, NaN == NaN)."""
    t = t.detach().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def snapshot(module: torch.nn.Module):
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: (t, t.data_ptr(), t.dtype, t.device, t.detach().clone()) for name, t in named}


def assert_as_before(module: torch.nn.Module, before) -> None:
    """Same tensor objects, same storages, same dtypes and devices, same bits."""
    now = dict(list(module.named_parameters()) + list(module.named_buffers()))
    assert now.keys() == before.keys()
    for name, (obj, ptr, dtype, device, values) in before.items():
        t = now[name]
        assert t is obj, name
        assert t.data_ptr() == ptr, name
        assert t.dtype == dtype and t.device == device, name
        assert same_bits(t.detach(), values), name


def floating(module: torch.nn.Module):
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {name: t for name, t in named if t.is_floating_point()}


def conv_vae(dtype: torch.dtype) -> torch.nn.Module:
    """A VAE stand-in without decoder or encoder: a convolution and a GroupNorm in ``dtype``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8)).to(dtype)


def diffusers_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                   up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=8,
                                   latent_channels=4).eval()


def decode_fn(vae):
    """The VAE's decode as a function of the latent (diffusers' returns an output object)."""
    return (lambda z: vae.decode(z).sample) if hasattr(vae, "use_tiling") else vae.decode


def encode_fn(vae):
    """The VAE's encode as a function of the image (diffusers': the latent distribution's mean)."""
    return (lambda x: vae.encode(x).latent_dist.mean) if hasattr(vae, "use_tiling") else vae.encode


def tensor_state(vae):
    """Every parameter and buffer: name, storage and dtype."""
    return [(name, t.data_ptr(), t.dtype) for name, t in list(vae.named_parameters()) + list(vae.named_buffers())]
