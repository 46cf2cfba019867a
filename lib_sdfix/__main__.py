"""Command line: ``python -m lib_sdfix check`` (self-check of the core) and ``ab`` (A/B report)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional


def _check() -> int:
    """Exercise every core fix on this machine's torch and print what it found; exit 1 on a failure."""
    import torch
    from PIL import Image, ImageFilter

    from lib_sdfix import __version__
    from lib_sdfix.metrics import compare_detail
    from lib_sdfix.precision import flag_api, guarded_vae_call, read_flags
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


def _add_ab_parser(sub: Any) -> None:
    ab = sub.add_parser(
        "ab",
        help="run one seed through a diffusers service without and with the fixes; write an HTML report",
        description="Runs the same seed through a txt2img (+ Hires img2img) diffusers service set up with the "
        "five oil-painting causes, once as it is and once hardened by SDFix, and writes report.html, the PNGs "
        "and report.json. Without --model an embedded tiny random-weight SD1.5 runs on any CPU in under a minute.",
    )
    ab.add_argument("--model", help="diffusers model folder (SD1.x/2.x or SDXL), or an SD1.x/2.x .safetensors/.ckpt "
                    "whose config is in the local Hugging Face cache (nothing is downloaded); "
                    "default: the embedded tiny random-weight SD1.5")
    ab.add_argument("--prompt", help="prompt (default: a close-up portrait prompt)")
    ab.add_argument("--negative-prompt", help="negative prompt")
    ab.add_argument("--seed", type=int, default=1234, help="seed for every arm (default 1234)")
    ab.add_argument("--steps", type=int, help="sampling steps (default 12 embedded, 25 with --model)")
    ab.add_argument("--width", type=int, help="first-pass width (default 128 embedded, 512 with --model)")
    ab.add_argument("--height", type=int, help="first-pass height")
    ab.add_argument("--hires", action="store_true", help="add the Hires.fix pass: upscaler, resize, img2img")
    ab.add_argument("--hires-scale", type=float, default=2.0, help="Hires target scale (default 2)")
    ab.add_argument("--denoise", type=float, help="Hires denoising strength (default 0.5 embedded, 0.35 with --model)")
    ab.add_argument("--upscaler", help="super-resolution weights for --hires (RealESRGAN .pth/.safetensors); default: "
                    "a tiny random one with the embedded model, none (plain resize) with --model")
    ab.add_argument("--ablation", action="store_true", help="also run each fix alone")
    ab.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ab.add_argument("--no-offload", action="store_true", help="do not use enable_model_cpu_offload() in the service")
    ab.add_argument("--out", default="sdfix-report", help="output folder (default: sdfix-report)")
    ab.add_argument("--quiet", action="store_true", help="no progress bars")


def _ab(args: argparse.Namespace) -> int:
    """Run the A/B, print where the report is and the headline numbers."""
    from lib_sdfix.diffusers_ab import DEFAULT_NEGATIVE, DEFAULT_PROMPT, ABConfig, run_ab

    config = ABConfig(
        out=Path(args.out), model=args.model, prompt=args.prompt or DEFAULT_PROMPT,
        negative_prompt=args.negative_prompt if args.negative_prompt is not None else DEFAULT_NEGATIVE,
        seed=args.seed, steps=args.steps, width=args.width, height=args.height or args.width, hires=args.hires,
        hires_scale=args.hires_scale, strength=args.denoise, upscaler=args.upscaler, ablation=args.ablation,
        device=args.device, offload=not args.no_offload, progress=not args.quiet,
    )
    result = run_ab(config)
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_sdfix", description="SDFix command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="self-check the core fixes on this machine")
    _add_ab_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check()
    if args.command == "ab":
        return _ab(args)
    return 2  # pragma: no cover -- argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
