"""``python -m lib_sdfix ab``: its arguments, their limits, and what it needs installed.

Every argument is checked before anything loads (seed, steps, sizes and scale within what SD1.x/2.x/
SDXL are trained for and one GPU or a CPU can run; paths that exist; at least one Hires step), and a
bad one stops with a usage error naming it.  A missing ``[diffusers]`` extra is one line naming the
module and the install command, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, List

from lib_sdfix.command import INSTALL_TORCH, fail, missing_module_in
from lib_sdfix.diffusers.upscaler import UpscalerUnavailable
from lib_sdfix.refine import refine_steps
from lib_sdfix.settings import option

__all__ = ["add_parser", "run", "config_from_args", "install_hint", "AB_MODULES", "INSTALL_EXTRA"]

#: What ``ab`` imports beyond the core: the ``[diffusers]`` extra (torch is the user's own install).
AB_MODULES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "tqdm")
INSTALL_EXTRA = 'pip install -e .[diffusers]  (or: pip install "sdfix[diffusers]")'

# Bounds of the arguments: what SD1.x/2.x/SDXL are trained for and a CPU or one GPU can run.
SEED_MAX = 2**32 - 1
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
STEPS_MIN, STEPS_MAX = 1, 150
HIRES_SCALE_MIN, HIRES_SCALE_MAX = 1.0, 4.0
REFINE_MIN, REFINE_MAX = option("late_refine_strength").minimum, option("late_refine_strength").maximum


def _whole(low: int, high: int, multiple: int = 1) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (and a multiple of ``multiple``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}, got {value}")
        return value

    return parse


def _number(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            bounds = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _model_path(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise argparse.ArgumentTypeError(f"{text} is a folder without model_index.json, not a diffusers model")
    elif not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


def _weights_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _out_folder(text: str) -> str:
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is not None and not path.exists() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be created: {existing} is a file")
    return text


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|(cuda|mps|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N, mps or xpu, got {text!r}")
    return text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``ab`` command to the subcommands ``sub`` of the command line; return its parser."""
    ab = sub.add_parser(
        "ab",
        help="run one seed through a diffusers service without and with the fixes; write an HTML report",
        description="Runs the same seed through a txt2img (+ Hires img2img) diffusers service set up with the "
        "five oil-painting causes, once as it is and once hardened by SDFix, and writes report.html, the PNGs "
        "and report.json. Without --model an embedded tiny random-weight SD1.5 runs on any CPU in under a minute. "
        "Needs the [diffusers] extra: " + INSTALL_EXTRA + ".",
    )
    ab.add_argument("--model", type=_model_path,
                    help="diffusers model folder (SD1.x/2.x or SDXL), or an SD1.x/2.x .safetensors/.ckpt "
                    "whose config is in the local Hugging Face cache (nothing is downloaded); "
                    "default: the embedded tiny random-weight SD1.5")
    ab.add_argument("--prompt", help="prompt (default: a close-up portrait prompt)")
    ab.add_argument("--negative-prompt", help="negative prompt")
    ab.add_argument("--seed", type=_whole(0, SEED_MAX), default=1234,
                    help=f"seed for every arm, 0-{SEED_MAX} (default 1234)")
    ab.add_argument("--steps", type=_whole(STEPS_MIN, STEPS_MAX),
                    help=f"sampling steps, {STEPS_MIN}-{STEPS_MAX} (default 12 embedded, 25 with --model)")
    size = _whole(SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE)
    ab.add_argument("--width", type=size, help=f"first-pass width, {SIZE_MIN}-{SIZE_MAX}, a multiple of "
                    f"{SIZE_MULTIPLE} (default 128 embedded, 512 with --model)")
    ab.add_argument("--height", type=size, help="first-pass height, same bounds (default: the width)")
    ab.add_argument("--hires", action="store_true", help="add the Hires.fix pass: upscaler, resize, img2img")
    ab.add_argument("--hires-scale", type=_number(HIRES_SCALE_MIN, HIRES_SCALE_MAX), default=2.0,
                    help=f"Hires target scale, {HIRES_SCALE_MIN:g}-{HIRES_SCALE_MAX:g} (default 2)")
    ab.add_argument("--denoise", type=_number(0.0, 1.0, low_open=True),
                    help="Hires denoising strength, above 0 to 1 (default 0.5 embedded, 0.35 with --model); "
                    "steps x denoise must give at least one Hires step")
    ab.add_argument("--upscaler", type=_weights_file,
                    help="super-resolution weights for --hires (RealESRGAN .pth/.safetensors); default: "
                    "a tiny random one with the embedded model, none (plain resize) with --model")
    ab.add_argument("--refine", type=_number(REFINE_MIN, REFINE_MAX), metavar="STRENGTH",
                    help=f"add the late-step refine to the \"with\" arm: re-run the last round(STRENGTH x steps) "
                    f"steps of its last pass on its latents ({REFINE_MIN:g}-{REFINE_MAX:g}; about 0.2-0.3 for "
                    "texture, 0.5 and more for wrong shapes)")
    ab.add_argument("--ablation", action="store_true", help="also run each fix alone")
    ab.add_argument("--device", type=_device, default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ab.add_argument("--no-offload", action="store_true", help="do not use enable_model_cpu_offload() in the service")
    ab.add_argument("--out", type=_out_folder, default="sdfix-report",
                    help="output folder (default: sdfix-report); must be missing or empty unless --force")
    ab.add_argument("--force", action="store_true",
                    help="write into a non-empty --out folder: files of the same name are replaced, others kept")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    return ab


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`lib_sdfix.diffusers.compare.ABConfig` the parsed arguments ask for."""
    from lib_sdfix.diffusers.compare import DEFAULT_NEGATIVE, DEFAULT_PROMPT, ABConfig

    return ABConfig(
        out=Path(args.out), model=args.model, prompt=args.prompt or DEFAULT_PROMPT,
        negative_prompt=args.negative_prompt if args.negative_prompt is not None else DEFAULT_NEGATIVE,
        seed=args.seed, steps=args.steps, width=args.width, height=args.height or args.width, hires=args.hires,
        hires_scale=args.hires_scale, strength=args.denoise, upscaler=args.upscaler, ablation=args.ablation,
        refine=args.refine,
        device=args.device, offload=not args.no_offload, progress=not args.quiet,
    )


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one argument alone cannot tell: the Hires pass has a step, the output folder may be written."""
    from lib_sdfix.diffusers.compare import resolve_sizes

    sizes = resolve_sizes(config_from_args(args))
    if args.hires:
        if int(sizes["steps"] * sizes["strength"]) < 1:
            parser.error(f"argument --denoise: {sizes['strength']:g} x {sizes['steps']} steps gives no Hires step; "
                         "raise --denoise or --steps")
    if args.refine is not None:
        final = sizes["hires_steps"] or sizes["steps"]
        ran = min(int(final * sizes["strength"]), final) if args.hires else final
        if refine_steps(args.refine, ran) < 1:
            parser.error(f"argument --refine: {args.refine:g} x {ran} steps of the last pass rounds to no step; "
                         "raise --refine or --steps")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        parser.error(f"argument --out: {out} is not empty; choose another folder, or pass --force to write "
                     "into it (files of the same name are replaced)")


def _missing_modules(args: argparse.Namespace) -> List[str]:
    needed = list(AB_MODULES)
    if args.hires and (args.model is None or args.upscaler):
        needed.append("spandrel")
    missing = []
    for name in needed:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a parent package missing, or a None entry in sys.modules
            missing.append(name)
    return missing


def install_hint(module: str) -> str:
    """How to install ``module`` for ``ab``."""
    if module == "torch":
        return INSTALL_TORCH + ", then " + INSTALL_EXTRA
    return ("it is part of the [diffusers] extra: " if module in AB_MODULES + ("spandrel",) else "") + INSTALL_EXTRA


def _device_available(parser: argparse.ArgumentParser, device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {device} is not available here (torch {torch.__version__} sees no CUDA GPU)")
    if kind == "mps" and not torch.backends.mps.is_available():
        parser.error(f"argument --device: {device} is not available here")


def _shown(value: Any, digits: int) -> str:
    """A number of report.json as printed: infinities are already text there ("inf"), NaN is null."""
    if isinstance(value, str):
        return value
    return "-" if value is None else f"{value:.{digits}f}"


def _run(args: argparse.Namespace) -> int:
    """Run the A/B, print where the report is and the headline numbers."""
    from lib_sdfix.diffusers.compare import run_ab

    result = run_ab(config_from_args(args))
    print("audit of the unfixed service:")
    for cause, finding in result.audit_before.items():
        after = result.audit_after[cause]["status"]
        print(f"  {cause:<19} {finding['status']:<12} -> {after:<12} {finding['detail']}")
    rows = json.loads((Path(args.out) / "report.json").read_text())["metrics"]["variants"]
    for note in result.notes:
        if "late refine" in note:
            print(note)
    print("against the unfixed service (same seed):")
    for row in rows:
        print(f"  {row['name']:<26} PSNR {_shown(row['psnr'], 2):>6} dB, "
              f"Laplacian variance x{_shown(row['laplacian_ratio'], 3)}, "
              f"high-frequency energy x{_shown(row['high_frequency_ratio'], 3)}, {row['time_s']:.1f} s")
    print(f"report: {result.report_path}")
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``ab`` with parsed ``args`` (``parser`` reports usage errors); the exit code."""
    try:
        _check_args(parser, args)
        missing = _missing_modules(args)
        if missing:
            names = ", ".join(repr(m) for m in missing)
            return fail("ab", f"missing module{'s' if len(missing) > 1 else ''} {names}: " + install_hint(missing[0]))
        _device_available(parser, args.device)
        return _run(args)
    except (ImportError, RuntimeError) as exc:
        if isinstance(exc, UpscalerUnavailable):
            return fail("ab", f"no upscaler backend: {exc}")
        module = missing_module_in(exc)
        if module is None:
            raise
        return fail("ab", f"missing module {module!r}: {install_hint(module)}")
