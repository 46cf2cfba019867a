"""What an A/B comparison costs compared with one generation, in a real running WebUI.

Times POST /sdfix/v1/ab ("ab": SDFix off vs on) against POST /sdapi/v1/txt2img of the same payload,
alternating them (order flipped every pair), and prints the median ratio -- target <= 1.15 for the
default decode-only comparison -- then the same for a Hires.fix comparison (Latent, 64->128).

    SDFIX_E2E_URL=http://127.0.0.1:7860 [SDFIX_E2E_AUTH=user:pass] python bench/ab_cost.py [--pairs 3]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
import urllib.request


def post(url: str, path: str, body: dict, auth: str) -> dict:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def measure(url: str, auth: str, label: str, payload: dict, pairs: int) -> None:
    one = dict(payload, send_images=True, save_images=False)
    ab = {"payload": payload, "variants": "ab"}

    def timed(kind: str) -> float:
        start = time.perf_counter()
        if kind == "one":
            post(url, "/sdapi/v1/txt2img", one, auth)
        else:
            runs.append(post(url, "/sdfix/v1/ab", ab, auth)["runs"])
        return time.perf_counter() - start

    runs: list = []
    timed("one"), timed("ab")  # warm-up
    ratios, t_one, t_ab = [], [], []
    for i in range(pairs):
        order = ("one", "ab") if i % 2 == 0 else ("ab", "one")
        times = {kind: timed(kind) for kind in order}
        t_one.append(times["one"])
        t_ab.append(times["ab"])
        ratios.append(times["ab"] / times["one"])
    print(f"{label:30s} one generation {statistics.median(t_one):7.2f} s   A/B {statistics.median(t_ab):7.2f} s "
          f"({runs[-1]} sampling run(s))   ratio {statistics.median(ratios):.3f} "
          f"[min {min(ratios):.3f}, max {max(ratios):.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SDFIX_E2E_URL", "http://127.0.0.1:7860"))
    parser.add_argument("--auth", default=os.environ.get("SDFIX_E2E_AUTH", ""))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    payload = {"prompt": "a portrait", "seed": 11, "steps": args.steps, "width": 64, "height": 64,
               "sampler_name": "Euler"}
    print(f"WebUI {args.url}, {args.pairs} pairs, {args.steps} steps; target for decode-only A/B: ratio <= 1.15")
    measure(args.url, args.auth, "A/B txt2img 64x64", payload, args.pairs)
    measure(args.url, args.auth, "A/B Hires 64->128 (Latent)", dict(payload, enable_hr=True, hr_upscaler="Latent",
            hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=args.steps), args.pairs)


if __name__ == "__main__":
    main()
