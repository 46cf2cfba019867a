"""The hosts' registries of the other names a txt2img payload refers to (samplers and schedule types
are in samplers.py): checkpoints (``modules/sd_models.py``), saved styles (``modules/styles.py``), VAE
files (``modules/sd_vae.py``) and Forge's VAE / text encoder modules (``modules_forge/main_entry.py``).

Modelled on the three hosts' source (the same in all three where not said otherwise): a checkpoint is
registered under all its ids (file hash, model name, title, file name, short name, each with its
hash) and ``get_closet_checkpoint_match`` tries those ids exactly, then the shortest title that
contains the text, then the same without a trailing "[hash]"; styles are looked up by exact name,
an unknown one adding nothing; Forge finds a module by its file name and drops unknown ones.
"""
from __future__ import annotations

import hashlib
import re
import types
from typing import Any, Callable, List, Optional

#: (path under models/Stable-diffusion, sha256 or None when not hashed yet)
CHECKPOINTS = (("v1-5-pruned-emaonly.safetensors", "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"),
               ("sdxl/realistic-v2.ckpt", None))
STYLES = {"Cinematic": ("{prompt}, cinematic lighting", "cartoon")}
VAE_FILES = ("vae-ft-mse-840000-ema-pruned.safetensors",)
FORGE_MODULES = ("ae.safetensors", "clip_l.safetensors")


class CheckpointInfo:
    """sd_models.CheckpointInfo's names: title "name [shorthash]" once hashed, else the name."""

    def __init__(self, name: str, sha256: Optional[str]):
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        self.filename, self.name, self.name_for_extra = f"/models/Stable-diffusion/{name}", name, stem
        self.model_name = name.replace("/", "_").rsplit(".", 1)[0]
        self.hash = hashlib.sha256(name.encode()).hexdigest()[:8]  # the old hash: some file bytes
        self.sha256, self.shorthash = sha256, sha256[:10] if sha256 else None
        self.title = f"{name} [{self.shorthash}]" if self.shorthash else name
        self.short_title = f"{stem} [{self.shorthash}]" if self.shorthash else stem
        self.ids = [self.hash, self.model_name, self.title, name, stem, f"{name} [{self.hash}]"]
        if self.shorthash:
            self.ids += [self.shorthash, sha256, f"{name} [{self.shorthash}]", f"{stem} [{self.shorthash}]"]


def install_registries(module: Callable[..., types.ModuleType], host: str, shared: Any, sd_vae: Any) -> types.ModuleType:
    """The registries of ``host`` into ``shared``, ``sd_vae`` and new modules; returns ``modules.sd_models``."""
    sd_models = module("modules.sd_models")
    sd_models.CheckpointInfo = CheckpointInfo
    sd_models.checkpoints_list, sd_models.checkpoint_aliases = {}, {}
    for name, sha256 in CHECKPOINTS:
        info = CheckpointInfo(name, sha256)
        sd_models.checkpoints_list[info.title] = info
        sd_models.checkpoint_aliases.update({key: info for key in info.ids})

    def containing(text: str) -> Optional[CheckpointInfo]:
        found = sorted((i for i in sd_models.checkpoints_list.values() if text in i.title), key=lambda i: len(i.title))
        return found[0] if found else None

    def get_closet_checkpoint_match(search: Optional[str]) -> Optional[CheckpointInfo]:
        if not search:
            return None
        return (sd_models.checkpoint_aliases.get(search) or containing(search)
                or containing(re.sub(r"\s*\[[^]]+]\s*$", "", search)))

    sd_models.get_closet_checkpoint_match = get_closet_checkpoint_match

    class StyleDatabase:
        no_style = types.SimpleNamespace(prompt="", negative_prompt="")

        def __init__(self) -> None:
            self.styles = {n: types.SimpleNamespace(name=n, prompt=p, negative_prompt=neg) for n, (p, neg) in STYLES.items()}

        @staticmethod
        def _merge(prompt: str, styles: List[str]) -> str:
            for style in styles:
                if not style:
                    continue
                prompt = style.replace("{prompt}", prompt) if "{prompt}" in style else ", ".join(x for x in (prompt, style) if x)
            return prompt

        def apply_styles_to_prompt(self, prompt: str, styles: List[str]) -> str:
            return self._merge(prompt, [self.styles.get(x, self.no_style).prompt for x in styles])

        def apply_negative_styles_to_prompt(self, prompt: str, styles: List[str]) -> str:
            return self._merge(prompt, [self.styles.get(x, self.no_style).negative_prompt for x in styles])

    shared.prompt_styles = StyleDatabase()
    sd_vae.vae_dict = {name: f"/models/VAE/{name}" for name in VAE_FILES}
    if host == "forge":
        main_entry = module("modules_forge.main_entry")
        main_entry.module_list = {name: f"/models/VAE/{name}" for name in FORGE_MODULES}
    return sd_models
