"""End-to-end: the SDFix node pack in a running ComfyUI, watched from inside by tests/e2e/comfy_observer.

Needs ``SDFIX_E2E_COMFY_URL`` (e.g. http://127.0.0.1:8188); skipped cleanly without it.  The ComfyUI under
test has this repository linked as ``custom_nodes/sdfix`` and ``tests/e2e/comfy_observer`` as
``custom_nodes/sdfix_observer``, ``SDFIX_OBSERVER_TF32=1`` in its environment (TF32 and cudnn.benchmark
on, as ComfyUI leaves them on an Ampere+ GPU with ``--fast``), and preferably ``--bf16-vae`` (the VAE
dtype ComfyUI picks on NVIDIA cards of compute capability >= 8; on a CPU it picks fp32).
``SDFIX_E2E_COMFY_LOG`` may name its log file (else ``/internal/logs`` is read).

The example workflows (workflows/api) run with their sizes cut down (64x64, 2-4 steps) and the host's
checkpoint; every check reads what the observer saw inside ComfyUI.
"""
from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

URL = (os.environ.get("SDFIX_E2E_COMFY_URL") or "").rstrip("/")
ROOT = Path(__file__).resolve().parents[2]
CLIENT = uuid.uuid4().hex
NODE_IDS = {"SDFixVAEDecode": "SDFix VAE Decode", "SDFixVAEEncode": "SDFix VAE Encode",
            "SDFixHiresPass": "SDFix Hires pass", "SDFixLateRefine": "SDFix Late Refine",
            "SDFixABCompare": "SDFix A/B Compare", "SDFixVAERoundTrip": "SDFix VAE Round Trip"}

pytestmark = pytest.mark.skipif(not URL, reason="SDFIX_E2E_COMFY_URL not set (a running ComfyUI with SDFix and the "
                                                "observer in custom_nodes)")


def _request(path: str, body: Any = None, method: Optional[str] = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[", b'"') else raw


def _records() -> Dict[str, List[Dict[str, Any]]]:
    return _request("/sdfix-observer/records")


def run(prompt: Dict[str, Any], timeout: float = 900) -> Dict[str, Any]:
    """Post ``prompt`` and wait for its history entry; fails with ComfyUI's own error message."""
    _request("/sdfix-observer/reset", {})
    try:
        answer = _request("/prompt", {"prompt": prompt, "client_id": CLIENT})
    except urllib.error.HTTPError as exc:
        pytest.fail(f"ComfyUI refused the prompt: {exc.read().decode()[:2000]}")
    prompt_id = answer["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = _request(f"/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            status = entry.get("status", {})
            if status.get("status_str") == "error":
                messages = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                pytest.fail(f"the prompt failed: {json.dumps(messages)[:3000]}")
            entry["records"] = _records()
            return entry
        time.sleep(1)
    pytest.fail(f"prompt {prompt_id} did not finish within {timeout}s")


_SEED = [int(time.time()) % 100000]


def workflow(name: str, steps: int = 3, size: int = 64) -> Dict[str, Any]:
    """An example workflow cut down for a CPU: ``size`` px, ``steps`` steps, the host's checkpoint, a fresh
    seed (ComfyUI caches a node whose inputs did not change)."""
    prompt = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    _SEED[0] += 1
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint()
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=size, height=size)
        if node["class_type"] in ("KSampler", "SDFixLateRefine"):
            inputs.update(steps=steps, seed=_SEED[0])
        if node["class_type"] == "SDFixHiresPass":
            inputs.update(steps=2, seed=_SEED[0])
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = inputs["filename_prefix"].replace("sdfix/", "sdfix-e2e/")
    return prompt


_INFO: Dict[str, Any] = {}


def object_info() -> Dict[str, Any]:
    if not _INFO:
        _INFO.update(_request("/object_info"))
    return _INFO


def checkpoint() -> str:
    names = object_info()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert names, "the ComfyUI under test has no checkpoint"
    return names[0]


def texts(entry: Dict[str, Any], node: str) -> str:
    return "\n".join(entry["outputs"][node]["text"])


def image_size(entry: Dict[str, Any], node: str):
    from PIL import Image

    image = entry["outputs"][node]["images"][0]
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]})
    return Image.open(io.BytesIO(_request(f"/view?{query}"))).size


