"""Malformed and hostile request bodies against SDFix's validators: in-process, or sent to a running WebUI.

Generates (deterministically, from ``--seed``) bodies of two kinds: SDFix script args as the WebUI
hands them to the script (positional lists, a dict of named options; wrong types, unknown keys,
NaN, huge numbers, huge strings, deep nesting, huge lists) and A/B bodies for POST /sdfix/v1/ab
(every txt2img field out of range or of the wrong type, path and file option overrides, hostile
variants and labels, huge and deeply nested containers), and name bodies for /sdfix/v1/ab and
/sdfix/v1/diagnose (a misspelled sampler, schedule type, upscaler, checkpoint, style or module in
every name field, with Hires on; sweeps over unknown or twice-spelled names).  Every body is cheap
if accidentally accepted: 64x64, 1 step.

In-process (default) it calls ``SDFixSettings.from_args``, ``ab.ab_request_from_body`` and
``diagnose.diagnose_request_from_body`` (names checked against :data:`OFFLINE_NAMES`, a host with
AUTOMATIC1111's default registries) and checks that each body is refused with a SettingsError
naming at least one field path that exists in the body, with a message under 10,000 characters,
and that nothing else is raised.  With ``--url`` it sends them to a running WebUI (A/B bodies to
/sdfix/v1/ab, name bodies to both routes, script args inside a txt2img body at /sdapi/v1/txt2img as
``alwayson_scripts.sdfix.args``) and counts status codes: 5xx must be 0, and so must 2xx for the
name bodies.  Over HTTP the WebUI cuts script args to SDFix's 9 slots and pads them with the UI's
defaults, so a too-long positional list can arrive valid (a 2xx there is not an SDFix miss).

    python bench/hostile_bodies.py [--seed 0]
    python bench/hostile_bodies.py --url http://127.0.0.1:7860 [--auth user:pass] [--timeout 120]
"""
from __future__ import annotations

import argparse
import base64
import json
import random
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Iterable, List, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_sdfix import ab, diagnose, names
from lib_sdfix.limits.overrides import OVERRIDE_REFUSED
from lib_sdfix.settings import UI_ARG_ORDER, SDFixSettings, SettingsError

CHEAP = {"prompt": "hostile body", "steps": 1, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}
NAN, INF = float("nan"), float("inf")
HUGE_INT = 10 ** 400
MESSAGE_LIMIT = 10_000

Case = Tuple[str, Any]


def deep(levels: int, leaf: Any = 1, kind: str = "list") -> Any:
    """``levels`` nested lists (or objects) around ``leaf``."""
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


def junk_text(rng: random.Random, n: int) -> str:
    """Text that breaks things: control characters, lone surrogates, RTL marks, NUL."""
    pool = ["\x00", "\x1b[2J", "\ud800", "\u202e", "\n", "%s", "{}", "../", "\\", "'", '"', "<script>", "ü", "\U0001F600"]
    return "".join(rng.choice(pool) for _ in range(n))


