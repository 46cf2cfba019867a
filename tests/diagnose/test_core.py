"""The NaN watch, the round trip's dtype swap and conversions, step captures, charts and the outputs."""
import json
import math

import pytest
import torch
from PIL import Image, ImageFilter

from lib_sdfix.diagnose import nan_watch, output, roundtrip, steps
from lib_sdfix.diagnose.chart import chart_image, chart_svg, panels_for
from lib_sdfix.diagnose.plan import sweep_cells
from lib_sdfix.settings import SDFixSettings

from ..html_check import parse_strictly

# --- NaN watch -------------------------------------------------------------------------------------------


def test_watch_finds_the_first_non_finite_step_and_later_stages():
    watch = nan_watch.NanWatch()
    good = torch.zeros(1, 4, 8, 8)
    bad = good.clone()
    bad[0, 1, 2, 3] = float("nan")
    inf = good.clone()
    inf[0, 0, 0, 0] = float("inf")
    for step in range(1, 6):
        watch.observe("sampling", (good, bad if step >= 4 else good), step=step, steps=5)
    watch.observe("latent", (bad,))
    watch.observe("vae decode", (inf,))
    first = watch.resolve()
    assert (first.stage, first.step, first.steps, first.nan, first.inf) == ("sampling", 4, 5, True, False)
    assert watch.later == ["latent", "vae decode"]
    summary = watch.summary()
    assert summary["finite"] is False and summary["checked"] == {"sampling": 5, "latent": 1, "vae decode": 1}
    assert watch.note() == "nan watch: first NaN at sampling step 4 of 5, later also in latent, vae decode"
    json.dumps(summary, allow_nan=False)


def test_watch_reports_inf_and_all_finite():
    watch = nan_watch.NanWatch()
    watch.observe("sampling", (torch.ones(2, 2), None, "not a tensor"), step=1)
    assert watch.finite and watch.note() == "nan watch: all values finite (1 sampling check)"
    watch.observe("vae decode", (torch.tensor([1.0, -float("inf")]),))
    assert watch.resolve().describe() == "Inf at vae decode"
    assert nan_watch.NanWatch().note() == "nan watch: all values finite (nothing checked)"


