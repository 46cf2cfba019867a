"""The embedded default model of ``python -m lib_sdfix ab`` and ``diagnose``: SD1.5's architecture with
small random weights, and a tiny random upscaler in Real-ESRGAN's layout.

Why: the A/B command must run on a fresh CPU-only machine with nothing downloaded.  The images are
noise; the mechanics (dtypes, hooks, schedulers, resizes) are those of the real model, and a
128x128 image takes about a second on one CPU core.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["EMBEDDED", "tiny_sd15_components", "tiny_esrgan_state_dict", "byte_level_clip_tokenizer"]

#: How reports name the embedded model.
EMBEDDED = "embedded tiny SD1.5 (random weights)"


def _byte_alphabet() -> List[str]:
    """The 256 printable stand-ins byte-level BPE tokenizers (GPT-2, CLIP) use for the bytes 0-255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_clip_tokenizer(directory: Any = None) -> Any:
    """A CLIPTokenizer over single bytes: needs no downloaded vocabulary.

    Every text tokenizes (one token per byte, word ends marked as CLIP does), which is all a
    random-weight text encoder needs.  The vocabulary files are written to ``directory`` (kept),
    or to a temporary folder removed once the tokenizer has read them.
    """
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="sdfix-tokenizer-") as scratch:
            return byte_level_clip_tokenizer(scratch)
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": 256 + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def tiny_sd15_components(seed: int = 0, tokenizer_dir: Any = None) -> Dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and scheduler of SD1.5's architecture, small and random.

    Same block layout as SD1.5 (four UNet levels, cross-attention in the first three, a 4-level VAE
    with an 8x latent, CLIP text encoder, PNDM as the checkpoint ships it), channel counts cut so
    a 128x128 image takes about a second on one CPU core.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = byte_level_clip_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        sample_size=128, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(), "tokenizer": tokenizer,
        "scheduler": scheduler, "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
    }


def tiny_esrgan_state_dict(num_feat: int = 8, num_block: int = 1, seed: int = 0) -> Dict[str, Any]:
    """Random x4 weights in Real-ESRGAN's RRDBNet key layout (``conv_first``, ``body.N.rdbM.convK``, ...).

    Loaders recognise the architecture from these names and shapes exactly as for
    RealESRGAN_x4plus.pth, which has ``num_feat=64, num_block=23``; growth channels stay 32 (what
    ESRGAN loaders assume).
    """
    import torch

    grow = 32
    generator = torch.Generator().manual_seed(seed)
    state: Dict[str, Any] = {}

    def conv(name: str, c_in: int, c_out: int, gain: float = 0.1) -> None:
        std = gain * (2.0 / (c_in * 9)) ** 0.5  # He init, scaled down inside the residual blocks
        state[f"{name}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.zeros(c_out)

    conv("conv_first", 3, num_feat, 1.0)
    for b in range(num_block):
        for r in (1, 2, 3):
            for k in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{k}", num_feat + (k - 1) * grow, grow if k < 5 else num_feat)
    conv("conv_body", num_feat, num_feat)
    conv("conv_up1", num_feat, num_feat, 1.0)  # two x2 upsampling convs: x4
    conv("conv_up2", num_feat, num_feat, 1.0)
    conv("conv_hr", num_feat, num_feat, 1.0)
    conv("conv_last", num_feat, 3, 1.0)
    return state
