"""``python -m lib_sdfix ab`` end to end on the embedded model: report, images, JSON, flags."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from lib_sdfix.diffusers import CAUSES

from ..diffusers.tiny_pipelines import one_thread  # noqa: F401 -- autouse fixture
from ..html_check import parse_strictly
from .support import exit_code

ROOT = Path(__file__).resolve().parents[2]


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


def test_ab_refine_adds_the_late_refine_to_the_with_arm_and_the_report_shows_it(tmp_path, capsys):
    from lib_sdfix.cli.__main__ import main

    out = tmp_path / "report"
    assert main(["ab", "--out", str(out), "--hires", "--ablation", "--refine", "0.5", "--steps", "4", "--width", "64",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    # the Hires pass ran int(4 x 0.5) = 2 steps; round(0.5 x 2) = 1 of them again
    assert "The \"with\" arm adds the late refine to its last pass: re-ran the last 1 of 2 steps (strength 0.5)" in printed
    data = json.loads((out / "report.json").read_text())
    assert list(data["arms"])[-1] == "only late_refine"
    assert data["arms"]["with"]["late_refine"] == 0.5 and data["arms"]["without"]["late_refine"] is None
    assert data["arms"]["only late_refine"]["fixes"] == [] and data["arms"]["only late_refine"]["late_refine"] == 0.5
    assert "refine" in data["arms"]["with"]["timings_s"] and "refine" not in data["arms"]["without"]["timings_s"]
    assert "late_refine: re-ran the last 1 of 2 steps (strength 0.5)" in data["arms"]["with"]["notes"]
    assert data["config"]["refine"] == 0.5
    page = (out / "report.html").read_text(encoding="utf-8")
    parse_strictly(page)
    assert "late refine, strength 0.5" in page and "<th>refine</th>" in page
    rows = {row["name"]: row for row in data["metrics"]["variants"]}
    assert isinstance(rows["only late_refine"]["psnr"], float), "the refine changes the image"


def test_ab_loads_a_diffusers_model_folder(tmp_path, capsys):
    """--model with an SDXL folder: loaded offline, pooled embeddings through both passes, no upscaler."""
    from lib_sdfix.cli.__main__ import main

    from ..diffusers.tiny_pipelines import sdxl_pair

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


# --- a missing [diffusers] extra: one clear line, exit 2 ------------------------------------------


def _ab_without(module, tmp_path, *extra):
    """``ab`` in a fresh interpreter where importing ``module`` fails as if it were not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from lib_sdfix.cli.__main__ import main\n"
            f"sys.exit(main(['ab', '--out', {str(tmp_path / 'out')!r}, '--quiet', '--steps', '2', '--width', '64', "
            f"*{list(extra)!r}]))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module, extra", [
    ("tqdm", ()), ("diffusers", ()), ("transformers", ()), ("accelerate", ()), ("safetensors", ()),
    ("spandrel", ("--hires",)),
])
def test_ab_without_the_extra_names_the_module_and_the_install_command(tmp_path, module, extra):
    proc = _ab_without(module, tmp_path, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"missing module '{module}'" in lines[0] and "pip install -e .[diffusers]" in lines[0]
    assert 'pip install "sdfix[diffusers]"' in lines[0]


def test_ab_without_torch_says_to_install_pytorch_first(tmp_path):
    proc = _ab_without("torch", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing module 'torch'" in proc.stderr and "install PyTorch" in proc.stderr


def test_a_module_missing_deeper_down_is_reported_the_same_way(tmp_path):
    """One the up-front check cannot see: a dependency of diffusers, found missing mid-import."""
    proc = _ab_without("huggingface_hub", tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "missing module 'huggingface_hub'" in last and "pip install -e .[diffusers]" in last


# --- argument errors: argparse-style, naming the argument, exit 2 ---------------------------------


@pytest.mark.parametrize("args, argument, says", [
    (["--seed", "-1"], "--seed", "from 0 to 4294967295"),
    (["--seed", "4294967296"], "--seed", "from 0 to 4294967295"),
    (["--seed", "1.5"], "--seed", "whole number"),
    (["--steps", "0"], "--steps", "from 1 to 150"),
    (["--steps", "10000"], "--steps", "from 1 to 150"),
    (["--width", "32"], "--width", "from 64 to 2048"),
    (["--width", "4096"], "--width", "from 64 to 2048"),
    (["--height", "100"], "--height", "multiple of 8"),
    (["--hires-scale", "0"], "--hires-scale", "from 1 to 4"),
    (["--hires-scale", "100"], "--hires-scale", "from 1 to 4"),
    (["--hires-scale", "nan"], "--hires-scale", "from 1 to 4"),
    (["--hires-scale", "two"], "--hires-scale", "expected a number"),
    (["--denoise", "2"], "--denoise", "above 0 and at most 1"),
    (["--denoise", "0"], "--denoise", "above 0 and at most 1"),
    (["--denoise", "-0.5"], "--denoise", "above 0 and at most 1"),
    (["--hires", "--steps", "3", "--denoise", "0.2"], "--denoise", "gives no Hires step"),
    (["--model", "{tmp}/no-such-model"], "--model", "no such file or folder"),
    (["--model", "{tmp}"], "--model", "without model_index.json"),
    (["--upscaler", "{tmp}/no-such.pth"], "--upscaler", "no such file"),
    (["--out", "{file}"], "--out", "is a file, not a folder"),
    (["--out", "{file}/report"], "--out", "cannot be created"),
    (["--device", "gpu"], "--device", "expected auto, cpu, cuda"),
    (["--refine", "0.9"], "--refine", "from 0.05 to 0.75"),
    (["--refine", "0"], "--refine", "from 0.05 to 0.75"),
    (["--refine", "0.05", "--steps", "4"], "--refine", "rounds to no step"),
])
def test_bad_arguments_fail_with_a_usage_error_naming_them(tmp_path, capsys, args, argument, says):
    (tmp_path / "a-file.txt").write_text("not a folder")
    args = [a.format(tmp=tmp_path, file=tmp_path / "a-file.txt") for a in args]
    assert exit_code(["ab", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: argument {argument}: " in err and says in err, err
    assert not (tmp_path / "out").exists(), "nothing written"


def test_arguments_at_their_bounds_are_accepted():
    from lib_sdfix.cli.__main__ import build_parser

    parse = build_parser().parse_args
    low = parse(["ab", "--seed", "0", "--steps", "1", "--width", "64", "--height", "64", "--hires-scale", "1",
                 "--denoise", "0.01", "--refine", "0.05"])
    high = parse(["ab", "--seed", str(2**32 - 1), "--steps", "150", "--width", "2048", "--height", "2048",
                  "--hires-scale", "4", "--denoise", "1", "--refine", "0.75"])
    assert (low.refine, high.refine) == (0.05, 0.75)
    assert (low.seed, low.steps, low.width, low.hires_scale, low.denoise) == (0, 1, 64, 1.0, 0.01)
    assert (high.seed, high.steps, high.height, high.hires_scale, high.denoise) == (2**32 - 1, 150, 2048, 4.0, 1.0)


# --- the output folder ---------------------------------------------------------------------------


def test_out_must_be_empty_or_missing_unless_forced(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()  # empty: fine
    run = ["ab", "--out", str(out), "--steps", "1", "--width", "64", "--quiet"]
    assert exit_code(run) == 0
    first = (out / "report.json").read_bytes()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()

    assert exit_code(run + ["--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert f"error: argument --out: {out} is not empty" in err and "--force" in err and "Traceback" not in err
    assert (out / "report.json").read_bytes() == first, "nothing overwritten"

    assert exit_code(run + ["--seed", "7", "--force"]) == 0
    assert json.loads((out / "report.json").read_text())["config"]["seed"] == 7
    assert (out / "notes.txt").read_text() == "mine", "--force replaces the report's files, nothing else"


def test_force_is_documented_in_the_help(capsys):
    assert exit_code(["ab", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--force" in text and "non-empty --out folder" in text and "must be missing or empty unless --force" in text