def png_claiming(width: int, height: int) -> str:
    """Base64 of a ~100-byte PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


# --- script args ---------------------------------------------------------------------------------------

_BOOL_BAD = [None, "yes", "true", 1, 0, 0.0, [True], HUGE_INT, NAN]
_CHOICE_BAD = [None, "lanczos", "", 5, True, "x" * 100_000, ["LANCZOS"], "LANCZOS\x00"]
_FLOAT_BAD = [NAN, INF, -INF, -1, 2, 1.5, HUGE_INT, -HUGE_INT, "0.5", True, None, [0.5]]


def _bad_pool(name: str) -> List[Any]:
    kind = {"resize_filter": "choice", "vae_dtype": "choice", "latent_denoise_warning": "float"}.get(name, "bool")
    return {"bool": _BOOL_BAD, "choice": _CHOICE_BAD, "float": _FLOAT_BAD}[kind]


def script_args_cases(rng: random.Random) -> List[Case]:
    """Script args lists as the WebUI passes them to SDFix's process()."""
    cases: List[Case] = []
    valid = SDFixSettings().as_args()
    for i, name in enumerate(UI_ARG_ORDER):
        for bad in _bad_pool(name):
            if i == 0 and isinstance(bad, dict):
                continue
            cases.append((f"positional {name}={str(bad)[:20]!r}", valid[:i] + [bad] + valid[i + 1:]))
            cases.append((f"named {name}={str(bad)[:20]!r}", [{name: bad}]))
    cases += [
        ("10 positional values", valid + [True]),
        ("1000 positional values", [True] * 1000),
        ("dict after a positional value", [True, {"enabled": True}]),
        ("deep list in slot 0", [deep(200)]),
        ("deep object as an option value", [{"enabled": deep(200, kind="dict")}]),
        ("unknown option", [{"unknown": 1}]),
        ("empty key", [{"": 1}]),
        ("100k-character key", [{"k" * 100_000: True}]),
        ("10k unknown options", [{f"opt{i}": i for i in range(10_000)}]),
        ("known and unknown options", [{"enabled": True, "precision_gaurd": False}]),
        ("junk key", [{junk_text(rng, 30): True}]),
        ("list of 100k values as an option", [{"resize_filter": ["BOX"] * 100_000}]),
    ]
    for n in range(40):  # random mixes: a few slots wrong at once
        args = list(valid)
        spoiled = rng.sample(range(len(args)), rng.randint(1, 4))
        for i in spoiled:
            args[i] = rng.choice(_bad_pool(UI_ARG_ORDER[i]))
        cases.append((f"random positional mix {n}", args[:rng.randint(max(spoiled) + 1, len(args))]))
    for n in range(20):
        names = rng.sample(UI_ARG_ORDER, rng.randint(1, 3))
        cases.append((f"random named mix {n}", [{name: rng.choice(_bad_pool(name)) for name in names}]))
    return cases


def script_paths(args: List[Any]) -> Set[str]:
    """Field names that exist in script args: "args", the option of each positional slot, the dict's keys."""
    names = {"args"} | set(UI_ARG_ORDER[:len(args)])
    if args and isinstance(args[0], dict):
        names |= {str(k) for k in args[0]}
    return names


# --- A/B bodies ------------------------------------------------------------------------------------------

_INT_BAD = [2 ** 40, -(2 ** 40), HUGE_INT, 1.5, NAN, INF, True, "20", [20], {"v": 20}]
_FLOAT_BAD_PAYLOAD = [1e9, -1e9, HUGE_INT, NAN, INF, -INF, True, "0.5", [0.5], {"v": 0.5}]
_SPECIFIC = {
    "width": [0, 63, 65, 4096, -64, None], "height": [0, 2056, 500], "steps": [0, 151, -1, None],
    "batch_size": [0, 2, 9], "n_iter": [0, 2, 101], "cfg_scale": [0, 31, None], "denoising_strength": [-0.1, 1.5],
    "hr_scale": [0.5, 5], "hr_resize_x": [8, 100, 4096], "hr_resize_y": [-8, 2056], "hr_second_pass_steps": [-1, 151],
    "seed": [-2, 4294967296], "subseed": [-3], "subseed_strength": [2, -1], "seed_resize_from_w": [7, 4096],
    "seed_resize_from_h": [-8], "eta": [2], "s_churn": [101], "s_noise": [1.2], "refiner_switch_at": [0, 2],
    "firstphase_width": [32, 4097],
}
_FLOATS = {"cfg_scale", "denoising_strength", "hr_scale", "subseed_strength", "eta", "s_churn", "s_noise",
           "refiner_switch_at"}


def body(**payload: Any) -> dict:
    return {"payload": dict(CHEAP, **payload)}


