"""lib_sdfix.ab.output: the metrics document, the tab's table, slider markup, saved files."""
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.ab import compare_html, metrics_display, metrics_json, plan_variants, save_comparison
from lib_sdfix.imaging import metrics_table, png_base64
from lib_sdfix.settings import SDFixSettings

# --- metrics ---------------------------------------------------------------------------------------


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


# --- HTML ----------------------------------------------------------------------------------------


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
