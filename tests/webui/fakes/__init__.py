"""Stand-ins for the three hosts' ``modules`` (and Forge's ``backend``, reForge's ``ldm_patched``).

Only what ``lib_sdfix.webui`` touches, with the same signatures and, where it matters, the same call
structure and casts as the real hosts (read from their source):

* AUTOMATIC1111 v1.10: ``decode_first_stage`` casts the latent to ``devices.dtype_vae`` and the full
  decode casts it again to the VAE's cached ``.dtype``; with ``--upcast-sampling`` the model's own
  ``decode_first_stage``/``encode_first_stage`` are hijacked to cast their input to ``devices.dtype_vae``;
  the full encode moves the VAE to ``devices.dtype_vae`` first; ``Upscaler.upscale`` resizes to a
  multiple of 8 and ``resize_image`` resizes again; live previews decode on another thread.
* Forge: ``sd_model.first_stage_model`` is None; ``forge_objects.vae`` is a wrapper whose
  ``decode_inner``/``encode_inner`` cast to the wrapper's own ``vae_dtype``; ``resize_image`` takes
  ``force_RGBA`` and converts RGBA to RGB.
* reForge: a wrapper whose ``decode``/``encode`` cast to its ``vae_dtype``, which can differ from
  ``devices.dtype_vae``; its Upscaler loop stops earlier.

The generation itself (for the A/B runner) follows AUTOMATIC1111 v1.10.1's call order (pipeline.py):
``process_images`` with the script runner's hooks, txt2img sampling through
``create_sampler``/``get_sigmas``/``launch_sampling`` with a counting "UNet", the Hires pass (latent
interpolate, or decode -> ``resize_image`` -> ``images_tensor_to_samples``) returning decoded samples,
``create_infotext``, the txt2img API model and ``text2imgapi``.  Samplers: k-diffusion ones taking a
sigma schedule (Euler, Euler a, DPM++ 2M) or two noise levels (DPM fast), and timestep ones (DDIM
walking ``get_timesteps`` down, UniPC laying out its own grid) over ``sd_model.alphas_cumprod``.
img2img (no mask) encodes its init image in ``init`` and runs ``sample_img2img``.  ``shared.state``
keeps every progress value the WebUI would show.  ``install`` builds ``scripts.scripts_txt2img`` with a
UI-only built-in script, another extension's AlwaysOn script and SDFix's own script from scripts/sdfix.py.

The parts, one host part a module (each ``install_*`` makes fresh modules and classes per ``build``):

* base.py -- ``ROOT``, ``HOSTS``, ``Namespace``, a new module object
* shared.py -- ``modules.devices``, ``modules.shared`` (options, ``State``), ``call_queue``, ``script_callbacks``
* registries.py -- checkpoints, saved styles, VAE files, Forge's modules
* models.py -- the fake VAEs, ``shared.sd_model`` with its VAE, the "UNet", the "text encoder"
* forge.py -- Forge's and reForge's VAE wrappers in ``backend`` / ``ldm_patched``
* decode.py -- the VAE's decode/encode entry points (``sd_samplers_common``, imported into ``processing``)
* images.py -- ``modules.upscaler``, ``modules.images``, ``modules.paths_internal``
* sampling.py -- sigma schedules and the sampler functions
* samplers.py -- sampler classes, schedulers, the sampler registry and name parsing
* infotext.py -- ``infotext_utils`` and ``create_infotext``
* processing.py -- the processing classes (txt2img with Hires, img2img)
* pipeline.py -- ``process_images`` and the rest of the generation, wiring the parts above
* scripts.py -- ``modules.scripts`` and the other scripts in the txt2img runner
* api.py -- the txt2img API model and ``text2imgapi``
* ui.py -- a fake gradio for the scripts' ``ui()``
* env.py -- ``build``, ``install`` and ``FakeP``

This module is the package's public API: tests import from ``tests.webui.fakes``.

The real hosts are covered by tests/e2e.
"""
from .base import HOSTS, ROOT, Namespace
from .env import FakeP, build, install
from .infotext import parse_generation_parameters
from .models import FakeLdmVAE, FakeVAE, alphas_cumprod_sd
from .processing import OPT_F
from .registries import install_registries
from .sampling import (
    SAMPLER_FUNCS,
    SIGMA_MAX,
    SIGMA_MIN,
    TIMESTEP_FUNCS,
    sigmas_automatic,
    sigmas_karras,
    sigmas_uniform,
)
from .scripts import other_scripts
from .shared import State
from .ui import fake_gradio, gradio_for_ui

__all__ = ["HOSTS", "OPT_F", "ROOT", "SAMPLER_FUNCS", "SIGMA_MAX", "SIGMA_MIN", "TIMESTEP_FUNCS", "FakeLdmVAE", "FakeP",
           "FakeVAE", "Namespace", "State", "alphas_cumprod_sd", "build", "fake_gradio", "gradio_for_ui", "install",
           "install_registries", "other_scripts", "parse_generation_parameters", "sigmas_automatic", "sigmas_karras",
           "sigmas_uniform"]
