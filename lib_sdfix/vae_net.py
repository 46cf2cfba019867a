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

Structures recognised by their attributes (never by class name): the ldm/sgm ``Encoder``/``Decoder``
that AUTOMATIC1111, Forge and reForge use (``conv_in``, ``mid.block_1/attn_1/block_2``,
``down[i]``/``up[i]`` with ``block``, ``attn``, ``downsample``/``upsample``, ``norm_out``,
``conv_out``) and diffusers' (``conv_in``, ``mid_block``, ``down_blocks``/``up_blocks``,
``conv_norm_out``, ``conv_out``).  Anything else raises :class:`Unsupported` saying what was not
recognised; the caller then runs the network as it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Unsupported", "Network", "network_of", "run_network", "resampled_size", "Resnet", "Attention", "Conv",
           "Resample", "Exit"]


class Unsupported(ValueError):
    """The module is not a VAE encoder/decoder this executor knows (the message says what differs)."""


# --- the operations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """A plain convolution (``conv_in``)."""

    conv: nn.Conv2d


@dataclass(frozen=True)
class Resnet:
    norm1: nn.GroupNorm
    conv1: nn.Conv2d
    norm2: nn.GroupNorm
    conv2: nn.Conv2d
    shortcut: Optional[nn.Conv2d]  # None: identity
    scale: float = 1.0  # the output is divided by it (diffusers' output_scale_factor)
    entry: int = 3  # full-size tensors the untiled block holds at its first activation (memory model)


@dataclass(frozen=True)
class Attention:
    norm: nn.GroupNorm
    q: nn.Module  # Conv2d 1x1 (ldm) or Linear (diffusers)
    k: nn.Module
    v: nn.Module
    out: nn.Module
    heads: int = 1
    rescale: float = 1.0
    residual: bool = True


@dataclass(frozen=True)
class Resample:
    """Nearest 2x upsampling then ``conv`` (up), or explicit (right, bottom) zero padding then a
    stride-2 ``conv`` (down); without a conv, down is 2x2 average pooling."""

    up: bool
    conv: Optional[nn.Conv2d]
    pad: Tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Exit:
    """GroupNorm, SiLU, convolution (and tanh for ``tanh_out`` decoders)."""

    norm: nn.GroupNorm
    conv: nn.Conv2d
    tanh: bool = False


Op = Union[Conv, Resnet, Attention, Resample, Exit]


@dataclass(frozen=True)
class Network:
    kind: str  # "decoder" or "encoder"
    ops: Tuple[Op, ...]
    in_channels: int
    out_channels: int

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        for op in self.ops:
            if isinstance(op, Resample):
                height, width = resampled_size(op, height, width)
        return height, width

    def modules(self) -> List[nn.Module]:
        found: List[nn.Module] = []
        for op in self.ops:
            found += [v for v in vars(op).values() if isinstance(v, nn.Module)]
        return found


def resampled_size(op: Resample, height: int, width: int) -> Tuple[int, int]:
    if op.up:
        return height * 2, width * 2
    if op.conv is None:
        return height // 2, width // 2
    k, s = op.conv.kernel_size[0], op.conv.stride[0]
    p = op.conv.padding[0]
    return (height + op.pad[1] + 2 * p - k) // s + 1, (width + op.pad[0] + 2 * p - k) // s + 1


# --- recognising a structure ----------------------------------------------------------------------


def _conv(module: Any, where: str, *, stride: int = 1) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d):
        raise Unsupported(f"{where} is a {type(module).__name__}, not a Conv2d")
    k = module.kernel_size
    if (module.groups != 1 or module.dilation != (1, 1) or k[0] != k[1] or module.stride != (stride, stride)
            or module.padding_mode != "zeros" or not isinstance(module.padding, tuple)
            or module.padding[0] != module.padding[1]):
        raise Unsupported(f"{where}: a convolution with unusual settings ({module})")
    if stride == 1 and module.padding[0] != k[0] // 2:
        raise Unsupported(f"{where}: padding {module.padding} with kernel {k}")
    return module


