"""``python -m lib_sdfix diagnose`` on the embedded model: argument checking as ``ab``'s, the three kinds end to
end, what each costs (samplings, UNet calls, decodes), the report and its JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("diffusers")

from ..diffusers.tiny_pipelines import one_thread  # noqa: F401 -- autouse fixture
from ..html_check import parse_strictly
from .support import exit_code

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args, argument, says", [
    (["sweep", "--axis", "steps", "--values", "10,200"], "--values", "values[1]: must be 1-150"),
    (["sweep", "--axis", "cfg_scale", "--values", "7"], "--values", "expected 2-12 values"),
    (["sweep", "--axis", "cfg_scale", "--values", "1,3,3"], "--values", "duplicate"),
    (["sweep", "--axis", "sampler_name", "--values", "Euler,Eulr"], "--values", "unknown sampler name"),
    (["sweep", "--axis", "precision", "--values", "on,off", "--reference", "maybe"], "--reference", "expected \"on\""),
    (["sweep", "--axis", "steps", "--values", "5,10", "--reference", "20"], "--reference", "must be one of the values"),
    (["sweep", "--axis", "seed"], "--axis", "invalid choice"),
    (["sweep", "--cfg-scale", "40"], "--cfg-scale", "from 1 to 30"),
    (["sweep", "--sampler", "DDIM", "--schedule", "Karras"], "--schedule", "not available for sampler DDIM"),
    (["sweep", "--axis", "scheduler", "--sampler", "DDIM", "--values", "Automatic,Karras"], "--values",
     "not available for sampler DDIM"),
    (["steps", "--steps", "10", "--at", "5,11"], "--at", "at[1]: step 11 is past the generation's 10 steps"),
    (["steps", "--at", "1,x"], "--at", "expected an integer"),
    (["steps", "--width", "100"], "--width", "multiple of 8"),
    (["vae-roundtrip", "--dtypes", "fp32,fp8"], "--dtypes", "dtypes[1]: must be one of"),
    (["vae-roundtrip", "--image", "{tmp}/missing.png"], "--image", "no such file"),
    (["vae-roundtrip", "--size", "10"], "--size", "from 64 to 2048"),
])
def test_bad_arguments_fail_with_a_usage_error_naming_them(tmp_path, capsys, args, argument, says):
    args = [a.format(tmp=tmp_path) for a in args]
    assert exit_code(["diagnose", args[0], "--out", str(tmp_path / "out"), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert f"argument {argument}" in err and says in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_non_empty_out_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert exit_code(["diagnose", "steps", "--out", str(out), "--steps", "2", "--width", "64", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and "--force" in err
    assert exit_code(["diagnose", "steps", "--out", str(out), "--steps", "2", "--width", "64", "--quiet",
                      "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine" and (out / "report.html").is_file()


def test_without_the_extra_it_names_the_module(tmp_path):
    code = ("import sys; sys.modules['diffusers'] = None\nfrom lib_sdfix.cli.__main__ import main\n"
            f"sys.exit(main(['diagnose', 'steps', '--out', {str(tmp_path / 'out')!r}, '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "missing module 'diffusers'" in proc.stderr and "pip install -e .[diffusers]" in proc.stderr


def _report(out):
    page = parse_strictly((out / "report.html").read_text(encoding="utf-8"))
    for src in {attrs["src"] for tag, attrs in page.elements if tag == "img"}:
        with Image.open(out / src) as image:
            image.verify()
    return page, json.loads((out / "report.json").read_text())


def test_roundtrip_of_a_photograph_in_every_precision(tmp_path, capsys):
    out = tmp_path / "rt"
    assert exit_code(["diagnose", "vae-roundtrip", "--out", str(out), "--size", "64", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "0 sampling(s)" in printed
    page, data = _report(out)
    names = [row["name"] for row in data["rows"]]
    assert names[:4] == ["original", "webui", "precision_guard", "fp32"] and set(names) <= {"original", "webui", "precision_guard", "fp32",
                                                                                   "fp16", "bf16"}
    rows = {row["name"]: row for row in data["rows"]}
    assert rows["webui"]["label"] == "as loaded (bf16)" and rows["precision_guard"]["psnr_vs_fp32"] == "inf"
    assert isinstance(rows["webui"]["psnr_vs_fp32"], float)  # bf16 differs from fp32
    assert data["timings"]["decodes"] == data["timings"]["encodes"] == len(names) - 1
    assert data["environment"]["flags_after_run_equal_before"] is True
    assert "astronaut" in " ".join(data["notes"])
    sources = {attrs["src"] for tag, attrs in page.elements if tag == "img"}
    assert {"original.png", "webui.png", "heatmap-webui-vs-fp32.png", "heatmap-fp32-vs-original.png"} <= sources
    assert any(tag == "svg" for tag, _ in page.elements)  # the chart, inline


def test_roundtrip_on_a_cpu_without_fast_half_kernels_runs_them_only_when_named(tmp_path, monkeypatch):
    from lib_sdfix.diagnose import roundtrip

    monkeypatch.setattr(roundtrip, "_fast_on_cpu", lambda dtype: False)
    out = tmp_path / "slow"
    assert exit_code(["diagnose", "vae-roundtrip", "--out", str(out), "--size", "64", "--quiet"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["original", "webui", "precision_guard", "fp32"]
    assert any(n.startswith("fp16 and bf16 not run: this CPU has no fast") and "--dtypes" in n for n in data["notes"])
    named = tmp_path / "named"
    assert exit_code(["diagnose", "vae-roundtrip", "--out", str(named), "--size", "64", "--dtypes", "fp32,bf16",
                      "--quiet"]) == 0
    data = json.loads((named / "report.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["original", "fp32", "bf16"]
    assert not any("not run" in n for n in data["notes"])


def test_roundtrip_of_a_16_bit_png_and_a_refused_float_image(tmp_path, capsys):
    import numpy as np

    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    out = tmp_path / "rt16"
    assert exit_code(["diagnose", "vae-roundtrip", "--image", str(tmp_path / "gray16.png"), "--dtypes", "fp32",
                      "--out", str(out), "--quiet"]) == 0
    with Image.open(out / "original.png") as original:
        values = np.asarray(original.convert("RGB"))
    assert values.min() == 0 and values.max() == 255 and 120 < values.mean() < 135  # not white
    assert any("scaled to 8 bits" in note for note in json.loads((out / "report.json").read_text())["notes"])
    capsys.readouterr()
    Image.new("F", (64, 64), 0.5).save(tmp_path / "float.tif")
    assert exit_code(["diagnose", "vae-roundtrip", "--image", str(tmp_path / "float.tif"), "--out",
                      str(tmp_path / "f"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "argument --image: 32-bit floating-point pixels" in err and not (tmp_path / "f").exists()
    (tmp_path / "text.png").write_text("not an image")
    assert exit_code(["diagnose", "vae-roundtrip", "--image", str(tmp_path / "text.png"), "--out",
                      str(tmp_path / "t"), "--quiet"]) == 2
    assert "argument --image: cannot read" in capsys.readouterr().err


def test_precision_sweep_shares_its_sampling(tmp_path):
    from lib_sdfix.cli.diagnose_run import DiagnoseConfig, run_diagnose

    result = run_diagnose(DiagnoseConfig(kind="sweep", out=tmp_path / "sw", axis="precision", values=(False, True),
                                         reference=True, steps=3, width=64, progress=False))
    timings = result["timings"]
    assert timings["samplings"] == 1 and timings["unet_calls"] == 3 and timings["decodes"] == 2
    assert [f.key for f in result["analysis"]["findings"]] == ["precision"]  # bf16 vs the guarded fp32 decode
    _, data = _report(tmp_path / "sw")
    assert data["kind"] == "sweep" and data["findings"][0]["likelihood"] in ("likely", "possible")


def test_cfg_sweep_samples_each_value_once(tmp_path):
    from lib_sdfix.cli.diagnose_run import DiagnoseConfig, run_diagnose

    result = run_diagnose(DiagnoseConfig(kind="sweep", out=tmp_path / "cfg", axis="cfg_scale", values=(1.0, 5.0, 9.0),
                                         reference=5.0, steps=2, width=64, progress=False))
    assert result["timings"]["samplings"] == 3 and result["timings"]["unet_calls"] == 6
    assert result["timings"]["decodes"] == 3
    rows = result["analysis"]["rows"]
    assert [r["value"] for r in rows] == [1.0, 5.0, 9.0] and rows[1]["reference"] and rows[0]["psnr"] < 100


def test_step_strip_decodes_each_prediction(tmp_path):
    out = tmp_path / "st"
    assert exit_code(["diagnose", "steps", "--out", str(out), "--steps", "4", "--width", "64", "--at", "1,2",
                      "--quiet"]) == 0
    page, data = _report(out)
    assert [r["step"] for r in data["rows"]] == [1, 2] and data["timings"]["decodes"] == 3
    assert data["timings"]["unet_calls"] == 4 and data["nan_watch"]["finite"] is True
    assert {"strip.png", "step-1.png", "final.png"} <= {attrs["src"] for tag, attrs in page.elements if tag == "img"}


def test_a_scheduler_without_a_prediction_shows_its_latents(tmp_path):
    from lib_sdfix.cli.diagnose_run import DiagnoseConfig, run_diagnose

    result = run_diagnose(DiagnoseConfig(kind="steps", out=tmp_path / "pndm", sampler="PNDM", schedule="Automatic",
                                         steps=3, width=64, at=(1,), progress=False))
    assert any("no prediction of the final image" in note for note in result["notes"])
    euler = run_diagnose(DiagnoseConfig(kind="steps", out=tmp_path / "euler", sampler="Euler", schedule="Karras",
                                        steps=3, width=64, at=(1,), progress=False))
    assert not any("no prediction" in note for note in euler["notes"])
