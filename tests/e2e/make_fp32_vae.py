"""Write a checkpoint's VAE as an fp32 external VAE file, for the exact-weights e2e test.

    python tests/e2e/make_fp32_vae.py CHECKPOINT.safetensors OUT.safetensors

Keys ``first_stage_model.*`` of the checkpoint, prefix removed, upcast to fp32 (an fp16 file gives the
same values in fp32: the test then compares a half-precision VAE loaded from this file against an
fp32 one).  Needs torch and safetensors (a WebUI venv has both).
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main(source: str, target: str) -> None:
    prefix = "first_stage_model."
    tensors = {}
    with safe_open(source, framework="pt") as handle:
        for key in handle.keys():
            if key.startswith(prefix):
                tensor = handle.get_tensor(key)
                tensors[key[len(prefix):]] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
    if not tensors:
        raise SystemExit(f"{source} has no {prefix}* keys")
    save_file(tensors, target)
    print(f"{target}: {len(tensors)} tensors, fp32")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