def ab_cases(rng: random.Random) -> List[Case]:
    cases: List[Case] = []
    for field, specific in _SPECIFIC.items():
        for bad in specific + (_FLOAT_BAD_PAYLOAD if field in _FLOATS else _INT_BAD):
            cases.append((f"payload.{field}={str(bad)[:20]}", body(**{field: bad})))
    huge = "x" * 1_000_000
    cases += [
        ("1M-character prompt", body(prompt=huge)),
        ("100k-character negative prompt", body(negative_prompt="n" * 100_000)),
        ("lone surrogate in prompt", body(prompt="a\ud800b")),
        ("NUL in prompt", body(prompt="a\x00b")),
        ("prompt is a number", body(prompt=5)),
        ("prompt is null", body(prompt=None)),
        ("prompt is a list", body(prompt=["a", "b"])),
        ("hr_prompt is an object", body(hr_prompt={"a": 1})),
        ("10k-character sampler", body(sampler_name="s" * 10_000)),
        ("sampler with a newline", body(sampler_name="Euler\na")),
        ("escape codes in scheduler", body(scheduler="\x1b[2J")),
        ("100k styles", body(styles=["s"] * 100_000)),
        ("styles of numbers", body(styles=[1, 2])),
        ("styles is text", body(styles="style")),
        ("nested styles", body(styles=[["a"]])),
        ("1M-character infotext", body(infotext=huge)),
        ("junk checkpoint name", body(hr_checkpoint_name=junk_text(rng, 50))),
        ("unknown field", body(widht=512)),
        ("img2img field", body(init_images=["abc"])),
        ("10k unknown fields", {"payload": dict(CHEAP, **{f"f{i}": i for i in range(10_000)})}),
        ("100k-character field name", {"payload": dict(CHEAP, **{"k" * 100_000: 1})}),
        ("junk field name", {"payload": dict(CHEAP, **{junk_text(rng, 12): 1})}),
        ("junk override name", body(override_settings={junk_text(rng, 12): 1})),
        ("junk top-level name", {"payload": CHEAP, junk_text(rng, 12): 1}),
        ("junk variant field", {"payload": CHEAP, "variants": [{"name": "a", junk_text(rng, 12): 1}, {"name": "b"}]}),
        ("junk setting name", {"payload": CHEAP, "variants": [{"name": "a", "settings": {junk_text(rng, 12): 1}},
                                                              {"name": "b"}]}),
        ("Hires 2048 x 4", body(enable_hr=True, width=2048, height=2048, hr_scale=4, denoising_strength=0.5)),
        ("Hires to 2048 x 65536", body(enable_hr=True, width=64, height=2048, hr_resize_x=2048, hr_resize_y=64)),
        ("Hires to 64 x 2", body(enable_hr=True, width=2048, height=64, hr_resize_x=64)),
        ("one legacy first-pass side", body(firstphase_width=512)),
        ("firstpass_image text", body(firstpass_image="abc")),
        ("firstpass_image bomb", body(firstpass_image=png_claiming(100_000, 100_000))),
        ("sdfix in alwayson_scripts", body(alwayson_scripts={"sdfix": {"args": [True]}})),
        ("SDFix in alwayson_scripts", body(alwayson_scripts={"SDFix": {"args": []}})),
        ("alwayson_scripts is a list", body(alwayson_scripts=["sdfix"])),
        ("alwayson_scripts 200 deep", body(alwayson_scripts={"x": deep(200, kind="dict")})),
        ("alwayson_scripts 20k values", body(alwayson_scripts={"x": {"args": list(range(20_000))}})),
        ("NaN in alwayson_scripts", body(alwayson_scripts={"x": {"args": [NAN]}})),
        ("script_args 300 deep", body(script_args=deep(300))),
        ("comments 100 deep", body(comments=deep(100, kind="dict"))),
        ("restore_afterwards false", body(override_settings_restore_afterwards=False)),
        ("restore_afterwards text", body(override_settings_restore_afterwards="no")),
        ("override_settings is text", body(override_settings="outdir_samples=/tmp")),
        ("override_settings is a list", body(override_settings=[["outdir_samples", "/tmp"]])),
        ("override value is a list", body(override_settings={"CLIP_stop_at_last_layers": [2]})),
        ("override value is an object", body(override_settings={"sd_vae": {"name": "x"}})),
        ("Clip skip 100", body(override_settings={"CLIP_stop_at_last_layers": 100})),
        ("Clip skip NaN", body(override_settings={"CLIP_stop_at_last_layers": NAN})),
        ("unknown override", body(override_settings={"made_up_option": 1})),
        ("extension output dir override", body(override_settings={"controlnet_output_dir": "/tmp"})),
        ("5000 overrides", body(override_settings={f"o{i}": i for i in range(5000)})),
    ]
    for key in sorted(OVERRIDE_REFUSED):
        cases.append((f"override {key}", body(override_settings={key: rng.choice(["/tmp/x", True, 1, "[seed]"])})))
    variant = {"name": "b"}
    cases += [
        ("9 variants", {"payload": CHEAP, "variants": [{"name": f"v{i}"} for i in range(9)]}),
        ("10k variants", {"payload": CHEAP, "variants": [{"name": f"v{i}"} for i in range(10_000)]}),
        ("65-character name", {"payload": CHEAP, "variants": [{"name": "n" * 65}, variant]}),
        ("path as a name", {"payload": CHEAP, "variants": [{"name": "../../etc"}, variant]}),
        ("duplicate names", {"payload": CHEAP, "variants": [{"name": "a"}, {"name": "A"}]}),
        ("10k-character label", {"payload": CHEAP, "variants": [{"name": "a", "label": "L" * 10_000}, variant]}),
        ("empty label", {"payload": CHEAP, "variants": [{"name": "a", "label": ""}, variant]}),
        ("label with a newline", {"payload": CHEAP, "variants": [{"name": "a", "label": "a\nb"}, variant]}),
        ("junk label", {"payload": CHEAP, "variants": [{"name": "a", "label": junk_text(rng, 20)}, variant]}),
        ("label is a number", {"payload": CHEAP, "variants": [{"name": "a", "label": 5}, variant]}),
        ("NaN setting", {"payload": CHEAP, "variants": [{"name": "a", "settings": {"latent_denoise_warning": NAN}},
                                                        variant]}),
        ("text as a toggle", {"payload": CHEAP, "variants": [{"name": "a", "settings": {"enabled": "yes"}}, variant]}),
        ("1000 unknown settings", {"payload": CHEAP, "variants": [{"name": "a", "settings": {f"s{i}": 1 for i in
                                                                                             range(1000)}}, variant]}),
        ("deep setting", {"payload": CHEAP, "variants": [{"name": "a", "settings": {"enabled": deep(200)}}, variant]}),
        ("settings is a list", {"payload": CHEAP, "variants": [{"name": "a", "settings": [True]}, variant]}),
        ("unknown variant field", {"payload": CHEAP, "variants": [{"name": "a", "colour": "red"}, variant]}),
        ("variants is a number", {"payload": CHEAP, "variants": 5}),
        ("unknown mode", {"payload": CHEAP, "variants": "abc"}),
        ("huge mode", {"payload": CHEAP, "variants": huge}),
        ("no variants", {"payload": CHEAP, "variants": []}),
        ("nested mode list", {"payload": CHEAP, "variants": [["ab"]]}),
        ("body is a list", []),
        ("body is text", "payload"),
        ("body is a number", 1),
        ("body is null", None),
        ("payload is a list", {"payload": [CHEAP]}),
        ("payload is text", {"payload": "prompt"}),
        ("payload 500 deep", {"payload": deep(500)}),
        ("gain NaN", {"payload": CHEAP, "heatmap_gain": NAN}),
        ("gain infinity", {"payload": CHEAP, "heatmap_gain": INF}),
        ("gain huge", {"payload": CHEAP, "heatmap_gain": HUGE_INT}),
        ("gain 0", {"payload": CHEAP, "heatmap_gain": 0}),
        ("gain text", {"payload": CHEAP, "heatmap_gain": "4"}),
        ("gain true", {"payload": CHEAP, "heatmap_gain": True}),
        ("save text", {"payload": CHEAP, "save": "yes"}),
        ("unknown top-level field", {"payload": CHEAP, "bogus": 1}),
        ("10k unknown top-level fields", dict({f"t{i}": i for i in range(10_000)}, payload=CHEAP)),
    ]
    fields = list(_SPECIFIC)
    for n in range(60):  # random mixes of several bad fields and junk
        payload = dict(CHEAP)
        for field in rng.sample(fields, rng.randint(2, 5)):
            payload[field] = rng.choice(_SPECIFIC[field] + (_FLOAT_BAD_PAYLOAD if field in _FLOATS else _INT_BAD))
        if rng.random() < 0.3:
            payload["prompt"] = junk_text(rng, rng.randint(1, 40))
        cases.append((f"random mix {n}", {"payload": payload}))
    return cases


