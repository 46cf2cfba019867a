"""Intermediate steps: the denoised prediction of chosen sampling steps, decoded, side by side.

Issues that appear early in sampling point to the noise schedule, issues that appear late to the
reconstruction of fine detail, so the images of intermediate steps tell them apart.  Each step's
prediction of the final image (k-diffusion's ``denoised``, the timestep samplers' ``pred_x0``) is
decoded through the guarded VAE; the strip and the high-frequency energy per step show when detail -- or an artifact -- appears.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

from PIL import Image

from lib_sdfix.imaging.grid import compose_grid
from lib_sdfix.imaging.metrics import detail_ratio, high_frequency_energy, laplacian_variance, psnr, ssim

__all__ = ["StepCapture", "step_rows", "compose_strip", "STRIP_CELL_WIDTH"]

#: Widest cell of the strip picture (17 cells of a 2048-wide image would make a huge PNG).
STRIP_CELL_WIDTH = 384


class StepCapture:
    """Keeps the denoised prediction of the wanted steps (1-based) of one sampling pass, off the
    device's critical path: a copy of one latent per wanted step, nothing else."""

    def __init__(self, at: Sequence[int]) -> None:
        self.at = tuple(sorted(set(int(s) for s in at)))
        self.latents: Dict[int, Any] = {}
        self.seen = 0  # steps the sampler reported

    def __call__(self, step: int, denoised: Any) -> None:
        self.seen = max(self.seen, step)
        if step in self.at and denoised is not None and step not in self.latents:
            self.latents[step] = denoised.detach().clone()

    @property
    def missing(self) -> List[int]:
        """Wanted steps the sampler never reported (it ran fewer steps, or was interrupted)."""
        return [s for s in self.at if s not in self.latents]


def step_rows(images: Mapping[int, Image.Image], final: Image.Image, steps: int) -> List[Dict[str, Any]]:
    """Per captured step: its detail metrics, the share of the final image's high-frequency energy it
    already has, and how close it is to the final image (PSNR/SSIM)."""
    final_hf, final_lap = high_frequency_energy(final), laplacian_variance(final)
    rows = []
    for step in sorted(images):
        image = images[step]
        hf, lap = high_frequency_energy(image), laplacian_variance(image)
        same = image.size == final.size
        rows.append({
            "step": step, "steps": steps, "fraction": step / steps if steps else None,
            "high_frequency_energy": hf, "laplacian_variance": lap,
            "high_frequency_ratio": detail_ratio(hf, final_hf), "laplacian_ratio": detail_ratio(lap, final_lap),
            "psnr_vs_final": psnr(final, image) if same else None, "ssim_vs_final": ssim(final, image) if same else None,
        })
    return rows


def compose_strip(images: Mapping[int, Image.Image], final: Image.Image, steps: int) -> Image.Image:
    """The captured steps left to right, then the final image, each labelled."""
    ordered = [images[s] for s in sorted(images)] + [final]
    labels = [f"step {s}/{steps}" for s in sorted(images)] + ["final image"]
    width = max(im.width for im in ordered)
    if width > STRIP_CELL_WIDTH:  # an overview: the full-size step images come with the result
        scale = STRIP_CELL_WIDTH / width
        ordered = [im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
                   for im in ordered]
    return compose_grid(ordered, labels, columns=len(ordered))
