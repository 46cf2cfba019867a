"""SDFix e2e observer for ComfyUI: a test-only custom node pack that watches prompts from the inside.

Link it beside SDFix (``ln -s <repo>/tests/e2e/comfy_observer ComfyUI/custom_nodes/sdfix_observer``).  It
never changes what a node computes; it records

* every VAE ``decoder``/``encoder`` forward (forward pre-hooks on the ``first_stage_model`` of every
  ``comfy.sd.VAE`` built after it loaded): input and weight dtype, ``vae.vae_dtype``, the torch flags,
  autocast, and the node running;
* around every node ComfyUI executes (``execution.execute``): the torch flags and each VAE's state
  (``vae_dtype``, its weights' dtypes and storage pointers) before and after;
* every PIL resize and every ``comfy.utils.common_upscale``/``lanczos`` call, with the node running;
* every KSampler run (``comfy.samplers.KSampler.sample``): sampler, scheduler, steps, denoise, its
  schedule, ``start_step`` and seed.

Routes: GET ``/sdfix-observer/records``, POST ``/sdfix-observer/reset``, GET ``/sdfix-observer/flags``,
GET ``/sdfix-observer/vae-digest`` (a hash of every VAE's weights), POST ``/sdfix-observer/inject-failure``
({"target": "decode"|"none"}: SDFix's fp32 VAE context raises on entry), POST
``/sdfix-observer/vae-memory-budget`` ({"gb": number|null}: ``SDFIX_VAE_MEMORY_GB`` in this process).
Node ``SDFixObserverFp32Decode``: decodes with a VAE loaded from the checkpoint file in fp32 (ComfyUI's
``--fp32-vae``), the reference SDFix's exact decode must equal.

With ``SDFIX_OBSERVER_TF32=1`` it turns TF32 and ``cudnn.benchmark`` on at start, as ComfyUI leaves them on
an Ampere+ GPU with ``--fast`` (PyTorch's own cuDNN default is TF32 on), so a CPU run has a GPU user's flags.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import weakref

import comfy.samplers
import comfy.sd
import comfy.utils
import execution
import folder_paths
import torch
from PIL import Image

if os.environ.get("SDFIX_OBSERVER_TF32") == "1":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

_LOCK = threading.Lock()
_RECORDS = {"vae": [], "nodes": [], "resize": [], "sampling": [], "errors": []}
_CURRENT = {}
_VAES = weakref.WeakSet()


def _record(kind, entry):
    with _LOCK:
        _RECORDS[kind].append(dict(entry, node=_CURRENT.get("node"), class_type=_CURRENT.get("class_type")))


def read_flags():
    reads = {
        "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "fp32_precision": lambda: torch.backends.fp32_precision,
        "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
        "mkldnn.conv.fp32_precision": lambda: torch.backends.mkldnn.conv.fp32_precision,
        "cuda.matmul.allow_fp16_reduced_precision_reduction":
            lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "cuda.matmul.allow_bf16_reduced_precision_reduction":
            lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    }
    out = {}
    for name, read in reads.items():
        try:
            out[name] = read()
        except AttributeError:
            continue
        except Exception as exc:  # noqa: BLE001
            out[name] = f"<raised: {exc}>"[:120]
    return out


# --- VAEs ------------------------------------------------------------------------------------------


def _vae_hook(vae_ref, part):
    def hook(module, args):
        vae = vae_ref()
        tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
        _record("vae", {
            "part": part, "vae": id(vae) if vae is not None else None,
            "input_dtype": str(tensor.dtype) if tensor is not None else None,
            "input_shape": list(tensor.shape) if tensor is not None else None,
            "weight_dtype": str(next(module.parameters()).dtype),
            "vae_dtype": str(getattr(vae, "vae_dtype", None)),
            "autocast": torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"),
            "flags": read_flags(),
        })

    return hook


_original_init = comfy.sd.VAE.__init__


def _init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    model = getattr(self, "first_stage_model", None)
    if model is None:
        return
    _VAES.add(self)
    ref = weakref.ref(self)
    for part in ("decoder", "encoder"):
        net = getattr(model, part, None)
        if isinstance(net, torch.nn.Module):
            net.register_forward_pre_hook(_vae_hook(ref, part))


comfy.sd.VAE.__init__ = _init


def vae_states():
    states = []
    for vae in list(_VAES):
        params = list(vae.first_stage_model.parameters())
        states.append({
            "vae": id(vae), "vae_dtype": str(vae.vae_dtype), "vae_dtype_id": id(vae.vae_dtype),
            "dtypes": sorted({str(p.dtype) for p in params}),
            "pointers": hashlib.blake2b(repr([p.data_ptr() for p in params]).encode(), digest_size=8).hexdigest(),
            "instance_attrs": sorted(k for k in vars(vae) if k.endswith("tiled_")),
        })
    return sorted(states, key=lambda s: s["vae"])


def vae_digest():
    out = {}
    for vae in list(_VAES):
        h = hashlib.blake2b(digest_size=16)
        for name, p in vae.first_stage_model.state_dict().items():
            data = p.detach().contiguous().cpu()
            h.update(name.encode())
            h.update(str(data.dtype).encode())
            h.update((data.view(torch.int16) if data.element_size() == 2 else data.view(torch.int32)).numpy().tobytes()
                     if data.is_floating_point() else data.numpy().tobytes())
        out[str(id(vae))] = {"digest": h.hexdigest(), "vae_dtype": str(vae.vae_dtype)}
    return out


# --- every node ------------------------------------------------------------------------------------

_original_execute = execution.execute


async def _execute(server, dynprompt, caches, current_item, *args, **kwargs):
    class_type = dynprompt.get_node(current_item)["class_type"]
    entry = {"node": current_item, "class_type": class_type, "before_flags": read_flags(), "before_vaes": vae_states()}
    _CURRENT.update(node=current_item, class_type=class_type)
    try:
        return await _original_execute(server, dynprompt, caches, current_item, *args, **kwargs)
    finally:
        _CURRENT.clear()
        entry.update(after_flags=read_flags(), after_vaes=vae_states())
        with _LOCK:
            _RECORDS["nodes"].append(entry)


execution.execute = _execute


# --- resizes and samplings -------------------------------------------------------------------------

_original_resize = Image.Image.resize


def _resize(self, size, *args, **kwargs):
    if _CURRENT:
        resample = args[0] if args else kwargs.get("resample")
        _record("resize", {"what": "PIL", "mode": self.mode, "source": list(self.size), "target": list(size),
                           "resample": int(resample) if resample is not None else None})
    return _original_resize(self, size, *args, **kwargs)


Image.Image.resize = _resize


def _wrap_utils(name):
    original = getattr(comfy.utils, name)

    def wrapper(samples, width, height, *args, **kwargs):
        _record("resize", {"what": f"comfy.utils.{name}", "source": [samples.shape[-1], samples.shape[-2]],
                           "target": [width, height], "method": args[0] if args else None})
        return original(samples, width, height, *args, **kwargs)

    setattr(comfy.utils, name, wrapper)


_wrap_utils("common_upscale")
_wrap_utils("lanczos")

_original_sample = comfy.samplers.KSampler.sample


def _sample(self, noise, positive, negative, cfg, *args, **kwargs):
    sigmas = kwargs.get("sigmas") if kwargs.get("sigmas") is not None else self.sigmas
    _record("sampling", {"sampler": self.sampler, "scheduler": self.scheduler, "steps": self.steps,
                         "denoise": self.denoise, "cfg": cfg, "sigmas": [round(float(s), 6) for s in sigmas],
                         "start_step": kwargs.get("start_step"), "last_step": kwargs.get("last_step"),
                         "seed": kwargs.get("seed"), "noise_std": round(float(noise.float().std()), 6),
                         "shape": list(noise.shape)})
    return _original_sample(self, noise, positive, negative, cfg, *args, **kwargs)


comfy.samplers.KSampler.sample = _sample


# --- failure injection, memory budget, fp32 reference ----------------------------------------------

_INJECTED = {}


def inject_failure(target):
    vae_call = sys.modules.get("lib_sdfix.vae.call")
    if vae_call is None:
        raise RuntimeError("SDFix's lib_sdfix.vae.call is not loaded (did a guarded decode run yet?)")
    if "fp32_vae" in _INJECTED:
        vae_call.fp32_vae = _INJECTED.pop("fp32_vae")
    if target == "decode":
        def broken(*args, **kwargs):
            raise RuntimeError("injected by the SDFix e2e observer")

        _INJECTED["fp32_vae"] = vae_call.fp32_vae
        vae_call.fp32_vae = broken
    return target


class SDFixObserverFp32Decode:
    """Decode with the checkpoint's VAE loaded in fp32 (as ComfyUI --fp32-vae loads it): the reference."""

    CATEGORY = "SDFix/testing"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def decode(self, samples, ckpt_name):
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        sd = comfy.utils.load_torch_file(path)
        prefix = "first_stage_model."
        vae_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        vae = comfy.sd.VAE(sd=vae_sd, dtype=torch.float32)
        _VAES.discard(vae)  # not the graph's VAE: leave it out of the state records
        return (vae.decode(samples["samples"]),)


