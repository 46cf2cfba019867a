"""``modules.api``: the txt2img API model built from the processing class's fields, and ``text2imgapi``
(with ``Api.apply_infotext``'s script part)."""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from typing import Any, Dict, Optional

from .infotext import parse_generation_parameters

_API_NOT_ALLOWED = ("self", "kwargs", "sd_model", "outpath_samples", "outpath_grids", "sampler_index",
                    "extra_generation_params", "overlay_images", "do_not_reload_embeddings", "seed_enable_extras",
                    "prompt_for_display", "sampler_noise_scheduler_override", "ddim_discretize")


def install_api(module, shared, sd_samplers, scripts, processing, host) -> None:
    """modules/api: the txt2img API model built from the processing class's fields, and text2imgapi."""
    api_pkg = module("modules.api", package=True)
    models = module("modules.api.models")
    api = module("modules.api.api")
    api_pkg.models, api_pkg.api = models, api
    try:
        from pydantic import Field, create_model
    except ImportError:  # the comparison tests skip without pydantic
        return
    cls = processing.StableDiffusionProcessingTxt2Img
    hints = typing.get_type_hints(cls)
    fields: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in _API_NOT_ALLOWED:
            continue
        kind = hints[f.name]
        fields[f.name] = (Optional[Any if kind is object else kind], Field(default=f.default, alias=f.name))
    for key, kind, default in (("sampler_index", str, "Euler"), ("script_name", str, None), ("script_args", list, []),
                               ("send_images", bool, True), ("save_images", bool, False),
                               ("alwayson_scripts", dict, {}), ("force_task_id", str, None), ("infotext", str, None)):
        fields[key] = (kind, Field(default=default, alias=key))
    model = create_model("StableDiffusionProcessingTxt2Img", **fields)
    model.__config__.allow_population_by_field_name = True
    model.__config__.allow_mutation = True
    models.StableDiffusionTxt2ImgProcessingAPI = model

    def default_script_args(runner):
        """init_default_script_args: every script's UI default values."""
        args = [None] * max([1] + [s.args_to for s in runner.scripts])
        args[0] = 0
        for script in runner.scripts:
            if script.controls:
                args[script.args_from:script.args_to] = [c.value for c in script.controls]
        return args

    def text2imgapi(body):
        """Api.text2imgapi for a dict body, without the queue; returns the Processed (not base64 images)."""
        from fastapi import HTTPException

        request = model(**body)
        runner = scripts.scripts_txt2img
        sampler, scheduler = sd_samplers.get_sampler_and_scheduler(request.sampler_name or request.sampler_index,
                                                                   request.scheduler)
        if sampler not in sd_samplers.all_samplers_map:
            raise HTTPException(status_code=400, detail="Sampler not found")
        populate = request.copy(update={"sampler_name": sampler, "do_not_save_samples": not request.save_images,
                                        "do_not_save_grid": not request.save_images})
        if populate.sampler_name:
            populate.sampler_index = None
        if not populate.scheduler and scheduler != "Automatic":
            populate.scheduler = scheduler
        args = dict(vars(populate))
        for key in ("script_name", "script_args", "alwayson_scripts", "infotext", "send_images", "save_images"):
            args.pop(key, None)
        script_args = default_script_args(runner)
        for index, value in infotext_script_args(runner, request.infotext).items():
            script_args[index] = value
        for name, spec in (request.alwayson_scripts or {}).items():
            script = next((s for s in runner.scripts if s.title().lower() == name.lower()), None)
            if script is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            if "args" in spec:
                for i in range(min(script.args_to - script.args_from, len(spec["args"]))):
                    script_args[script.args_from + i] = spec["args"][i]
        with contextlib.closing(processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)) as p:
            p.is_api = True
            p.scripts = runner
            p.outpath_grids = shared.opts.outdir_txt2img_grids
            p.outpath_samples = shared.opts.outdir_txt2img_samples
            shared.state.begin(job="scripts_txt2img")
            try:
                p.script_args = tuple(script_args)
                return processing.process_images(p)
            finally:
                shared.state.end()

    def infotext_script_args(runner, infotext):
        """Api.apply_infotext's script part: each script control's infotext field function, given the parsed
        ``infotext``, sets that control's slot (converted to the type of the control's value)."""
        if not infotext:
            return {}
        params = parse_generation_parameters(infotext)
        indexes = {id(control): i for i, control in enumerate(runner.inputs)}
        found = {}
        for script in runner.scripts:
            for control, function in getattr(script, "infotext_fields", None) or []:
                value = function(params)
                if value is None or id(control) not in indexes:
                    continue
                kind = type(control.value)
                found[indexes[id(control)]] = value if isinstance(value, kind) else kind(value)
        return found

    api.default_script_args = default_script_args
    api.text2imgapi = text2imgapi
