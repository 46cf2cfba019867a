"""Time to fit a variant label into its grid cell, against the label's length.

compose_grid cuts a label that is wider than its cell down to the longest prefix plus "..." that
fits.  Cutting one character at a time and re-measuring the whole string is quadratic; the binary
search measures O(log n) prefixes, so the time per doubling of the label should be about 2x (a
little more for the log factor), never ~4x.  Prints the best of ``--repeat`` runs per length and
the ratio to the previous (half as long) label; ``--old`` also times the one-by-one cut up to
4,000 characters, for comparison.

    python bench/label_trim.py [--repeat 5] [--old]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image, ImageDraw, ImageFont

from lib_sdfix.imaging.grid import fit_label

LENGTHS = (125, 250, 500, 1000, 2000, 4000, 8000, 16000)
CELL = 512 - 2 * 4  # a 512-pixel cell less its padding, as compose_grid lays it out


def one_by_one(text: str, width: float, measure) -> str:
    while text and measure(text) > width:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text


def best_time(fit, text: str, measure, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fit(text, CELL, measure)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--old", action="store_true", help="also time the one-by-one cut (up to 4,000 characters)")
    args = parser.parse_args()

    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text: str) -> float:
        return draw.textlength(text, font=font)

    print(f"{'chars':>7} {'binary search ms':>17} {'x per doubling':>15}" + (f" {'one-by-one ms':>14} {'x':>6}" if args.old else ""))
    previous = previous_old = None
    for n in LENGTHS:
        label = ("A/B variant label " * (n // 18 + 1))[:n]
        if n <= 2000:  # same visual result as the one-by-one cut
            assert fit_label(label, CELL, measure) == one_by_one(label, CELL, measure)
        seconds = best_time(fit_label, label, measure, args.repeat)
        ratio = f"{seconds / previous:15.2f}" if previous else f"{'':>15}"
        line = f"{n:7d} {seconds * 1000:17.3f} {ratio}"
        if args.old and n <= 4000:
            old = best_time(one_by_one, label, measure, 1)
            old_ratio = f"{old / previous_old:6.2f}" if previous_old else f"{'':>6}"
            line += f" {old * 1000:14.1f} {old_ratio}"
            previous_old = old
        print(line)
        previous = seconds


if __name__ == "__main__":
    main()
