"""SDFix core: removes the precision and pipeline mistakes behind the "oil painting" look.

Host-free (imports no WebUI and no diffusers): ``settings`` (the one settings model and fix table),
``precision`` (the TF32 guard), ``vae`` (an fp32 VAE for one call: exact weights, tiled when it
does not fit), ``parity``, ``resize``, ``refine`` (the late refine's step count, seeds and samplers), ``failsafe``, ``patching``, ``names``
(the names a WebUI accepts in a payload), ``image_input`` (a user's image as 8-bit RGB),
``seeds``, ``sampling_plan`` (variants and the sampling runs they share), the packages ``imaging``
(metrics, heatmaps, grids, tables, saved images), ``limits`` (bounds on request bodies), ``ab`` (the
A/B comparison) and ``diagnose`` (the diagnosis).  The WebUI front is ``lib_sdfix.webui`` (the only
importer of a host), the diffusers front ``lib_sdfix.diffusers``, the command line (``python -m
lib_sdfix``) ``lib_sdfix.cli``.
Importing this package imports nothing heavy: torch, numpy and scikit-image come with the modules
that need them.
"""

__version__ = "0.2.0"
