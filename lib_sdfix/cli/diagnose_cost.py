"""``python -m lib_sdfix diagnose optimizations``: the cost of speed on a diffusers pipeline -- the reference at
quality settings (UNet in fp32, SDPA attention, no slicing or tiling, the run's steps, no offload, the
pipeline's VAE), each option of the SDXL optimisation guide that applies here on alone, and all on
(lib_sdfix.diagnose.optimizations plans them, lib_sdfix.diagnose.cost measures them).

The model to follow is the WebUI's runner (lib_sdfix.webui.diagnose.cost_runner): one short warm-up run with
every measured option on comes first and is never timed (a torch.compile cell gets its own: compiling is
slow); each cell runs ``repeats`` times and the median counts; peak memory per run
(lib_sdfix.diagnose.peak_memory: CUDA ``max_memory_allocated``, or the process's peak RSS on a CPU).  Cells
that differ only in decode-only options (VAE slicing, tiling, ``--vae``) share one sampling: the first
samples, every cell of the group (the donor too) is timed decoding that latent.  Each cell's state is built
on the pipeline and undone after it (lib_sdfix.cli.pipeline_options), also when a run fails.  The prompt
embeddings are computed once, before every timing, so a cell's time is sampling and decode.
"""
from __future__ import annotations

import functools
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from lib_sdfix.cli.ab_run import versions
from lib_sdfix.cli.diagnose_report import write_report
from lib_sdfix.cli.diagnose_run import DiagnoseConfig, _Pipeline, diagnosis_run, resolve
from lib_sdfix.cli.pipeline_options import Switcher, default_requested, found_options, pipeline_state
from lib_sdfix.cli.tiny import EMBEDDED
from lib_sdfix.diagnose.cost import Timed, analyse_cost
from lib_sdfix.diagnose.optimizations import UNSET, CostCell, CostPlan, plan_cost
from lib_sdfix.diagnose.peak_memory import measure_peak, memory_kind
from lib_sdfix.diagnose.roundtrip import slow_variants, tensor_to_image

__all__ = ["CostConfig", "run_optimizations", "load_vae", "WARM_UP_STEPS", "DEFAULT_REPEATS"]

#: Steps of the untimed warm-up runs: enough to load, allocate and compile what the options use.
WARM_UP_STEPS = 2
DEFAULT_REPEATS = 3


@dataclass
class CostConfig(DiagnoseConfig):
    """A diagnosis of kind "optimizations": ``options`` (key, value) to measure (empty: every one that applies),
    timed ``repeats`` per cell, another VAE to try (``vae``), and whether torch.compile may run."""

    options: Tuple[Tuple[str, Any], ...] = ()
    repeats: int = DEFAULT_REPEATS
    vae: Optional[str] = None
    compile: bool = False


