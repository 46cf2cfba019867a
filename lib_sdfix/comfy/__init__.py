"""The ComfyUI front: SDFix's nodes for ComfyUI, on the host-free core.

The only part of SDFix that imports ComfyUI modules (``comfy.*``, ``nodes``, ``folder_paths``,
``comfy_extras``), and only inside functions a node runs (:mod:`lib_sdfix.comfy.host`).  Modules:

* ``nodes``: the node classes and ``NODE_CLASS_MAPPINGS``/``NODE_DISPLAY_NAME_MAPPINGS`` (the repository
  root's ``__init__.py`` hands them to ComfyUI).
* ``vae``: ComfyUI's ``VAE.decode``/``encode`` under :func:`lib_sdfix.vae.call.guarded_call`, ComfyUI's own
  path as the fallback; ``source``: the model file holding the VAE's exact fp32 weights.
* ``hires``: the Hires pass (one float resize); ``refine``: the late refine; ``compare``: the A/B and the
  VAE round trip; ``inputs``: checks that name the bad input; ``host``: the ComfyUI objects used.
"""