def test_watch_keeps_the_flags_on_the_tensor_device_until_resolved(monkeypatch):
    """Observing queues reductions; reading happens once, in resolve()."""
    reads = []
    original = torch.Tensor.tolist

    def spy(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", spy)
    watch = nan_watch.NanWatch()
    for step in range(10):
        watch.observe("sampling", (torch.zeros(4, 4),), step=step + 1)
    assert reads == []
    watch.resolve()
    assert reads == [(10, 2)]


# --- the round trip's pieces ---------------------------------------------------------------------------


class Lightning(torch.nn.Module):
    """A module caching its dtype, as the ldm AutoencoderKL does."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.register_buffer("scale", torch.tensor([0.3]))
        self._dtype = torch.float32


def test_vae_in_dtype_runs_in_the_dtype_and_restores_every_bit():
    module = Lightning()
    with torch.no_grad():
        module.conv.weight.copy_(torch.full_like(module.conv.weight, 1.0 + 2 ** -20))  # not representable in fp16
    before = {n: (t, t.data.clone(), t.data_ptr()) for n, t in module.state_dict(keep_vars=True).items()}
    holder = type("Holder", (), {"dtype_vae": torch.float32})()
    with roundtrip.vae_in_dtype(module, "fp16", [(holder, "dtype_vae")]) as dtype:
        assert dtype == torch.float16 and module.conv.weight.dtype == torch.float16
        assert holder.dtype_vae == torch.float16 and module._dtype == torch.float16
        assert module.scale.dtype == torch.float16
    assert holder.dtype_vae == torch.float32 and module._dtype == torch.float32
    for name, (tensor, data, ptr) in before.items():
        now = module.state_dict(keep_vars=True)[name]
        assert now is tensor and now.data_ptr() == ptr and torch.equal(now.data, data), name


def test_vae_in_dtype_leaves_what_the_host_changed_inside_as_the_host_left_it():
    module = Lightning()
    holder = type("Holder", (), {"dtype_vae": torch.float32})()
    with roundtrip.vae_in_dtype(module, "bf16", [(holder, "dtype_vae")]):
        module.conv.weight.data = module.conv.weight.data.to(torch.float16)  # the host re-cast it itself
        holder.dtype_vae = torch.float16  # and set its own dtype
    assert module.conv.weight.dtype == torch.float32  # back to the dtype it had, where it is
    assert holder.dtype_vae == torch.float16


def test_supported_variants_on_this_cpu():
    found = roundtrip.supported_variants("cpu")
    assert found[:3] == ("webui", "precision_guard", "fp32") and set(found) <= set(roundtrip.VARIANTS)


@pytest.mark.parametrize("fast", [(), ("bf16",), ("fp16", "bf16")])
def test_a_cpu_runs_by_default_only_the_dtypes_it_has_fast_kernels_for(monkeypatch, fast):
    monkeypatch.setattr(roundtrip, "_runs", lambda device, dtype: True)
    monkeypatch.setattr(roundtrip, "_fast_on_cpu", lambda dtype: dtype in fast)
    slow = tuple(v for v in ("fp16", "bf16") if v not in fast)
    assert roundtrip.slow_variants("cpu") == slow
    assert roundtrip.default_variants("cpu") == tuple(v for v in roundtrip.VARIANTS if v not in slow)
    assert roundtrip.default_variants("cuda:0") == roundtrip.VARIANTS and roundtrip.slow_variants("cuda") == ()
    note = roundtrip.skipped_note("cpu", roundtrip.default_variants("cpu"), "name {it} in dtypes")
    if not slow:
        assert note is None
    else:
        it = "them" if len(slow) == 2 else "it"
        assert note == (f"{' and '.join(slow)} not run: this CPU has no fast {' and '.join(slow)} kernels, and a round "
                        f"trip in {it} takes minutes; name {it} in dtypes to run {it}")
    assert roundtrip.skipped_note("cpu", roundtrip.VARIANTS) is None  # all ran
    assert roundtrip.skipped_note("cpu", ("fp32",)) is None  # a subset the user chose
    assert roundtrip.skipped_note("cuda", ("webui",)) is None


def test_the_cpu_kernel_probe_asks_onednn(monkeypatch):
    import types

    roundtrip._fast_on_cpu.cache_clear()
    try:
        mkldnn = types.SimpleNamespace(_is_mkldnn_bf16_supported=lambda: True)  # no fp16 probe: an older torch
        monkeypatch.setattr(torch.ops, "mkldnn", mkldnn, raising=False)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
        assert roundtrip._fast_on_cpu("bf16") is True and roundtrip._fast_on_cpu("fp16") is False
    finally:
        roundtrip._fast_on_cpu.cache_clear()


def test_crop_and_conversions(photo):
    odd = photo.resize((101, 90))
    cropped, note = roundtrip.crop_for_vae(odd)
    assert cropped.size == (96, 88) and "96x88" in note
    assert roundtrip.crop_for_vae(photo) == (photo.convert("RGB"), None)
    tensor = roundtrip.image_to_tensor(photo)
    assert tensor.shape == (1, 3, 128, 128) and 0 <= float(tensor.min()) and float(tensor.max()) <= 1
    assert roundtrip.tensor_to_image(tensor, signed=False).tobytes() == photo.convert("RGB").tobytes()
    assert roundtrip.tensor_to_image(tensor * 2 - 1).tobytes() == photo.convert("RGB").tobytes()
    nan = torch.full((1, 3, 4, 4), float("nan"))
    assert roundtrip.tensor_to_image(nan).getextrema() == ((0, 0),) * 3  # black, as the hosts' 8-bit conversion


def test_roundtrip_rows_against_the_original_and_fp32(photo):
    fp32 = photo.filter(ImageFilter.GaussianBlur(0.6))
    half = fp32.point(lambda v: min(255, v + 2))
    rows = roundtrip.roundtrip_rows(photo, {"webui": half, "fp32": fp32}, {"webui": 0.1, "fp32": 0.2},
                                    labels={"webui": "WebUI as it runs"})
    by = {r["name"]: r for r in rows}
    assert list(by) == ["original", "webui", "fp32"] and by["original"]["reference"]
    assert by["fp32"]["high_frequency_ratio"] < 1 and by["fp32"]["psnr_vs_fp32"] == math.inf
    assert 35 < by["webui"]["psnr_vs_fp32"] < 60 and by["webui"]["label"] == "WebUI as it runs"
    maps = roundtrip.roundtrip_heatmaps(photo, {"webui": half, "fp32": fp32})
    assert set(maps["webui"]) == {"original", "fp32"} and set(maps["fp32"]) == {"original"}


# --- steps, charts, outputs --------------------------------------------------------------------------------


def test_step_capture_keeps_only_the_wanted_steps():
    capture = steps.StepCapture([3, 1, 9])
    for step in range(1, 6):
        capture(step, torch.full((1, 4, 2, 2), float(step)))
    assert sorted(capture.latents) == [1, 3] and capture.missing == [9] and capture.seen == 5
    assert float(capture.latents[3].mean()) == 3.0


def test_step_rows_and_strip(photo):
    blurred = {1: photo.filter(ImageFilter.GaussianBlur(3)), 5: photo.filter(ImageFilter.GaussianBlur(1))}
    rows = steps.step_rows(blurred, photo, 10)
    assert [r["step"] for r in rows] == [1, 5] and rows[0]["high_frequency_ratio"] < rows[1]["high_frequency_ratio"] < 1
    strip = steps.compose_strip(blurred, photo, 10)
    assert strip.width == 3 * 128
    big = {1: photo.resize((1024, 1024))}
    assert steps.compose_strip(big, photo.resize((1024, 1024)), 10).width == 2 * steps.STRIP_CELL_WIDTH


def test_charts_render_the_same_panels_as_png_and_svg():
    rows = [{"high_frequency_energy": 0.3, "psnr": math.inf}, {"high_frequency_energy": 0.2, "psnr": 31.0},
            {"high_frequency_energy": 0.15, "psnr": 35.0}]
    panels = panels_for(rows, ["10", "20", "50"], [10, 20, 50])
    assert [p.title for p in panels] == ["high-frequency energy", "PSNR vs reference (dB)"]
    assert panels[1].ys == (None, 31.0, 35.0)  # the reference's own infinite PSNR is a gap
    image = chart_image(panels, "steps")
    assert image.size == (640, 200) and image.getextrema() != ((255, 255),) * 3
    page = parse_strictly(f"<!DOCTYPE html><html><head><title>t</title></head><body>{chart_svg(panels, 'steps')}</body></html>")
    assert [t for t, _ in page.elements].count("circle") == 5
    categorical = panels_for(rows, ["Euler", "DDIM", "UniPC"])
    assert categorical[0].xs is None and chart_image(categorical).size == (640, 200)


def test_analyse_sweep_and_save_without_overwriting(photo, tmp_path):
    cells = sweep_cells("steps", [10, 20, 50], SDFixSettings())
    images = {"steps-10": photo.filter(ImageFilter.GaussianBlur(2)), "steps-20": photo.filter(ImageFilter.GaussianBlur(1)),
              "steps-50": photo}
    analysis = output.analyse_sweep("steps", cells, images, {n: 1.0 for n in images}, "steps-50",
                                    nan={"steps-10": {"finite": True, "first": None, "later": [], "checked": {}}})
    assert [r["value"] for r in analysis["rows"]] == [10, 20, 50] and analysis["rows"][2]["reference"]
    assert analysis["grid"].width == 3 * 128 and set(analysis["heatmaps"]) == {"steps-10", "steps-20"}
    assert analysis["nan"]["finite"] is True
    headers, table = output.display_table("sweep", analysis["rows"])
    assert headers[0] == "cell" and table[2][0] == "50 steps (reference)" and table[2][1] == "∞"
    document = output.diagnosis_json("sweep", analysis, axis="steps")
    text = json.dumps(document, allow_nan=False)
    assert document["format"] == "sdfix-diagnose/1" and '"inf"' in text
    items = [(c.name, c.label, images[c.name], f"infotext {c.name}") for c in cells]
    first = output.save_diagnosis(tmp_path, "00001-sweep", items, document, {"chart": analysis["chart"], "strip": None})
    second = output.save_diagnosis(tmp_path, "00001-sweep", items, document, {"chart": analysis["chart"]})
    assert first["grid"].endswith("00001-sweep-grid.png") and second["grid"].endswith("00001-sweep-1-grid.png")
    assert set(first["extras"]) == {"chart"} and second["extras"]["chart"].endswith("00001-sweep-1-chart.png")
    with Image.open(first["images"]["steps-10"]) as saved:
        assert saved.info["parameters"] == "infotext steps-10"
    assert json.loads(open(first["metrics"]).read())["kind"] == "sweep"


def test_analyse_sweep_without_the_reference_still_shows_the_grid(photo):
    cells = sweep_cells("cfg_scale", [3.0, 7.0], SDFixSettings())
    analysis = output.analyse_sweep("cfg_scale", cells, {"cfg-3": photo}, {"cfg-3": 1.0}, "cfg-7")
    assert analysis["rows"] == [] and analysis["grid"] is not None and analysis["findings"] == []


def test_merge_nan_names_the_first_bad_cell():
    bad = {"finite": False, "first": {"stage": "sampling", "step": 3, "text": "NaN at sampling step 3"}, "later": []}
    merged = output.merge_nan({"a": {"finite": True, "first": None}, "b": bad, "c": None})
    assert merged["first"]["cell"] == "b" and merged["cells"] == ["b"]
    assert output.merge_nan({"a": None}) is None


def test_long_x_labels_alternate_between_two_lines():
    from lib_sdfix.diagnose import chart

    long = chart.panels_for([{"psnr": float(i)} for i in range(5)],
                            ["webui", "precision_guard", "fp32", "fp16", "bf16"])
    _, _, xticks = chart._layout(long[0])
    assert xticks[1][1] == "precision_guard"  # not cut short
    assert [chart._label_dy(i, xticks) for i in range(5)] == [0, 11, 0, 11, 0]
    short = chart.panels_for([{"psnr": 1.0}, {"psnr": 2.0}], ["3", "7"])
    assert [chart._label_dy(i, chart._layout(short[0])[2]) for i in range(2)] == [0, 0]