def host_vae_dtype() -> str:
    states = [s for n in _records()["nodes"] for s in n["after_vaes"]]
    return states[-1]["vae_dtype"] if states else ""


def of(records: List[Dict[str, Any]], class_type: str) -> List[Dict[str, Any]]:
    return [r for r in records if r.get("class_type") == class_type]


def assert_guarded(vae_records: List[Dict[str, Any]], parts=("decoder",)) -> None:
    assert vae_records and {r["part"] for r in vae_records} == set(parts), vae_records
    for r in vae_records:
        assert r["input_dtype"] == r["weight_dtype"] == r["vae_dtype"] == "torch.float32", r
        flags = r["flags"]
        assert flags["cudnn.allow_tf32"] is False and flags["cuda.matmul.allow_tf32"] is False, flags
        assert flags["cudnn.benchmark"] is False and r["autocast"] is False, r
        assert flags.get("float32_matmul_precision", "highest") == "highest", flags
        assert not flags.get("cuda.matmul.allow_fp16_reduced_precision_reduction", False), flags
        assert not flags.get("cuda.matmul.allow_bf16_reduced_precision_reduction", False), flags


def assert_restored(node_records: List[Dict[str, Any]]) -> None:
    """Around every SDFix node: the flags as ComfyUI left them and each VAE's dtype and weights, unchanged."""
    assert node_records
    for n in node_records:
        assert n["after_flags"] == n["before_flags"], n
        assert n["after_vaes"] == n["before_vaes"], n
        assert all(not s["instance_attrs"] for s in n["after_vaes"]), n


# --- the pack -------------------------------------------------------------------------------------


def _log() -> str:
    path = os.environ.get("SDFIX_E2E_COMFY_LOG")
    if path:
        return Path(path).read_text(errors="replace")
    return _request("/internal/logs")


def test_the_pack_loads_and_lists_every_node():
    info = object_info()
    for node_id, name in NODE_IDS.items():
        assert node_id in info, node_id
        assert info[node_id]["display_name"] == name and info[node_id]["category"] == "SDFix"
    assert info["SDFixHiresPass"]["input"]["required"]["sampler_name"][0] == \
        info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert info["SDFixLateRefine"]["input"]["required"]["scheduler"][0] == \
        info["KSampler"]["input"]["required"]["scheduler"][0]
    assert info["SDFixVAEDecode"]["output"][0] == info["VAEDecode"]["output"][0] == "IMAGE"
    log = _log()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert not failed, failed
    if "Import times for custom nodes" in log:
        assert "custom_nodes/sdfix\n" in log.replace("\r", "") or "custom_nodes/sdfix " in log
    assert "Unable to parse pyproject.toml" not in log


def test_ui_workflows_fit_the_running_comfyui():
    """Every node of the window-format examples exists and has its widget values in the server's order."""
    info = object_info()
    for path in sorted((ROOT / "workflows" / "ui").glob("*.json")):
        ui = json.loads(path.read_text())
        for node in ui["nodes"]:
            spec = info[node["type"]]
            linked = {i["name"] for i in node["inputs"]}
            order = spec["input_order"].get("required", []) + spec["input_order"].get("optional", [])
            inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
            widgets = [n for n in order if n not in linked and (isinstance(inputs[n][0], list)
                                                                or inputs[n][0] in ("INT", "FLOAT", "STRING", "BOOLEAN"))
                       and (node["type"], n) != ("LoadImage", "upload")]
            values = [v for v in node["widgets_values"] if v not in ("fixed", "randomize")]
            assert len(values) == len(widgets), (path.name, node["type"], widgets, node["widgets_values"])
            for name, value in zip(widgets, values):
                if isinstance(inputs[name][0], list) and name not in ("ckpt_name", "image"):
                    assert value in inputs[name][0], (path.name, node["type"], name, value)


# --- decode ----------------------------------------------------------------------------------------


def test_txt2img_with_sdfix_decode_runs_fp32_and_restores_comfyui():
    run(workflow("txt2img_sdfix_decode"))  # loads the checkpoint (cached afterwards)
    digest = _request("/sdfix-observer/vae-digest")
    entry = run(workflow("txt2img_sdfix_decode"))
    records = entry["records"]
    assert_guarded(of(records["vae"], "SDFixVAEDecode"))
    assert_restored(of(records["nodes"], "SDFixVAEDecode"))
    report = texts(entry, "8")
    assert report.startswith("SDFix VAE Decode: precision_guard: applied (VAE decode in fp32"), report
    native = host_vae_dtype()
    if native == "torch.bfloat16":
        assert "VAE loaded as bf16, weights=exact (fp32 weights from" in report, report
    assert _request("/sdfix-observer/vae-digest") == digest
    assert image_size(entry, "7") == (64, 64)


