"""SDFix's cost inside a real running WebUI: generation time off vs on, and import time at start.

Alternates the same request with SDFix off and on (order flipped every pair) and prints the median
of the per-pair time ratios, for txt2img 64x64 and Hires.fix 64->128 (Latent).  Then reads the
WebUI's own startup profile (/internal/profile-startup) for the time spent importing
``scripts/sdfix.py`` (goal <= 50 ms).

    SDFIX_E2E_URL=http://127.0.0.1:7860 [SDFIX_E2E_AUTH=user:pass] python bench/webui_overhead.py [--pairs 3]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
import urllib.request

AUTH = os.environ.get("SDFIX_E2E_AUTH", "")


def call(url: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if AUTH:
        headers["Authorization"] = "Basic " + base64.b64encode(AUTH.encode()).decode()
    request = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET",
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=1800) as response:
        return json.loads(response.read())


def timed(url: str, body) -> float:
    start = time.perf_counter()
    call(url, "/sdapi/v1/txt2img", body)
    return time.perf_counter() - start


def compare(url: str, label: str, base: dict, pairs: int) -> None:
    off = dict(base, alwayson_scripts={"sdfix": {"args": [{"enabled": False}]}})
    on = dict(base, alwayson_scripts={"sdfix": {"args": [{"enabled": True}]}})
    timed(url, on)  # warm-up
    ratios, t_off, t_on = [], [], []
    for i in range(pairs):
        order = [("off", off), ("on", on)] if i % 2 == 0 else [("on", on), ("off", off)]
        times = {name: timed(url, body) for name, body in order}
        t_off.append(times["off"])
        t_on.append(times["on"])
        ratios.append(times["on"] / times["off"])
    print(f"{label:28s} off {statistics.median(t_off):7.2f} s   on {statistics.median(t_on):7.2f} s   "
          f"ratio on/off {statistics.median(ratios):.3f} [min {min(ratios):.3f}, max {max(ratios):.3f}]")


def import_time(url: str) -> None:
    try:
        profile = call(url, "/internal/profile-startup")
    except Exception as exc:  # noqa: BLE001
        print(f"startup profile not available: {exc}")
        return
    found = []

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, (int, float)) and "sdfix" in path.lower() and "observer" not in path.lower():
            found.append((path, float(node)))

    walk(profile)
    for path, seconds in found:
        print(f"WebUI startup profile {path}: {seconds * 1000:.1f} ms (wall time; the model loads in a "
              "parallel thread during script loading, so this includes waiting for the GIL)")
    if not found:
        print("no SDFix entry in the startup profile")


_ISOLATED = """
import time, sys, logging, dataclasses, typing, threading, importlib, inspect, functools, contextlib  # the WebUI has these
sys.path.insert(0, {root!r})
start = time.perf_counter()
# what scripts/sdfix.py imports at WebUI start (callbacks: what register() needs)
import lib_sdfix.webui.apply, lib_sdfix.webui.callbacks, lib_sdfix.webui.controls  # noqa: E401
import lib_sdfix.webui.diagnose.last_output, lib_sdfix.webui.diagnose.nan_watch  # noqa: E401
print(time.perf_counter() - start)
"""


def isolated_import_time(repeats: int = 5) -> None:
    """What importing scripts/sdfix.py adds at WebUI start: its lib_sdfix imports, in a fresh process
    that already has the stdlib modules the WebUI imports anyway (min of ``repeats``)."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    times = [float(subprocess.run([sys.executable, "-c", _ISOLATED.format(root=root)], capture_output=True,
                                  text=True, check=True).stdout) for _ in range(repeats)]
    print(f"isolated import of SDFix's glue modules: {min(times) * 1000:.1f} ms (min of {repeats}; goal <= 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SDFIX_E2E_URL", "http://127.0.0.1:7860"))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    base = {"prompt": "a portrait", "seed": 1, "steps": args.steps, "width": 64, "height": 64,
            "sampler_name": "Euler", "send_images": False, "save_images": False}
    print(f"WebUI {args.url}, {args.pairs} pairs, {args.steps} steps")
    compare(args.url, "txt2img 64x64", base, args.pairs)
    compare(args.url, "Hires 64->128 (Latent)", dict(base, enable_hr=True, hr_upscaler="Latent", hr_scale=2,
                                                     denoising_strength=0.6, hr_second_pass_steps=args.steps), args.pairs)
    import_time(args.url)
    isolated_import_time()


if __name__ == "__main__":
    main()
