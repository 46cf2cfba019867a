"""The one interface between SDFix and the WebUI it runs in: :class:`Host`, with what every host shares.

Why: AUTOMATIC1111, Forge and reForge share the ``modules.*`` layer (processing, scripts, images,
upscalers) but keep the VAE in different places, decide its dtype through different attributes,
resize after an upscaler in slightly different loops and need different API fields.  Everything
that differs is a method here; everything else in ``lib_sdfix.webui`` is written once against it.
``lib_sdfix.webui`` is the only package that imports ``modules.*``, ``backend.*`` or ``ldm_patched.*``.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from lib_sdfix.webui.hosts.names import payload_names

__all__ = ["Host", "PatchTarget", "has_module"]

# What a patched function is: (owner, attribute, kind) -- the kind names the replacement's factory
# (hooks.FACTORIES for patch_targets, diagnose.nan_watch's for nan_watch_targets).
PatchTarget = Tuple[Any, str, str]


class Host:
    """What every supported host shares (the ``modules.*`` layer of AUTOMATIC1111 v1.10, which Forge
    and reForge keep); the VAE methods are each host's own (a1111.py; wrapper_vae.py for Forge and reForge)."""

    name = ""
    label = ""

    @classmethod
    def matches(cls) -> bool:
        raise NotImplementedError

    # -- objects ------------------------------------------------------------------------------------

    @property
    def shared(self) -> Any:
        from modules import shared

        return shared

    def sd_model(self) -> Any:
        return getattr(self.shared, "sd_model", None)

    def cmd_opt(self, name: str, default: Any = None) -> Any:
        return getattr(self.shared.cmd_opts, name, default)

    def device(self) -> Any:
        """The device generations run on (``modules.devices.device``)."""
        from modules import devices

        return getattr(devices, "device", "cpu")

    # -- the VAE ------------------------------------------------------------------------------------

    def vae_wrapper(self, sd_model: Any = None) -> Any:
        """The host's VAE wrapper object (Forge/reForge ``VAE``); None where the VAE is a bare module."""
        raise NotImplementedError

    def vae_module(self, sd_model: Any = None, wrapper: Any = None) -> Any:
        """The torch module that runs (encoder/decoder)."""
        raise NotImplementedError

    def vae_dtype_attrs(self, wrapper: Any = None) -> List[Tuple[Any, str]]:
        """Attributes holding the dtype the host casts the VAE's input (and weights) to, for ``wrapper``
        (the wrapper a decode runs on) or the loaded model's."""
        raise NotImplementedError

    def vae_source_files(self) -> List[str]:
        """Files the VAE's weights were read from, most specific first (external VAE, checkpoint)."""
        files = []
        try:
            from modules import sd_vae

            if sd_vae.loaded_vae_file:
                files.append(sd_vae.loaded_vae_file)
        except Exception:  # noqa: BLE001 -- diagnostics only
            pass
        info = getattr(self.sd_model(), "sd_checkpoint_info", None)
        if getattr(info, "filename", None):
            files.append(info.filename)
        return files

    def encode_result_dtype(self) -> Any:
        """The dtype the host's own encode returns (the sampler expects it)."""
        from modules import devices

        return devices.dtype_vae

    def no_grad(self) -> Any:
        """The no-autograd mode the host's process_images runs in: a VAE call outside a generation must
        use the same one (Forge's weights are inference tensors, which plain no_grad cannot use)."""
        import torch

        return torch.no_grad()

    def decode_method(self) -> str:
        return str(getattr(self.shared.opts, "sd_vae_decode_method", "Full"))

    def encode_method(self) -> str:
        return str(getattr(self.shared.opts, "sd_vae_encode_method", "Full"))

    def approximation_index(self, method: str) -> int:
        from modules import sd_samplers_common

        return sd_samplers_common.approximation_indexes.get(method, 0)

    def patch_targets(self, hooks: Set[str]) -> List[PatchTarget]:
        """The host functions SDFix replaces while a generation wants fixes needing ``hooks``
        ("decode", "encode", "resize", "sampler": lib_sdfix.settings.Fix.patches)."""
        from modules import images, processing, sd_samplers, sd_samplers_common, upscaler

        targets: List[PatchTarget] = []
        if "sampler" in hooks:  # every pass gets its sampler here (txt2img, Hires, img2img's init)
            targets.append((sd_samplers, "create_sampler", "create_sampler"))
        if "decode" in hooks:
            targets += [(processing, "decode_first_stage", "decode_first_stage"),
                        (sd_samplers_common, "decode_first_stage", "decode_first_stage"),
                        (sd_samplers_common, "samples_to_images_tensor", "samples_to_images_tensor")]
        if "encode" in hooks:
            targets += [(processing, "images_tensor_to_samples", "images_tensor_to_samples"),
                        (sd_samplers_common, "images_tensor_to_samples", "images_tensor_to_samples")]
        if "resize" in hooks:
            targets += [(images, "resize_image", "resize_image"), (upscaler.Upscaler, "upscale", "upscaler_upscale")]
        return targets

    # -- the NaN watch ------------------------------------------------------------------------------

    def nan_watch_targets(self) -> List[PatchTarget]:
        """The host functions the NaN watch replaces (lib_sdfix.webui.diagnose.nan_watch): the hosts' one
        decode entry point after sampling (``processing.decode_latent_batch``) and, where the host has it,
        its own NaN check (``devices.test_for_nans``: AUTOMATIC1111 checks there before its fp32 retry)."""
        from modules import devices, processing

        wanted = ((processing, "decode_latent_batch"), (devices, "test_for_nans"))
        return [(owner, attr, attr) for owner, attr in wanted if hasattr(owner, attr)]

    def nans_exception(self) -> Optional[type]:
        """The exception the host stops a generation with when it finds NaNs (AUTOMATIC1111's
        ``devices.NansException``, unless --disable-nan-check); None where it has none."""
        from modules import devices

        return getattr(devices, "NansException", None)

    def sampling_steps(self) -> Optional[int]:
        """The steps of the sampling running now, as the progress bar counts them; None if unknown."""
        return getattr(self.shared.state, "sampling_steps", None) or None

    # -- sampling -----------------------------------------------------------------------------------

    def final_pass(self, p: Any, method: str) -> bool:
        """Whether a sampler's ``method`` ("sample" or "sample_img2img") called for ``p`` is the last
        sampling before ``p``'s latent is decoded: txt2img's ``sample`` without Hires.fix, the Hires
        pass's ``sample_img2img`` (``p.is_hr_pass``), img2img's ``sample_img2img``.

        The Hires pass decodes inside ``sample_hr_pass`` and hands ``p.sample``'s caller (and
        ``scripts.post_sample``) decoded images, so work on its latent belongs inside the sampler call.
        """
        from modules import processing

        if method == "sample":
            return not getattr(p, "enable_hr", False)
        return bool(getattr(p, "is_hr_pass", False)) or isinstance(p, processing.StableDiffusionProcessingImg2Img)

    def pass_steps(self, p: Any, method: str, steps: Optional[int]) -> int:
        """The steps a pass runs (what its progress bar counts): txt2img ``steps or p.steps``; an img2img
        or Hires pass what the host's ``setup_img2img_steps`` gives for its denoising."""
        if method == "sample":
            return int(steps or p.steps)
        from modules import sd_samplers_common

        _, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        return int(t_enc) + 1

    def seeded_noise(self, shape: Tuple[int, ...], seeds: List[int]) -> Any:
        """One noise tensor per seed, ``shape`` each, drawn the way the host draws a generation's noise
        (its noise source setting: CPU, GPU or NV)."""
        from modules import rng

        return rng.ImageRNG(tuple(shape), list(seeds)).next()

    def alphas_cumprod(self, sampler: Any) -> Any:
        """The cumulative alphas a timestep sampler (DDIM/PLMS) noises and denoises with."""
        return sampler.model_wrap.inner_model.alphas_cumprod

    @contextlib.contextmanager
    def without_extra_noise(self) -> Iterator[None]:
        """img2img's "Extra noise" setting held at 0 for the block (its sample_img2img adds it on top of
        the schedule's noise level and writes an "Extra noise" infotext entry); the setting exactly as
        it was afterwards."""
        opts, key = self.shared.opts, "img2img_extra_noise"
        if not getattr(opts, key, 0):
            yield
            return
        data = getattr(opts, "data", None)
        store = data if isinstance(data, dict) else vars(opts)  # Options keeps values in .data
        had, before = key in store, store.get(key)
        store[key] = 0.0
        try:
            yield
        finally:
            if had:
                store[key] = before
            else:
                store.pop(key, None)

    def stopped(self) -> bool:
        """Interrupt or Skip was pressed for the running job."""
        state = self.shared.state
        return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))

    def add_jobs(self, count: int) -> None:
        """Tell the progress bar that ``count`` more sampling jobs follow (a known total only)."""
        state = self.shared.state
        if getattr(state, "job_count", 0) > 0:
            state.job_count += count

    def next_job(self) -> None:
        self.shared.state.nextjob()

    # -- upscaler -----------------------------------------------------------------------------------

    def upscale_stop(self, scale: float) -> Callable[[Any, int, int, int], bool]:
        """When the host's Upscaler.upscale loop stops running the model (before pass i)."""
        return lambda im, w, h, i: im.width >= w and im.height >= h and (i > 0 or scale != 1)

    def resize_extra_keywords(self) -> Tuple[str, ...]:
        """Keywords the host's resize_image takes beyond AUTOMATIC1111's."""
        return ()

    def resize_converts_rgba(self) -> bool:
        return False

    # -- API ----------------------------------------------------------------------------------------

    def api_enabled(self) -> bool:
        return bool(self.cmd_opt("api", False) or self.cmd_opt("nowebui", False))

    def txt2img_defaults(self) -> Dict[str, Any]:
        """Fields this host's txt2img API needs beyond AUTOMATIC1111's defaults."""
        return {}

    def txt2img_extra_fields(self) -> Dict[str, Any]:
        """Fields this host's txt2img API model has beyond AUTOMATIC1111's, with their bounds
        (``lib_sdfix.limits.Rule``), accepted in A/B payloads."""
        return {}

    def payload_names(self) -> Dict[str, Any]:
        """The names this host accepts in each name field of a txt2img payload ({field:
        lib_sdfix.names.Names}), read from its registries now (hosts/names.py)."""
        return payload_names()

    def audit(self) -> Dict[str, Any]:
        """What /sdfix/v1/status reports about this host's VAE precision setup."""
        import torch

        module = self.vae_module()
        weights = None
        if module is not None:
            weights = next((str(p.dtype) for p in module.parameters() if p.is_floating_point()), None)
        from modules import devices

        model = self.sd_model()
        return {
            "host": self.name,
            "sdxl": bool(getattr(model, "is_sdxl", False)),
            "checkpoint": getattr(getattr(model, "sd_checkpoint_info", None), "name_for_extra", None),
            "vae_weights_dtype": weights,
            "vae_dtype_setting": str(getattr(devices, "dtype_vae", None)),
            "no_half_vae": bool(self.cmd_opt("no_half_vae", False)),
            "no_half": bool(self.cmd_opt("no_half", False)),
            "upcast_sampling": bool(self.cmd_opt("upcast_sampling", False)),
            "precision": self.cmd_opt("precision"),
            "vae_in": self._vae_in_flag(),
            "torch": torch.__version__,
        }

    def _vae_in_flag(self) -> Optional[str]:
        for dtype in ("fp32", "fp16", "bf16"):
            if self.cmd_opt(f"vae_in_{dtype}", False):
                return dtype
        return None


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

