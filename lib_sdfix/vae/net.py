"""A VAE's decoder or encoder read as a list of operations over its own modules (no weights copied).

Why: the tiled executor (:mod:`lib_sdfix.vae.strips`) and the memory estimate
(:mod:`lib_sdfix.vae.estimate`) need to know what each layer of the real network does -- its
convolutions, GroupNorms, attention and resampling -- without calling the network's ``forward`` as
a whole (that is the untiled call whose memory does not fit).  The operations hold references to
the real submodules, so the weights the host loaded (and casts) are the ones that run.

Structures recognised by their attributes (a diffusers resnet also by its class, ResnetBlock2D: its
look-alikes normalise differently): the ldm/sgm ``Encoder``/``Decoder``
that AUTOMATIC1111, Forge and reForge use (``conv_in``, ``mid.block_1/attn_1/block_2``,
``down[i]``/``up[i]`` with ``block``, ``attn``, ``downsample``/``upsample``, ``norm_out``,
``conv_out``) and diffusers' (``conv_in``, ``mid_block``, ``down_blocks``/``up_blocks``,
``conv_norm_out``, ``conv_out``).  Anything else raises :class:`Unsupported` saying what was not
recognised; the caller then runs the network as it is.  :func:`network_of` reads a module once
(cached while it lives); :func:`vae_networks` finds a VAE's decoder and encoder.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

__all__ = ["Unsupported", "Network", "network_of", "vae_networks", "resampled_size", "Resnet", "Attention", "Conv",
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
        shortcut = (getattr(block, "conv_shortcut", None) if getattr(block, "use_conv_shortcut", False)
                    else getattr(block, "nin_shortcut", None))
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
    if (type(block).__name__ != "ResnetBlock2D" or getattr(block, "upsample", None) is not None
            or getattr(block, "downsample", None) is not None):
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


def _read(net: nn.Module) -> Network:
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


# --- the networks of a VAE ------------------------------------------------------------------------

_NETWORKS = ("decoder", "encoder")
_READ: "weakref.WeakKeyDictionary[nn.Module, Union[Network, Unsupported]]" = weakref.WeakKeyDictionary()


def network_of(net: Any) -> Network:
    """The operations of a VAE decoder or encoder module, read once per module; :class:`Unsupported`
    if it is neither structure (or uses a part this executor does not run)."""
    if not isinstance(net, nn.Module):
        raise Unsupported(f"a {type(net).__name__} is no torch module")
    found = _READ.get(net)
    if found is None:
        try:
            found = _read(net)
        except Unsupported as exc:
            found = exc
        _READ[net] = found
    if isinstance(found, Unsupported):
        raise found
    return found


def vae_networks(module: Any) -> Dict[str, nn.Module]:
    """The VAE's ``decoder`` and ``encoder`` modules (by attribute; either may be missing)."""
    found = {}
    for name in _NETWORKS:
        child = getattr(module, name, None) if isinstance(module, nn.Module) else None
        if isinstance(child, nn.Module) and module._modules.get(name) is child:
            found[name] = child
    return found