# --- names ----------------------------------------------------------------------------------------------

HIRES = {"enable_hr": True, "hr_upscaler": "Latent", "hr_scale": 2, "denoising_strength": 0.5}
NOWHERE = "sdfix-bench-no-such-checkpoint"
#: Every name field with names no host has: misspelled, another case, an alias where the host reads none.
NAME_CASES = [("sampler_name", "Eular a"), ("sampler_name", "euler a"), ("sampler_name", "k_euler_a"),
              ("sampler_index", "Eulr"), ("hr_sampler_name", "Eular a"), ("hr_sampler_name", "DPM++ 2M Karras"),
              ("scheduler", "Karas"), ("scheduler", "KARRAS"), ("scheduler", "SGMUniform"), ("hr_scheduler", "Karas"),
              ("hr_upscaler", "Latent (nearets)"), ("hr_upscaler", ""), ("hr_checkpoint_name", NOWHERE),
              ("refiner_checkpoint", NOWHERE), ("styles", ["sdfix-bench-no-such-style"]),
              ("override_settings", {"sd_model_checkpoint": NOWHERE}), ("hr_additional_modules", ["no-such.safetensors"])]
#: A host with AUTOMATIC1111 v1.10.1's default registries (a subset), for in-process runs.
OFFLINE_NAMES = names.payload_names(
    ["DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC"],
    [("automatic", "Automatic", []), ("karras", "Karras", []), ("sgm_uniform", "SGM Uniform", ["SGMUniform"])],
    ["Latent", "Latent (nearest)", "None", "Lanczos", "R-ESRGAN 4x+"], ["v1-5-pruned-emaonly.safetensors [6ce0161689]"],
    find_checkpoint=lambda v: "v1-5-pruned-emaonly.safetensors [6ce0161689]".find(v) >= 0,
    checkpoint_alias=lambda v: v in ("v1-5-pruned-emaonly", "v1-5-pruned-emaonly.safetensors [6ce0161689]"),
    styles=[], vae_files=[])


