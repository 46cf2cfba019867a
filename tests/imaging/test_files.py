"""lib_sdfix.imaging.files: base64 PNG, PNG with infotext, a set of images saved together."""
import json

import numpy as np
import pytest
from PIL import Image

from lib_sdfix.imaging.files import png_base64, png_with_infotext, save_image_set


def test_png_base64_round_trip(photo):
    import base64
    import io

    back = Image.open(io.BytesIO(base64.b64decode(png_base64(photo))))
    assert np.array_equal(np.asarray(back), np.asarray(photo))


def test_png_with_infotext_keeps_the_parameters_chunk(photo):
    import io

    with Image.open(io.BytesIO(png_with_infotext(photo, "a photo\nSteps: 20, ünïcode ✓"))) as back:
        assert back.info["parameters"] == "a photo\nSteps: 20, ünïcode ✓"
    with Image.open(io.BytesIO(png_with_infotext(photo, None))) as back:
        assert "parameters" not in back.info


def test_save_image_set_writes_every_image_the_grid_and_the_document(tmp_path, photo):
    items = [("a", "first", photo, "text a"), ("b", "second", photo.rotate(90), None)]
    paths = save_image_set(tmp_path, "run", items, {"format": "x", "rows": []})
    assert paths["images"] == {"a": tmp_path / "run-a.png", "b": tmp_path / "run-b.png"}
    with Image.open(paths["grid"]) as grid:
        assert grid.width == 2 * photo.width and grid.info["parameters"] == "text a"
    assert json.loads(paths["metrics"].read_text()) == {"format": "x", "rows": []}
    assert save_image_set(tmp_path, "run", items, {})["grid"].name == "run-1-grid.png"  # nothing overwritten
    with pytest.raises(ValueError, match="no images"):
        save_image_set(tmp_path, "run", [], {})
