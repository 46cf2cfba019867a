"""A small VAE with the ldm layout that AUTOMATIC1111, Forge and reForge load (``ldm.modules.
diffusionmodules.model``): written from that architecture for the tests, random weights.

Why here: the tiled executor recognises networks by their attributes; the WebUI's VAE is not
installed in the test environment, so its layout is rebuilt with the same attribute names and the
same forward (GroupNorm eps 1e-6, ``x * sigmoid(x)``, right/bottom padding before the stride-2
convolution, single-head attention with 1x1 convolutions).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.use_conv_shortcut = in_channels, out_channels, False
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: object = None) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, height, width = q.shape
        q = q.reshape(b, c, height * width).permute(0, 2, 1)
        weights = torch.softmax(torch.bmm(q, k.reshape(b, c, height * width)) * c ** -0.5, dim=2)
        h = torch.bmm(v.reshape(b, c, height * width), weights.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.with_conv = True
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.with_conv = True
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _mid(channels: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(channels, channels, groups), AttnBlock(channels, groups), \
        ResnetBlock(channels, channels, groups)
    return mid


class Encoder(nn.Module):
    def __init__(self, ch: int, mult: Sequence[int], blocks: int, z: int, groups: int) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(mult), blocks
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for i, m in enumerate(mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(blocks):
                stage.block.append(ResnetBlock(width, ch * m, groups))
                width = ch * m
            if i != len(mult) - 1:
                stage.downsample = Downsample(width)
            self.down.append(stage)
        self.mid = _mid(width, groups)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, 2 * z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if i != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, mult: Sequence[int], blocks: int, z: int, groups: int) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks, self.give_pre_end, self.tanh_out = len(mult), blocks, False, False
        width = ch * mult[-1]
        self.conv_in = nn.Conv2d(z, width, 3, padding=1)
        self.mid = _mid(width, groups)
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(blocks + 1):
                stage.block.append(ResnetBlock(width, ch * mult[i], groups))
                width = ch * mult[i]
            if i != 0:
                stage.upsample = Upsample(width)
            self.up.insert(0, stage)
        self.norm_out = _norm(width, groups)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(self.num_resolutions)):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class LdmVAE(nn.Module):
    """``decode(z)`` / ``encode(x)`` (the mean of the posterior) like ldm's AutoencoderKL."""

    def __init__(self, ch: int = 32, mult: Sequence[int] = (1, 2, 2), blocks: int = 1, z: int = 4, groups: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = Encoder(ch, mult, blocks, z, groups)
        self.decoder = Decoder(ch, mult, blocks, z, groups)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)
        self.eval()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x)).chunk(2, dim=1)[0]
