"""The SDFix nodes for ComfyUI and their registration (``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS``).

Classic (V1) node classes: every ComfyUI version loads them, including v0.21.0 beside its newer
``comfy_entrypoint``/``io.ComfyNode`` schema.  Every id starts with ``SDFix`` -- ComfyUI silently drops a
pack's node whose id clashes with a built-in.  Sampler and scheduler choices are ComfyUI's own lists,
read when ComfyUI asks for the inputs (``/object_info``), never at import.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from lib_sdfix.comfy import host
from lib_sdfix.comfy.inputs import choice, image_batch, integer, latent_samples, number
from lib_sdfix.settings import option

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "CATEGORY"]

CATEGORY = "SDFix"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _sampling_inputs(denoise: float) -> Dict[str, Any]:
    """The KSampler node's own inputs (same names, types and ranges), for the pass the node runs or refines."""
    return {
        "model": ("MODEL",),
        "positive": ("CONDITIONING",),
        "negative": ("CONDITIONING",),
        "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
        "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "sampler_name": (host.sampler_names(), {"tooltip": "The first pass's sampler (the KSampler's sampler_name)."}),
        "scheduler": (host.scheduler_names(), {"tooltip": "The first pass's scheduler (the KSampler's scheduler)."}),
        "denoise": ("FLOAT", {"default": denoise, "min": 0.0, "max": 1.0, "step": 0.01}),
    }


def _check_sampling(seed: Any, steps: Any, cfg: Any, sampler_name: Any, scheduler: Any, denoise: Any) -> None:
    integer(seed, "seed", 0, SEED_MAX)
    integer(steps, "steps", 1, 10000)
    number(cfg, "cfg", 0.0, 100.0)
    choice(sampler_name, "sampler_name", host.sampler_names())
    choice(scheduler, "scheduler", host.scheduler_names())
    number(denoise, "denoise", 0.0, 1.0)


def _flat(images: Any) -> Any:
    """A 5-D decode (video VAEs) as one image batch, as ComfyUI's VAEDecode returns it."""
    return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images


class SDFixVAEDecode:
    """Drop-in for VAEDecode: the same decode, under SDFix's precision guard in fp32."""

    DESCRIPTION = ("VAEDecode with the VAE in fp32 (exact fp32 weights from the model file where it holds them), "
                   "TF32, reduced-precision reductions, cudnn.benchmark and autocast off for the call, everything "
                   "restored after; tiled in fp32 (exact, no blended seams) when it would not fit. If that fails, "
                   "ComfyUI's own decode runs and the report says so.")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("IMAGE", "report")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {"required": {"samples": ("LATENT", {"tooltip": "The latent to be decoded."}),
                             "vae": ("VAE", {"tooltip": "The VAE model used for decoding the latent."})}}

    def decode(self, vae: Any, samples: Any) -> Tuple[Any, str]:
        from lib_sdfix.comfy.vae import guarded_decode

        run = guarded_decode(vae, latent_samples(samples, "samples"))
        return _flat(run.result), "SDFix VAE Decode: " + run.describe()


class SDFixVAEEncode:
    """Drop-in for VAEEncode, under the same guard (the fix guard_encode)."""

    DESCRIPTION = "VAEEncode with the VAE in fp32 under SDFix's precision guard (see SDFix VAE Decode)."
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("LATENT", "report")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    def encode(self, vae: Any, pixels: Any) -> Tuple[dict, str]:
        from lib_sdfix.comfy.vae import guarded_encode

        run = guarded_encode(vae, image_batch(pixels, "pixels"))
        return {"samples": run.result}, "SDFix VAE Encode: " + run.describe()


class SDFixHiresPass:
    """Upscale model (optional) -> one float LANCZOS resize -> guarded encode -> second pass -> guarded decode."""

    DESCRIPTION = ("A Hires pass without the usual losses: the first pass's latent (decoded guarded) or image, the "
                   "upscale model if given, ONE resize to the target on float planes (no 8-bit round trip), a guarded "
                   "encode, the second pass with the first pass's sampler and scheduler, a guarded decode.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT", "IMAGE", "STRING")
    RETURN_NAMES = ("LATENT", "IMAGE", "report")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        required = _sampling_inputs(0.5)
        required["vae"] = ("VAE",)
        required.update({
            "scale_by": ("FLOAT", {"default": 2.0, "min": 0.25, "max": 8.0, "step": 0.05,
                                   "tooltip": "Hires size = first pass x scale_by (when width and height are 0)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "0: from scale_by."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": "0: from scale_by."}),
            "resize_filter": (list(option("resize_filter").choices), {"default": option("resize_filter").default}),
        })
        return {"required": required,
                "optional": {"latent": ("LATENT", {"tooltip": "The first pass's latent (or give image)."}),
                             "image": ("IMAGE", {"tooltip": "The first pass's image (or give latent)."}),
                             "upscale_model": ("UPSCALE_MODEL",)}}

    def run(self, model: Any, positive: Any, negative: Any, vae: Any, seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, denoise: float, scale_by: float, width: int, height: int,
            resize_filter: str, latent: Any = None, image: Any = None, upscale_model: Any = None) -> Tuple[dict, Any, str]:
        from lib_sdfix.comfy.hires import hires_pass

        _check_sampling(seed, steps, cfg, sampler_name, scheduler, denoise)
        number(scale_by, "scale_by", 0.25, 8.0)
        integer(width, "width", 0, 16384)
        integer(height, "height", 0, 16384)
        choice(resize_filter, "resize_filter", option("resize_filter").choices)
        result = hires_pass(model, positive, negative, vae, seed, steps, cfg, sampler_name, scheduler, denoise,
                            scale_by, width, height, resize_filter, latent=latent, image=image,
                            upscale_model=upscale_model)
        return result.latent, result.image, result.report


