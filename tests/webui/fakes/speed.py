"""The hosts' speed and memory options as each host has and reads them (lib_sdfix.diagnose.speed_options):
``opts.data_labels`` and ``Options.set`` (modules/options.py), cross attention's onchange
(``sd_hijack.model_hijack.redo_hijack``), and what each option does to a generation, where the host
reads it: token merging on the U-Net (``apply_token_merging`` / Forge's TomePatcher), NGMS in the
CFG denoiser (``p.s_min_uncond`` from ``fill_fields_from_opts`` in A1111/Forge, ``opts.s_min_uncond``
in reForge), TAESD in the decode (decode.py).  Options a host keeps but never reads are left out, as
the option table leaves them out for that host."""
from __future__ import annotations

import types
from typing import Any, Callable, Dict

#: (default, choices) per option and host; cross attention's choices come from a callable, as in A1111.
_A1111 = {
    "cross_attention_optimization": "Automatic", "token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0,
    "s_min_uncond": 0.0, "s_min_uncond_all": False, "skip_early_cond": 0.0, "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False, "persistent_cond_cache": True, "batch_cond_uncond": True, "fp8_storage": "Disable",
    "cache_fp16_weight": False,
}
_COMMON = {"token_merging_ratio": 0.0, "token_merging_ratio_hr": 0.0, "s_min_uncond": 0.0, "s_min_uncond_all": False,
           "skip_early_cond": 0.0, "persistent_cond_cache": True}
_FORGE = {**_COMMON, "forge_unet_storage_dtype": "Automatic", "forge_inference_memory": 1024,
          "forge_async_loading": "Queue", "forge_pin_shared_memory": "CPU"}
ATTENTION_CHOICES = ["Automatic", "Doggettx", "sdp", "sdp-no-mem", "V1", "None"]


class OptionInfo:
    def __init__(self, default, onchange=None, component_args=None):
        self.default, self.onchange, self.component_args = default, onchange, component_args
        self.do_not_save = self.restrict_api = False


def install_speed_options(module: Callable[..., types.ModuleType], host: str, shared: Any) -> types.ModuleType:
    """Add the host's options to ``shared.opts`` with ``data_labels``/``set``; returns ``modules.sd_hijack``."""
    opts = shared.opts
    sd_hijack = module("modules.sd_hijack")
    hijack = types.SimpleNamespace(optimization_method="Doggettx", redone=[])

    def redo_hijack(*_):
        hijack.redone.append(opts.cross_attention_optimization)
        hijack.optimization_method = {"Automatic": "Doggettx"}.get(opts.cross_attention_optimization,
                                                                   opts.cross_attention_optimization)
        shared.sd_model.attention = hijack.optimization_method  # the U-Net's attention is re-hijacked

    hijack.redo_hijack = redo_hijack
    sd_hijack.model_hijack = hijack
    defaults = {"a1111": _A1111, "forge": _FORGE, "reforge": _COMMON}[host]
    labels: Dict[str, OptionInfo] = {"sd_vae_decode_method": OptionInfo("Full", component_args={"choices": ["Full", "TAESD"]})}
    for key, default in defaults.items():
        info = OptionInfo(default)
        if key == "cross_attention_optimization":
            info = OptionInfo(default, onchange=redo_hijack, component_args=lambda: {"choices": list(ATTENTION_CHOICES)})
        labels[key] = info
        setattr(opts, key, default)
    opts.data_labels = labels
    opts.set_calls = []

    def set_option(key, value, is_api=False, run_callbacks=True):
        """modules/options.py Options.set: unchanged -> False; else set, then the onchange (if asked)."""
        opts.set_calls.append((key, value, run_callbacks))
        old = getattr(opts, key, None)
        if old == value:
            return False
        option = opts.data_labels.get(key)  # the hosts register every option; these fakes only the speed ones
        setattr(opts, key, value)
        if option is None:
            return True
        if run_callbacks and option.onchange is not None:
            try:
                option.onchange()
            except Exception:  # noqa: BLE001 -- the host prints it and sets the old value back
                setattr(opts, key, old)
                return False
        return True

    opts.set = set_option
    opts.get_default = lambda key: opts.data_labels[key].default
    return sd_hijack


def token_merging_ratio(p: Any, opts: Any) -> float:
    """``p.get_token_merging_ratio()`` of a first pass (the Hires pass's: ``token_merging_ratio_hr`` first)."""
    if getattr(p, "is_hr_pass", False) and getattr(opts, "token_merging_ratio_hr", 0):
        return opts.token_merging_ratio_hr
    return getattr(opts, "token_merging_ratio", 0.0) or 0.0


def skips_uncond(host: str, p: Any, opts: Any, sigma: float, step: int) -> bool:
    """NGMS in the CFG denoiser: A1111/Forge skip odd steps (``self.step % 2``) below ``p.s_min_uncond``;
    reForge reads ``opts.s_min_uncond`` and skips even steps."""
    if host == "reforge":
        limit = getattr(opts, "s_min_uncond", 0.0)
        return limit > 0 and sigma < limit and (step % 2 == 0 or opts.s_min_uncond_all)
    limit = getattr(p, "s_min_uncond", None) or 0.0
    return (step % 2 or opts.s_min_uncond_all) and limit > 0 and sigma < limit