def _norm(module: Any, where: str) -> nn.GroupNorm:
    if not isinstance(module, nn.GroupNorm) or not module.affine:
        raise Unsupported(f"{where} is a {type(module).__name__}, not an affine GroupNorm")
    return module


def _no_other_weights(module: nn.Module, known: Sequence[str], where: str) -> None:
    for name, child in module.named_children():
        if name not in known and any(True for _ in child.parameters()):
            raise Unsupported(f"{where}.{name}: a {type(child).__name__} with weights this executor does not run")


def _entry(block: nn.Module) -> int:
    """How many input-sized tensors the block's own forward holds at its first activation: an
    in-place SiLU module 2, a SiLU module 3, ldm's ``x * sigmoid(x)`` function 4."""
    for name in ("nonlinearity", "swish", "act"):
        act = getattr(block, name, None)
        if isinstance(act, nn.Module):
            return 2 if getattr(act, "inplace", False) else 3
    return 4


def _ldm_resnet(block: Any, where: str) -> Resnet:
    if not all(hasattr(block, a) for a in ("norm1", "conv1", "norm2", "conv2")):
        raise Unsupported(f"{where} is a {type(block).__name__}, not a ResnetBlock")
    shortcut = None
    if getattr(block, "in_channels", None) != getattr(block, "out_channels", None):
        shortcut = getattr(block, "conv_shortcut", None) if getattr(block, "use_conv_shortcut", False) else getattr(block, "nin_shortcut", None)
        shortcut = _conv(shortcut, f"{where} shortcut")
    _no_other_weights(block, ("norm1", "conv1", "norm2", "conv2", "nin_shortcut", "conv_shortcut", "temb_proj"), where)
    _check_dropout(block, where)
    return Resnet(_norm(block.norm1, f"{where}.norm1"), _conv(block.conv1, f"{where}.conv1"),
                  _norm(block.norm2, f"{where}.norm2"), _conv(block.conv2, f"{where}.conv2"), shortcut,
                  entry=_entry(block))


def _check_dropout(block: Any, where: str) -> None:
    dropout = getattr(block, "dropout", None)
    if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0:
        raise Unsupported(f"{where}: dropout is active (the module is in training mode)")


def _ldm_attention(block: Any, where: str) -> Optional[Attention]:
    if isinstance(block, nn.Identity):
        return None
    if not all(isinstance(getattr(block, a, None), nn.Conv2d) for a in ("q", "k", "v", "proj_out")):
        raise Unsupported(f"{where} is a {type(block).__name__}, not single-head spatial attention")
    _no_other_weights(block, ("norm", "q", "k", "v", "proj_out"), where)
    return Attention(_norm(block.norm, f"{where}.norm"), block.q, block.k, block.v, block.proj_out)


def _ldm_network(net: nn.Module, kind: str) -> Network:
    levels, blocks = int(net.num_resolutions), int(net.num_res_blocks)
    ops: List[Op] = [Conv(_conv(net.conv_in, "conv_in"))]

    def level(i: int, count: int, stage: Any) -> None:
        for j in range(count):
            ops.append(_ldm_resnet(stage.block[j], f"{kind}[{i}].block[{j}]"))
            if len(stage.attn) > 0:
                attention = _ldm_attention(stage.attn[j], f"{kind}[{i}].attn[{j}]")
                if attention is not None:
                    ops.append(attention)

    def mid() -> None:
        ops.append(_ldm_resnet(net.mid.block_1, "mid.block_1"))
        attention = _ldm_attention(net.mid.attn_1, "mid.attn_1")
        if attention is not None:
            ops.append(attention)
        ops.append(_ldm_resnet(net.mid.block_2, "mid.block_2"))

    if kind == "decoder":
        if getattr(net, "give_pre_end", False):
            raise Unsupported("decoder returns before its output layer (give_pre_end)")
        mid()
        for i in reversed(range(levels)):
            level(i, blocks + 1, net.up[i])
            if i != 0:
                ops.append(_ldm_resample(net.up[i].upsample, f"up[{i}].upsample", up=True))
    else:
        for i in range(levels):
            level(i, blocks, net.down[i])
            if i != levels - 1:
                ops.append(_ldm_resample(net.down[i].downsample, f"down[{i}].downsample", up=False))
        mid()
    _check_activation(net, kind)
    ops.append(Exit(_norm(net.norm_out, "norm_out"), _conv(net.conv_out, "conv_out"), bool(getattr(net, "tanh_out", False))))
    return Network(kind, tuple(ops), net.conv_in.in_channels, net.conv_out.out_channels)


