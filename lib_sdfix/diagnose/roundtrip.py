"""VAE round-trip: encode and decode the user's own image through the current VAE under several precisions.

The VAE's reconstruction quality, tested on its own by encoding and decoding a real image: if the
fp32 round trip already loses the detail, the VAE (not sampling) is where it goes; if only the host's
own precision loses it, its dtype or TF32 does.  The variants:

* ``webui`` -- the host's own encode and decode, its dtype and flags as they are;
* ``precision_guard`` -- SDFix's guarded call (its fixes precision_guard and guard_encode): TF32 off,
  VAE in fp32, exact weights where the file has them;
* ``fp32``/``fp16``/``bf16`` -- the VAE cast to that dtype for the call, flags guarded, so only the
  dtype differs between them (those the device cannot run are left out; those it has no fast kernels
  for -- fp16 and bf16 on most CPUs -- run only when asked for by name, see :func:`default_variants`).

The host-free parts live here: the variants, the dtype probe, the in-place dtype swap, image/tensor
conversion, and the metrics of each reconstruction against the original and against fp32.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from PIL import Image

from lib_sdfix.image_input import rgb8
from lib_sdfix.imaging.difference import difference_heatmap
from lib_sdfix.imaging.metrics import psnr, ssim
from lib_sdfix.imaging.table import metrics_table

__all__ = ["VARIANTS", "DTYPE_VARIANTS", "variant_label", "supported_variants", "default_variants", "slow_variants",
           "skipped_note", "crop_for_vae", "image_to_tensor", "tensor_to_image", "vae_in_dtype", "roundtrip_rows",
           "roundtrip_heatmaps", "PRECISION_HEATMAP_GAIN"]

VARIANTS = ("webui", "precision_guard", "fp32", "fp16", "bf16")
DTYPE_VARIANTS = ("fp32", "fp16", "bf16")
_LABELS = {"webui": "WebUI as it runs", "precision_guard": "precision_guard + guard_encode", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
#: Differences between precisions are a few levels of 255: the heatmaps against fp32 are amplified most.
PRECISION_HEATMAP_GAIN = 64.0


def variant_label(name: str, host_label: str = "WebUI as it runs") -> str:
    return host_label if name == "webui" else _LABELS.get(name, name)


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


@functools.lru_cache(maxsize=None)
def _runs(device: str, dtype_name: str) -> bool:
    import torch

    try:
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).to(device=device, dtype=_dtype(dtype_name))
        norm = torch.nn.GroupNorm(2, 4).to(device=device, dtype=_dtype(dtype_name))
        with torch.no_grad():
            out = norm(conv(torch.rand(1, 3, 8, 8, device=device, dtype=_dtype(dtype_name))))
        return bool(torch.isfinite(out.float()).all())
    except Exception:  # noqa: BLE001 -- "not implemented for 'Half'" and friends: the device cannot run it
        return False


def supported_variants(device: Any) -> Tuple[str, ...]:
    """The variants this device runs: every dtype whose convolution and group norm work there (probed once)."""
    return tuple(v for v in VARIANTS if v not in DTYPE_VARIANTS or _runs(str(device), v))


@functools.lru_cache(maxsize=None)
def _fast_on_cpu(dtype_name: str) -> bool:
    """Whether torch's CPU convolutions in this half dtype have fast (oneDNN) kernels on this CPU: bf16
    wants AVX-512 (BW/VL/DQ) or ARM BF16, fp16 AVX-512-FP16/AMX-FP16 or ARM FP16.  Elsewhere torch falls
    back to a reference convolution: a 128x96 round trip of a full-size VAE took 12-15 minutes in bf16 on
    a 2-core CPU, where fp32 takes seconds."""
    import torch

    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[dtype_name]
    try:
        return bool(torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, probe)())
    except Exception:  # noqa: BLE001 -- an older torch without the probe: assume the slow path
        return False


def slow_variants(device: Any) -> Tuple[str, ...]:
    """The supported dtype variants this device has no fast kernels for: on a CPU, fp16 and bf16 unless
    oneDNN has kernels for them there (:func:`_fast_on_cpu`); none on a GPU."""
    if str(device).split(":")[0] != "cpu":
        return ()
    return tuple(v for v in ("fp16", "bf16") if v in supported_variants(device) and not _fast_on_cpu(v))


def default_variants(device: Any) -> Tuple[str, ...]:
    """What a request without ``dtypes`` runs (and the tab ticks): the supported variants less the slow
    ones (:func:`slow_variants`) -- a full-size VAE's round trip in them takes many minutes.  Asking for
    one by name still runs it."""
    slow = slow_variants(device)
    return tuple(v for v in supported_variants(device) if v not in slow)


def skipped_note(device: Any, variants: Sequence[str], how: str = "ask for {it} by name") -> Optional[str]:
    """The note for a round trip that left slow variants out (None: it did not, or it ran a chosen
    subset of the defaults); ``how`` says how to ask for them (``{it}``: "it" or "them")."""
    skipped = [v for v in slow_variants(device) if v not in variants]
    if not skipped or not set(default_variants(device)) <= set(variants):
        return None
    names, it = " and ".join(skipped), "them" if len(skipped) > 1 else "it"
    return (f"{names} not run: this {str(device).split(':')[0].upper()} has no fast {names} kernels, and a "
            f"round trip in {it} takes minutes; {how.format(it=it)} to run {it}")


def crop_for_vae(image: Image.Image, multiple: int = 8) -> Tuple[Image.Image, Optional[str]]:
    """8-bit RGB (:func:`lib_sdfix.image_input.rgb8`: 16-bit scaled, transparency flattened), centre-cropped
    to multiples of the VAE's scale; the note says what was cut (None: nothing)."""
    image = rgb8(image)
    width, height = image.width - image.width % multiple, image.height - image.height % multiple
    if (width, height) == image.size:
        return image, None
    left, top = (image.width - width) // 2, (image.height - height) // 2
    cropped = image.crop((left, top, left + width, top + height))
    return cropped, f"image cropped from {image.width}x{image.height} to {width}x{height} (multiples of {multiple})"


