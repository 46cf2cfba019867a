"""lib_sdfix.imaging.grid: labelled grids, and trimming a label that is wider than its cell."""
import math
import random
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from lib_sdfix.imaging.grid import compose_grid, fit_label


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


def _old_trim(text, width, measure):
    """What compose_grid did: cut one character at a time, re-measuring the whole string."""
    while text and measure(text) > width:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text


def test_label_trimming_matches_the_old_result():
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(t):
        return draw.textlength(t, font=font)

    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:-_()[]iIlWM"
    labels = ["", "A", "ab", "abcd", "abcde", "A: SDFix off", "B: SDFix on", "baseline (SDFix off)", "x" * 200,
              "W" * 60, "i" * 60, "λ ünïcode ✓"] + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 90)))
                                                     for _ in range(300)]
    for label in labels:
        text = label.encode("latin-1", "replace").decode("latin-1")
        for width in (0, 1, 5, 8, 20, 24, 56, 120, 248, 600):
            assert fit_label(text, width, measure) == _old_trim(text, width, measure), (label, width)


def test_label_trimming_grows_about_linearly():
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    measured = []

    def measure(t):
        measured.append(len(t))
        return draw.textlength(t, font=font)

    def work(n):
        measured.clear()
        assert fit_label("m" * n, 120, measure).endswith("...")
        return sum(measured)

    assert work(8000) < 8 * 2 * work(1000)  # O(n log n): ~10x for 8x the text; cutting one by one was ~64x

    def seconds(n):
        label = "m" * n
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            compose_grid([Image.new("RGB", (64, 64))], [label])
            best = min(best, time.perf_counter() - start)
        return best

    assert seconds(8000) < 30 * seconds(1000) + 0.01  # generous: quadratic would be ~64x
