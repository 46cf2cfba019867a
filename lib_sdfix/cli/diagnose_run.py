"""``python -m lib_sdfix diagnose``: the diagnosis kinds on a diffusers pipeline, analysed by lib_sdfix.diagnose.

The pipeline runs as a service would run it: UNet and text encoder in ``dtype`` (fp16 on a GPU, fp32 on
a CPU), the VAE in ``vae_dtype`` (half: fp16 on a GPU, bf16 on a CPU, as services keep it).  Every
sampling returns latents (``output_type="latent"``) and this module decodes them itself, so it counts
samplings, UNet calls and decodes, and cells that differ only in the decode (the precision sweep)
share one sampling.  Without ``--model`` the embedded random-weight SD1.5 runs: images are noise; the
mechanics, the per-precision differences and the report are real.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from PIL import Image

from lib_sdfix.cli.ab_run import diffusers_warnings_off, versions
from lib_sdfix.cli.diagnose_report import write_report
from lib_sdfix.cli.service import half_dtype, load_model, resolve_device
from lib_sdfix.cli.tiny import EMBEDDED, tiny_sd15_components
from lib_sdfix.diagnose.nan_watch import NanWatch
from lib_sdfix.diagnose.output import analyse_roundtrip, analyse_steps, analyse_sweep
from lib_sdfix.diagnose.plan import sweep_cells
from lib_sdfix.diagnose.request import default_strip_steps
from lib_sdfix.diagnose.roundtrip import (
    crop_for_vae,
    default_variants,
    image_to_tensor,
    skipped_note,
    supported_variants,
    tensor_to_image,
    vae_in_dtype,
    variant_label,
)
from lib_sdfix.diagnose.steps import StepCapture
from lib_sdfix.image_input import to_rgb8
from lib_sdfix.settings import SDFixSettings

__all__ = ["DiagnoseConfig", "RunShape", "SAMPLERS", "SCHEDULES", "run_diagnose", "resolve", "schedule_problem",
           "Counters"]

#: WebUI sampler names -> (diffusers scheduler class name, config changes).
SAMPLERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}), "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DDIM": ("DDIMScheduler", {}), "UniPC": ("UniPCMultistepScheduler", {}), "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}), "PNDM": ("PNDMScheduler", {}),
}
#: WebUI schedule types -> the scheduler config switch (only schedulers that have it take it).
SCHEDULES: Dict[str, Optional[str]] = {"Automatic": None, "Karras": "use_karras_sigmas",
                                       "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}


@dataclass
class DiagnoseConfig:
    kind: str
    out: Path = Path("sdfix-diagnose")
    model: Optional[str] = None
    prompt: str = "close-up portrait photo, detailed skin texture, individual hair strands"
    negative_prompt: str = "blurry"
    seed: int = 1234
    steps: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    cfg_scale: float = 7.0
    sampler: str = "DPM++ 2M"
    schedule: str = "Karras"
    axis: str = "cfg_scale"
    values: Tuple[Any, ...] = ()
    reference: Any = None
    at: Tuple[int, ...] = ()
    image: Optional[str] = None
    size: Optional[int] = None
    dtypes: Tuple[str, ...] = ()
    heatmap_gain: float = 4.0
    device: str = "auto"
    dtype: str = "auto"
    vae_dtype: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class RunShape:
    """What a generation uses where its :class:`DiagnoseConfig` leaves it open: size and steps."""

    width: int
    height: int
    steps: int


@dataclass
class Counters:
    """What a run cost: samplings, UNet forward calls, VAE decodes (and encodes for the round trip)."""

    samplings: int = 0
    unet_calls: int = 0
    decodes: int = 0
    encodes: int = 0
    runs: List[Dict[str, Any]] = field(default_factory=list)


def schedule_problem(sampler: str, schedule: str) -> Optional[str]:
    """Why ``schedule`` cannot apply to ``sampler`` in this diffusers, or None."""
    import inspect

    import diffusers

    switch = SCHEDULES[schedule]
    if switch is None:
        return None
    cls = getattr(diffusers, SAMPLERS[sampler][0])
    if switch not in inspect.signature(cls.__init__).parameters:
        return f"schedule {schedule} is not available for sampler {sampler} ({cls.__name__} has no {switch})"
    return None


def resolve(config: DiagnoseConfig) -> RunShape:
    """Sizes and steps: the config's, else small for the embedded model and SD-sized with --model."""
    embedded = config.model is None
    return RunShape(width=config.width or (128 if embedded else 512),
                    height=config.height or config.width or (128 if embedded else 512),
                    steps=config.steps or (12 if embedded else 25))