def load_vae(path: str, device: Any) -> Any:
    """A diffusers VAE -- AutoencoderKL or AutoencoderTiny (TAESD) folder, a model folder's ``vae/``, or an
    AutoencoderKL single file -- in fp16 on a GPU (what these are made for), fp32 elsewhere."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    dtype = torch.float16 if getattr(device, "type", "") == "cuda" else torch.float32
    folder = Path(path)
    if folder.is_dir():
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
        cls = AutoencoderTiny if name == "AutoencoderTiny" else AutoencoderKL
        return cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    return AutoencoderKL.from_single_file(path, torch_dtype=dtype, local_files_only=True)


class _Runs:
    """Sampling and decoding in the cell's state, each timed with its peak memory, counted on the pipeline."""

    def __init__(self, pipe: _Pipeline, config: CostConfig, result: Dict[str, Any]) -> None:
        import torch

        self.pipe, self.config, self.result = pipe, config, result
        sizes = resolve(config)
        self.size = (sizes.height, sizes.width)
        self.embeds = pipe.prompt_embeddings()  # once, in fp32, outside every timing
        channels = pipe.pipe.unet.config.in_channels
        scale = getattr(pipe.pipe, "vae_scale_factor", 8)
        generator = torch.Generator("cpu").manual_seed(config.seed)
        # One fp32 noise for every cell (a bf16 draw would be other noise, not the same noise rounded).
        self.noise = torch.randn((1, channels, sizes.height // scale, sizes.width // scale), generator=generator)

    def sample(self, steps: int) -> Any:
        import torch

        pipe = self.pipe.pipe
        dtype = pipe.unet.dtype
        pipe.scheduler = self.pipe.scheduler(self.config.sampler, self.config.schedule)
        with torch.no_grad():
            latents = pipe(guidance_scale=self.config.cfg_scale, num_inference_steps=steps, height=self.size[0],
                           width=self.size[1], latents=self.noise.to(self.pipe.device, dtype), output_type="latent",
                           **{k: v.to(dtype) for k, v in self.embeds.items()}).images
        self.pipe.counters.samplings += 1
        return latents

    def decode(self, latents: Any) -> Any:
        import torch

        vae = self.pipe.pipe.vae
        with torch.no_grad():
            decoded = vae.decode((latents[:1] / vae.config.scaling_factor).to(vae.dtype)).sample
        self.pipe.counters.decodes += 1
        return tensor_to_image(decoded)

    def timed(self, what: str, cell: CostCell, run: Callable[[], Any]) -> Tuple[Any, float, Optional[int]]:
        with measure_peak(self.pipe.device) as peak:
            start = time.perf_counter()
            out = run()
            _synchronize(self.pipe.device)
            elapsed = time.perf_counter() - start
        self.result["timings"]["runs"].append({"kind": f"{cell.name}: {what}", "time_s": elapsed})
        return out, elapsed, peak.peak_bytes


def _synchronize(device: Any) -> None:
    import torch

    if getattr(device, "type", "") == "cuda":
        torch.cuda.synchronize(device)


def _steps(cell: CostCell, default: int) -> int:
    return int(dict(cell.changes).get("steps", default))


def _measure(plan: CostPlan, runs: _Runs, switcher: Switcher, repeats: int, steps: int,
             failed: Dict[str, str]) -> Tuple[Dict[str, Any], Dict[str, Timed]]:
    """Every cell of the plan: full runs of each sampling group's first cell, decode-only runs of the group."""
    images: Dict[str, Any] = {}
    timed: Dict[str, Timed] = {}
    warmed = {plan.cells[-1].name}
    donor_latents: Any = None
    # The warm-up: the last cell (every measured option on), short, never timed.
    warm = plan.cells[-1]
    start = time.perf_counter()
    try:
        with switcher.switched(dict(warm.changes)):
            runs.decode(runs.sample(min(WARM_UP_STEPS, _steps(warm, steps))))
    except Exception as err:  # noqa: BLE001 -- a failing option is a note; its cell fails again below and says so
        runs.result["notes"].append(f"warm-up ({warm.name}): {type(err).__name__}: {err}")
    runs.result["warm_up"] = {"cell": warm.name, "steps": min(WARM_UP_STEPS, _steps(warm, steps)),
                              "time_s": time.perf_counter() - start}

    for cells in plan.sampling_groups():
        donor = cells[0]
        for cell in cells:
            own = timed.setdefault(cell.name, Timed() if cell is donor else Timed(shared_with=donor.name))
            try:
                with switcher.switched(dict(cell.changes)):
                    if cell is donor:
                        if dict(cell.changes).get("torch_compile") and cell.name not in warmed:
                            runs.decode(runs.sample(min(WARM_UP_STEPS, _steps(cell, steps))))  # compiles, untimed
                        for _ in range(repeats):
                            (donor_latents, image), elapsed, peak = runs.timed(
                                "full generation", cell, functools.partial(_both, runs, _steps(cell, steps)))
                            own.record(elapsed, peak)
                            images.setdefault(cell.name, image)
                        if len(cells) < 2:
                            continue
                    for _ in range(repeats):
                        image, elapsed, peak = runs.timed(f"decode only (sampling shared with {donor.name})", cell,
                                                          functools.partial(runs.decode, donor_latents))
                        if cell is donor:
                            own.record_decode(elapsed, peak)
                        else:
                            own.record(elapsed, peak)
                            images.setdefault(cell.name, image)
            except Exception as err:  # noqa: BLE001 -- one option failing here (out of memory, no compiler) is a note
                failed[cell.name] = f"{type(err).__name__}: {err}"
                images.pop(cell.name, None)
                timed.pop(cell.name, None)
                if cell is donor:
                    for other in cells[1:]:
                        failed.setdefault(other.name, f"its sampling ({donor.name}) failed")
                    break
    return images, timed


def _both(runs: _Runs, steps: int) -> Tuple[Any, Any]:
    latents = runs.sample(steps)
    return latents, runs.decode(latents)


def _notes(plan: CostPlan, pipe: _Pipeline, config: CostConfig) -> List[str]:
    """What the numbers mean on this machine and at this size."""
    measured = {k for c in plan.cells for k, _ in c.measured}
    notes: List[str] = []
    vae, (height, width) = pipe.pipe.vae, (resolve(config).height, resolve(config).width)
    tile = getattr(vae, "tile_sample_min_size", None)
    if "vae_tiling" in measured and isinstance(tile, int) and max(height, width) <= tile:
        notes.append(f"vae_tiling: the VAE tiles only images larger than {tile} px; at {width}x{height} it decodes "
                     "in one piece (same image, same cost)")
    if "vae_slicing" in measured:
        notes.append("vae_slicing: slices a batch image by image; a batch of one decodes the same way")
    dtype = next((v for c in plan.cells for k, v in c.measured if k == "unet_dtype"), None)
    if dtype in slow_variants(pipe.device):
        notes.append(f"unet_dtype {dtype}: this CPU has no fast {dtype} kernels; its time is torch's fallback")
    if "vae" in measured:
        notes.append(f"vae: {config.vae} decodes in {'fp16' if pipe.device.type == 'cuda' else 'fp32'}; the pipeline's "
                     "own VAE leaves the device for its cells")
    return notes


def run_optimizations(config: CostConfig, pipe: Optional[_Pipeline] = None) -> Dict[str, Any]:
    """Measure the plan, write the report into ``config.out``; returns what the report shows.  ``pipe``: a
    pipeline built from ``config`` already (the tests'), left as it was found."""
    from lib_sdfix.precision import read_flags

    out = Path(config.out)
    start = time.perf_counter()
    config.dtype = config.vae_dtype = "fp32"  # the reference: quality settings
    result: Dict[str, Any] = {"kind": "optimizations", "notes": [], "warm_up": None, "timings": {"runs": []}}
    with diagnosis_run(config) as flags_before:
        pipe = pipe or _Pipeline(config)
        steps = resolve(config).steps
        found = found_options(pipe.device, steps, vae=config.vae, compile_ok=config.compile)
        tried = {f.key: f.value for f in found}
        config.options = tuple((k, tried[k] if v is UNSET else v) for k, v in config.options or default_requested(found, steps))
        plan = plan_cost(found, list(config.options))
        result.update(plan=plan, options=plan.listed, repeats=config.repeats, memory={"measures": memory_kind(pipe.device)})
        scheduler, before = pipe.pipe.scheduler, pipeline_state(pipe.pipe)
        failed: Dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="sdfix-cost-") as scratch:
            switcher = Switcher(pipe.pipe, pipe.device, scratch,
                                (lambda: load_vae(config.vae, pipe.device)) if config.vae else None)
            try:
                images, timed = _measure(plan, _Runs(pipe, config, result), switcher, config.repeats, steps, failed)
            finally:
                pipe.pipe.scheduler = scheduler
        result["pipeline_restored"] = pipeline_state(pipe.pipe) == before
    result["notes"] = plan.notes + _notes(plan, pipe, config) + sorted(set(switcher.notes)) + result["notes"] + \
        [f"{name}: not measured ({why})" for name, why in failed.items()]
    if not result["pipeline_restored"]:
        result["notes"].append("the pipeline did NOT come back to its starting state after the cells (a bug: report it)")
    if result["memory"]["measures"].startswith("process peak RSS"):
        result["notes"].append("memory is the process's peak RSS (no GPU): weights, caches and Python included")
    if config.model is None:
        result["notes"].append("Embedded default model: random weights, so the images are noise; the timings and "
                               "memory are real, the quality numbers (PSNR, SSIM, detail) show the mechanics only.")
    result["analysis"] = analyse_cost(plan, images, timed, gain=config.heatmap_gain)
    result["images"] = images
    counters = pipe.counters
    result["timings"].update(total_s=time.perf_counter() - start, samplings=counters.samplings,
                             unet_calls=counters.unet_calls, decodes=counters.decodes, encodes=counters.encodes)
    result["environment"] = {"device": str(pipe.device), "dtype": "fp32", "vae_dtype": "fp32",
                             "model": config.model or EMBEDDED, "memory": result["memory"]["measures"],
                             "pipeline_restored": result["pipeline_restored"],
                             "flags_after_run_equal_before": read_flags() == flags_before, **versions()}
    result["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    result["config"].update(asdict(resolve(config)))
    result["report_path"] = write_report(out, "optimizations", result)
    return result