NODE_CLASS_MAPPINGS = {"SDFixObserverFp32Decode": SDFixObserverFp32Decode}
NODE_DISPLAY_NAME_MAPPINGS = {"SDFixObserverFp32Decode": "SDFix observer: fp32 reference decode (tests)"}


def _routes():
    from aiohttp import web
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/sdfix-observer/records")
    async def records(request):
        with _LOCK:
            return web.json_response({k: list(v) for k, v in _RECORDS.items()})

    @routes.post("/sdfix-observer/reset")
    async def reset(request):
        with _LOCK:
            for v in _RECORDS.values():
                v.clear()
        return web.json_response({"ok": True})

    @routes.get("/sdfix-observer/flags")
    async def flags(request):
        return web.json_response(read_flags())

    @routes.get("/sdfix-observer/vae-digest")
    async def digest(request):
        return web.json_response(vae_digest())

    @routes.post("/sdfix-observer/inject-failure")
    async def inject(request):
        body = await request.json()
        try:
            return web.json_response({"target": inject_failure(body.get("target", "none"))})
        except Exception as exc:  # noqa: BLE001
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)

    @routes.post("/sdfix-observer/vae-memory-budget")
    async def budget(request):
        gb = (await request.json()).get("gb")
        if gb is None:
            os.environ.pop("SDFIX_VAE_MEMORY_GB", None)
        else:
            os.environ["SDFIX_VAE_MEMORY_GB"] = str(float(gb))
        return web.json_response({"SDFIX_VAE_MEMORY_GB": os.environ.get("SDFIX_VAE_MEMORY_GB")})


_routes()
