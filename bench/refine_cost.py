"""What the late-step refine costs compared with the same generation without it, measured side by side.

The refine re-runs round(strength x steps) steps of the last pass, so a generation with it should take
at most 1 + round(strength x steps) / steps times as long as one without it (the decode, the prompt
encoding and everything else around the sampling are shared, so the measured ratio is usually lower).
Each round runs the generation, the same generation with round(strength x steps) more steps (what
those steps cost, measured) and the generation with the refine, the order rotating every round; from
the best time of each (the run least disturbed by other processes) and from the median over rounds
it prints the ratio, with that bound, and the refine's cost in measured sampler steps.

In a real running WebUI (POST /sdapi/v1/txt2img with SDFix's ``late_refine`` off vs on)::

    python bench/refine_cost.py --url http://127.0.0.1:7860 [--auth user:pass] [--steps 20 --strength 0.3]

Without --url (and without SDFIX_E2E_URL): in-process, on the embedded random-weight SD1.5-shaped
diffusers pipeline (lib_sdfix.cli.tiny), ``pipe(...)`` vs ``pipe(...)`` + ``lib_sdfix.diffusers.refine``,
counting the UNet calls of each as well::

    python bench/refine_cost.py [--steps 20 --strength 0.3 --size 64 --rounds 7]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib_sdfix.refine import refine_steps


def side_by_side(runs: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, List[float]]:
    """Seconds of each run, ``rounds`` times each, the order rotating every round; one warm-up of each first."""
    for run in runs.values():
        run()
    names = list(runs)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def report(label: str, times: Dict[str, List[float]], steps: int, strength: float, extra: str = "") -> None:
    """The ratio against the generation and the refine's cost in sampler steps: from the best (least
    disturbed) time of each run, and the median over rounds (a round's runs are adjacent in time, so
    they share the machine's load), with the spread of the rounds' ratios."""
    count = refine_steps(strength, steps)
    plain, longer, refined = (min(times[name]) for name in ("plain", "longer", "refine"))
    bound = 1 + count / steps
    rounds = list(zip(times["plain"], times["longer"], times["refine"]))
    ratios = [r / p for p, _, r in rounds]
    spent = [(r - p) / ((lo - p) / count) for p, lo, r in rounds if lo > p]
    print(f"{label}: {steps} steps, strength {strength:g} -> round({strength * steps:g}) = {count} steps "
          f"re-run{extra}")
    print(f"  best of {len(rounds)}: generation {plain:.3f} s, with {count} more steps {longer:.3f} s, "
          f"with late_refine {refined:.3f} s")
    print(f"  late_refine / generation {refined / plain:.3f} (bound 1 + {count}/{steps} = {bound:.3f}); "
          f"late_refine / generation with {count} more steps {refined / longer:.3f}; the refine costs "
          f"{(refined - plain) / ((longer - plain) / count):.2f} sampler steps (bound {count})")
    print(f"  median of rounds: late_refine / generation {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}], {statistics.median(spent):.2f} sampler steps")


# --- a real WebUI -------------------------------------------------------------------------------------

from ab_cost import post  # noqa: E402 -- the bench folder's POST helper (sys.path[0] is bench/ when run)


def webui(args: argparse.Namespace) -> None:
    payload = {"prompt": "a portrait photo, detailed skin", "negative_prompt": "blurry", "seed": 1234,
               "steps": args.steps, "width": args.size, "height": args.size, "cfg_scale": 6,
               "sampler_name": args.sampler, "send_images": True, "save_images": False}

    def body(refine: bool, steps: int = args.steps) -> dict:
        sdfix = {"late_refine": refine, "late_refine_strength": args.strength}
        return dict(payload, steps=steps, alwayson_scripts={"SDFix": {"args": [sdfix]}})

    infotexts: List[str] = []

    def refined() -> None:
        infotexts.append(json.loads(post(args.url, "/sdapi/v1/txt2img", body(True), args.auth)["info"])["infotexts"][0])

    longer = args.steps + refine_steps(args.strength, args.steps)
    times = side_by_side({"plain": lambda: post(args.url, "/sdapi/v1/txt2img", body(False), args.auth),
                          "longer": lambda: post(args.url, "/sdapi/v1/txt2img", body(False, longer), args.auth),
                          "refine": refined}, args.rounds)
    applied = any("SDFix refine:" in text for text in infotexts[-1:])
    report(f"WebUI {args.url} txt2img {args.size}x{args.size} {args.sampler}", times, args.steps, args.strength,
           "" if applied else "  (WARNING: the infotext has no 'SDFix refine' entry: the refine did not run)")


# --- the embedded diffusers pipeline -----------------------------------------------------------------


def diffusers_tiny(args: argparse.Namespace) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from lib_sdfix.cli.tiny import tiny_sd15_components
    from lib_sdfix.diffusers import refine, refine_generators

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline(**tiny_sd15_components())
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    calls = {"n": 0}
    pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    prompt = dict(prompt="a portrait photo, detailed skin", negative_prompt="blurry")
    size = dict(height=args.size, width=args.size)
    seed, count = 1234, refine_steps(args.strength, args.steps)
    unet: Dict[str, int] = {}

    def embeddings() -> Dict[str, Any]:
        """The prompt encoded once per generation: the refine reuses its conditioning, as in the WebUI."""
        embeds, negative = pipe.encode_prompt(device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=True, **prompt)[:2]
        return dict(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=6.0)

    def generation(name: str, steps: int, refine_strength: float = 0.0) -> Callable[[], None]:
        def run() -> None:
            calls["n"] = 0
            with torch.no_grad():
                cond = embeddings()
                out = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                           output_type="latent" if refine_strength else "pil", **size, **cond).images
                if refine_strength:
                    refine(pipe, out, refine_strength, generator=refine_generators([seed])[0],
                           num_inference_steps=steps, output_type="pil", **cond)
            unet[name] = calls["n"]
        return run

    times = side_by_side({"plain": generation("plain", args.steps), "longer": generation("longer", args.steps + count),
                          "refine": generation("refine", args.steps, args.strength)}, args.rounds)
    report(f"diffusers tiny SD1.5 (random weights, CPU, {args.threads} thread(s)) {args.size}x{args.size} Euler",
           times, args.steps, args.strength,
           f"; UNet calls {unet['plain']} -> {unet['refine']} (+{unet['refine'] - unet['plain']})")

    # The refine alone against a sampling call of as many steps (latents in, latents out): what it adds
    # beyond its steps is one pipeline call's setup.
    with torch.no_grad():
        cond = embeddings()
        latents = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=args.steps,
                       output_type="latent", **size, **cond).images
    alone = side_by_side({
        "sampling": lambda: pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=count,
                                 output_type="latent", **size, **cond),
        "refine": lambda: refine(pipe, latents, args.strength, generator=refine_generators([seed])[0],
                                 num_inference_steps=args.steps, **cond),
    }, args.rounds * 3)
    print(f"  the refine alone {min(alone['refine']):.4f} s vs a {count}-step sampling call {min(alone['sampling']):.4f} s "
          f"(best of {args.rounds * 3}): ratio {min(alone['refine']) / min(alone['sampling']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("SDFIX_E2E_URL", ""),
                        help="a running WebUI with SDFix (default: the embedded diffusers pipeline, in-process)")
    parser.add_argument("--auth", default=os.environ.get("SDFIX_E2E_AUTH", ""))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=None, help="image side (default 512 in a WebUI, 64 in-process)")
    parser.add_argument("--sampler", default="Euler", help="WebUI sampler (--url only)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (in-process only)")
    args = parser.parse_args()
    if args.url:
        args.url = args.url.rstrip("/")
        args.size = args.size or 512
        webui(args)
    else:
        args.size = args.size or 64
        diffusers_tiny(args)


if __name__ == "__main__":
    main()
