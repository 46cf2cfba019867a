"""``python -m lib_sdfix diagnose optimizations`` on the embedded tiny pipeline (CPU, 64x64, 2 steps): argument
errors, a real run and its report, decode-only options sharing one sampling, and the pipeline back to its
starting state after the run, after a failing cell and after an interrupt."""
import json

import pytest
from PIL import Image

pytest.importorskip("diffusers")

from ..diffusers.tiny_pipelines import one_thread  # noqa: F401 -- autouse fixture
from ..html_check import parse_strictly
from .support import exit_code

FAST = ["--width", "64", "--steps", "2", "--repeats", "1", "--quiet"]


@pytest.mark.parametrize("args, argument, says", [
    (["--options", "medvram"], "--options", "options[0]: unknown option 'medvram' (a WebUI option"),
    (["--options", "freeu,unet_dtyp"], "--options", "options[1]: unknown option 'unet_dtyp'; did you mean unet_dtype"),
    (["--options", ",".join(["freeu"] * 13)], "--options", "at most 12 options, got 13"),
    (["--options", "freeu,freeu"], "--options", "duplicate option 'freeu'"),
    (["--options", "unet_dtype=fp8"], "--options", "unet_dtype: must be one of ['fp32', 'fp16', 'bf16']"),
    (["--options", "steps=0"], "--options", "steps: must be 1-150"),
    (["--options", "freeu=maybe"], "--options", "freeu: expected on or off"),
    (["--options", "torch_compile"], "--options", "torch_compile needs --compile"),
    (["--options", "vae"], "--options", "--vae PATH"),
    (["--repeats", "0"], "--repeats", "from 1 to 5"),
    (["--repeats", "6"], "--repeats", "from 1 to 5"),
    (["--vae", "{tmp}/missing"], "--vae", "no such file or folder"),
    (["--vae", "{tmp}"], "--vae", "without config.json"),
    (["--dtype", "fp16"], "--dtype", "unrecognized arguments"),
])
def test_bad_arguments_fail_with_a_usage_error_naming_them(tmp_path, capsys, args, argument, says):
    args = [a.format(tmp=tmp_path) for a in args]
    assert exit_code(["diagnose", "optimizations", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert argument in err and says in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


def _config(tmp_path, options, **extra):
    from lib_sdfix.cli.diagnose_command import parse_options
    from lib_sdfix.cli.diagnose_cost import CostConfig

    vae = extra.get("vae")
    return CostConfig(kind="optimizations", out=tmp_path / "out", width=64, steps=2, progress=False,
                      options=tuple(parse_options(options, 2, vae=vae)), **{"repeats": 1, **extra})


def _pipeline(config):
    from lib_sdfix.cli.diagnose_run import _Pipeline

    config.dtype = config.vae_dtype = "fp32"
    return _Pipeline(config)


def _weights(pipe):
    return {name: {k: v.clone() for k, v in getattr(pipe.pipe, name).state_dict().items()} for name in ("unet", "vae")}


def _same_weights(pipe, saved):
    for name, state in saved.items():
        now = getattr(pipe.pipe, name).state_dict()
        assert set(now) == set(state)
        for key, value in state.items():
            assert now[key].dtype == value.dtype and now[key].is_contiguous() and now[key].equal(value), (name, key)


def test_a_run_on_the_tiny_pipeline_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "cost"
    assert exit_code(["diagnose", "optimizations", "--out", str(out), "--options",
                      "unet_dtype,attention_slicing,channels_last,freeu,steps=1", *FAST]) == 0
    printed = capsys.readouterr().out
    for label in ("quality settings (reference)", "UNet dtype bf16", "attention slicing on", "FreeU on",
                  "sampling steps 1", "all measured options on", "time Δ %", "memory Δ %", "verdict"):
        assert label in printed, printed
    assert "random weights" in printed and f"report: {out / 'report.html'}" in printed
    page = parse_strictly((out / "report.html").read_text(encoding="utf-8"))
    sources = {attrs["src"] for tag, attrs in page.elements if tag == "img"}
    for src in sources:
        with Image.open(out / src) as image:
            image.verify()
    assert {"grid.png", "reference.png", "heatmap-freeu-on.png"} <= sources and (out / "chart.png").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["kind"] == "optimizations" and data["memory"]["measures"].startswith("process peak RSS")
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == ["reference", "unet-dtype-bf16", "attention-slicing-on", "channels-last-on", "freeu-on",
                          "steps-1", "all-on"]
    assert rows["reference"]["psnr"] == "inf" and rows["steps-1"]["time_s"] > 0 and rows["freeu-on"]["peak_bytes"] > 0
    assert rows["unet-dtype-bf16"]["psnr"] != "inf" and rows["unet-dtype-bf16"]["verdict"]
    assert data["environment"]["pipeline_restored"] is True
    listed = {o["key"]: o for o in data["options"]}
    assert listed["model_cpu_offload"]["status"] == "cannot be measured here" and "accelerator" in listed["model_cpu_offload"]["note"]
    assert listed["tomesd"]["status"] in ("cannot be measured here", "switchable")
    # one warm-up (untimed) and one timed full generation per cell
    assert data["warm_up"]["cell"] == "all-on" and data["timings"]["samplings"] == 1 + len(rows)


def test_decode_only_options_share_one_sampling(tmp_path):
    from diffusers import AutoencoderKL

    from lib_sdfix.cli.diagnose_cost import run_optimizations
    from lib_sdfix.cli.tiny import tiny_sd15_components

    other = tmp_path / "other-vae"
    vae = tiny_sd15_components(seed=1)["vae"]
    assert isinstance(vae, AutoencoderKL)
    vae.save_pretrained(other)
    config = _config(tmp_path, "vae_slicing,vae_tiling,vae", vae=str(other), repeats=2)
    pipe = _pipeline(config)
    own = pipe.pipe.vae
    result = run_optimizations(config, pipe)
    t = result["timings"]
    # the warm-up and the reference's two timed samplings: no other cell samples
    assert t["samplings"] == 1 + 2 and t["unet_calls"] == 2 * (1 + 2)
    # warm-up 1, reference 2 full + 2 decode-only, three cells and all-on: 2 decode-only each
    assert t["decodes"] == 1 + 2 + 2 + 4 * 2
    rows = {r["name"]: r for r in result["analysis"]["rows"]}
    assert [r["options"] for r in rows.values()] == [{}, {"vae_slicing": True}, {"vae_tiling": True},
                                                     {"vae": str(other)}, {"vae_slicing": True, "vae_tiling": True,
                                                                           "vae": str(other)}]
    for name, row in rows.items():
        if name != "reference":
            assert row["shared_sampling_with"] == "reference" and row["memory_scope"] == "decode", name
            assert row["repeats"] == 2 and row["time_s"] > 0
    vae_row = next(r for r in rows.values() if r["options"] == {"vae": str(other)})
    assert vae_row["psnr"] < 60 and rows["vae-tiling-on"]["psnr"] == float("inf")  # another VAE, another image
    assert result["pipeline_restored"] and pipe.pipe.vae is own and pipe.pipe.config.vae[1] == "AutoencoderKL"
    assert any("tiles only images larger than 128 px" in n for n in result["notes"])


def test_the_pipeline_is_back_after_the_run_and_after_a_failing_cell(tmp_path, monkeypatch):
    from lib_sdfix.cli import diagnose_cost
    from lib_sdfix.cli.pipeline_options import pipeline_state

    config = _config(tmp_path, "unet_dtype,channels_last,attention_slicing,freeu,vae_tiling")
    pipe = _pipeline(config)
    before, weights, unet, vae = pipeline_state(pipe.pipe), _weights(pipe), pipe.pipe.unet, pipe.pipe.vae
    result = diagnose_cost.run_optimizations(config, pipe)
    assert result["pipeline_restored"] and pipeline_state(pipe.pipe) == before
    assert pipe.pipe.unet is unet and pipe.pipe.vae is vae
    _same_weights(pipe, weights)  # bf16 and back: from the saved copy, not rounded

    real = diagnose_cost._Runs.sample

    def failing(self, steps):  # the all-on cell (bf16 and FreeU) fails mid-sampling
        unet = self.pipe.pipe.unet
        if str(unet.dtype) == "torch.bfloat16" and getattr(unet.up_blocks[0], "b1", None):
            raise RuntimeError("out of memory (test)")
        return real(self, steps)

    monkeypatch.setattr(diagnose_cost._Runs, "sample", failing)
    config.out = tmp_path / "failing"
    result = diagnose_cost.run_optimizations(config, pipe)
    assert "all-on: not measured (RuntimeError: out of memory (test))" in result["notes"]
    names = [r["name"] for r in result["analysis"]["rows"]]
    assert "all-on" not in names and len(names) == 6  # every other cell was measured
    assert result["pipeline_restored"] and pipeline_state(pipe.pipe) == before
    _same_weights(pipe, weights)


def test_an_interrupt_mid_run_and_the_offloads_are_undone_too(tmp_path, monkeypatch):
    from lib_sdfix.cli import diagnose_cost
    from lib_sdfix.cli.pipeline_options import Switcher, pipeline_state

    config = _config(tmp_path, "unet_dtype,channels_last,attention_slicing")
    pipe = _pipeline(config)
    before, weights = pipeline_state(pipe.pipe), _weights(pipe)
    real = diagnose_cost._Runs.decode
    calls = []

    def interrupted(self, latents):
        calls.append(1)
        if len(calls) == 3:  # the warm-up, the reference; then the bf16 cell is stopped
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(diagnose_cost._Runs, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diagnose_cost.run_optimizations(config, pipe)
    assert pipeline_state(pipe.pipe) == before
    _same_weights(pipe, weights)

    # The offloads need an accelerator to measure anything, but their hooks come off on a CPU too.
    switcher = Switcher(pipe.pipe, pipe.device, str(tmp_path))
    for offload in ("model_cpu_offload", "sequential_cpu_offload"):
        with pytest.raises(RuntimeError, match="mid-cell"):
            with switcher.switched({offload: True, "unet_dtype": "bf16", "vae_slicing": True}):
                assert pipeline_state(pipe.pipe)["unet"]["hooks"] > 0
                raise RuntimeError("mid-cell")
        assert pipeline_state(pipe.pipe) == before, offload
    _same_weights(pipe, weights)
