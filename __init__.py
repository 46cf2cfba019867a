"""ComfyUI's entry into this repository (cloned or linked into ``ComfyUI/custom_nodes/``).

ComfyUI imports this file at start and reads ``NODE_CLASS_MAPPINGS``/``NODE_DISPLAY_NAME_MAPPINGS``; the
nodes live in ``lib_sdfix/comfy``.  ``lib_sdfix`` is registered as a package from this folder by path --
nothing is put on ``sys.path``, so nothing in this repository (``scripts``, ``tests``, ``install.py``)
can shadow another pack's or ComfyUI's modules.  Imported anywhere else (pytest collecting ``tests/``,
a WebUI, which loads ``scripts/`` only) it does nothing and exports empty mappings.
"""
import importlib.util
import os
import sys

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _in_comfyui():
    return "comfy.sd" in sys.modules and "folder_paths" in sys.modules and "nodes" in sys.modules


def _load_core():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib_sdfix")
    loaded = sys.modules.get("lib_sdfix")
    if loaded is not None:
        where = os.path.dirname(os.path.abspath(getattr(loaded, "__file__", "") or ""))
        if where != here:
            raise ImportError(f"SDFix: another lib_sdfix is already loaded from {where}; this pack needs its own ({here})")
        return
    spec = importlib.util.spec_from_file_location("lib_sdfix", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lib_sdfix"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("lib_sdfix", None)
        raise


if _in_comfyui():
    _load_core()
    from lib_sdfix.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
