"""SDFix e2e observer: a test-only WebUI extension that watches generations from the inside.

Install it beside SDFix in the WebUI under test (symlink ``tests/e2e/observer`` into the WebUI's
``extensions/sdfix-observer``).  It never changes a generation; it records:

* every VAE encoder/decoder forward (forward pre-hooks): input dtype, weight dtype, and the torch
  flags of both APIs at the moment the VAE runs; every UNet forward and its timestep (to count
  samplings and tell which steps ran);
* the sampler and schedule each sampling pass really uses (first pass, Hires pass) and its sigmas;
* every PIL resize (source size, target size, filter, caller);
* whether the WebUI functions SDFix may patch are the WebUI's own objects again after a generation.

Routes (under ``/sdfix-observer``): GET ``/records``, POST ``/reset``, GET ``/flags``,
GET ``/functions``, GET ``/xyz-axes``, POST ``/hide-sdfix`` ({"hide": bool}), POST
``/inject-failure`` ({"target": "decode"|"none"}), POST ``/vae-memory-budget`` ({"gb": number|null}: sets or
clears ``SDFIX_VAE_MEMORY_GB`` in this process, so a small budget makes SDFix's fp32 VAE run tiled).

With ``SDFIX_OBSERVER_TF32=1`` it sets the TF32/benchmark flags at start exactly as
``modules/devices.py: enable_tf32`` does on an Ampere+ GPU, so a CPU run reproduces a GPU user's flags.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

import modules.scripts as scripts
import torch
from modules import script_callbacks, shared
from PIL import Image

if os.environ.get("SDFIX_OBSERVER_TF32") == "1":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

if os.environ.get("SDFIX_OBSERVER_DTYPE_VAE") == "fp32":
    # reForge on a compute-capability >= 8 GPU: the VAE object runs bf16 while devices.dtype_vae says fp32
    # (--vae-in-bf16 on the CPU sets both to bf16; this puts the WebUI's attribute back to fp32).
    from modules import devices as _devices

    _devices.dtype_vae = torch.float32

_LOCK = threading.Lock()
_RECORDS = {"vae": [], "sampling": [], "resize": [], "unet": [], "errors": []}


def _record(kind, entry):
    with _LOCK:
        _RECORDS[kind].append(entry)


def read_flags():
    """Every flag through plain attribute access, as any extension would; '<raised: ...>' if torch raises."""
    reads = {
        "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "fp32_precision": lambda: torch.backends.fp32_precision,
        "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
        "cudnn.rnn.fp32_precision": lambda: torch.backends.cudnn.rnn.fp32_precision,
    }
    out = {}
    for name, read in reads.items():
        try:
            out[name] = read()
        except AttributeError:
            continue  # this torch has no such flag
        except Exception as exc:  # noqa: BLE001
            out[name] = f"<raised: {exc}>"[:120]
    return out


# --- VAE -----------------------------------------------------------------------------------------

_HOOKED = set()


def _vae_pre_hook(part):
    def hook(module, args):
        from modules import devices

        tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
        weight = next(module.parameters())
        _record("vae", {
            "part": part,
            "input_dtype": str(tensor.dtype) if tensor is not None else None,
            "weight_dtype": str(weight.dtype),
            "dtype_vae": str(devices.dtype_vae),
            "wrapper_dtype": _vae_wrapper_dtype(),
            "autocast_cpu": torch.is_autocast_cpu_enabled() if hasattr(torch, "is_autocast_cpu_enabled") else None,
            "flags": read_flags(),
            "thread": threading.current_thread().name,
        })

    return hook


def _vae_module(sd_model):
    """The VAE module that runs: AUTOMATIC1111/reForge ``first_stage_model``; Forge keeps it in
    ``forge_objects.vae`` (its ``first_stage_model`` is None)."""
    wrapper = getattr(getattr(sd_model, "forge_objects", None), "vae", None)
    module = getattr(wrapper, "first_stage_model", None)
    return module if module is not None else getattr(sd_model, "first_stage_model", None)


def _vae_wrapper_dtype():
    wrapper = getattr(getattr(shared.sd_model, "forge_objects", None), "vae", None)
    dtype = getattr(wrapper, "vae_dtype", None)
    return None if dtype is None else str(dtype)


def hook_vae(sd_model):
    vae = _vae_module(sd_model)
    if vae is None or id(vae) in _HOOKED:
        return
    _HOOKED.add(id(vae))
    vae.decoder.register_forward_pre_hook(_vae_pre_hook("decoder"))
    vae.encoder.register_forward_pre_hook(_vae_pre_hook("encoder"))
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if unet is None:  # Forge / reForge: the UNet sits in forge_objects.unet.model
        unet = getattr(getattr(getattr(getattr(sd_model, "forge_objects", None), "unet", None), "model", None),
                       "diffusion_model", None)
    if unet is not None:
        unet.register_forward_pre_hook(_unet_pre_hook, with_kwargs=True)


def _unet_pre_hook(module, args, kwargs):
    """Every UNet forward: its input's shape and its timestep (the second positional argument, or
    ``timesteps=`` as SDXL's wrapper passes it), to compare which steps ran."""
    t = args[1] if len(args) > 1 else kwargs.get("timesteps")
    _record("unet", {"shape": list(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None,
                     "t": round(float(t.flatten()[0]), 4) if isinstance(t, torch.Tensor) and t.numel() else None})


script_callbacks.on_model_loaded(hook_vae)
if getattr(shared, "sd_model", None) is not None:
    try:
        hook_vae(shared.sd_model)
    except Exception:  # noqa: BLE001 -- Forge loads the model lazily; on_model_loaded hooks it then
        pass


# --- PIL resize ----------------------------------------------------------------------------------

_ORIGINAL_RESIZE = Image.Image.resize
if not getattr(_ORIGINAL_RESIZE, "_sdfix_observer", False):

    def observed_resize(self, size, resample=None, *args, **kwargs):
        frame = sys._getframe(1)
        callers = []
        while frame is not None and len(callers) < 4:
            callers.append(f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}")
            frame = frame.f_back
        _record("resize", {"from": list(self.size), "to": [int(size[0]), int(size[1])],
                           "resample": None if resample is None else int(resample),
                           "box": kwargs.get("box") is not None or bool(args[:1] and args[0] is not None),
                           "mode": self.mode, "callers": callers})
        return _ORIGINAL_RESIZE(self, size, resample, *args, **kwargs)

    observed_resize._sdfix_observer = True
    Image.Image.resize = observed_resize


# --- sampling ------------------------------------------------------------------------------------


_FAIL = {"seed": None}
_MARK = (255, 0, 255)


class SDFixObserverScript(scripts.Script):
    """Records the sampler and schedule of every sampling pass.  As "another extension" it can also
    mark images in postprocess_image (its one arg), and make the generation of one seed raise."""

    def title(self):
        return "SDFix observer"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        return [gr.Checkbox(label="SDFix observer: mark images", value=False, elem_id=self.elem_id("mark"))]

    def process(self, p, *args):
        if _FAIL["seed"] is not None and getattr(p, "seed", None) == _FAIL["seed"]:
            def fail(*a, **k):
                raise RuntimeError("the SDFix e2e observer failed this generation on purpose")

            p.sample = fail

    def postprocess_image(self, p, pp, *args):
        if args and args[0] is True:
            image = pp.image.copy()
            for x in range(4):
                for y in range(4):
                    image.putpixel((x, y), _MARK)
            pp.image = image

    def process_before_every_sampling(self, p, *args, **kwargs):
        sampler = p.sampler
        entry = {
            "is_hr_pass": bool(getattr(p, "is_hr_pass", False)),
            "sampler": getattr(getattr(sampler, "config", None), "name", None),
            "scheduler_field": p.hr_scheduler if getattr(p, "is_hr_pass", False) else p.scheduler,
            "sigmas": None,
        }
        _record("sampling", entry)
        original = getattr(sampler, "get_sigmas", None)
        if original is None:
            return

        def get_sigmas(p_, steps):
            sigmas = original(p_, steps)
            entry["sigmas"] = [round(float(s), 5) for s in sigmas]
            return sigmas

        sampler.get_sigmas = get_sigmas


# --- functions SDFix may patch ------------------------------------------------------------------


def _patch_targets():
    from modules import images, processing, sd_samplers, sd_samplers_common, upscaler

    targets = {
        "processing.decode_first_stage": (processing, "decode_first_stage"),
        "processing.images_tensor_to_samples": (processing, "images_tensor_to_samples"),
        "sd_samplers_common.decode_first_stage": (sd_samplers_common, "decode_first_stage"),
        "sd_samplers_common.samples_to_images_tensor": (sd_samplers_common, "samples_to_images_tensor"),
        "sd_samplers_common.images_tensor_to_samples": (sd_samplers_common, "images_tensor_to_samples"),
        "images.resize_image": (images, "resize_image"),
        "upscaler.Upscaler.upscale": (upscaler.Upscaler, "upscale"),
        "sd_samplers.create_sampler": (sd_samplers, "create_sampler"),
    }
    try:  # Forge
        from backend.patcher import vae as forge_vae

        targets["VAE.decode_inner"] = (forge_vae.VAE, "decode_inner")
        targets["VAE.encode_inner"] = (forge_vae.VAE, "encode_inner")
    except ImportError:
        pass
    try:  # reForge
        from ldm_patched.modules import sd as reforge_sd

        targets["VAE.decode"] = (reforge_sd.VAE, "decode")
        targets["VAE.encode"] = (reforge_sd.VAE, "encode")
    except ImportError:
        pass
    return targets


_ORIGINAL_FUNCTIONS = {name: vars(owner).get(attr) if isinstance(owner, type) else getattr(owner, attr)
                       for name, (owner, attr) in _patch_targets().items()}


def functions_state():
    state = {}
    for name, (owner, attr) in _patch_targets().items():
        current = vars(owner).get(attr) if isinstance(owner, type) else getattr(owner, attr)
        state[name] = {"original": current is _ORIGINAL_FUNCTIONS[name],
                       "module": getattr(current, "__module__", None)}
    return state


# --- routes --------------------------------------------------------------------------------------

_HIDDEN = {}


def _runners():
    return [scripts.scripts_txt2img, scripts.scripts_img2img]


def hide_sdfix(hide):
    """Take SDFix out of the AlwaysOn lists (a WebUI without SDFix, for the bit-identical baseline)."""
    for runner in _runners():
        if hide and id(runner) not in _HIDDEN:
            ours = [s for s in runner.alwayson_scripts if s.title() == "SDFix"]
            _HIDDEN[id(runner)] = (runner, ours)
            runner.alwayson_scripts[:] = [s for s in runner.alwayson_scripts if s not in ours]
            runner.callback_map.clear()
        elif not hide and id(runner) in _HIDDEN:
            runner, ours = _HIDDEN.pop(id(runner))
            runner.alwayson_scripts.extend(ours)
            runner.callback_map.clear()
    return sorted(s.title() for s in scripts.scripts_txt2img.alwayson_scripts)


_INJECTED = {}


_NAN_HOOKS = []


def _nan_when_half(module, args, output):
    if next(module.parameters()).dtype == torch.float16:
        return output * float("nan")  # what an fp16 SDXL VAE does at high resolution
    return output


def inject_failure(target):
    """Make SDFix's fp32 VAE context raise on entry ("decode"); make the generation of one seed raise
    ("seed:N"); make an fp16 VAE decode produce NaN ("nan-half-vae"); or undo all that ("none")."""
    _FAIL["seed"] = int(target.split(":", 1)[1]) if target.startswith("seed:") else None
    while _NAN_HOOKS:
        _NAN_HOOKS.pop().remove()
    if target == "nan-half-vae":
        vae = _vae_module(shared.sd_model)
        _NAN_HOOKS.append(vae.decoder.register_forward_hook(_nan_when_half))
    vae_call = sys.modules.get("lib_sdfix.vae.call")  # the guarded call enters the fp32 context by this name
    if vae_call is None:
        import lib_sdfix.vae.call as vae_call
    if "fp32_vae" in _INJECTED:
        vae_call.fp32_vae = _INJECTED.pop("fp32_vae")
    if target == "decode":
        original = vae_call.fp32_vae

        def broken(*args, **kwargs):
            raise RuntimeError("injected by the SDFix e2e observer")

        _INJECTED["fp32_vae"] = original
        vae_call.fp32_vae = broken
    return target


def set_vae_dtype(name):
    """Reload the external VAE file into an fp32 (or back into an fp16) VAE, as --no-half-vae would load
    it: the fp32 reference for exact weights on a half-precision AUTOMATIC1111."""
    from modules import devices, sd_vae

    model = shared.sd_model
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[name]
    devices.dtype_vae = dtype
    model.first_stage_model.to(dtype)  # so load_state_dict keeps the file's fp32 values
    sd_vae.load_vae(model, sd_vae.loaded_vae_file, "sdfix-observer")
    return str(next(model.first_stage_model.parameters()).dtype)


def on_app_started(demo, app):
    from fastapi import Body

    @app.get("/sdfix-observer/records")
    def records():
        with _LOCK:
            return {k: list(v) for k, v in _RECORDS.items()}

    @app.post("/sdfix-observer/reset")
    def reset():
        with _LOCK:
            for v in _RECORDS.values():
                v.clear()
        return {"ok": True}

    @app.get("/sdfix-observer/flags")
    def flags():
        return read_flags()

    @app.get("/sdfix-observer/functions")
    def functions():
        return functions_state()

    @app.get("/sdfix-observer/xyz-axes")
    def xyz_axes():
        """The txt2img X/Y/Z axis labels in the order of the script's type dropdown (its index)."""
        xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
        options = getattr(xyz, "axis_options", [])
        return [o.label for o in options if type(o) is xyz.AxisOption or not o.is_img2img]

    @app.post("/sdfix-observer/hide-sdfix")
    def hide(body: dict = Body(...)):
        return {"alwayson": hide_sdfix(bool(body.get("hide")))}

    @app.post("/sdfix-observer/vae-dtype")
    def vae_dtype(body: dict = Body(...)):
        return {"weights": set_vae_dtype(body.get("dtype", "fp16"))}

    @app.post("/sdfix-observer/vae-memory-budget")
    def vae_memory_budget(body: dict = Body(...)):
        gb = body.get("gb")
        if gb is None:
            os.environ.pop("SDFIX_VAE_MEMORY_GB", None)
        else:
            os.environ["SDFIX_VAE_MEMORY_GB"] = str(float(gb))
        return {"SDFIX_VAE_MEMORY_GB": os.environ.get("SDFIX_VAE_MEMORY_GB")}

    @app.post("/sdfix-observer/inject-failure")
    def inject(body: dict = Body(...)):
        try:
            return {"target": inject_failure(body.get("target", "none"))}
        except Exception:  # noqa: BLE001
            return {"error": traceback.format_exc()}


script_callbacks.on_app_started(on_app_started)