def _check_activation(net: Any, kind: str) -> None:
    act = getattr(net, "conv_act", None)
    if act is not None and not isinstance(act, nn.SiLU):
        raise Unsupported(f"{kind}.conv_act is a {type(act).__name__}, not SiLU")


def _ldm_resample(module: Any, where: str, *, up: bool) -> Resample:
    if up:
        factor = getattr(module, "scale_factor", 2.0)
        if factor not in (2, 2.0):
            raise Unsupported(f"{where}: scale factor {factor}")
        return Resample(True, _conv(module.conv, f"{where}.conv") if module.with_conv else None)
    if not module.with_conv:
        return Resample(False, None)
    return Resample(False, _conv(module.conv, f"{where}.conv", stride=2), (1, 1))


def _diffusers_resnet(block: Any, where: str) -> Resnet:
    if type(block).__name__ != "ResnetBlock2D" or getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None:
        raise Unsupported(f"{where} is a {type(block).__name__}, not a plain ResnetBlock2D")
    if getattr(block, "time_emb_proj", None) is not None or not isinstance(block.nonlinearity, nn.SiLU):
        raise Unsupported(f"{where}: time embedding or an activation other than SiLU")
    shortcut = _conv(block.conv_shortcut, f"{where}.conv_shortcut") if block.conv_shortcut is not None else None
    _no_other_weights(block, ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"), where)
    _check_dropout(block, where)
    return Resnet(_norm(block.norm1, f"{where}.norm1"), _conv(block.conv1, f"{where}.conv1"),
                  _norm(block.norm2, f"{where}.norm2"), _conv(block.conv2, f"{where}.conv2"), shortcut,
                  float(block.output_scale_factor), _entry(block))


def _diffusers_attention(block: Any, where: str) -> Optional[Attention]:
    if block is None:
        return None
    linear = [getattr(block, a, None) for a in ("to_q", "to_k", "to_v")] + [getattr(block, "to_out", [None])[0]]
    if not all(isinstance(m, nn.Linear) for m in linear) or getattr(block, "spatial_norm", None) is not None \
            or getattr(block, "norm_q", None) is not None or getattr(block, "norm_k", None) is not None \
            or getattr(block, "is_cross_attention", False):
        raise Unsupported(f"{where} is an attention this executor does not run")
    _no_other_weights(block, ("group_norm", "to_q", "to_k", "to_v", "to_out"), where)
    return Attention(_norm(block.group_norm, f"{where}.group_norm"), *linear, int(block.heads),
                     float(block.rescale_output_factor), bool(block.residual_connection))


def _diffusers_resample(block: Any, where: str, *, up: bool) -> Optional[Resample]:
    samplers = block.upsamplers if up else block.downsamplers
    if samplers is None:
        return None
    if len(samplers) != 1:
        raise Unsupported(f"{where}: {len(samplers)} resamplers")
    sampler = samplers[0]
    if getattr(sampler, "norm", None) is not None or getattr(sampler, "use_conv_transpose", False):
        raise Unsupported(f"{where}: a resampler with a norm or a transposed convolution")
    if up:
        if not getattr(sampler, "interpolate", True):
            raise Unsupported(f"{where}: upsampler without interpolation")
        conv = getattr(sampler, "conv", None) if getattr(sampler, "name", "conv") == "conv" else getattr(sampler, "Conv2d_0", None)
        return Resample(True, _conv(conv, f"{where}.conv") if sampler.use_conv else None)
    if not sampler.use_conv:
        return Resample(False, None)
    pad = (1, 1) if sampler.padding == 0 else (0, 0)
    return Resample(False, _conv(sampler.conv, f"{where}.conv", stride=2), pad)


def _diffusers_network(net: nn.Module, kind: str) -> Network:
    ops: List[Op] = [Conv(_conv(net.conv_in, "conv_in"))]

    def mid() -> None:
        block = net.mid_block
        ops.append(_diffusers_resnet(block.resnets[0], "mid_block.resnets[0]"))
        for i, (attention, resnet) in enumerate(zip(block.attentions, block.resnets[1:])):
            made = _diffusers_attention(attention, f"mid_block.attentions[{i}]")
            if made is not None:
                ops.append(made)
            ops.append(_diffusers_resnet(resnet, f"mid_block.resnets[{i + 1}]"))

    def stages(blocks: Any, name: str, up: bool) -> None:
        for i, block in enumerate(blocks):
            if hasattr(block, "attentions"):
                raise Unsupported(f"{name}[{i}] is a {type(block).__name__} with attention")
            for j, resnet in enumerate(block.resnets):
                ops.append(_diffusers_resnet(resnet, f"{name}[{i}].resnets[{j}]"))
            resample = _diffusers_resample(block, f"{name}[{i}]", up=up)
            if resample is not None:
                ops.append(resample)

    if kind == "decoder":
        mid()
        stages(net.up_blocks, "up_blocks", True)
    else:
        stages(net.down_blocks, "down_blocks", False)
        mid()
    if type(net.conv_norm_out).__name__ == "SpatialNorm":
        raise Unsupported("conv_norm_out is a SpatialNorm (a conditioned decoder)")
    _check_activation(net, kind)
    ops.append(Exit(_norm(net.conv_norm_out, "conv_norm_out"), _conv(net.conv_out, "conv_out")))
    return Network(kind, tuple(ops), net.conv_in.in_channels, net.conv_out.out_channels)


def network_of(net: Any) -> Network:
    """The operations of a VAE decoder or encoder module; :class:`Unsupported` if it is neither
    structure (or uses a part this executor does not run)."""
    if not isinstance(net, nn.Module):
        raise Unsupported(f"a {type(net).__name__} is no torch module")
    try:
        if hasattr(net, "mid") and hasattr(net, "up") and hasattr(net, "num_resolutions"):
            return _ldm_network(net, "decoder")
        if hasattr(net, "mid") and hasattr(net, "down") and hasattr(net, "num_resolutions"):
            return _ldm_network(net, "encoder")
        if hasattr(net, "mid_block") and hasattr(net, "up_blocks"):
            return _diffusers_network(net, "decoder")
        if hasattr(net, "mid_block") and hasattr(net, "down_blocks"):
            return _diffusers_network(net, "encoder")
    except (AttributeError, IndexError, TypeError) as exc:
        raise Unsupported(f"{type(net).__name__}: {type(exc).__name__}: {exc}") from None
    raise Unsupported(f"{type(net).__name__} is neither an ldm nor a diffusers VAE encoder/decoder")


# --- activations as row strips --------------------------------------------------------------------


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
        strip's mean and variance in fp32, combined in fp64 (Chan et al.'s pairwise update)."""
        if self.start != 0 or self.end != self.height:
            raise RuntimeError("statistics need every row")
        means, variances, counts = [], [], []
        for _, tensor in self.strips:
            part = tensor.to(self.device).reshape(groups, -1)
            var, mean = torch.var_mean(part, dim=1, unbiased=False)
            means.append(mean)
            variances.append(var)
            counts.append(part.shape[1])
        mean_s = torch.stack(means).double().cpu()
        var_s = torch.stack(variances).double().cpu()
        n = torch.tensor(counts, dtype=torch.float64)[:, None]
        total = n.sum()
        mean = (n * mean_s).sum(0) / total
        m2 = (n * var_s).sum(0) + (n * (mean_s - mean) ** 2).sum(0)
        rstd = torch.rsqrt(m2 / total + eps)
        return mean.float().to(self.device), rstd.float().to(self.device)


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
    from lib_sdfix.precision import autocast_disabled

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
