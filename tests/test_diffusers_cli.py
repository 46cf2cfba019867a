"""``python -m lib_sdfix ab`` end to end on the embedded model: report, images, JSON, flags."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from lib_sdfix.diffusers import CAUSES  # noqa: E402

from .html_check import parse_strictly  # noqa: E402
from .tiny_pipelines import one_thread  # noqa: E402,F401 -- autouse fixture

ROOT = Path(__file__).resolve().parents[1]


def test_ab_with_hires_and_ablation_writes_a_complete_report(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "lib_sdfix", "ab", "--out", str(out), "--hires", "--ablation",
         "--steps", "2", "--width", "64", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"report: {out / 'report.html'}" in proc.stdout

    page = parse_strictly((out / "report.html").read_text(encoding="utf-8"))
    sources = [attrs["src"] for tag, attrs in page.elements if tag == "img"]
    for src in set(sources):
        with Image.open(out / src) as image:
            image.verify()
    arms = ["without", "with"] + [f"only {cause}" for cause in CAUSES]
    assert {"without.png", "with.png", "heatmap.png", "only-vae-precision.png", "with-first-pass.png"} <= set(sources)
    assert any(tag == "input" and attrs.get("type") == "range" for tag, attrs in page.elements)

    data = json.loads((out / "report.json").read_text())
    assert list(data["arms"]) == arms
    assert all(data["audit"]["without"][cause]["present"] is True for cause in CAUSES), data["audit"]["without"]
    assert all(data["audit"]["with"][cause]["present"] is False for cause in CAUSES), data["audit"]["with"]
    for cause in CAUSES:  # each fix alone removes its own cause and no other
        found = data["arms"][f"only {cause}"]["audit"]
        assert [c for c in CAUSES if found[c]["present"] is False] == [cause], (cause, found)
    assert data["arms"]["without"]["hires_resize"]["filter"] == "BILINEAR"
    assert data["arms"]["with"]["hires_resize"] == {"filter": "LANCZOS", "from": [256, 256], "to": [128, 128], "passes": 1}
    rows = {row["name"]: row for row in data["metrics"]["variants"]}
    assert rows["only offload_hooks"]["psnr"] == "inf", "hooks change memory traffic, not pixels"
    assert isinstance(rows["with"]["psnr"], float), "the fixes change the image"
    assert data["environment"]["flags_after_run_equal_before"] is True
    with Image.open(out / "with.png") as image:
        assert image.size == (128, 128)


def test_ab_loads_a_diffusers_model_folder(tmp_path, capsys):
    """--model with an SDXL folder: loaded offline, pooled embeddings through both passes, no upscaler."""
    from lib_sdfix.__main__ import main

    from .tiny_pipelines import sdxl_pair

    pipe, _ = sdxl_pair(text_encoder_dtype=torch.float32, dtype=torch.float32)
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "report"
    assert main(["ab", "--model", str(tmp_path / "model"), "--out", str(out), "--hires", "--steps", "3",
                 "--width", "64", "--quiet"]) == 0  # 3 steps x the default 0.35 strength: one Hires step
    data = json.loads((out / "report.json").read_text())
    assert data["environment"]["model"] == str(tmp_path / "model")
    assert data["environment"]["upscaler"] == "none: the first pass is resized directly"
    assert data["arms"]["with"]["hires_resize"] == {"filter": "LANCZOS", "from": [64, 64], "to": [128, 128], "passes": 1}
    assert data["arms"]["without"]["hires_resize"]["filter"] == "BILINEAR"
    assert data["audit"]["without"]["embeds_dtype"]["present"] is True
    assert [c for c in CAUSES if data["audit"]["with"][c]["present"]] == []
    assert "report:" in capsys.readouterr().out
