"""The registries of names the running host keeps, for :func:`lib_sdfix.names.payload_names`.

Read at request time (a refreshed checkpoint or upscaler list counts).  What the hosts share is
here; :meth:`Host.payload_names` adds what differs (reForge's case rules and own samplers, Forge's
Hires modules, which hosts read ``sd_vae``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, Iterable

if TYPE_CHECKING:
    from lib_sdfix import names

__all__ = ["payload_names", "forge_modules"]


def payload_names(*, suffix_any_case: bool = False, any_case_samplers: Iterable[str] = (),
                  vae: bool = True) -> Dict[str, names.Names]:
    """Field -> the names this host accepts there: its samplers (``sd_samplers.all_samplers_map``),
    schedule types (``sd_schedulers.schedulers``), latent modes and upscalers, checkpoints (titles,
    ``sd_models.get_closet_checkpoint_match``, ``checkpoint_aliases``), saved styles and, with ``vae``,
    VAE files (``sd_vae.vae_dict``)."""
    from modules import sd_models, sd_samplers, sd_schedulers, shared

    from lib_sdfix import names  # with difflib: loaded by the first request that checks names, not at start

    styles = getattr(getattr(shared, "prompt_styles", None), "styles", None)
    vae_files = None
    if vae:
        from modules import sd_vae

        vae_files = list(getattr(sd_vae, "vae_dict", None) or {})
    return names.payload_names(
        list(sd_samplers.all_samplers_map),
        [(s.name, s.label, getattr(s, "aliases", None) or []) for s in sd_schedulers.schedulers],
        [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]],
        list(sd_models.checkpoints_list),
        find_checkpoint=lambda value: sd_models.get_closet_checkpoint_match(value) is not None,
        checkpoint_alias=lambda value: value in sd_models.checkpoint_aliases,
        styles=list(styles) if styles is not None else None, vae_files=vae_files,
        suffix_any_case=suffix_any_case, any_case_samplers=any_case_samplers)


def forge_modules() -> names.Names:
    """Forge's ``hr_additional_modules`` items: "Use same choices", or a VAE / text encoder file that
    ``main_entry.modules_change`` finds by its file name (it drops unknown ones silently)."""
    from modules_forge import main_entry

    from lib_sdfix import names

    known = main_entry.module_list
    return names.Names("module", ["Use same choices", *known],
                       resolve=lambda value: value if os.path.basename(value) in known else None)