def test_sdfix_decode_equals_comfyuis_fp32_vae_bit_for_bit():
    """On a bf16 host, SDFix's decode is the decode of the VAE loaded in fp32 (ComfyUI --fp32-vae)."""
    prompt = workflow("ab_vaedecode_vs_sdfix")
    prompt["20"] = {"class_type": "SDFixObserverFp32Decode", "inputs": {"samples": ["5", 0], "ckpt_name": checkpoint()}}
    prompt["21"] = {"class_type": "SDFixABCompare", "inputs": {"image_a": ["20", 0], "image_b": ["7", 0],
                                                               "heatmap_gain": 4.0, "label_a": "fp32", "label_b": "SDFix"}}
    prompt["22"] = {"class_type": "PreviewAny", "inputs": {"source": ["21", 2]}}
    entry = run(prompt)
    assert "SDFix is identical to fp32." in texts(entry, "22"), texts(entry, "22")
    ab = texts(entry, "13")
    assert "PSNR dB" in ab and "SSIM" in ab and "Laplacian var." in ab and "HF energy" in ab and "HF ratio" in ab
    if host_vae_dtype() == "torch.bfloat16":
        assert "identical" not in ab  # ComfyUI's own bf16 decode differs
    assert_guarded(of(entry["records"]["vae"], "SDFixVAEDecode"))
    assert_restored(of(entry["records"]["nodes"], "SDFixVAEDecode"))
    assert [r["input_dtype"] for r in of(entry["records"]["vae"], "VAEDecode")] == [host_vae_dtype()]


def test_a_failing_decode_falls_back_and_the_graph_completes():
    run(workflow("txt2img_sdfix_decode"))  # lib_sdfix.vae.call is loaded
    assert _request("/sdfix-observer/inject-failure", {"target": "decode"}) == {"target": "decode"}
    try:
        entry = run(workflow("txt2img_sdfix_decode"))
    finally:
        _request("/sdfix-observer/inject-failure", {"target": "none"})
    assert entry["status"]["status_str"] == "success"
    report = texts(entry, "8")
    assert "precision_guard: not applied (RuntimeError: injected by the SDFix e2e observer)" in report, report
    assert "ComfyUI's own decode ran" in report
    native = host_vae_dtype()
    assert [r["input_dtype"] for r in of(entry["records"]["vae"], "SDFixVAEDecode")] == [native]
    assert_restored(of(entry["records"]["nodes"], "SDFixVAEDecode"))
    assert "SDFix VAE decode: precision_guard not applied (RuntimeError: injected" in _log()
    assert image_size(entry, "7") == (64, 64)


def test_a_small_memory_budget_decodes_tiled_in_fp32():
    prompt = workflow("txt2img_sdfix_decode", size=128)
    prompt["20"] = {"class_type": "SDFixObserverFp32Decode", "inputs": {"samples": ["5", 0], "ckpt_name": checkpoint()}}
    prompt["21"] = {"class_type": "SDFixABCompare", "inputs": {"image_a": ["20", 0], "image_b": ["6", 0],
                                                               "heatmap_gain": 4.0, "label_a": "fp32", "label_b": "tiled"}}
    prompt["22"] = {"class_type": "PreviewAny", "inputs": {"source": ["21", 2]}}
    _request("/sdfix-observer/vae-memory-budget", {"gb": 0.05})
    try:
        entry = run(prompt)
    finally:
        _request("/sdfix-observer/vae-memory-budget", {"gb": None})
    report = texts(entry, "8")
    assert "VAE decode 128x128: tiled in fp32" in report, report
    line = [row for row in texts(entry, "22").splitlines() if row.startswith("tiled")][0]
    cell = line.split()[1]
    assert cell == "∞" or float(cell) > 60, line  # the untiled image up to float rounding
    assert_restored(of(entry["records"]["nodes"], "SDFixVAEDecode"))


# --- Hires pass, refine ------------------------------------------------------------------------------