# --- the pipeline ---------------------------------------------------------------------------------------


class _Pipeline:
    """The loaded pipeline, its prompt embeddings, counters, and sampling/decoding that count themselves."""

    def __init__(self, config: DiagnoseConfig) -> None:
        import torch

        self.config = config
        self.device = resolve_device(config.device)
        names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        self.dtype = names.get(config.dtype) or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.vae_dtype = names.get(config.vae_dtype) or half_dtype(self.device)
        if config.model is None:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(**tiny_sd15_components())
        else:
            pipe = load_model(config.model, self.dtype)
        pipe.to(self.device, self.dtype)
        pipe.vae.to(dtype=self.vae_dtype)
        pipe.set_progress_bar_config(disable=not config.progress, leave=False)
        self.pipe = pipe
        self.base_scheduler = pipe.scheduler.config
        self.counters = Counters()
        pipe.unet.register_forward_pre_hook(lambda *_: setattr(self.counters, "unet_calls", self.counters.unet_calls + 1))
        self.embeds: Dict[str, Any] = {}
        self.watch_step: Optional[Callable[[int, Any, Any], None]] = None

    def prompt_embeddings(self) -> Dict[str, Any]:
        import torch

        if not self.embeds:
            with torch.no_grad():
                out = self.pipe.encode_prompt(prompt=self.config.prompt, device=self.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=True, negative_prompt=self.config.negative_prompt)
            names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
            self.embeds = {n: v.to(self.dtype) for n, v in zip(names, out) if v is not None}
        return self.embeds

    def scheduler(self, sampler: str, schedule: str) -> Any:
        import diffusers

        class_name, changes = SAMPLERS[sampler]
        switch = SCHEDULES[schedule]
        extra = {switch: True} if switch else {}
        return getattr(diffusers, class_name).from_config(self.base_scheduler, **changes, **extra)

    def sample(self, *, steps: int, cfg: float, sampler: str, schedule: str,
               on_step: Optional[Callable[[int, Any, Any], None]] = None) -> Any:
        """One txt2img sampling at the config's seed and size; the final latent.  ``on_step(step, x, x0)``
        sees every step's latent and its prediction of the final latent (None where the scheduler has none)."""
        import torch

        sizes = resolve(self.config)
        scheduler = self.scheduler(sampler, schedule)
        self.pipe.scheduler = scheduler
        last: Dict[str, Any] = {}
        original_step = scheduler.step

        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
            wanted = kwargs.pop("return_dict", True)
            out = original_step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None and (getattr(scheduler.config, "algorithm_type", "").endswith("dpmsolver++")
                               or getattr(scheduler.config, "predict_x0", False)) and getattr(scheduler, "model_outputs", None):
                x0 = scheduler.model_outputs[-1]  # the multistep solvers keep the converted (x0) prediction
            last["x0"] = x0
            return out if wanted else out.to_tuple()

        scheduler.step = step

        def callback(pipe: Any, i: int, t: Any, tensors: Dict[str, Any]) -> Dict[str, Any]:
            for watcher in (on_step, self.watch_step):
                if watcher is not None:
                    watcher(i + 1, tensors["latents"], last.get("x0"))
            return tensors

        generator = torch.Generator("cpu").manual_seed(self.config.seed)
        start = time.perf_counter()
        with torch.no_grad():
            latents = self.pipe(guidance_scale=cfg, num_inference_steps=steps, width=sizes.width,
                                height=sizes.height, generator=generator, output_type="latent",
                                callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"],
                                **self.prompt_embeddings()).images
        self.counters.samplings += 1
        self.counters.runs.append({"kind": "sampling", "steps": steps, "time_s": time.perf_counter() - start})
        return latents

    def decode(self, latents: Any, guarded: bool, watch: Any = None) -> Image.Image:
        """The latent through the VAE: guarded (SDFix: fp32, TF32 off), or as loaded (cast to its dtype,
        the way hosts do); ``watch`` (a NanWatch) checks what comes out."""
        import torch

        from lib_sdfix.vae.call import guarded_call

        vae = self.pipe.vae
        z = latents[:1] / vae.config.scaling_factor
        with torch.no_grad():
            if guarded:
                decoded = guarded_call(lambda x: vae.decode(x).sample, vae, z, tiling=False)
            else:
                decoded = vae.decode(z.to(vae.dtype)).sample
        self.counters.decodes += 1
        if watch is not None:
            watch.observe("vae decode", (decoded,))
        return tensor_to_image(decoded)


