"""Super-resolution models for the Hires pass: RealESRGAN, ESRGAN, ... from .pth or .safetensors files.

Two backends: spandrel (the loader the WebUI uses; it recognises the architecture from the weights)
and, optionally, the ``realesrgan`` package.  Neither is imported until a model is loaded.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from PIL import Image

__all__ = ["Upscaler", "UpscalerUnavailable", "load_upscaler"]


class UpscalerUnavailable(ImportError):
    """No backend can load the upscaler (the message says why)."""


@dataclass
class Upscaler:
    """A super-resolution model: ``upscaler(image)`` returns the image at ``scale`` x its size."""

    name: str
    scale: int
    backend: str
    run: Callable[[Image.Image], Image.Image] = field(repr=False)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.run(image)


@contextlib.contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Let spandrel import where torchvision cannot (absent, or a CUDA build beside a CPU torch).

    spandrel imports ``torchvision.transforms.functional`` at import time for two architectures
    SDFix never loads (LaMa, RestoreFormer).  For the import only, those names point at functions
    that raise if ever called; the stand-in is removed from ``sys.modules`` right after.
    """
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {name: sys.modules.get(name) for name in names}

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise UpscalerUnavailable("this spandrel architecture needs torchvision, which does not import here")

    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(NEAREST=0, BILINEAR=2, BICUBIC=3)  # type: ignore[attr-defined]
    root.transforms, transforms.functional = transforms, functional  # type: ignore[attr-defined]
    sys.modules.update(dict(zip(names, (root, transforms, functional))))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:  # noqa: BLE001 -- any failure means spandrel cannot use it either
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            sys.modules.pop(name, None)
        return False
    return True


def _import_spandrel() -> Any:
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise UpscalerUnavailable("spandrel is not installed (pip install spandrel, or sdfix[diffusers])")
    try:
        if _torchvision_imports():
            return importlib.import_module("spandrel")
        with _torchvision_stand_in():
            return importlib.import_module("spandrel")
    except ImportError as exc:
        raise UpscalerUnavailable(f"spandrel does not import here: {exc}") from exc


def _image_to_tensor(image: Image.Image, device: Any, dtype: Any) -> Any:
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def _tensor_to_image(tensor: Any) -> Image.Image:
    array = tensor.squeeze(0).permute(1, 2, 0).float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return Image.fromarray(array, "RGB")


def _load_with_spandrel(path: str, device: Any, half: bool) -> Upscaler:
    import torch

    spandrel = _import_spandrel()
    descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{path} is a {type(descriptor).__name__}, not a single-image upscaler")
    descriptor.eval()
    if half and getattr(descriptor, "supports_half", False):
        descriptor.half()
    model_device = next(descriptor.model.parameters()).device
    model_dtype = next(descriptor.model.parameters()).dtype

    def run(image: Image.Image) -> Image.Image:
        with torch.inference_mode():
            return _tensor_to_image(descriptor(_image_to_tensor(image, model_device, model_dtype)))

    architecture = getattr(descriptor.architecture, "name", None) or descriptor.architecture.id
    return Upscaler(f"{architecture} x{descriptor.scale}", int(descriptor.scale), "spandrel", run)


def _load_tensors_only(path: str) -> Any:
    """A .pth checkpoint's tensors (dicts, lists and tensors; nothing else is unpickled).

    Why: a pickle can run any code while it loads.  Upscaler checkpoints hold only weights; one
    that needs more (a pickled model class, an optimizer, ...) is refused rather than executed.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; only the line naming the blocked object is kept.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise ValueError(f"refusing to load {path}: it holds more than weights, and unpickling it could run "
                         f"arbitrary code ({why}); use a .safetensors file or a plain state dict") from exc


def _load_with_realesrgan(path: str, device: Any, half: bool) -> Upscaler:
    """The ``realesrgan`` package (RRDBNet checkpoints with ``params``/``params_ema``), if it imports."""
    import numpy as np

    try:
        from basicsr.archs.rrdbnet_arch import RRDBNet
        from realesrgan import RealESRGANer
    except Exception as exc:
        raise UpscalerUnavailable(f"the realesrgan backend does not import here: {type(exc).__name__}: {exc}") from exc
    if path.lower().endswith(".safetensors"):
        raise UpscalerUnavailable("the realesrgan backend reads .pth files only (RealESRGANer loads the file itself)")
    state = _load_tensors_only(path)
    weights = state.get("params_ema", state.get("params", state))
    in_ch = weights["conv_first.weight"].shape[1]
    scale = {3: 4, 12: 2, 48: 1}.get(in_ch, 4)
    blocks = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("body."))
    model = RRDBNet(
        num_in_ch=3, num_out_ch=3, num_feat=weights["conv_first.weight"].shape[0], num_block=blocks,
        num_grow_ch=weights["body.0.rdb1.conv1.weight"].shape[0], scale=scale,
    )
    # RealESRGANer reads the file again with its own torch.load; the weights-only load above has
    # already refused any file that holds more than tensors.
    upsampler = RealESRGANer(scale=scale, model_path=path, model=model, tile=0, pre_pad=0, half=half, device=device)

    def run(image: Image.Image) -> Image.Image:
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]
        output, _ = upsampler.enhance(np.ascontiguousarray(bgr), outscale=scale)
        return Image.fromarray(np.ascontiguousarray(output[:, :, ::-1]), "RGB")

    return Upscaler(f"RealESRGAN x{scale}", scale, "realesrgan", run)


def load_upscaler(path: Any, *, device: Any = None, backend: str = "auto", half: bool = False) -> Upscaler:
    """Load a super-resolution model file (RealESRGAN, ESRGAN, ... as .pth/.safetensors).

    ``backend``: "spandrel" (the loader the WebUI uses; recognises the architecture from the
    weights), "realesrgan" (the ``realesrgan`` package, optional: its ``basicsr`` dependency does
    not import with current torchvision) or "auto" (spandrel, else realesrgan).
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = str(path)
    if backend == "spandrel":
        return _load_with_spandrel(path, device, half)
    if backend == "realesrgan":
        return _load_with_realesrgan(path, device, half)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'spandrel' or 'realesrgan', got {backend!r}")
    try:
        return _load_with_spandrel(path, device, half)
    except UpscalerUnavailable as spandrel_error:
        try:
            return _load_with_realesrgan(path, device, half)
        except UpscalerUnavailable as realesrgan_error:
            raise UpscalerUnavailable(f"{spandrel_error}; {realesrgan_error}") from realesrgan_error
