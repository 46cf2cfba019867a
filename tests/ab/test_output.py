"""lib_sdfix.ab.output: metrics table and JSON, heatmap, grid, slider markup, saved files."""
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.ab import (
    compare_html,
    compose_grid,
    heatmap,
    metrics_display,
    metrics_json,
    metrics_table,
    plan_variants,
    png_base64,
    save_comparison,
)
from lib_sdfix.metrics import compare_detail, difference_heatmap
from lib_sdfix.settings import SDFixSettings, SettingsError

# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_table_on_a_real_photo(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(0.8))
    sharper = photo.filter(ImageFilter.UnsharpMask(2, 120, 0))
    rows = metrics_table({"A": blurred, "B": photo, "C": sharper}, {"A": 1.5, "B": 2}, "A",
                         labels={"A": "A: SDFix off", "B": "B: SDFix on"})
    assert [r["name"] for r in rows] == ["A", "B", "C"]
    assert [r["label"] for r in rows] == ["A: SDFix off", "B: SDFix on", "C"]
    ref, b, c = rows
    assert ref["reference"] and not b["reference"]
    assert math.isinf(ref["psnr"]) and ref["ssim"] == pytest.approx(1.0)
    assert ref["laplacian_ratio"] == 1.0 and ref["high_frequency_ratio"] == 1.0
    report = compare_detail(blurred, photo)
    assert b["psnr"] == pytest.approx(report.psnr) and b["ssim"] == pytest.approx(report.ssim)
    assert b["laplacian_ratio"] == pytest.approx(report.laplacian_ratio)
    assert b["high_frequency_ratio"] == pytest.approx(report.high_frequency_ratio)
    assert 1 < b["high_frequency_ratio"] < c["high_frequency_ratio"]  # more detail than the smeared reference
    assert 1 < b["laplacian_ratio"] < c["laplacian_ratio"]
    assert (ref["time_s"], b["time_s"], c["time_s"]) == (1.5, 2.0, None)


def test_metrics_table_handles_size_mismatch_and_unknown_reference(photo):
    rows = metrics_table({"A": photo, "B": photo.resize((64, 64))}, {}, "A")
    assert rows[1]["psnr"] is None and rows[1]["ssim"] is None and rows[1]["laplacian_variance"] > 0
    with pytest.raises(ValueError, match="reference"):
        metrics_table({"A": photo}, {}, "B")


def test_metrics_json_is_strict_json(photo):
    flat = Image.new("RGB", (32, 32), (128, 128, 128))
    rows = metrics_table({"A": flat, "B": photo.resize((32, 32))}, {"A": 1.0}, "A")
    rows[1]["ssim"] = float("nan")
    document = metrics_json(rows, notes=["precision_guard: no effect in this run"])
    text = json.dumps(document, allow_nan=False)
    back = json.loads(text)
    assert back["reference"] == "A" and back["format"] == "sdfix-ab-metrics/1"
    assert back["variants"][0]["psnr"] == "inf"
    assert back["variants"][1]["laplacian_ratio"] == "inf"  # detail against a flat reference
    assert back["variants"][1]["ssim"] is None and back["variants"][1]["time_s"] is None
    assert back["notes"] == ["precision_guard: no effect in this run"]
    assert isinstance(back["variants"][1]["psnr"], float)