# --- the kinds --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _variant(pipe: _Pipeline, name: str) -> Any:
    from lib_sdfix.precision import autocast_disabled, precision_guard
    from lib_sdfix.vae.fp32 import fp32_vae

    vae = pipe.pipe.vae
    if name == "webui":
        yield vae.dtype
    elif name == "precision_guard":
        with precision_guard(), autocast_disabled(), fp32_vae(vae):
            yield vae.dtype
    else:
        with precision_guard(), autocast_disabled(), vae_in_dtype(vae, name):
            yield vae.dtype


def _roundtrip(pipe: _Pipeline, config: DiagnoseConfig, original: Image.Image) -> Dict[str, Any]:
    import torch

    vae = pipe.pipe.vae
    wanted = [v for v in (config.dtypes or default_variants(pipe.device)) if v in supported_variants(pipe.device)]
    pixels = image_to_tensor(original).to(pipe.device) * 2.0 - 1.0
    images, times, labels = {}, {}, {}
    loaded = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(pipe.vae_dtype, str(pipe.vae_dtype))
    for name in wanted:
        start = time.perf_counter()
        with torch.no_grad(), _variant(pipe, name) as dtype:
            latent = vae.encode(pixels.to(dtype)).latent_dist.mode()
            decoded = vae.decode(latent.to(dtype)).sample
        pipe.counters.encodes += 1
        pipe.counters.decodes += 1
        images[name], times[name] = tensor_to_image(decoded), time.perf_counter() - start
        labels[name] = variant_label(name, f"as loaded ({loaded})")
        pipe.counters.runs.append({"kind": f"encode + decode ({labels[name]})", "time_s": times[name]})
    analysis = analyse_roundtrip(original, images, times, labels, gain=config.heatmap_gain)
    skipped = skipped_note(pipe.device, wanted, "name {it} in --dtypes")
    return {"analysis": analysis, "original": original, "images": images, "labels": labels, "variants": wanted,
            "notes": [skipped] if skipped else []}


def _sweep(pipe: _Pipeline, config: DiagnoseConfig) -> Dict[str, Any]:
    sizes = resolve(config)
    cells = sweep_cells(config.axis, list(config.values), SDFixSettings())
    images: Dict[str, Image.Image] = {}
    times: Dict[str, float] = {}
    nan: Dict[str, Any] = {}
    latents: Dict[Tuple[Tuple[str, Any], ...], Tuple[Any, Dict[str, Any], float]] = {}
    for cell in cells:
        fields = dict(cell.fields)
        start = time.perf_counter()
        if cell.fields not in latents:  # cells that differ only in SDFix's decode share this sampling
            watch = NanWatch()
            pipe.watch_step = lambda step, x, x0, w=watch: w.observe("sampling", (x, x0), step=step)
            latent = pipe.sample(steps=int(fields.get("steps", sizes.steps)),
                                 cfg=float(fields.get("cfg_scale", config.cfg_scale)),
                                 sampler=fields.get("sampler_name", config.sampler),
                                 schedule=fields.get("scheduler", config.schedule))
            pipe.watch_step = None
            latents[cell.fields] = (latent, watch, time.perf_counter() - start)
            start = time.perf_counter()
        latent, watch, sampled = latents[cell.fields]
        image = pipe.decode(latent, guarded=cell.settings.wants("precision_guard"), watch=watch)
        images[cell.name], times[cell.name] = image, sampled + time.perf_counter() - start
        nan[cell.name] = watch.summary()
    reference = next(c.name for c in cells if c.value == config.reference) if config.reference is not None else cells[0].name
    analysis = analyse_sweep(config.axis, cells, images, times, reference, gain=config.heatmap_gain, nan=nan)
    return {"analysis": analysis, "cells": cells, "images": images, "reference": reference}