def name_cases() -> List[Tuple[str, str, Any]]:
    """(route, name, body): each name case for /sdfix/v1/ab and /sdfix/v1/diagnose, and sweeps."""
    cases: List[Tuple[str, str, Any]] = []
    for field, value in NAME_CASES:
        payload = {**CHEAP, **HIRES, field: value}
        cases += [("/sdfix/v1/ab", f"payload.{field}={value!r}", {"payload": payload}),
                  ("/sdfix/v1/diagnose", f"payload.{field}={value!r}", {"kind": "steps", "payload": payload})]
    for axis, values in (("scheduler", ["karras", "Karras"]), ("scheduler", ["Karas", "Karras"]),
                         ("scheduler", ["Automatic", "automatic"]), ("sampler_name", ["Euler", "Eular a"]),
                         ("sampler_name", ["Euler", "k_euler"])):
        cases.append(("/sdfix/v1/diagnose", f"sweep {axis} {values}", {"kind": "sweep", "payload": CHEAP, "axis": axis,
                                                                        "values": values}))
    return cases


def cost_cases() -> List[Tuple[str, Any]]:
    """(name, body) of /sdfix/v1/diagnose kind "optimizations" that must each be refused naming a field."""
    kind = {"kind": "optimizations", "payload": CHEAP}
    fields: List[Tuple[str, Any]] = [
        ("options", 7), ("options", "token_merging_ratio"), ("options", []), ("options", {}), ("options", [None]),
        ("options", [123]), ("options", [["token_merging_ratio"]]), ("options", ["tome"]), ("options", ["\x00token"]),
        ("options", ["token_merging_ratio"] * 2), ("options", [f"token_merging_ratio{i}" for i in range(10_000)]),
        ("options", {"token_merging_ratio": 2}), ("options", {"token_merging_ratio": -0.1}),
        ("options", {"token_merging_ratio": "0.5"}), ("options", {"token_merging_ratio": True}),
        ("options", {"token_merging_ratio": [0.5]}), ("options", {"token_merging_ratio": 1e308}),
        ("options", {"sd_vae_decode_method": "Approx NN"}), ("options", {"pad_cond_uncond": 1}),
        ("options", {"cross_attention_optimization": "x" * 10_000}), ("options", {"cross_attention_optimization": ""}),
        ("options", {"token_merging_ratio": 0.5, "nope": 1}), ("options", {"steps": 0}),
        ("repeats", 0), ("repeats", 6), ("repeats", -1), ("repeats", 2.5), ("repeats", "3"), ("repeats", True),
        ("repeats", 10 ** 12), ("repeats", None), ("axis", "steps"), ("values", [1, 2]), ("image", "x"),
    ]
    cases = [(f"{field}={str(value)[:40]!r}", {**kind, field: value}) for field, value in fields]
    cases.append(("payload.steps=0", {**kind, "payload": {**CHEAP, "steps": 0}}))
    return cases


