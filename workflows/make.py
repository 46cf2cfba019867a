"""Writes the example workflows in both of ComfyUI's formats from one description each:
``workflows/api/<name>.json`` (the API format, POST /prompt) and ``workflows/ui/<name>.json`` (what the
ComfyUI window loads and saves).  Run ``python workflows/make.py`` after changing a description;
``tests/comfy/test_workflows.py`` checks the files are what this writes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
POSITIVE = "portrait photo of a woman, detailed skin, freckles, fine hair strands, natural light"
NEGATIVE = "blurry, oil painting, smeared, plastic skin"

# class_type -> (link inputs in order, widget inputs in order, outputs (name, type) in order).  KSampler's
# seed widget is followed by its "control after generate" value in the window's format.
NODES: Dict[str, Tuple[List[Tuple[str, str]], List[str], List[Tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "LoadImage": ([], ["image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewAny": ([("source", "*")], [], [("STRING", "STRING")]),
    "SDFixVAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE"), ("report", "STRING")]),
    "SDFixHiresPass": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                        ("latent", "LATENT"), ("image", "IMAGE"), ("upscale_model", "UPSCALE_MODEL")],
                       ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise", "scale_by", "width", "height",
                        "resize_filter"], [("LATENT", "LATENT"), ("IMAGE", "IMAGE"), ("report", "STRING")]),
    "SDFixLateRefine": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent", "LATENT")],
                        ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise", "late_refine_strength"],
                        [("LATENT", "LATENT"), ("report", "STRING")]),
    "SDFixABCompare": ([("image_a", "IMAGE"), ("image_b", "IMAGE")], ["heatmap_gain", "label_a", "label_b"],
                       [("heatmap", "IMAGE"), ("metrics_table", "IMAGE"), ("metrics", "STRING")]),
    "SDFixVAERoundTrip": ([("image", "IMAGE"), ("vae", "VAE")], ["precisions", "heatmap_gain"],
                          [("grid", "IMAGE"), ("heatmaps", "IMAGE"), ("metrics_table", "IMAGE"), ("findings", "STRING")]),
}
OPTIONAL = {("SDFixHiresPass", "latent"), ("SDFixHiresPass", "image"), ("SDFixHiresPass", "upscale_model")}
FIRST_PASS = {"seed": 1234, "steps": 20, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}


def _base(nodes: Dict[str, Any]) -> None:
    nodes["1"] = ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, "Load Checkpoint")
    nodes["2"] = ("CLIPTextEncode", {"text": POSITIVE, "clip": ["1", 1]}, "Positive")
    nodes["3"] = ("CLIPTextEncode", {"text": NEGATIVE, "clip": ["1", 1]}, "Negative")
    nodes["4"] = ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, "Empty Latent")
    nodes["5"] = ("KSampler", {**FIRST_PASS, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                               "latent_image": ["4", 0]}, "First pass")


def workflows() -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    same = {k: v for k, v in FIRST_PASS.items() if k != "denoise"}

    nodes: Dict[str, Any] = {}
    _base(nodes)
    nodes["6"] = ("SDFixVAEDecode", {"samples": ["5", 0], "vae": ["1", 2]}, "SDFix VAE Decode")
    nodes["7"] = ("SaveImage", {"filename_prefix": "sdfix/txt2img", "images": ["6", 0]}, "Save Image")
    nodes["8"] = ("PreviewAny", {"source": ["6", 1]}, "SDFix report")
    out["txt2img_sdfix_decode"] = nodes

    nodes = {}
    _base(nodes)
    nodes["6"] = ("SDFixHiresPass", {**same, "denoise": 0.5, "scale_by": 2.0, "width": 0, "height": 0,
                                     "resize_filter": "LANCZOS", "model": ["1", 0], "positive": ["2", 0],
                                     "negative": ["3", 0], "vae": ["1", 2], "latent": ["5", 0]}, "SDFix Hires pass")
    nodes["7"] = ("SaveImage", {"filename_prefix": "sdfix/hires", "images": ["6", 1]}, "Save Image")
    nodes["8"] = ("PreviewAny", {"source": ["6", 2]}, "SDFix report")
    out["hires_pass"] = nodes

    nodes = {}
    _base(nodes)
    nodes["6"] = ("SDFixLateRefine", {**FIRST_PASS, "late_refine_strength": 0.3, "model": ["1", 0],
                                      "positive": ["2", 0], "negative": ["3", 0], "latent": ["5", 0]}, "SDFix Late Refine")
    nodes["7"] = ("SDFixVAEDecode", {"samples": ["6", 0], "vae": ["1", 2]}, "SDFix VAE Decode")
    nodes["8"] = ("SaveImage", {"filename_prefix": "sdfix/refine", "images": ["7", 0]}, "Save Image")
    nodes["9"] = ("PreviewAny", {"source": ["6", 1]}, "Refine report")
    out["late_refine"] = nodes

    nodes = {}
    _base(nodes)
    nodes["6"] = ("VAEDecode", {"samples": ["5", 0], "vae": ["1", 2]}, "ComfyUI VAE Decode (A)")
    nodes["7"] = ("SDFixVAEDecode", {"samples": ["5", 0], "vae": ["1", 2]}, "SDFix VAE Decode (B)")
    nodes["8"] = ("SDFixABCompare", {"heatmap_gain": 4.0, "label_a": "ComfyUI VAEDecode", "label_b": "SDFix VAE Decode",
                                     "image_a": ["6", 0], "image_b": ["7", 0]}, "SDFix A/B Compare")
    nodes["9"] = ("SaveImage", {"filename_prefix": "sdfix/ab_comfyui", "images": ["6", 0]}, "A: ComfyUI")
    nodes["10"] = ("SaveImage", {"filename_prefix": "sdfix/ab_sdfix", "images": ["7", 0]}, "B: SDFix")
    nodes["11"] = ("SaveImage", {"filename_prefix": "sdfix/ab_heatmap", "images": ["8", 0]}, "Heatmap")
    nodes["12"] = ("SaveImage", {"filename_prefix": "sdfix/ab_table", "images": ["8", 1]}, "Metrics table")
    nodes["13"] = ("PreviewAny", {"source": ["8", 2]}, "Metrics")
    out["ab_vaedecode_vs_sdfix"] = nodes

    nodes = {"1": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, "Load Checkpoint"),
             "2": ("LoadImage", {"image": "example.png"}, "Your image"),
             "3": ("SDFixVAERoundTrip", {"precisions": "", "heatmap_gain": 4.0, "image": ["2", 0], "vae": ["1", 2]},
                   "SDFix VAE Round Trip"),
             "4": ("SaveImage", {"filename_prefix": "sdfix/roundtrip_grid", "images": ["3", 0]}, "Grid"),
             "5": ("SaveImage", {"filename_prefix": "sdfix/roundtrip_heatmaps", "images": ["3", 1]}, "Heatmaps"),
             "6": ("SaveImage", {"filename_prefix": "sdfix/roundtrip_table", "images": ["3", 2]}, "Metrics table"),
             "7": ("PreviewAny", {"source": ["3", 3]}, "Findings")}
    out["vae_roundtrip"] = nodes
    return out


def api(nodes: Dict[str, Any]) -> Dict[str, Any]:
    return {nid: {"class_type": cls, "inputs": inputs, "_meta": {"title": title}} for nid, (cls, inputs, title) in nodes.items()}


def ui(nodes: Dict[str, Any]) -> Dict[str, Any]:
    """The window's format: nodes with positions, link slots and widget values; links by id."""
    links: List[List[Any]] = []
    out_links: Dict[Tuple[str, int], List[int]] = {}
    in_links: Dict[Tuple[str, str], int] = {}
    for nid, (cls, inputs, _) in nodes.items():
        link_inputs = dict(NODES[cls][0])
        for name, value in inputs.items():
            if name in link_inputs and isinstance(value, list):
                src, slot = value
                link_id = len(links) + 1
                links.append([link_id, int(src), slot, int(nid), [n for n, _ in NODES[cls][0]].index(name),
                              NODES[nodes[src][0]][2][slot][1]])
                out_links.setdefault((src, slot), []).append(link_id)
                in_links[(nid, name)] = link_id
    depth: Dict[str, int] = {}

    def level(nid: str) -> int:
        if nid not in depth:
            sources = [v[0] for v in nodes[nid][1].values() if isinstance(v, list)]
            depth[nid] = 1 + max((level(s) for s in sources), default=-1)
        return depth[nid]

    rows: Dict[int, int] = {}
    ui_nodes = []
    for order, (nid, (cls, inputs, title)) in enumerate(sorted(nodes.items(), key=lambda kv: (level(kv[0]), int(kv[0])))):
        column = level(nid)
        row = rows.get(column, 0)
        rows[column] = row + 1
        widgets: List[Any] = []
        for name in NODES[cls][1]:
            widgets.append(inputs[name])
            if name == "seed":
                widgets.append("fixed")
        ui_nodes.append({
            "id": int(nid), "type": cls, "title": title, "pos": [40 + 360 * column, 40 + 300 * row], "size": [320, 260],
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": in_links.get((nid, name))}
                       for name, kind in NODES[cls][0] if (nid, name) in in_links or (cls, name) in OPTIONAL],
            "outputs": [{"name": name, "type": kind, "links": out_links.get((nid, i), []), "slot_index": i}
                        for i, (name, kind) in enumerate(NODES[cls][2])],
            "properties": {"Node name for S&R": cls}, "widgets_values": widgets,
        })
    ui_nodes.sort(key=lambda n: n["id"])
    return {"last_node_id": max(int(n) for n in nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def render() -> Dict[str, str]:
    """{relative path: file text} of every workflow file."""
    files = {}
    for name, nodes in workflows().items():
        files[f"api/{name}.json"] = json.dumps(api(nodes), indent=2) + "\n"
        files[f"ui/{name}.json"] = json.dumps(ui(nodes), indent=2) + "\n"
    return files


def main() -> int:
    for rel, text in render().items():
        path = HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