class SDFixLateRefine:
    """The last round(strength x steps) steps of the pass's own schedule again, on its finished latent."""

    DESCRIPTION = ("Late-step refine: re-noises the pass's finished latent to a late point of that pass's own "
                   "schedule (same steps, sampler, scheduler, denoise) and runs only the remaining steps again; noise "
                   "from the seed. Give it the pass's own settings.")
    CATEGORY = CATEGORY
    FUNCTION = "refine"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("LATENT", "report")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        required = _sampling_inputs(1.0)
        strength = option("late_refine_strength")
        required["latent"] = ("LATENT", {"tooltip": "The pass's finished latent (its KSampler's output)."})
        required["late_refine_strength"] = ("FLOAT", {"default": strength.default, "min": strength.minimum,
                                                      "max": strength.maximum, "step": 0.01, "tooltip": strength.help})
        return {"required": required}

    def refine(self, model: Any, positive: Any, negative: Any, latent: Any, seed: int, steps: int, cfg: float,
               sampler_name: str, scheduler: str, denoise: float, late_refine_strength: float) -> Tuple[dict, str]:
        from lib_sdfix.comfy.refine import late_refine

        _check_sampling(seed, steps, cfg, sampler_name, scheduler, denoise)
        strength = option("late_refine_strength")
        number(late_refine_strength, "late_refine_strength", strength.minimum, strength.maximum)
        latent_samples(latent, "latent")
        return late_refine(model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, denoise,
                           late_refine_strength)


class SDFixABCompare:
    """Two images -> difference heatmap, metrics table (image and text)."""

    DESCRIPTION = ("A/B of two images (A is the reference): |A-B| heatmap, and PSNR, SSIM, Laplacian variance, "
                   "high-frequency energy and their ratios to A, as an image and as text.")
    CATEGORY = CATEGORY
    FUNCTION = "compare"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("heatmap", "metrics_table", "metrics")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {"required": {"image_a": ("IMAGE",), "image_b": ("IMAGE",),
                             "heatmap_gain": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 64.0, "step": 1.0})},
                "optional": {"label_a": ("STRING", {"default": "A"}), "label_b": ("STRING", {"default": "B"})}}

    def compare(self, image_a: Any, image_b: Any, heatmap_gain: float, label_a: str = "A",
                label_b: str = "B") -> Tuple[Any, Any, str]:
        from lib_sdfix.comfy.compare import ab_compare

        number(heatmap_gain, "heatmap_gain", 1.0, 64.0)
        return ab_compare(image_a, image_b, heatmap_gain, str(label_a), str(label_b))


class SDFixVAERoundTrip:
    """One image through the current VAE in each precision, with the findings."""

    DESCRIPTION = ("Encodes and decodes the image with the VAE as ComfyUI runs it ('comfyui'), with SDFix's guard "
                   "('precision_guard') and cast to fp32/fp16/bf16 (flags guarded): metrics against the original and "
                   "fp32, findings (is it the VAE, or its precision?). precisions: comma list; empty = what this "
                   "device runs fast.")
    CATEGORY = CATEGORY
    FUNCTION = "round_trip"
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "heatmaps", "metrics_table", "findings")

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "vae": ("VAE",),
                             "precisions": ("STRING", {"default": "", "tooltip": "e.g. comfyui,precision_guard,fp32,bf16"}),
                             "heatmap_gain": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 64.0, "step": 1.0})}}

    def round_trip(self, image: Any, vae: Any, precisions: str, heatmap_gain: float) -> Tuple[Any, Any, Any, str]:
        from lib_sdfix.comfy.compare import vae_roundtrip

        number(heatmap_gain, "heatmap_gain", 1.0, 64.0)
        if not isinstance(precisions, str):
            from lib_sdfix.comfy.inputs import InputError

            raise InputError("precisions", f"expected text, got {type(precisions).__name__}")
        out = vae_roundtrip(image, vae, precisions, heatmap_gain)
        return out["grid"], out["heatmaps"], out["table"], out["text"]


NODE_CLASS_MAPPINGS = {
    "SDFixVAEDecode": SDFixVAEDecode,
    "SDFixVAEEncode": SDFixVAEEncode,
    "SDFixHiresPass": SDFixHiresPass,
    "SDFixLateRefine": SDFixLateRefine,
    "SDFixABCompare": SDFixABCompare,
    "SDFixVAERoundTrip": SDFixVAERoundTrip,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SDFixVAEDecode": "SDFix VAE Decode",
    "SDFixVAEEncode": "SDFix VAE Encode",
    "SDFixHiresPass": "SDFix Hires pass",
    "SDFixLateRefine": "SDFix Late Refine",
    "SDFixABCompare": "SDFix A/B Compare",
    "SDFixVAERoundTrip": "SDFix VAE Round Trip",
}