def body_paths(value: Any) -> Set[str]:
    """Every field path in a body, as the validators spell them: ``payload.width``, ``variants[0].name``."""
    paths = {"body"}
    stack: List[Tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                path = f"{where}.{key}" if where else str(key)
                paths.add(path)
                stack.append((sub, path))
        elif isinstance(item, list) and len(paths) < 200_000:
            for i, sub in enumerate(item):
                path = f"{where}[{i}]"
                paths.add(path)
                stack.append((sub, path))
    return paths


# --- running -------------------------------------------------------------------------------------------


def run_in_process(kind: str, cases: Iterable[Case], validate, paths_of) -> int:
    failures = refused = 0
    slowest = (0.0, "")
    for name, value in cases:
        start = time.perf_counter()
        try:
            validate(value)
        except SettingsError as err:
            elapsed = time.perf_counter() - start
            slowest = max(slowest, (elapsed, name))
            existing = paths_of(value)
            if not any(path in existing for path in err.problems):
                failures += 1
                print(f"  FAIL {kind} {name!r}: names {list(err.problems)[:5]}, none of which is in the body")
            elif len(str(err)) > MESSAGE_LIMIT:
                failures += 1
                print(f"  FAIL {kind} {name!r}: a {len(str(err))}-character message")
            else:
                refused += 1
            continue
        except Exception as err:  # noqa: BLE001 -- what this bench looks for
            failures += 1
            print(f"  FAIL {kind} {name!r}: raised {type(err).__name__}: {str(err)[:200]}")
            continue
        failures += 1
        print(f"  FAIL {kind} {name!r}: accepted")
    total = refused + failures
    print(f"{kind}: {total} bodies, {refused} refused naming a field of the body, {failures} failures; "
          f"slowest {slowest[0] * 1000:.1f} ms ({slowest[1]})")
    return failures


def post(url: str, path: str, payload: Any, auth: str, timeout: float) -> Tuple[int, str]:
    data = json.dumps(payload).encode()  # NaN and Infinity go out as Python's JSON writes them
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, ""
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        try:
            detail = json.loads(text).get("detail", text)
        except (ValueError, AttributeError):
            detail = text
        return err.code, detail if isinstance(detail, str) else json.dumps(detail)


def _as_sent(path: str) -> str:
    """A field path as an error message spells it (lone surrogates escaped)."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def run_http(kind: str, cases: List[Case], send, paths_of, url: str, auth: str, timeout: float,
             accepted_fails: bool = False) -> int:
    """5xx answers (and with ``accepted_fails`` 2xx ones too), listed and counted."""
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    named = 0
    for name, value in cases:
        try:
            status, detail = send(value)
        except (OSError, urllib.error.URLError) as err:
            counts["other"] += 1
            print(f"  {kind} {name!r}: no answer ({err})")
            continue
        group = f"{status // 100}xx"
        counts[group if group in counts else "other"] += 1
        if status >= 500:
            print(f"  5xx {kind} {name!r}: {status} {detail[:200]}")
        elif status < 300:
            print(f"  accepted {kind} {name!r}")
        elif any(_as_sent(path) in detail for path in paths_of(value) if len(path) < 200 and path != "body") \
                or "body" in detail:
            named += 1
    print(f"{kind}: {len(cases)} bodies -> 2xx {counts['2xx']}, 4xx {counts['4xx']} ({named} naming the field), "
          f"5xx {counts['5xx']}, no answer {counts['other']}")
    return counts["5xx"] + (counts["2xx"] if accepted_fails else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="a running WebUI (with --api), e.g. http://127.0.0.1:7860")
    parser.add_argument("--auth", default="", help="user:pass for --api-auth")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    scripts, bodies, named = script_args_cases(rng), ab_cases(rng), name_cases()
    base = SDFixSettings()
    if not args.url:
        bad = run_in_process("script args", scripts, lambda a: SDFixSettings.from_args(a, base), script_paths)
        bad += run_in_process("A/B bodies", bodies, lambda b: ab.ab_request_from_body(b, base), body_paths)

        def validate(route_body):
            route, value = route_body
            if route.endswith("/ab"):
                return ab.ab_request_from_body(value, base, choices=OFFLINE_NAMES)
            return diagnose.diagnose_request_from_body(value, base, choices=OFFLINE_NAMES,
                                                       names=names.sweep_names(OFFLINE_NAMES))

        bad += run_in_process("name bodies", [(f"{r} {n}", (r, b)) for r, n, b in named], validate,
                              lambda route_body: body_paths(route_body[1]))
        bad += run_in_process("cost-of-speed bodies", cost_cases(),
                              lambda b: diagnose.diagnose_request_from_body(b, base, choices=OFFLINE_NAMES), body_paths)
        sys.exit(1 if bad else 0)

    def send_script(script_args):
        payload = dict(CHEAP, alwayson_scripts={"sdfix": {"args": script_args}})
        return post(args.url, "/sdapi/v1/txt2img", payload, args.auth, args.timeout)

    server_errors = run_http("script args", scripts, send_script, script_paths, args.url, args.auth, args.timeout)
    server_errors += run_http("A/B bodies", bodies, lambda b: post(args.url, "/sdfix/v1/ab", b, args.auth, args.timeout),
                              body_paths, args.url, args.auth, args.timeout)
    server_errors += run_http("name bodies", [(f"{r} {n}", (r, b)) for r, n, b in named],
                              lambda rb: post(args.url, rb[0], rb[1], args.auth, args.timeout),
                              lambda rb: body_paths(rb[1]), args.url, args.auth, args.timeout, accepted_fails=True)
    server_errors += run_http("cost-of-speed bodies", cost_cases(),
                              lambda b: post(args.url, "/sdfix/v1/diagnose", b, args.auth, args.timeout),
                              body_paths, args.url, args.auth, args.timeout, accepted_fails=True)
    sys.exit(1 if server_errors else 0)


if __name__ == "__main__":
    main()
