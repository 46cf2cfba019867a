"""The node pack as ComfyUI sees it: ids, display names, declared inputs against the functions, drop-in
compatibility with VAEDecode/VAEEncode, and the repository root's entry (__init__.py)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib_sdfix.comfy.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

from ..source_imports import imported_modules
from .fakes import FakeVAE

ROOT = Path(__file__).resolve().parents[2]
COMFY_MODULES = ("comfy", "comfy_extras", "comfy_api", "nodes", "folder_paths", "server", "execution", "latent_preview")
BUILTIN_TYPES = {"MODEL", "CONDITIONING", "LATENT", "VAE", "IMAGE", "UPSCALE_MODEL", "INT", "FLOAT", "STRING"}


def test_ids_are_prefixed_and_named():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {
        "SDFixVAEDecode", "SDFixVAEEncode", "SDFixHiresPass", "SDFixLateRefine", "SDFixABCompare", "SDFixVAERoundTrip"}
    assert all(name.startswith("SDFix ") for name in NODE_DISPLAY_NAME_MAPPINGS.values())


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_declared_inputs_match_the_function(comfy, node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    json.dumps(spec)  # /object_info serialises it
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    assert list(params)[0] == "self" and set(params) - {"self"} == set(declared)
    for name in spec.get("optional", {}):
        assert params[name].default is not inspect.Parameter.empty, name
    for name, entry in declared.items():
        kind = entry[0]
        assert isinstance(kind, list) and kind or kind in BUILTIN_TYPES, (name, kind)
        options = entry[1] if len(entry) > 1 else {}
        if "default" in options and "min" in options:
            assert options["min"] <= options["default"] <= options["max"], name
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) and cls.CATEGORY == "SDFix" and cls.DESCRIPTION


def test_decode_and_encode_are_drop_ins(comfy):
    from lib_sdfix.comfy.nodes import SDFixVAEDecode, SDFixVAEEncode

    assert set(SDFixVAEDecode.INPUT_TYPES()["required"]) == {"samples", "vae"} and SDFixVAEDecode.RETURN_TYPES[0] == "IMAGE"
    assert set(SDFixVAEEncode.INPUT_TYPES()["required"]) == {"pixels", "vae"} and SDFixVAEEncode.RETURN_TYPES[0] == "LATENT"
    vae = FakeVAE()
    image, report = SDFixVAEDecode().decode(vae, {"samples": torch.randn(1, 4, 8, 8)})
    assert image.shape == (1, 32, 32, 3) and report.startswith("SDFix VAE Decode: precision_guard: applied")
    latent, report = SDFixVAEEncode().encode(vae, image)
    assert latent["samples"].shape == (1, 4, 8, 8) and report.startswith("SDFix VAE Encode: guard_encode: applied")
    with pytest.raises(ValueError, match="^samples: expected a LATENT"):
        SDFixVAEDecode().decode(vae, torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="^pixels: expected an IMAGE"):
        SDFixVAEEncode().encode(vae, torch.randn(1, 3, 8, 8))


def test_only_the_comfy_front_reaches_comfyui_and_only_through_host():
    for path in (ROOT / "lib_sdfix").rglob("*.py"):
        roots = {name.split(".")[0] for name in imported_modules(path)}
        in_front = (ROOT / "lib_sdfix" / "comfy") in path.parents
        assert not roots & set(COMFY_MODULES), path
        if not in_front:
            assert not any(n.startswith("lib_sdfix.comfy") for n in imported_modules(path)), path
    host = (ROOT / "lib_sdfix" / "comfy" / "host.py").read_text()
    assert "importlib.import_module(name)" in host


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT.parent), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_root_entry_outside_comfyui_does_nothing():
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('sdfix_pack', {str(ROOT / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ROOT)!r}]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.NODE_CLASS_MAPPINGS, 'lib_sdfix' in sys.modules, len(sys.path))")
    baseline = _python("import sys; print(len(sys.path))")
    assert _python(code) == f"{{}} False {baseline}"


def test_root_entry_inside_comfyui_registers_the_nodes_without_touching_sys_path():
    code = ("import sys, types, importlib.util\n"
            "for name in ('comfy', 'comfy.sd', 'folder_paths', 'nodes'): sys.modules[name] = types.ModuleType(name)\n"
            "before = list(sys.path)\n"
            f"spec = importlib.util.spec_from_file_location('/x/custom_nodes/sdfix', {str(ROOT / '__init__.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
            "import lib_sdfix\n"
            "print(sorted(m.NODE_CLASS_MAPPINGS), len(m.NODE_DISPLAY_NAME_MAPPINGS), sys.path == before, lib_sdfix.__file__)")
    out = _python(code)
    assert out.startswith("['SDFixABCompare', 'SDFixHiresPass', 'SDFixLateRefine', 'SDFixVAEDecode', 'SDFixVAEEncode', "
                          "'SDFixVAERoundTrip'] 6 True ")
    assert out.endswith(str(ROOT / "lib_sdfix" / "__init__.py"))


def test_pyproject_has_the_registry_section():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = config["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "SDFix"
