"""Command line: ``python -m lib_sdfix check`` (self-check of the core) and ``ab`` (A/B report)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

PROG = "python -m lib_sdfix"

#: What ``ab`` imports beyond the core: the ``[diffusers]`` extra (torch is the user's own install).
AB_MODULES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "tqdm")
INSTALL_EXTRA = 'pip install -e .[diffusers]  (or: pip install "sdfix[diffusers]")'

# Bounds of the ab arguments: what SD1.x/2.x/SDXL are trained for and a CPU or one GPU can run.
SEED_MAX = 2**32 - 1
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
STEPS_MIN, STEPS_MAX = 1, 150
HIRES_SCALE_MIN, HIRES_SCALE_MAX = 1.0, 4.0


def _check() -> int:
    """Exercise every core fix on this machine's torch and print what it found; exit 1 on a failure."""
    import torch
    from PIL import Image, ImageFilter

    from lib_sdfix import __version__
    from lib_sdfix.metrics import compare_detail
    from lib_sdfix.fp32_vae import guarded_vae_call
    from lib_sdfix.precision import flag_api, read_flags
    from lib_sdfix.resize import resize_after_upscale

    failures: List[str] = []

    def check(ok: bool, label: str, detail: str = "") -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {label}{(': ' + detail) if detail else ''}")
        if not ok:
            failures.append(label)

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"SDFix {__version__}, torch {torch.__version__} (flag API: {flag_api()}), GPU: {gpu}")
    print("flags now:", json.dumps(read_flags()))

    before = read_flags()
    torch.manual_seed(0)
    vae = torch.nn.Sequential(torch.nn.Conv2d(4, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 3, 3, padding=1))
    vae = vae.to(torch.float16)
    seen = {}

    def decode(z):
        seen.update(
            dtype=str(next(vae.parameters()).dtype),
            latent=str(z.dtype),
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            benchmark=torch.backends.cudnn.benchmark,
        )
        return vae(z)

    guarded_vae_call(decode, vae, torch.randn(1, 4, 16, 16))
    check(seen.get("dtype") == "torch.float32" and seen.get("latent") == "torch.float32", "VAE ran in fp32", json.dumps(seen))
    check(not (seen["cudnn_tf32"] or seen["matmul_tf32"] or seen["benchmark"]), "TF32 and cuDNN autotuning off inside")
    check(read_flags() == before, "every flag restored")
    check(next(vae.parameters()).dtype == torch.float16, "VAE weights back in fp16")

    from skimage import data

    photo = Image.fromarray(data.astronaut())
    native = photo.resize((1024, 1024), Image.LANCZOS)  # stands in for an x2 upscaler's output
    sharp = resize_after_upscale(native, (768, 768))
    soft = native.resize((768, 768), Image.BILINEAR)
    report = compare_detail(soft, sharp)
    check(report.laplacian_ratio > 1.0, "LANCZOS keeps more detail than BILINEAR",
          f"Laplacian variance x{report.laplacian_ratio:.2f}, high-frequency energy x{report.high_frequency_ratio:.2f}")
    smeared = compare_detail(photo, photo.filter(ImageFilter.GaussianBlur(0.8)))
    check(smeared.high_frequency_ratio < 1.0, "detail metrics see a mild smear",
          f"PSNR {smeared.psnr:.1f} dB yet high-frequency energy x{smeared.high_frequency_ratio:.2f}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


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


def _add_ab_parser(sub: Any) -> argparse.ArgumentParser:
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
    ab.add_argument("--ablation", action="store_true", help="also run each fix alone")
    ab.add_argument("--device", type=_device, default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ab.add_argument("--no-offload", action="store_true", help="do not use enable_model_cpu_offload() in the service")
    ab.add_argument("--out", type=_out_folder, default="sdfix-report",
                    help="output folder (default: sdfix-report); must be missing or empty unless --force")
    ab.add_argument("--force", action="store_true",
                    help="write into a non-empty --out folder: files of the same name are replaced, others kept")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    return ab


def _ab_config(args: argparse.Namespace) -> Any:
    from lib_sdfix.diffusers_ab import DEFAULT_NEGATIVE, DEFAULT_PROMPT, ABConfig

    return ABConfig(
        out=Path(args.out), model=args.model, prompt=args.prompt or DEFAULT_PROMPT,
        negative_prompt=args.negative_prompt if args.negative_prompt is not None else DEFAULT_NEGATIVE,
        seed=args.seed, steps=args.steps, width=args.width, height=args.height or args.width, hires=args.hires,
        hires_scale=args.hires_scale, strength=args.denoise, upscaler=args.upscaler, ablation=args.ablation,
        device=args.device, offload=not args.no_offload, progress=not args.quiet,
    )


def _check_ab_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one argument alone cannot tell: the Hires pass has a step, the output folder may be written."""
    from lib_sdfix.diffusers_ab import resolve_sizes

    if args.hires:
        sizes = resolve_sizes(_ab_config(args))
        if int(sizes["steps"] * sizes["strength"]) < 1:
            parser.error(f"argument --denoise: {sizes['strength']:g} x {sizes['steps']} steps gives no Hires step; "
                         "raise --denoise or --steps")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        parser.error(f"argument --out: {out} is not empty; choose another folder, or pass --force to write "
                     "into it (files of the same name are replaced)")


def _missing_ab_modules(args: argparse.Namespace) -> List[str]:
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


def _missing_module_in(exc: BaseException) -> Optional[str]:
    """The top-level name of a module missing behind ``exc`` (also one that a library wrapped in its
    own error, as diffusers' lazy imports do), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _install_hint(module: str, extra: bool) -> str:
    if module == "torch":
        return "install PyTorch for your machine first (https://pytorch.org/get-started/locally/)" + (
            ", then " + INSTALL_EXTRA if extra else "")
    if not extra:
        return "pip install -e ."
    return ("it is part of the [diffusers] extra: " if module in AB_MODULES + ("spandrel",) else "") + INSTALL_EXTRA


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


def _ab(args: argparse.Namespace) -> int:
    """Run the A/B, print where the report is and the headline numbers."""
    from lib_sdfix.diffusers_ab import run_ab

    result = run_ab(_ab_config(args))
    print("audit of the unfixed service:")
    for cause, finding in result.audit_before.items():
        after = result.audit_after[cause]["status"]
        print(f"  {cause:<19} {finding['status']:<12} -> {after:<12} {finding['detail']}")
    rows = json.loads((Path(args.out) / "report.json").read_text())["metrics"]["variants"]
    print("against the unfixed service (same seed):")
    for row in rows:
        psnr = row["psnr"] if isinstance(row["psnr"], str) else f"{row['psnr']:.2f}"
        print(f"  {row['name']:<26} PSNR {psnr:>6} dB, Laplacian variance x{row['laplacian_ratio']:.3f}, "
              f"high-frequency energy x{row['high_frequency_ratio']:.3f}, {row['time_s']:.1f} s")
    print(f"report: {result.report_path}")
    return 0


def _device_available(parser: argparse.ArgumentParser, device: str) -> None:
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {device} is not available here (torch {torch.__version__} sees no CUDA GPU)")
    if kind == "mps" and not torch.backends.mps.is_available():
        parser.error(f"argument --device: {device} is not available here")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; ``ab``'s own parser is ``build_parser().subcommands["ab"]``."""
    parser = argparse.ArgumentParser(prog=PROG, description="SDFix command line")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="self-check the core fixes on this machine")
    parser.subcommands = {"check": check, "ab": _add_ab_parser(sub)}  # type: ignore[attr-defined]
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    ab_parser = parser.subcommands["ab"]  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    extra = args.command == "ab"
    try:
        if args.command == "check":
            return _check()
        _check_ab_args(ab_parser, args)
        missing = _missing_ab_modules(args)
        if missing:
            names = ", ".join(repr(m) for m in missing)
            return _fail("ab", f"missing module{'s' if len(missing) > 1 else ''} {names}: "
                         + _install_hint(missing[0], extra=True))
        _device_available(ab_parser, args.device)
        return _ab(args)
    except (ImportError, RuntimeError) as exc:
        from lib_sdfix.diffusers import UpscalerUnavailable

        if isinstance(exc, UpscalerUnavailable):
            return _fail(args.command, f"no upscaler backend: {exc}")
        module = _missing_module_in(exc)
        if module is None:
            raise
        return _fail(args.command, f"missing module {module!r}: {_install_hint(module, extra)}")


if __name__ == "__main__":
    sys.exit(main())