def test_hires_pass_resizes_once_in_float_and_keeps_the_first_pass_sampler():
    entry = run(workflow("hires_pass"))
    records = entry["records"]
    resizes = of(records["resize"], "SDFixHiresPass")
    assert resizes and all(r["what"] == "PIL" and r["mode"] == "F" and r["resample"] == 1 for r in resizes), resizes  # LANCZOS
    assert [(r["source"], r["target"]) for r in resizes] == [([64, 64], [128, 128])] * 3  # one pass per plane
    first = of(records["sampling"], "KSampler")
    second = of(records["sampling"], "SDFixHiresPass")
    assert len(first) == len(second) == 1
    assert (second[0]["sampler"], second[0]["scheduler"]) == (first[0]["sampler"], first[0]["scheduler"])
    assert second[0]["denoise"] == 0.5 and second[0]["shape"][-2:] == [16, 16]
    assert_guarded(of(records["vae"], "SDFixHiresPass"), parts=("decoder", "encoder"))
    assert [r["part"] for r in of(records["vae"], "SDFixHiresPass")] == ["decoder", "encoder", "decoder"]
    assert_restored(of(records["nodes"], "SDFixHiresPass"))
    report = texts(entry, "8")
    assert "post_resize: resized once, 64x64 -> 128x128, LANCZOS on float32" in report, report
    assert image_size(entry, "7") == (128, 128)


def test_late_refine_reruns_the_tail_of_the_pass_schedule():
    from lib_sdfix.refine import refine_seed

    entry = run(workflow("late_refine", steps=4))
    records = entry["records"]
    [first] = of(records["sampling"], "KSampler")
    [tail] = of(records["sampling"], "SDFixLateRefine")
    assert (tail["sampler"], tail["scheduler"], tail["steps"], tail["denoise"], tail["cfg"]) == \
        (first["sampler"], first["scheduler"], first["steps"], first["denoise"], first["cfg"])
    assert tail["sigmas"] == first["sigmas"]  # the pass's own schedule
    assert tail["start_step"] == 3  # round(0.3 x 4) = 1 step again
    assert tail["seed"] == refine_seed(first["seed"])
    report = texts(entry, "9")
    assert "re-ran the last 1 of 4 steps (strength 0.3)" in report, report
    assert_guarded(of(records["vae"], "SDFixVAEDecode"))


# --- round trip --------------------------------------------------------------------------------------


def _upload_small_image() -> str:
    from PIL import Image

    image = Image.new("RGB", (64, 64))
    salt = uuid.uuid4().int % 256  # new content and name each run: ComfyUI would reuse its cached outputs
    image.putdata([(x * 4, y * 4, (x * y + salt) % 256) for y in range(64) for x in range(64)])
    buf = io.BytesIO()
    image.save(buf, "PNG")
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"sdfix-e2e-{salt}.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + \
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(URL + "/upload/image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["name"]


def test_vae_round_trip_in_each_precision():
    prompt = workflow("vae_roundtrip")
    prompt["2"]["inputs"]["image"] = _upload_small_image()
    prompt["3"]["inputs"]["precisions"] = "comfyui,precision_guard,fp32,bf16"
    entry = run(prompt)
    text = texts(entry, "7")
    for label in ("as loaded by ComfyUI (", "precision_guard + guard_encode", "fp32", "bf16", "original (reference)"):
        assert label in text, text
    assert "finding vae_capacity" in text  # random weights reproduce nothing
    records = entry["records"]
    runs = of(records["vae"], "SDFixVAERoundTrip")
    assert [r["part"] for r in runs] == ["encoder", "decoder"] * 4
    [node] = of(records["nodes"], "SDFixVAERoundTrip")
    host, guard, fp32, bf16 = runs[0:2], runs[2:4], runs[4:6], runs[6:8]
    native = host_vae_dtype()
    assert all(r["input_dtype"] == r["weight_dtype"] == native and r["flags"] == node["before_flags"] for r in host)
    assert_guarded(guard, parts=("encoder", "decoder"))
    assert_guarded(fp32, parts=("encoder", "decoder"))
    assert all(r["input_dtype"] == r["weight_dtype"] == "torch.bfloat16" and not r["flags"]["cudnn.allow_tf32"]
               and not r["flags"]["cudnn.benchmark"] for r in bf16)
    assert_restored([node])
