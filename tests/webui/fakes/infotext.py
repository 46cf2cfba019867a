"""``modules.infotext_utils`` (``quote``, ``parse_generation_parameters`` of the parameter line) and
``processing.create_infotext``."""
from __future__ import annotations

import json
import re
import types
from typing import Any, Callable

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text):
    """infotext_utils.parse_generation_parameters, for the parameter line: key -> text (quoted values unquoted)."""
    lines = text.strip().split("\n")
    params = {}
    prompt = [line for line in lines[:-1] if not line.startswith("Negative prompt:")]
    negative = [line[len("Negative prompt:"):].strip() for line in lines[:-1] if line.startswith("Negative prompt:")]
    params["Prompt"], params["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    for key, value in _RE_PARAM.findall(lines[-1]):
        params[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return params


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def install_infotext_utils(module: Callable[..., types.ModuleType]) -> None:
    infotext_utils = module("modules.infotext_utils")
    infotext_utils.quote = quote
    infotext_utils.parse_generation_parameters = parse_generation_parameters


def make_create_infotext(shared: Any, processing: Any) -> Callable[..., str]:
    """``processing.create_infotext``: an infotext entry that raises is reported and left out."""
    opts = shared.opts

    def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                        use_main_prompt=False, index=None, all_negative_prompts=None):
        if use_main_prompt:
            index = 0
        elif index is None:
            index = position_in_batch + iteration * p.batch_size
        if all_negative_prompts is None:
            all_negative_prompts = p.all_negative_prompts
        prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
        negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
        generation_params = {
            "Steps": p.steps,
            "Sampler": p.sampler_name,
            "Schedule type": p.scheduler,
            "CFG scale": p.cfg_scale,
            "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
            "Size": f"{p.width}x{p.height}",
            "Variation seed": None if p.subseed_strength == 0 else all_subseeds[index],
            "Clip skip": None if opts.CLIP_stop_at_last_layers <= 1 else opts.CLIP_stop_at_last_layers,
            "Denoising strength": p.extra_generation_params.get("Denoising strength"),
            "Tiling": "True" if p.tiling else None,
            **p.extra_generation_params,
        }
        for key, value in generation_params.items():
            try:
                if isinstance(value, list):
                    generation_params[key] = value[index]
                elif callable(value):
                    generation_params[key] = value(**locals())
            except Exception as exc:  # noqa: BLE001 -- the WebUI's errors.report
                processing.infotext_errors.append((key, exc))
                generation_params[key] = None
        text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
        negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
        return f"{prompt_text}{negative}\n{text}".strip()

    return create_infotext
