"""SDFix core: removes the precision and pipeline mistakes behind the "oil painting" look.

Host-free (imports no WebUI, no ComfyUI and no diffusers): ``settings`` (the one settings model and
fix table), ``precision`` (the TF32 guard), ``vae`` (an fp32 VAE for one call: exact weights, tiled
when it does not fit), ``parity``, ``resize``, ``refine`` (the late refine's step count, seeds and
samplers), ``failsafe``, ``patching``, ``names`` (the names a host accepts in a payload),
``image_input`` (a user's image as 8-bit RGB), ``seeds``, ``sampling_plan`` (variants and the sampling
runs they share), the packages ``imaging`` (metrics, heatmaps, grids, tables, saved images), ``limits``
(bounds on request bodies), ``ab`` (the A/B comparison) and ``diagnose`` (the diagnosis).
The fronts, each the only importer of its host: ``lib_sdfix.webui`` (AUTOMATIC1111, Forge, reForge),
``lib_sdfix.comfy`` (ComfyUI), ``lib_sdfix.diffusers``; the command line (``python -m lib_sdfix``) is
``lib_sdfix.cli``.  docs/architecture.md has the layers and how the test command checks them.
Importing this package imports nothing heavy: torch, numpy and scikit-image come with the modules
that need them.
"""

__version__ = "0.2.0"
