"""``python -m lib_sdfix ab``: its arguments, their limits, and what it needs installed.

Every argument is checked before anything loads (seed, steps, sizes and scale within what SD1.x/2.x/
SDXL are trained for and one GPU or a CPU can run; paths that exist; at least one Hires step), and a
bad one stops with a usage error naming it.  A missing ``[diffusers]`` extra is one line naming the
module and the install command, never a traceback.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List

from lib_sdfix.cli.ab_run import DEFAULT_NEGATIVE, DEFAULT_PROMPT, ABConfig, resolve_sizes, run_ab
from lib_sdfix.cli.command import (
    DIFFUSERS_MODULES,
    INSTALL_EXTRA,
    SEED_MAX,
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    STEPS_MAX,
    STEPS_MIN,
    check_device,
    device,
    existing_file,
    fail,
    install_hint,
    missing_module_in,
    missing_modules,
    model_path,
    number,
    out_folder,
    whole,
)
from lib_sdfix.diffusers.upscaler import UpscalerUnavailable
from lib_sdfix.refine import refine_steps
from lib_sdfix.settings import option

__all__ = ["add_parser", "run", "config_from_args"]

HIRES_SCALE_MIN, HIRES_SCALE_MAX = 1.0, 4.0
REFINE_MIN, REFINE_MAX = option("late_refine_strength").minimum, option("late_refine_strength").maximum


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
    ab.add_argument("--model", type=model_path,
                    help="diffusers model folder (SD1.x/2.x or SDXL), or an SD1.x/2.x .safetensors/.ckpt "
                    "whose config is in the local Hugging Face cache (nothing is downloaded); "
                    "default: the embedded tiny random-weight SD1.5")
    ab.add_argument("--prompt", help="prompt (default: a close-up portrait prompt)")
    ab.add_argument("--negative-prompt", help="negative prompt")
    ab.add_argument("--seed", type=whole(0, SEED_MAX), default=1234,
                    help=f"seed for every arm, 0-{SEED_MAX} (default 1234)")
    ab.add_argument("--steps", type=whole(STEPS_MIN, STEPS_MAX),
                    help=f"sampling steps, {STEPS_MIN}-{STEPS_MAX} (default 12 embedded, 25 with --model)")
    size = whole(SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE)
    ab.add_argument("--width", type=size, help=f"first-pass width, {SIZE_MIN}-{SIZE_MAX}, a multiple of "
                    f"{SIZE_MULTIPLE} (default 128 embedded, 512 with --model)")
    ab.add_argument("--height", type=size, help="first-pass height, same bounds (default: the width)")
    ab.add_argument("--hires", action="store_true", help="add the Hires.fix pass: upscaler, resize, img2img")
    ab.add_argument("--hires-scale", type=number(HIRES_SCALE_MIN, HIRES_SCALE_MAX), default=2.0,
                    help=f"Hires target scale, {HIRES_SCALE_MIN:g}-{HIRES_SCALE_MAX:g} (default 2)")
    ab.add_argument("--denoise", type=number(0.0, 1.0, low_open=True),
                    help="Hires denoising strength, above 0 to 1 (default 0.5 embedded, 0.35 with --model); "
                    "steps x denoise must give at least one Hires step")
    ab.add_argument("--upscaler", type=existing_file,
                    help="super-resolution weights for --hires (RealESRGAN .pth/.safetensors); default: "
                    "a tiny random one with the embedded model, none (plain resize) with --model")
    ab.add_argument("--refine", type=number(REFINE_MIN, REFINE_MAX), metavar="STRENGTH",
                    help=f"add the late-step refine to the \"with\" arm: re-run the last round(STRENGTH x steps) "
                    f"steps of its last pass on its latents ({REFINE_MIN:g}-{REFINE_MAX:g}; about 0.2-0.3 for "
                    "texture, 0.5 and more for wrong shapes)")
    ab.add_argument("--ablation", action="store_true", help="also run each fix alone")
    ab.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ab.add_argument("--no-offload", action="store_true", help="do not use enable_model_cpu_offload() in the service")
    ab.add_argument("--out", type=out_folder, default="sdfix-report",
                    help="output folder (default: sdfix-report); must be missing or empty unless --force")
    ab.add_argument("--force", action="store_true",
                    help="write into a non-empty --out folder: files of the same name are replaced, others kept")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    return ab


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`lib_sdfix.cli.ab_run.ABConfig` the parsed arguments ask for."""
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
    sizes = resolve_sizes(config_from_args(args))
    if args.hires:
        if int(sizes.steps * sizes.strength) < 1:
            parser.error(f"argument --denoise: {sizes.strength:g} x {sizes.steps} steps gives no Hires step; "
                         "raise --denoise or --steps")
    if args.refine is not None:
        final = sizes.hires_steps or sizes.steps
        ran = min(int(final * sizes.strength), final) if args.hires else final
        if refine_steps(args.refine, ran) < 1:
            parser.error(f"argument --refine: {args.refine:g} x {ran} steps of the last pass rounds to no step; "
                         "raise --refine or --steps")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        parser.error(f"argument --out: {out} is not empty; choose another folder, or pass --force to write "
                     "into it (files of the same name are replaced)")


def _missing_modules(args: argparse.Namespace) -> List[str]:
    needed = list(DIFFUSERS_MODULES)
    if args.hires and (args.model is None or args.upscaler):
        needed.append("spandrel")
    return missing_modules(needed)


def _shown(value: Any, digits: int) -> str:
    """A number of report.json as printed: infinities are already text there ("inf"), NaN is null."""
    if isinstance(value, str):
        return value
    return "-" if value is None else f"{value:.{digits}f}"


def _run(args: argparse.Namespace) -> int:
    """Run the A/B, print where the report is and the headline numbers."""
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
        check_device(parser, args.device)
        return _run(args)
    except (ImportError, RuntimeError) as exc:
        if isinstance(exc, UpscalerUnavailable):
            return fail("ab", f"no upscaler backend: {exc}")
        module = missing_module_in(exc)
        if module is None:
            raise
        return fail("ab", f"missing module {module!r}: {install_hint(module)}")
