"""SDFix's HTTP routes: ``GET /sdfix/v1/status``, ``POST /sdfix/v1/ab`` and ``POST /sdfix/v1/diagnose``.

They exist only where the host serves its API (``--api`` or ``--nowebui``), and sit behind the same
``--api-auth`` credentials as ``/sdapi/v1/*``: with ``--listen --gradio-auth`` alone nobody on the
network may run generations or write files through SDFix.
"""
from __future__ import annotations

from typing import Any, Dict, List

from lib_sdfix import __version__
from lib_sdfix.settings import SettingsError
from lib_sdfix.webui import patches
from lib_sdfix.webui.apply import disabled_by_flag, settings_defaults
from lib_sdfix.webui.hooks import last_decode_size
from lib_sdfix.webui.hosts import current

__all__ = ["on_app_started", "status", "auth_dependencies"]


def auth_dependencies() -> List[Any]:
    """The host's --api-auth check (it only guards its own /sdapi routes)."""
    auth = current().cmd_opt("api_auth")
    if not auth:
        return []
    from secrets import compare_digest

    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    credentials = dict(item.split(":", 1) for item in auth.split(",") if ":" in item)

    def check(given=Depends(HTTPBasic())) -> bool:
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password.encode(), expected.encode()):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    # A real class, not the string this module's postponed annotations would give FastAPI.
    check.__annotations__ = {"given": HTTPBasicCredentials, "return": bool}
    return [Depends(check)]


def status() -> Dict[str, Any]:
    import torch

    from lib_sdfix.precision import flag_api, read_flags

    host = current()
    gpu = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        gpu = {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
               "tf32_capable": major >= 8}
    environment = {
        **host.audit(),
        "flag_api": flag_api(), "gpu": gpu,
        "flags": {k: str(v) if not isinstance(v, (bool, str)) else v for k, v in read_flags().items()},
        "vae_weights": _weights_mode(host),
        "vae_fp32_memory": vae_memory(host),
        "hires_sampler_selection_shown": bool(getattr(host.shared.opts, "hires_fix_show_sampler", False)),
        "sd_vae_decode_method": host.decode_method(), "sd_vae_encode_method": host.encode_method(),
        "patched_now": patches.active(),
    }
    return {"version": __version__, "disabled": disabled_by_flag(), "settings": settings_defaults().as_dict(),
            "environment": environment}


def _weights_mode(host: Any) -> Dict[str, Any]:
    """Which fp32 weights a guarded call would use: "exact" (from the file), "upcast" or "fp32"."""
    from lib_sdfix.vae.exact import exact_weights

    try:
        module = host.vae_module()
        if module is None:
            return {"mode": None, "reason": "no model loaded"}
        result = exact_weights(module, host.vae_source_files())
        if result.reason == "the VAE already runs in fp32":
            return {"mode": "fp32", "reason": result.reason}
        return {"mode": result.mode, "reason": result.reason, "cache_bytes": result.nbytes}
    except Exception as exc:  # noqa: BLE001 -- a status page must answer
        return {"mode": None, "reason": f"{type(exc).__name__}: {exc}"}


def vae_memory(host: Any) -> Dict[str, Any]:
    """The fp32 decode's estimated peak at the current Hires size -- the last decode SDFix guarded,
    else twice the model's native size (the Hires default) -- and whether it would run tiled."""
    import torch

    from lib_sdfix.vae.plan import memory_report

    try:
        module = host.vae_module()
        if module is None:
            return {"available": False, "reason": "no model loaded"}
        size, source = last_decode_size(), "last decode"
        if size is None:
            native = 1024 if getattr(host.sd_model(), "is_sdxl", False) else 512
            size, source = (2 * native, 2 * native), "Hires 2x of the native size (no decode seen yet)"
        device = getattr(host.shared, "device", None)
        device = device if isinstance(device, torch.device) else None
        return {**memory_report(module, size[0], size[1], device=device), "size_source": source}
    except Exception as exc:  # noqa: BLE001 -- a status page must answer
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}


def on_app_started(demo: Any, app: Any) -> None:
    host = current()
    if not host.api_enabled():
        return
    from fastapi import Body, HTTPException
    from modules import call_queue

    # The runners load only where the host serves its API (not at every WebUI start).
    from lib_sdfix.webui.ab.request import request_from_body
    from lib_sdfix.webui.ab.runner import api_response, run_comparison
    from lib_sdfix.webui.diagnose import runner as diagnose_runner

    def queued(name: str, job: str, validate: Any, runner: Any, respond: Any) -> Any:
        """A POST handler: the body validated before anything runs (422 naming the field), then the run
        under the WebUI's queue lock and job state (its progress bar and Interrupt follow it)."""

        def handler(body=Body(...)):
            try:
                request = validate(body)
            except SettingsError as err:
                raise HTTPException(status_code=422, detail=f"SDFix: {err}") from None
            shared = host.shared
            with call_queue.queue_lock:
                shared.state.begin(job=job)
                try:
                    result = runner(request)
                except SettingsError as err:
                    raise HTTPException(status_code=422, detail=f"SDFix: {err}") from None
                finally:
                    shared.state.end()
            return respond(result)

        handler.__name__ = handler.__qualname__ = name  # FastAPI's operation id: one per route
        return handler

    compare = queued("compare", "sdfix_ab", request_from_body, run_comparison, api_response)
    diagnose = queued("diagnose", "sdfix_diagnose", diagnose_runner.request_from_body, diagnose_runner.run_diagnosis,
                      diagnose_runner.api_response)

    dependencies = auth_dependencies()
    paths = {getattr(r, "path", None) for r in app.routes}
    if "/sdfix/v1/status" not in paths:
        app.add_api_route("/sdfix/v1/status", status, methods=["GET"], dependencies=dependencies)
    if "/sdfix/v1/ab" not in paths:
        app.add_api_route("/sdfix/v1/ab", compare, methods=["POST"], dependencies=dependencies)
    if "/sdfix/v1/diagnose" not in paths:
        app.add_api_route("/sdfix/v1/diagnose", diagnose, methods=["POST"], dependencies=dependencies)