def _steps(pipe: _Pipeline, config: DiagnoseConfig) -> Dict[str, Any]:
    steps = resolve(config).steps
    capture = StepCapture(config.at or default_strip_steps(steps))
    watch = NanWatch()
    kinds: Dict[int, str] = {}

    def on_step(step: int, x: Any, x0: Any) -> None:
        watch.observe("sampling", (x, x0), step=step, steps=steps)
        capture(step, x0 if x0 is not None else x)
        kinds.setdefault(step, "prediction" if x0 is not None else "latent")

    latent = pipe.sample(steps=steps, cfg=config.cfg_scale, sampler=config.sampler, schedule=config.schedule,
                         on_step=on_step)
    final = pipe.decode(latent, guarded=True, watch=watch)
    step_images = {s: pipe.decode(z, guarded=True) for s, z in sorted(capture.latents.items())}
    analysis = analyse_steps(step_images, final, steps, nan=watch.summary())
    notes = []
    if any(kinds.get(s) == "latent" for s in step_images):
        notes.append(f"{config.sampler}'s scheduler gives no prediction of the final image: the strip shows the noisy "
                     "latents of those steps")
    return {"analysis": analysis, "final": final, "step_images": step_images, "notes": notes}


def _photo(config: DiagnoseConfig) -> Tuple[Image.Image, List[str]]:
    """The user's image, or scikit-image's astronaut (a real photograph); resized to ``size`` and cropped for the VAE."""
    notes: List[str] = []
    if config.image:
        with Image.open(config.image) as opened:
            image, notes = to_rgb8(opened)
    else:
        from skimage import data

        image = Image.fromarray(data.astronaut())
        notes.append("image: scikit-image's astronaut photograph (skimage.data.astronaut)")
    size = config.size or (256 if config.model is None and not config.image else None)
    if size and max(image.size) > size:
        scale = size / max(image.size)
        image = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))), Image.LANCZOS)
        notes.append(f"resized to {image.width}x{image.height} (LANCZOS)")
    image, crop = crop_for_vae(image)
    return image, notes + ([crop] if crop else [])


@contextlib.contextmanager
def diagnosis_run(config: DiagnoseConfig) -> Any:
    """What every diagnosis run holds and gives back: the torch flags as found, diffusers' warnings quiet,
    one thread for the embedded tiny model on a CPU; yields the flags found (the report compares them)."""
    import torch

    from lib_sdfix.precision import read_flags, restore_flags

    flags_before = read_flags()
    quiet = diffusers_warnings_off()
    threads = torch.get_num_threads()
    Path(config.out).mkdir(parents=True, exist_ok=True)
    try:
        if config.model is None and str(config.device) in ("auto", "cpu") and not torch.cuda.is_available():
            torch.set_num_threads(1)  # the tiny model's ops are too small to split (as in ab)
        yield flags_before
    finally:
        torch.set_num_threads(threads)
        quiet()
        restore_flags(flags_before)


def run_diagnose(config: DiagnoseConfig) -> Dict[str, Any]:
    """Run one diagnosis kind and write the report into ``config.out``; returns what the report shows."""
    from lib_sdfix.precision import read_flags

    out = Path(config.out)
    start = time.perf_counter()
    with diagnosis_run(config) as flags_before:
        pipe = _Pipeline(config)
        notes: List[str] = []
        if config.kind == "vae_roundtrip":
            original, notes = _photo(config)
            result = _roundtrip(pipe, config, original)
        elif config.kind == "sweep":
            result = _sweep(pipe, config)
        else:
            result = _steps(pipe, config)
        result.setdefault("notes", [])
        result["notes"] = notes + result["notes"]
    if config.model is None:
        result["notes"].append("Embedded default model: random weights, so images and reconstructions are noise; "
                               "the per-precision differences, mechanics and timings are real.")
    counters = pipe.counters
    result["timings"] = {"total_s": time.perf_counter() - start, "samplings": counters.samplings,
                         "unet_calls": counters.unet_calls, "decodes": counters.decodes, "encodes": counters.encodes,
                         "runs": counters.runs}
    result["environment"] = {"device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
                             "vae_dtype": str(pipe.vae_dtype).replace("torch.", ""), "model": config.model or EMBEDDED,
                             "flags_after_run_equal_before": read_flags() == flags_before, **versions()}
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    result["config"].update(asdict(resolve(config)))
    result["report_path"] = write_report(out, config.kind, result)
    return result

