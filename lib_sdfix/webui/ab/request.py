"""An A/B request in this host: the body checked with the names this host knows, its payload checked by
the host's own txt2img API model, and the script args each of its generations gets.

What every run of a plan shares is resolved here once (:func:`prepare`): the seed, the fields, whether
Hires runs and whether its upscaler is a latent one.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from lib_sdfix.parity import resolve_hires_sampling
from lib_sdfix.settings import SDFixSettings, SettingsError
from lib_sdfix.webui.apply import settings_defaults
from lib_sdfix.webui.hosts import current

__all__ = ["request_from_body", "txt2img_fields", "script_args_for", "prepare", "sampler_already_equal"]

_PAYLOAD_DROPPED = ("script_args", "alwayson_scripts", "infotext", "send_images", "save_images",
                    "force_task_id", "sampler_index")


def request_from_body(body: Any) -> Any:
    """A validated A/B request (lib_sdfix.ab), with the names this host knows for its name fields."""
    from lib_sdfix import ab

    host = current()
    return ab.ab_request_from_body(body, settings_defaults(), choices=host.payload_names(),
                                   extra_rules=host.txt2img_extra_fields())


def txt2img_fields(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The payload checked by the host's own txt2img API model; SettingsError naming bad fields."""
    from modules import sd_samplers
    from modules.api import models
    from pydantic import ValidationError

    defaults = current().txt2img_defaults()
    # A null where this host's API needs a value (Forge's Hires modules) means its default, not a TypeError.
    body = {**defaults, **{k: v for k, v in payload.items() if v is not None or k not in defaults}}
    if body.get("script_name"):
        raise SettingsError({"payload.script_name": "selectable scripts are not run in a comparison"})
    try:
        request = models.StableDiffusionTxt2ImgProcessingAPI(**body)
    except ValidationError as err:
        raise SettingsError({"payload." + ".".join(str(x) for x in e["loc"]): e["msg"] for e in err.errors()}) from None
    except TypeError as err:
        raise SettingsError({"payload": str(err)}) from None
    requested = request.sampler_name or request.sampler_index
    known = current().payload_names()["sampler_name"]
    if requested and requested not in known:
        # The host would silently run its first sampler instead: a typo must not compare something else.
        field = "sampler_name" if request.sampler_name else "sampler_index"
        raise SettingsError({f"payload.{field}": known.unknown(requested)})
    sampler, scheduler = sd_samplers.get_sampler_and_scheduler(requested, request.scheduler)
    fields = {k: v for k, v in vars(request).items() if k not in _PAYLOAD_DROPPED and not k.startswith("_")}
    fields.pop("script_name", None)
    fields["sampler_name"] = sampler
    if not fields.get("scheduler") and scheduler != "Automatic":
        fields["scheduler"] = scheduler
    if fields.get("n_iter", 1) != 1 or fields.get("batch_size", 1) != 1:
        raise SettingsError({"payload.batch_size": "A/B compares one image: batch_size and n_iter must be 1"})
    fields["override_settings_restore_afterwards"] = True
    return fields


# --- script args ------------------------------------------------------------------------------------

_DEFAULTS: Dict[int, List[Any]] = {}


def _default_args(runner: Any) -> List[Any]:
    """Every script's UI defaults in one list (what the WebUI's API starts from), cached per runner."""
    key = id(runner)
    if key not in _DEFAULTS:
        size = max([1] + [s.args_to for s in runner.scripts])
        args: List[Any] = [None] * size
        args[0] = 0  # no selectable script
        missing = [s for s in runner.scripts if s.args_to > s.args_from and getattr(s, "controls", None) is None]
        if missing:  # --nowebui: no UI was built; build the controls once, as the API does
            import gradio as gr

            with gr.Blocks():
                for script in missing:
                    script.controls = script.ui(script.is_img2img)
        for script in runner.scripts:
            controls = getattr(script, "controls", None) or []
            args[script.args_from:script.args_from + len(controls)] = [getattr(c, "value", None) for c in controls]
        _DEFAULTS[key] = args
    return list(_DEFAULTS[key])


def script_args_for(runner: Any, alwayson: Dict[str, Any], settings: SDFixSettings) -> List[Any]:
    """The runner's script args: defaults, the payload's ``alwayson_scripts``, SDFix's slot = ``settings``."""
    args = _default_args(runner)
    by_title = {s.title().lower(): s for s in runner.alwayson_scripts}
    for name, spec in (alwayson or {}).items():
        script = by_title.get(str(name).lower())
        if script is None:
            raise SettingsError({f"payload.alwayson_scripts.{name}": "no such AlwaysOn script"})
        values = spec.get("args", []) if isinstance(spec, dict) else None
        if not isinstance(values, list):
            raise SettingsError({f"payload.alwayson_scripts.{name}.args": "expected a list"})
        width = script.args_to - script.args_from
        args[script.args_from:script.args_from + min(width, len(values))] = values[:width]
    ours = by_title.get("sdfix")
    if ours is None:
        raise SettingsError({"sdfix": "SDFix's script is not in the txt2img script runner"})
    args[ours.args_from] = settings.as_dict()
    return args


# --- what every run of a plan shares ----------------------------------------------------------------


def sampler_already_equal(fields: Dict[str, Any]) -> bool:
    """Whether the Hires pass already samples as the first pass does (then parity changes nothing)."""
    first = resolve_hires_sampling(fields.get("sampler_name") or "", fields.get("scheduler"), None, None, parity=False)
    hires = resolve_hires_sampling(fields.get("sampler_name") or "", fields.get("scheduler"),
                                   fields.get("hr_sampler_name"), fields.get("hr_scheduler"), parity=False)
    return (first.sampler, first.scheduler) == (hires.sampler, hires.scheduler)


def prepare(request: Any) -> Tuple[Any, Dict[str, Any], Dict[str, Any], bool, bool]:
    """(the request with its seed resolved, its AlwaysOn scripts, its fields as the host checks them,
    whether Hires runs, whether its upscaler is a latent one) -- what every run of a plan shares."""
    request = request.with_resolved_seed()
    fields = txt2img_fields(request.payload)
    upscaler = fields.get("hr_upscaler")
    return (request, dict(request.payload.get("alwayson_scripts") or {}), fields, bool(fields.get("enable_hr")),
            upscaler is None or upscaler in current().shared.latent_upscale_modes)
