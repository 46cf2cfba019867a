"""A VAE's decoder or encoder as a list of operations, run in fp32 one horizontal strip at a time.

Why strips and not independent tiles: every GroupNorm normalises with statistics over the whole
image, so a tile decoded on its own gets other colours and contrast than the same region of the
whole image, and blending overlaps only hides the seams.  Here the network runs operation by
operation.  Each activation is kept as a list of full-width row strips; a convolution reads the one
or two rows above and below its strip from the neighbouring strips (the exact halo, no overlap to
blend), and a GroupNorm uses statistics gathered over every strip before any strip is normalised.
The result is the untiled result up to floating-point summation order.  Peak memory is what the
strips being read and written hold, not the untiled call's several full-size temporaries: a
ResnetBlock keeps its input and its first convolution's output, a strip is freed once no later
strip needs it, and the residual is added in place.  Attention (only at the latent resolution)
runs on the whole image with the queries in chunks.  Weights are cast to fp32 one operation at a
time, so the VAE's own weights are never copied whole.

The network's structure comes from :mod:`lib_sdfix.vae.net`; this module only runs it.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lib_sdfix.failsafe import log_once
from lib_sdfix.precision import autocast_disabled
from lib_sdfix.vae.net import Attention, Conv, Exit, Network, Resample, Resnet, resampled_size

__all__ = ["run_network"]

class Rows:
    """One image's activation ``[C, H, W]`` as consecutive full-width row strips.

    Strips live on ``store`` (the compute device, or the CPU when the device is short of memory);
    :meth:`rows` brings rows to the compute device.  Strips are appended in order and dropped from
    the top once no later strip needs them.
    """

    def __init__(self, channels: int, height: int, width: int, device: torch.device, store: torch.device) -> None:
        self.channels, self.height, self.width = channels, height, width
        self.device, self.store = device, store
        self.strips: List[Tuple[int, torch.Tensor]] = []  # (first row, tensor [C, r, W])
        self.end = 0  # rows appended so far
        self.start = 0  # first row still held

    def append(self, tensor: torch.Tensor) -> None:
        self.strips.append((self.end, tensor.to(self.store)))
        self.end += tensor.shape[1]

    def rows(self, a: int, b: int) -> torch.Tensor:
        """Rows ``[a, b)`` (inside ``[start, end)``) on the compute device; a view where one strip holds them."""
        if not (self.start <= a <= b <= self.end):
            raise IndexError(f"rows {a}:{b} outside {self.start}:{self.end}")
        parts = []
        for first, tensor in self.strips:
            last = first + tensor.shape[1]
            if last <= a or first >= b:
                continue
            parts.append(tensor[:, max(a, first) - first:min(b, last) - first])
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out.to(self.device)

    def release_before(self, row: int) -> None:
        """Drop the strips that end at or above ``row``."""
        while self.strips and self.strips[0][0] + self.strips[0][1].shape[1] <= row:
            first, tensor = self.strips.pop(0)
            self.start = first + tensor.shape[1]

    def take(self, a: int, b: int) -> torch.Tensor:
        """Rows ``[a, b)`` to be overwritten in place (the residual): the stored strip itself when it
        is exactly those rows, else a copy."""
        for first, tensor in self.strips:
            if first == a and tensor.shape[1] == b - a and tensor.device == self.device:
                return tensor
        return self.rows(a, b).clone()

    def group_stats(self, groups: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-group mean and 1/sqrt(var + eps) over all rows, as GroupNorm computes them: each
        strip's mean and variance from the GroupNorm kernel itself (several times faster than
        ``var_mean`` on the CPU), combined in fp64 (Chan et al.'s pairwise update)."""
        if self.start != 0 or self.end != self.height:
            raise RuntimeError("statistics need every row")
        means, variances, counts = [], [], []
        for _, tensor in self.strips:
            part = tensor.to(self.device)
            count = part.numel() // self.channels
            mean, var = _moments(part.reshape(1, self.channels, count).contiguous(), groups)
            means.append(mean)
            variances.append(var)
            counts.append(count * (self.channels // groups))
        mean_s = torch.stack(means).double().cpu()
        var_s = torch.stack(variances).double().cpu()
        n = torch.tensor(counts, dtype=torch.float64)[:, None]
        total = n.sum()
        mean = (n * mean_s).sum(0) / total
        m2 = (n * var_s).sum(0) + (n * (mean_s - mean) ** 2).sum(0)
        rstd = torch.rsqrt(m2 / total + eps)
        return mean.float().to(self.device), rstd.float().to(self.device)


_group_norm_kernel = torch.ops.aten.native_group_norm  # (out, mean, 1/std) per group


def _moments(flat: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and variance of ``flat`` ``[1, C, N]``: the GroupNorm kernel's own (it returns
    1/std; a constant group's is infinite, its variance 0), or ``var_mean`` on a backend without it."""
    try:
        _, mean, rstd = _group_norm_kernel(flat, None, None, 1, flat.shape[1], flat.shape[2], groups, 0.0)
    except NotImplementedError:
        log_once("tiling:group-norm-kernel", f"no GroupNorm kernel on {flat.device.type}: statistics by var_mean")
        var, mean = torch.var_mean(flat.reshape(groups, -1), dim=1, unbiased=False)
        return mean, var
    return mean[0], rstd[0].double().pow(-2).nan_to_num(0.0, 0.0, 0.0)


class _Weights:
    """fp32 weights on the compute device, cast once per operation (``source(param)`` may supply
    exact fp32 values for a parameter)."""

    def __init__(self, device: torch.device, source: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]]) -> None:
        self.device, self.source = device, source

    def __call__(self, tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if tensor is None:
            return None
        exact = self.source(tensor) if self.source is not None else None
        value = exact if exact is not None else tensor.detach()
        return value.to(device=self.device, dtype=torch.float32)


def _affine(norm: nn.GroupNorm, src: Rows, weights: _Weights) -> Tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as a per-channel scale and shift from statistics over all of ``src``."""
    mean, rstd = src.group_stats(norm.num_groups, norm.eps)
    per = src.channels // norm.num_groups
    scale = weights(norm.weight) * rstd.repeat_interleave(per)
    shift = weights(norm.bias) - mean.repeat_interleave(per) * scale
    return scale[:, None, None], shift[:, None, None]


def _norm_silu(affine: Tuple[torch.Tensor, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    scale, shift = affine
    return lambda window: F.silu(torch.addcmul(shift, window, scale), inplace=True)


def _conv_rows(src: Rows, conv: nn.Conv2d, a: int, b: int, w: torch.Tensor, bias: Optional[torch.Tensor],
               pre: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, pad: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Output rows ``[a, b)`` of ``conv(pre(src))``; ``pad`` = extra zero columns right and rows
    below the input (a stride-2 downsampler's asymmetric padding)."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    lo, hi = a * s - p, (b - 1) * s - p + k  # input rows read; outside [0, height) they are zeros
    window = src.rows(max(lo, 0), min(hi, src.height))
    if pre is not None:
        window = pre(window)
    top, bottom = max(0, -lo), max(0, hi - src.height)
    if top or bottom or pad[0]:
        window = F.pad(window, (p, p + pad[0], top, bottom))
        return F.conv2d(window[None], w, bias, stride=s)[0]
    return F.conv2d(window[None], w, bias, stride=s, padding=(0, p))[0]


def _strips(height: int, rows: int) -> List[Tuple[int, int]]:
    return [(a, min(a + rows, height)) for a in range(0, height, rows)]


class _Runner:
    """Runs one image through the network's operations."""

    def __init__(self, net: Network, weights: _Weights, strip_bytes: int, store: torch.device, query_bytes: int) -> None:
        self.net, self.weights, self.strip_bytes, self.store = net, weights, strip_bytes, store
        self.query_bytes = query_bytes

    def rows_for(self, channels: int, width: int) -> int:
        return max(1, self.strip_bytes // (4 * channels * width))

    def new(self, channels: int, height: int, width: int) -> Rows:
        return Rows(channels, height, width, self.weights.device, self.store)

    def conv(self, src: Rows, op: Conv) -> Rows:
        conv = op.conv
        out = self.new(conv.out_channels, src.height, src.width)
        w, bias = self.weights(conv.weight), self.weights(conv.bias)
        rows = self.rows_for(max(conv.in_channels, conv.out_channels), src.width)
        for a, b in _strips(src.height, rows):
            out.append(_conv_rows(src, conv, a, b, w, bias))
            src.release_before(b - conv.padding[0])
        return out

    def resnet(self, x: Rows, op: Resnet) -> Rows:
        weights = self.weights
        c_out = op.conv1.out_channels
        rows = self.rows_for(max(x.channels, c_out), x.width)
        spans = _strips(x.height, rows)
        first = _norm_silu(_affine(op.norm1, x, weights))
        w1, b1 = weights(op.conv1.weight), weights(op.conv1.bias)
        h = self.new(c_out, x.height, x.width)
        residual = x
        if op.shortcut is not None:
            residual = self.new(c_out, x.height, x.width)
            ws, bs = weights(op.shortcut.weight), weights(op.shortcut.bias)
        halo = op.conv1.padding[0]
        for a, b in spans:
            h.append(_conv_rows(x, op.conv1, a, b, w1, b1, first))
            if op.shortcut is not None:
                residual.append(_conv_rows(x, op.shortcut, a, b, ws, bs))
                x.release_before(b - max(halo, op.shortcut.padding[0]))
        del w1, b1
        second = _norm_silu(_affine(op.norm2, h, weights))
        w2, b2 = weights(op.conv2.weight), weights(op.conv2.bias)
        out = self.new(c_out, x.height, x.width)
        for a, b in spans:
            part = _conv_rows(h, op.conv2, a, b, w2, b2, second)
            total = residual.take(a, b)
            total.add_(part)
            if op.scale != 1.0:
                total.div_(op.scale)
            residual.release_before(b)
            out.append(total)
            h.release_before(b - op.conv2.padding[0])
        return out

    def attention(self, x: Rows, op: Attention) -> Rows:
        weights = self.weights
        c, n = x.channels, x.height * x.width
        scale, shift = _affine(op.norm, x, weights)
        whole = x.rows(0, x.height).reshape(c, n)
        x.release_before(x.height)
        normed = torch.addcmul(shift[:, :, 0], whole, scale[:, :, 0])  # [C, N]
        heads = op.heads
        q, k, v = (self._project(m, normed).reshape(heads, -1, n).transpose(1, 2) for m in (op.q, op.k, op.v))
        del normed
        w_out, b_out = weights(op.out.weight), weights(op.out.bias)
        chunk = max(1, self.query_bytes // (4 * n * heads))
        out = self.new(c, x.height, x.width)
        for a, b in _strips(x.height, max(1, chunk // x.width)):
            sl = slice(a * x.width, b * x.width)
            attended = F.scaled_dot_product_attention(q[:, sl], k, v)  # [heads, r, d]
            attended = attended.transpose(1, 2).reshape(c, -1)
            projected = F.linear(attended.t(), w_out.reshape(c, c), b_out).t()
            if op.residual:
                projected = projected + whole[:, sl]
            if op.rescale != 1.0:
                projected = projected / op.rescale
            out.append(projected.reshape(c, b - a, x.width))
        return out

    def _project(self, module: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        w, bias = self.weights(module.weight), self.weights(module.bias)
        return F.linear(normed.t(), w.reshape(w.shape[0], -1), bias).t().contiguous()

    def resample(self, src: Rows, op: Resample) -> Rows:
        height, width = resampled_size(op, src.height, src.width)
        channels = op.conv.out_channels if op.conv is not None else src.channels
        out = self.new(channels, height, width)
        rows = self.rows_for(channels, width)
        if op.conv is None and not op.up:
            for a, b in _strips(height, rows):
                out.append(F.avg_pool2d(src.rows(2 * a, 2 * b)[None], 2)[0])
                src.release_before(2 * b)
            return out
        w, bias = (self.weights(op.conv.weight), self.weights(op.conv.bias)) if op.conv is not None else (None, None)
        for a, b in _strips(height, rows):
            p = op.conv.padding[0] if op.conv is not None else 0
            if not op.up:
                out.append(_conv_rows(src, op.conv, a, b, w, bias, pad=op.pad))
                src.release_before(2 * b - p)
                continue
            out.append(self._upsampled(src, op, a, b, w, bias))
            src.release_before(max(0, b - p) // 2)
        return out

    @staticmethod
    def _upsampled(src: Rows, op: Resample, a: int, b: int, w: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Output rows ``[a, b)`` of conv(nearest 2x(src)): the low rows that cover them and their halo."""
        p = op.conv.padding[0] if op.conv is not None else 0
        lo, hi = a - p, b + p  # rows of the upsampled image the conv reads
        low_a, low_b = max(lo, 0) // 2, min(math.ceil(hi / 2), src.height)
        window = F.interpolate(src.rows(low_a, low_b)[None], scale_factor=2.0, mode="nearest")[0]
        window = window[:, max(lo, 0) - 2 * low_a:min(hi, 2 * src.height) - 2 * low_a]
        if op.conv is None:
            return window
        top, bottom = max(0, -lo), max(0, hi - 2 * src.height)
        if top or bottom:
            window = F.pad(window, (0, 0, top, bottom))
        return F.conv2d(window[None], w, bias, padding=(0, p))[0]

    def exit(self, src: Rows, op: Exit) -> Rows:
        pre = _norm_silu(_affine(op.norm, src, self.weights))
        out = self.new(op.conv.out_channels, src.height, src.width)
        w, bias = self.weights(op.conv.weight), self.weights(op.conv.bias)
        rows = self.rows_for(src.channels, src.width)
        for a, b in _strips(src.height, rows):
            part = _conv_rows(src, op.conv, a, b, w, bias, pre)
            out.append(torch.tanh(part) if op.tanh else part)
            src.release_before(b - op.conv.padding[0])
        return out

    def run(self, image: torch.Tensor) -> Rows:
        x = self.new(image.shape[0], image.shape[1], image.shape[2])
        x.append(image)
        for op in self.net.ops:
            if isinstance(op, Conv):
                x = self.conv(x, op)
            elif isinstance(op, Resnet):
                x = self.resnet(x, op)
            elif isinstance(op, Attention):
                x = self.attention(x, op)
            elif isinstance(op, Resample):
                x = self.resample(x, op)
            else:
                x = self.exit(x, op)
        return x


def run_network(net: Network, x: torch.Tensor, *, strip_bytes: int, store: Optional[torch.device] = None,
                source: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]] = None,
                query_bytes: Optional[int] = None) -> torch.Tensor:
    """``net`` applied to ``x`` ``[B, C, H, W]`` in fp32, one image and one strip of about
    ``strip_bytes`` (of the widest activation) at a time; the result is fp32 on ``x``'s device.

    ``store``: where the strips wait between operations (default: ``x``'s device).  ``source(param)``
    may return exact fp32 values for a parameter (else it is cast).  ``query_bytes`` bounds the
    attention scores held at once (default: ``strip_bytes``).
    """
    device = x.device
    weights = _Weights(device, source)
    runner = _Runner(net, weights, max(1, int(strip_bytes)), store or device, int(query_bytes or strip_bytes))
    height, width = net.output_size(x.shape[2], x.shape[3])
    out = torch.empty(x.shape[0], net.out_channels, height, width, device=device, dtype=torch.float32)
    with torch.no_grad(), autocast_disabled():
        for i in range(x.shape[0]):
            rows = runner.run(x[i].to(torch.float32))
            for first, tensor in rows.strips:
                out[i, :, first:first + tensor.shape[1]] = tensor
    return out