def test_metrics_display_rows(photo):
    rows = metrics_table({"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}, {"B": 3.25}, "A")
    headers, table = metrics_display(rows)
    assert len(headers) == len(table[0]) == 8
    assert table[0][0] == "A (reference)" and table[0][1] == "∞" and table[0][-1] == "–"
    assert table[1][-1] == "3.25" and float(table[1][1]) == pytest.approx(rows[1]["psnr"], abs=0.01)


# --- heatmap, grid, HTML ---------------------------------------------------------------------------


def test_heatmap_validates_gain_and_amplifies(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(1))
    for bad in (0.5, 65, True, "4", float("nan"), None):
        with pytest.raises(SettingsError) as err:
            heatmap(photo, blurred, bad)
        assert "heatmap_gain" in err.value.problems
    low, high = heatmap(photo, blurred, 1), heatmap(photo, blurred, 64)
    assert np.array_equal(np.asarray(heatmap(photo, blurred, 4)), np.asarray(difference_heatmap(photo, blurred, 4.0)))
    assert np.asarray(high, dtype=float).mean() > np.asarray(low, dtype=float).mean() + 20


def test_compose_grid_places_labelled_images(photo):
    a = photo.resize((40, 30))
    b = Image.new("RGB", (40, 30), (0, 200, 0))
    grid = compose_grid([a, b], ["A: off", "B"])
    strip = grid.height - 30
    assert grid.size == (80, 30 + strip) and 10 <= strip <= 40
    pixels = np.asarray(grid)
    assert np.array_equal(pixels[strip:, :40], np.asarray(a)) and np.array_equal(pixels[strip:, 40:], np.asarray(b))
    label_a, label_b = pixels[:strip, :40], pixels[:strip, 40:]
    assert (label_a < 100).all(axis=-1).sum() > 10  # text drawn in black on white
    assert (label_a < 100).all(axis=-1).sum() > (label_b < 100).all(axis=-1).sum()  # "A: off" is longer than "B"


def test_compose_grid_wraps_truncates_and_survives_any_label(photo):
    images = [photo.resize((32, 32))] * 6
    grid = compose_grid(images, ["x" * 200, "", "λ ünïcode ✓", "d", "e", "f"])
    strip = grid.height // 2 - 32
    assert grid.size == (96, 2 * (32 + strip))  # 6 images: 3 columns, 2 rows
    assert (np.asarray(grid)[:strip, 32:64] == 255).all()  # the long label stays in its own cell
    with pytest.raises(ValueError, match="labels"):
        compose_grid(images, ["a"])
    with pytest.raises(ValueError):
        compose_grid([], [])


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_compare_html_structure_and_escaping():
    a = png_base64(Image.new("RGB", (4, 4), "red"))
    b = png_base64(Image.new("RGB", (4, 4), "blue"))
    markup = compare_html(a, b, ("A: off", 'B "on" <script>'))
    parser = _Collector()
    parser.feed(markup)
    tags = parser.tags
    assert tags[0][0] == "div" and tags[0][1]["class"] == "sdfix-compare" and tags[0][1]["tabindex"] == "0"
    assert tags[0][1]["data-mode"] == "slider"
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert [i["data-role"] for i in images] == ["a", "b"]
    assert images[0]["src"] == "data:image/png;base64," + a and images[1]["alt"] == 'B "on" <script>'
    assert "<script>" not in markup
    for bad in ('" onerror="alert(1)', "", b"abc"):
        with pytest.raises(ValueError):
            compare_html(bad, b)
    with pytest.raises(ValueError, match="two labels"):
        compare_html(a, b, ("only one",))


def test_png_base64_round_trip(photo):
    import base64
    import io

    back = Image.open(io.BytesIO(base64.b64decode(png_base64(photo))))
    assert np.array_equal(np.asarray(back), np.asarray(photo))


# --- saving ------------------------------------------------------------------------------------


def test_save_comparison_writes_images_with_infotext_grid_and_metrics(tmp_path, photo):
    variants = plan_variants("ab", SDFixSettings())
    images = {"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}
    infotexts = {"A": "a portrait, ünïcode ✓\nSteps: 20, Seed: 7, SDFix: on=0",
                 "B": "a portrait\nSteps: 20, Seed: 7, SDFix: " + SDFixSettings().to_infotext()}
    document = metrics_json(metrics_table(images, {"A": 1.0, "B": 1.1}, "A"), notes=["x"])
    out = tmp_path / "outputs" / "sdfix-ab"
    paths = save_comparison(out, "00012-7", variants, images, infotexts, document)
    assert paths["images"] == {"A": out / "00012-7-A.png", "B": out / "00012-7-B.png"}
    assert paths["grid"] == out / "00012-7-grid.png" and paths["metrics"] == out / "00012-7-metrics.json"
    for name in ("A", "B"):
        with Image.open(paths["images"][name]) as saved:
            assert saved.info["parameters"] == infotexts[name]
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(images[name]))
    with Image.open(paths["grid"]) as grid:
        assert grid.width == 256 and grid.info["parameters"] == infotexts["A"]
    assert json.loads(paths["metrics"].read_text()) == json.loads(json.dumps(document))

    before = {p: p.read_bytes() for p in out.iterdir()}
    again = save_comparison(out, "00012-7", variants, images, infotexts, document)
    assert again["images"]["A"].name == "00012-7-1-A.png" and again["metrics"].name == "00012-7-1-metrics.json"
    assert {p: p.read_bytes() for p in before} == before  # nothing overwritten


def test_save_comparison_moves_the_whole_set_when_one_name_is_taken(tmp_path, photo):
    variants = plan_variants("ab", SDFixSettings())
    (tmp_path / "x-grid.png").write_bytes(b"someone else's")
    paths = save_comparison(tmp_path, "x", variants, {"A": photo, "B": photo}, {}, [])
    assert paths["images"]["A"].name == "x-1-A.png" and paths["grid"].name == "x-1-grid.png"
    assert (tmp_path / "x-grid.png").read_bytes() == b"someone else's"
    assert not (tmp_path / "x-A.png").exists()
    assert json.loads(paths["metrics"].read_text())["variants"] == []


def test_save_comparison_rejects_paths_and_skips_missing_images(tmp_path, photo):
    variants = plan_variants("ablation", SDFixSettings())
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError):
            save_comparison(tmp_path, bad, variants, {"baseline": photo}, {}, {})
    paths = save_comparison(tmp_path, "run", variants, {"baseline": photo, "all": photo}, {}, {})
    assert list(paths["images"]) == ["baseline", "all"]
    with pytest.raises(ValueError, match="no images"):
        save_comparison(tmp_path, "run", variants, {}, {}, {})