def image_to_tensor(image: Image.Image) -> Any:
    """1 x 3 x H x W float32 in [0, 1] (what the hosts' encode takes)."""
    import numpy as np
    import torch

    array = np.asarray(rgb8(image), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_image(tensor: Any, signed: bool = True, truncate: bool = False) -> Image.Image:
    """The first image of a decoded batch (values in [-1, 1], or [0, 1] with ``signed=False``) as RGB.
    ``truncate``: to 8 bits as the WebUIs' processing does (``astype(uint8)``), else rounded (diffusers).
    Non-finite values become black, as the hosts' conversion to 8 bits leaves them."""
    import numpy as np
    import torch

    x = tensor[0] if tensor.dim() == 4 else tensor
    x = x.detach().float().cpu()
    if signed:
        x = (x + 1.0) / 2.0
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    array = 255.0 * x.permute(1, 2, 0).numpy()
    array = (array if truncate else array.round()).astype(np.uint8)
    return Image.fromarray(array, "RGB")


@contextlib.contextmanager
def vae_in_dtype(module: Any, dtype_name: str, attrs: Sequence[Tuple[Any, str]] = ()) -> Iterator[Any]:
    """Run the block with ``module``'s floating weights in ``dtype_name`` and every ``(owner, name)`` dtype
    attribute (plus Lightning's ``_dtype`` caches in the module) saying so; all back afterwards.

    The Parameter objects stay; only their ``.data`` is swapped, and the original tensors are put back
    (bit for bit, even from fp32 through fp16).  A tensor the host moved inside the call (its model
    manager loading the VAE onto the GPU) is cast back to its dtype where it now is.
    """
    import torch

    from lib_sdfix.vae.fp32 import dtype_attributes

    dtype = _dtype(dtype_name)
    swaps: List[Tuple[Any, Any, int, Any]] = []
    changed: List[Tuple[Any, str, Any]] = []
    try:
        if module is not None:
            named = list(module.named_parameters(remove_duplicate=True)) + list(module.named_buffers(remove_duplicate=True))
            for _, tensor in named:
                if tensor.is_floating_point() and tensor.dtype != dtype:
                    original = tensor.data
                    tensor.data = original.to(dtype)
                    swaps.append((tensor, original, tensor.data_ptr(), original.dtype))
        for owner, name in list(attrs) + (dtype_attributes(module) if module is not None else []):
            previous = getattr(owner, name, None)
            if isinstance(previous, torch.dtype) and previous != dtype:
                setattr(owner, name, dtype)
                changed.append((owner, name, previous))
        yield dtype
    finally:
        for owner, name, previous in reversed(changed):
            if getattr(owner, name, None) is dtype:  # unless the host set something else meanwhile
                setattr(owner, name, previous)
        for tensor, original, ours, original_dtype in reversed(swaps):
            if tensor.data_ptr() == ours and tensor.dtype == dtype:
                tensor.data = original
            elif tensor.dtype != original_dtype:
                tensor.data = tensor.data.to(original_dtype)


def roundtrip_rows(original: Image.Image, images: Mapping[str, Image.Image], times: Mapping[str, float], *,
                   labels: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per reconstruction (``original`` first, as the reference): PSNR/SSIM and detail ratios
    against the original, and PSNR/SSIM against the fp32 reconstruction (precision_guard's when fp32 is
    missing) -- how much of the loss the precision adds."""
    everything = {"original": original, **images}
    rows = metrics_table(everything, times, "original", labels={"original": "original", **(labels or {})})
    anchor = next((name for name in ("fp32", "precision_guard") if name in images), None)
    for row in rows:
        if anchor is None or row["name"] == "original":
            row["psnr_vs_fp32"] = row["ssim_vs_fp32"] = None
        else:
            row["psnr_vs_fp32"] = psnr(images[anchor], images[row["name"]])
            row["ssim_vs_fp32"] = ssim(images[anchor], images[row["name"]])
    return rows


def roundtrip_heatmaps(original: Image.Image, images: Mapping[str, Image.Image], gain: float = 4.0
                       ) -> Dict[str, Dict[str, Image.Image]]:
    """Per reconstruction: |original - it| at ``gain``, and |fp32 - it| at :data:`PRECISION_HEATMAP_GAIN`."""
    anchor = next((name for name in ("fp32", "precision_guard") if name in images), None)
    out: Dict[str, Dict[str, Image.Image]] = {}
    for name, image in images.items():
        maps = {"original": difference_heatmap(original, image, gain)}
        if anchor is not None and name != anchor:
            maps["fp32"] = difference_heatmap(images[anchor], image, PRECISION_HEATMAP_GAIN)
        out[name] = maps
    return out
