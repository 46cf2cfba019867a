"""Command line: ``python -m lib_sdfix check`` (self-check of the core), ``ab`` (the A/B report of the
diffusers front: :mod:`lib_sdfix.cli.ab_command`) and ``diagnose`` (:mod:`lib_sdfix.cli.diagnose_command`).

``python -m lib_sdfix`` and the ``sdfix`` console script both run :func:`main`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from lib_sdfix.cli import ab_command, diagnose_command
from lib_sdfix.cli.command import INSTALL_CORE, INSTALL_TORCH, PROG, fail, missing_module_in


def _check() -> int:
    """Exercise every core fix on this machine's torch and print what it found; exit 1 on a failure."""
    import torch
    from PIL import Image, ImageFilter

    from lib_sdfix import __version__
    from lib_sdfix.imaging.metrics import compare_detail
    from lib_sdfix.precision import flag_api, read_flags
    from lib_sdfix.resize import resize_after_upscale
    from lib_sdfix.vae.call import guarded_call

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

    guarded_call(decode, vae, torch.randn(1, 4, 16, 16))
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


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; ``ab``'s own parser is ``build_parser().subcommands["ab"]``."""
    parser = argparse.ArgumentParser(prog=PROG, description="SDFix command line")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="self-check the core fixes on this machine")
    parser.subcommands = {"check": check, "ab": ab_command.add_parser(sub),  # type: ignore[attr-defined]
                          "diagnose": diagnose_command.add_parser(sub)}
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ab":
        return ab_command.run(args, parser.subcommands["ab"])  # type: ignore[attr-defined]
    if args.command == "diagnose":
        return diagnose_command.run(args, parser.subcommands["diagnose"])  # type: ignore[attr-defined]
    try:
        return _check()
    except (ImportError, RuntimeError) as exc:
        module = missing_module_in(exc)
        if module is None:
            raise
        return fail(args.command, f"missing module {module!r}: {INSTALL_TORCH if module == 'torch' else INSTALL_CORE}")


if __name__ == "__main__":
    sys.exit(main())
