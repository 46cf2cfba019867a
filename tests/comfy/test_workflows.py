"""The example workflows (workflows/api, workflows/ui) are what workflows/make.py writes, and fit the nodes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lib_sdfix.comfy.nodes import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[2]


def _make():
    spec = importlib.util.spec_from_file_location("sdfix_workflows_make", ROOT / "workflows" / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_up_to_date():
    for rel, text in _make().render().items():
        path = ROOT / "workflows" / rel
        assert path.is_file() and path.read_text() == text, f"{rel}: run python workflows/make.py"


@pytest.mark.parametrize("name", sorted(_make().workflows()))
def test_sdfix_nodes_get_every_input_they_declare(comfy, name):
    make = _make()
    prompt = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for nid, node in prompt.items():
        inputs = node["inputs"]
        for value in inputs.values():
            if isinstance(value, list):
                assert value[0] in prompt, (nid, value)
        cls = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is None:
            continue
        spec = cls.INPUT_TYPES()
        assert set(spec["required"]) <= set(inputs), (nid, set(spec["required"]) - set(inputs))
        assert set(inputs) <= set(spec["required"]) | set(spec.get("optional", {}))
        for key, value in inputs.items():
            kind = spec["required"].get(key, spec.get("optional", {}).get(key))[0]
            if isinstance(kind, list):
                assert value in kind, (nid, key, value)
        links, widgets, outputs = make.NODES[node["class_type"]]
        assert [t for t in cls.RETURN_TYPES] == [t for _, t in outputs]
        assert set(widgets) | {n for n, _ in links} == set(spec["required"]) | set(spec.get("optional", {}))


@pytest.mark.parametrize("name", sorted(_make().workflows()))
def test_ui_format_links_are_consistent(name):
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    ui = json.loads((ROOT / "workflows" / "ui" / f"{name}.json").read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert set(nodes) == {int(k) for k in api}
    for link_id, src, src_slot, dst, _dst_slot, _kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        target = nodes[dst]["inputs"]
        assert any(i["link"] == link_id for i in target)
        name_in = [i for i in target if i["link"] == link_id][0]["name"]
        assert api[str(dst)]["inputs"][name_in] == [str(src), src_slot]
