"""The diffusers pipeline classes SDFix supports, by name (diffusers itself is not imported here)."""
from __future__ import annotations

from typing import Dict

__all__ = ["IMG2IMG_FOR"]

#: The img2img pipeline class of each supported txt2img pipeline class.
IMG2IMG_FOR: Dict[str, str] = {
    "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
}
