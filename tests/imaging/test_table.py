"""lib_sdfix.imaging.table: the metrics table of several images against a reference, as text, as JSON."""
import math

import pytest
from PIL import ImageFilter

from lib_sdfix.imaging.metrics import compare_detail
from lib_sdfix.imaging.table import json_safe, metrics_table, text_table


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


def test_text_table_formats_marks_the_reference_and_shows_missing_and_infinite_values():
    columns = (("label", "name", ""), ("step", "step", ""), ("psnr", "PSNR", ".2f"), ("time_s", "s", ".1f"))
    rows = [{"label": "A", "reference": True, "step": 3, "psnr": math.inf, "time_s": None},
            {"label": "B", "step": 4, "psnr": 31.234, "time_s": 2}]
    headers, cells = text_table(columns, rows)
    assert headers == ["name", "step", "PSNR", "s"]
    assert cells == [["A (reference)", "3", "∞", "–"], ["B", "4", "31.23", "2.0"]]


def test_json_safe_makes_strict_json():
    assert json_safe({"a": math.inf, "b": [-math.inf, math.nan, 1.5], 2: (1,)}) == {"a": "inf", "b": ["-inf", None, 1.5],
                                                                                  "2": [1]}
