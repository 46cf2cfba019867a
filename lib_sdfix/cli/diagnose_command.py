"""``python -m lib_sdfix diagnose {vae-roundtrip,sweep,steps,optimizations}``: arguments, their limits, and the run.

The same rules as ``ab`` (lib_sdfix.cli.ab_command): every argument is checked before anything loads and a
bad one is a usage error naming it (exit 2); a non-empty ``--out`` needs ``--force``; a missing
``[diffusers]`` extra is one line naming the module.  The limits of a sweep or a strip are the API's
(lib_sdfix.diagnose.request): at most 12 values, 16 steps shown, 150 sampling steps; at most 12 options
(each one the diffusers front knows) and 5 repeats.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List

from PIL import Image

from lib_sdfix.cli.command import (
    DIFFUSERS_MODULES,
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
from lib_sdfix.cli.diagnose_cost import DEFAULT_REPEATS, CostConfig, run_optimizations
from lib_sdfix.cli.diagnose_run import SAMPLERS, SCHEDULES, DiagnoseConfig, resolve, run_diagnose, schedule_problem
from lib_sdfix.diagnose import request as checks
from lib_sdfix.diagnose.optimizations import MAX_OPTIONS, MAX_REPEATS, UNSET
from lib_sdfix.diagnose.output import display_table
from lib_sdfix.diagnose.plan import AXES
from lib_sdfix.diagnose.roundtrip import VARIANTS
from lib_sdfix.diagnose.speed_options import DIFFUSERS, check_option_value, known_option, options_for
from lib_sdfix.image_input import ImageModeError, to_rgb8
from lib_sdfix.limits.values import closest_names
from lib_sdfix.settings import SettingsError

__all__ = ["add_parser", "run", "config_from_args", "KIND_NAMES"]

#: Command-line kind -> the API's kind.
KIND_NAMES = {"vae-roundtrip": "vae_roundtrip", "sweep": "sweep", "steps": "steps", "optimizations": "optimizations"}
_MODULES = tuple(m for m in DIFFUSERS_MODULES if m != "tqdm")


def _list(text: str) -> List[Any]:
    values = checks.parse_value_list(text)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
    return values


def vae_path(text: str) -> str:
    """argparse type: a diffusers VAE folder (``config.json``, or a model folder's ``vae/``) or a single file."""
    path = Path(text)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            raise argparse.ArgumentTypeError(f"{text} is a folder without config.json (or vae/config.json), not a "
                                             "diffusers VAE")
    elif not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return text


def _common(parser: argparse.ArgumentParser, dtypes: bool = True) -> None:
    parser.add_argument("--model", type=model_path,
                        help="diffusers model folder (SD1.x/2.x or SDXL), or an SD1.x/2.x single file whose config is in "
                        "the local Hugging Face cache (nothing is downloaded); default: the embedded tiny random-weight SD1.5")
    parser.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _output(parser)
    if not dtypes:
        return
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="UNet and text encoder dtype (default: fp16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--vae-dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="the dtype the VAE is loaded in, as a service keeps it (default: fp16 on a GPU, bf16 on a CPU)")


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heatmap-gain", type=number(1.0, 64.0), default=4.0, help="heatmap amplification, 1-64 (default 4)")
    parser.add_argument("--out", type=out_folder, default="sdfix-diagnose",
                        help="output folder (default: sdfix-diagnose); must be missing or empty unless --force")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out folder: files of the same name are replaced, others kept")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _generation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="prompt (default: a close-up portrait prompt)")
    parser.add_argument("--negative-prompt", help="negative prompt")
    parser.add_argument("--seed", type=whole(0, SEED_MAX), default=1234, help=f"seed, 0-{SEED_MAX} (default 1234)")
    parser.add_argument("--steps", type=whole(STEPS_MIN, STEPS_MAX),
                        help=f"sampling steps, {STEPS_MIN}-{STEPS_MAX} (default 12 embedded, 25 with --model)")
    size = whole(SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE)
    parser.add_argument("--width", type=size, help=f"width, {SIZE_MIN}-{SIZE_MAX}, a multiple of {SIZE_MULTIPLE} "
                        "(default 128 embedded, 512 with --model)")
    parser.add_argument("--height", type=size, help="height, same bounds (default: the width)")
    parser.add_argument("--cfg-scale", type=number(1.0, 30.0), default=7.0, help="CFG scale, 1-30 (default 7)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="DPM++ 2M", help="sampler (default DPM++ 2M)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="Karras", help="schedule type (default Karras)")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``diagnose`` and its three kinds to the subcommands ``sub``; return its parser (``.kinds`` holds theirs)."""
    diagnose = sub.add_parser(
        "diagnose", help="find where an artifact comes from: VAE round-trip, one-variable sweeps, step strips",
        description="Find where an artifact comes from on a diffusers pipeline, with an HTML report (report.html, the PNGs, "
        "report.json). Without --model an embedded tiny random-weight SD1.5 runs on any CPU.")
    kinds = diagnose.add_subparsers(dest="kind", required=True, metavar="{vae-roundtrip,sweep,steps,optimizations}")
    roundtrip = kinds.add_parser("vae-roundtrip", help="encode + decode your image through the VAE in several precisions")
    _common(roundtrip)
    roundtrip.add_argument("--image", type=existing_file, help="PNG/JPEG/WebP to test (default: scikit-image's astronaut photograph)")
    roundtrip.add_argument("--size", type=whole(SIZE_MIN, SIZE_MAX),
                           help="resize so the longer side is at most this (default: 256 for the embedded model's photo)")
    roundtrip.add_argument("--dtypes", type=_list, help=f"comma-separated subset of {','.join(VARIANTS)} (default: all this "
                           "device runs fast -- on a CPU fp16 and bf16 only where it has kernels for them; webui = the "
                           "VAE as loaded)")
    sweep = kinds.add_parser("sweep", help="one generation with one setting varied at a fixed seed")
    _common(sweep)
    _generation(sweep)
    sweep.add_argument("--axis", choices=AXES, default="cfg_scale", help="what to vary (default cfg_scale)")
    sweep.add_argument("--values", type=_list, help="comma-separated values (default: the usual ones, e.g. CFG 1,3,5,7,10,15)")
    sweep.add_argument("--reference", help="the value the others are compared with (default: your setting, else the first)")
    steps = kinds.add_parser("steps", help="the image as predicted at chosen sampling steps of one generation")
    _common(steps)
    _generation(steps)
    steps.add_argument("--at", type=_list, help="comma-separated steps to show (default: six spread over the run)")
    cost = kinds.add_parser("optimizations", help="the cost of speed: each speed/memory option against quality settings")
    _common(cost, dtypes=False)
    _generation(cost)
    names = ",".join(o.key for o in options_for(DIFFUSERS))
    cost.add_argument("--options", help=f"comma-separated options, each NAME or NAME=VALUE, at most {MAX_OPTIONS}, of: "
                      f"{names} (default: all that apply here; steps: 3/5 of --steps)")
    cost.add_argument("--repeats", type=whole(1, MAX_REPEATS), default=DEFAULT_REPEATS,
                      help=f"timed runs per cell, 1-{MAX_REPEATS}; the median counts (default {DEFAULT_REPEATS})")
    cost.add_argument("--vae", type=vae_path, help="another VAE to measure (decode only): a diffusers AutoencoderKL or "
                      "AutoencoderTiny (TAESD) folder, or an AutoencoderKL file (e.g. the fp16-fix VAE)")
    cost.add_argument("--compile", action="store_true", help="also measure torch.compile on the UNet (compiling is slow)")
    diagnose.kinds = {"vae-roundtrip": roundtrip, "sweep": sweep, "steps": steps,  # type: ignore[attr-defined]
                      "optimizations": cost}
    return diagnose


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`lib_sdfix.cli.diagnose_run.DiagnoseConfig` the parsed (and checked) arguments ask for."""
    kind = KIND_NAMES[args.kind]
    if kind == "optimizations":
        config: Any = CostConfig(kind=kind, out=Path(args.out), model=args.model, device=args.device,
                                 heatmap_gain=args.heatmap_gain, progress=not args.quiet, repeats=args.repeats,
                                 vae=args.vae, compile=args.compile, options=tuple(args.options or ()))
    else:
        config = DiagnoseConfig(kind=kind, out=Path(args.out), model=args.model, device=args.device, dtype=args.dtype,
                                vae_dtype=args.vae_dtype, heatmap_gain=args.heatmap_gain, progress=not args.quiet)
    if kind == "vae_roundtrip":
        config.image, config.size, config.dtypes = args.image, args.size, tuple(args.dtypes or ())
        return config
    for name in ("seed", "steps", "width", "cfg_scale", "sampler", "schedule"):
        setattr(config, name, getattr(args, name))
    config.height = args.height or args.width
    if args.prompt is not None:
        config.prompt = args.prompt
    if args.negative_prompt is not None:
        config.negative_prompt = args.negative_prompt
    if kind == "sweep":
        config.axis, config.values, config.reference = args.axis, tuple(args.values or ()), args.reference
    elif kind == "steps":
        config.at = tuple(args.at or ())
    return config


def _image_problem(path: str) -> str:
    """Why the image cannot be tested ("" when it can): not an image Pillow reads, or pixels without an
    8-bit meaning (:func:`lib_sdfix.image_input.to_rgb8`)."""
    try:
        with Image.open(path) as opened:
            to_rgb8(opened)
    except ImageModeError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 -- unreadable or damaged: say so, not a traceback
        return f"cannot read {path} as an image ({type(err).__name__}: {err})"
    return ""


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one argument alone cannot tell: values for the axis, steps within the run, the output folder."""
    def error(option: str, problems: Any) -> None:
        detail = "; ".join(f"{k}: {v}" for k, v in problems.items()) if isinstance(problems, dict) else str(problems)
        parser.error(f"argument {option}: {detail}")

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        parser.error(f"argument --out: {out} is not empty; choose another folder, or pass --force to write into it "
                     "(files of the same name are replaced)")
    if args.kind == "vae-roundtrip":
        if args.image is not None:
            problem = _image_problem(args.image)
            if problem:
                parser.error(f"argument --image: {problem}")
        if args.dtypes is not None:
            try:
                args.dtypes = list(checks.check_variants(args.dtypes, None))
            except SettingsError as err:
                error("--dtypes", err.problems)
        return
    steps = resolve(config_from_args(args)).steps
    if args.kind == "optimizations":
        if args.options is not None:
            try:
                args.options = parse_options(args.options, steps, vae=args.vae, compile_ok=args.compile)
            except ValueError as err:
                error("--options", str(err))
        return
    if args.kind == "steps":
        if args.at is not None:
            try:
                args.at = list(checks.check_at(args.at, steps))
            except SettingsError as err:
                error("--at", err.problems)
        return
    names = {"sampler_name": list(SAMPLERS), "scheduler": list(SCHEDULES)}.get(args.axis)
    try:
        args.values = (checks.check_values(args.axis, args.values, "values", names) if args.values is not None
                       else checks.default_values(args.axis, names))
    except SettingsError as err:
        error("--values", err.problems)
    if args.reference is not None:
        try:
            parsed = checks.parse_value_list(args.reference)
            reference = checks.check_value(args.axis, parsed[0] if len(parsed) == 1 else args.reference, names)
        except (ValueError, IndexError) as err:
            error("--reference", str(err))
        if reference not in args.values:
            error("--reference", f"must be one of the values {args.values}, got {args.reference!r}")
        args.reference = reference
    else:
        own = {"cfg_scale": args.cfg_scale, "steps": args.steps, "sampler_name": args.sampler, "scheduler": args.schedule}
        args.reference = checks.default_reference(args.axis, args.values, {k: v for k, v in own.items() if v is not None})


_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def _option_value(option: Any, text: str) -> Any:
    kind = option.values[0]
    if kind == "bool":
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"expected on or off, got {text!r}")
        return text.lower() in _TRUE
    if kind in ("int", "float"):
        try:
            return float(text) if kind == "float" else int(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    return text


def parse_options(text: str, steps: int, *, vae: Any = None, compile_ok: bool = False) -> List[Any]:
    """``--options``: comma-separated ``NAME`` or ``NAME=VALUE``, each an option of the diffusers front; a bare
    name is tried at its default (``steps``: 3/5 of the run's).  ValueError names the first problem."""
    from lib_sdfix.cli.pipeline_options import fewer_steps

    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected comma-separated option names, got {text!r}")
    if len(items) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} options, got {len(items)}")
    known = [o.key for o in options_for(DIFFUSERS)]
    out: List[Any] = []
    for index, item in enumerate(items):
        name, _, raw = item.partition("=")
        name, where = name.strip(), f"options[{index}]"
        option = known_option(name, DIFFUSERS)
        if option is None or DIFFUSERS not in option.hosts:
            near = closest_names(name, known)
            other = " (a WebUI option; this front has its own)" if option is not None else ""
            raise ValueError(f"{where}: unknown option {name!r}{other}" + (f"; did you mean {near}?" if near else "")
                             + f" -- known: {', '.join(known)}")
        if any(name == key for key, _ in out):
            raise ValueError(f"{where}: duplicate option {name!r}")
        if name == "torch_compile" and not compile_ok:
            raise ValueError(f"{where}: torch_compile needs --compile (compiling is slow: opt in)")
        if name == "vae":
            if raw or not vae:
                raise ValueError(f"{where}: give the VAE to try with --vae PATH, and name vae without a value")
            out.append((name, vae))
            continue
        value: Any = UNSET
        if raw:
            try:
                value = check_option_value(option, _option_value(option, raw.strip()))
            except ValueError as err:
                raise ValueError(f"{where}: {name}: {err}") from None
        elif name == "steps":
            value = fewer_steps(steps)
        out.append((name, value))
    return out


def _schedules_apply(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every sampler/schedule pair the run uses must exist in this diffusers (needs diffusers: after the module check)."""
    if args.kind == "vae-roundtrip":
        return
    samplers = args.values if args.kind == "sweep" and args.axis == "sampler_name" else [args.sampler]
    schedules = args.values if args.kind == "sweep" and args.axis == "scheduler" else [args.schedule]
    for sampler in samplers:
        for schedule in schedules:
            problem = schedule_problem(sampler, schedule)
            if problem:
                option = "--values" if len(samplers) > 1 or len(schedules) > 1 else "--schedule"
                parser.error(f"argument {option}: {problem}")


def _print_table(result: Any) -> None:
    headers, rows = display_table("optimizations", result["analysis"].get("rows", []))
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    for line in (headers, *rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    for note in result["notes"]:
        print(f"  note: {note}")


def _print(result: Any) -> None:
    if result.get("kind") == "optimizations":
        _print_table(result)
    for finding in result["analysis"].get("findings", []):
        # a cost-of-speed finding's text starts with the option it is about
        cause = "" if result.get("kind") == "optimizations" else f"{finding.cause}: "
        print(f"  [{finding.likelihood}] {cause}{finding.text}")
    if not result["analysis"].get("findings"):
        print("  no rule fired: nothing measured here points to one cause on its own")
    t = result["timings"]
    print(f"cost: {t['samplings']} sampling(s), {t['unet_calls']} UNet calls, {t['decodes']} decode(s), "
          f"{t['total_s']:.1f} s")
    print(f"report: {result['report_path']}")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``diagnose <kind>`` with parsed ``args`` (``parser``: the ``diagnose`` parser); the exit code."""
    kind_parser = parser.kinds[args.kind]  # type: ignore[attr-defined]
    try:
        _check(kind_parser, args)
        missing = missing_modules(_MODULES)
        if missing:
            names = ", ".join(repr(m) for m in missing)
            return fail("diagnose", f"missing module{'s' if len(missing) > 1 else ''} {names}: " + install_hint(missing[0]))
        _schedules_apply(kind_parser, args)
        check_device(kind_parser, args.device)
        print(f"SDFix diagnose {args.kind}:")
        config = config_from_args(args)
        _print(run_optimizations(config) if args.kind == "optimizations" else run_diagnose(config))
        return 0
    except (ImportError, RuntimeError) as exc:
        module = missing_module_in(exc)
        if module is None:
            raise
        return fail("diagnose", f"missing module {module!r}: {install_hint(module)}")
