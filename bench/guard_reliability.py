"""Reliability of the precision guard over random flag states, exits, nesting and threads.

For each of ``--states`` random flag states (legacy switches, ``fp32_precision`` at every level with
every valid value, matmul precision, fp16/bf16 reduction and accumulation switches, applied in a
random order, so mixed legacy/new states come up as they do in a real process) it runs guards that
exit normally, by an exception and by KeyboardInterrupt, nested guards, and 8 threads entering and
leaving at once.  Inside every guard it checks that no reduced fp32 math is effective and that the
matmul precision reads "highest"; after them, that every flag reads as before through the API it is
read with, that no read that was clean raises, and (torch >= 2.9) that the hidden settings are the
same: probing parents and legacy values afterwards gives exactly what it gave before.

    python bench/guard_reliability.py [--states 10000] [--seed 0]

Exit code 0 when every count that must be 0 is 0.
"""
from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from lib_sdfix.precision import effective_tf32, guard_depth, precision_guard

warnings.simplefilter("ignore")  # deprecation and "no Intel GPU" notes from torch's setters

RAISES = "<raises>"
B = torch.backends
C = torch._C
NEW_API = hasattr(C, "_get_fp32_precision_getter")
LEVELS = [("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
          ("mkldnn", "all"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn")]


def _has(owner: Any, name: str) -> bool:
    try:
        getattr(owner, name)
    except AttributeError:
        return False
    except RuntimeError:
        return True
    return True


MATMUL = B.cuda.matmul
SPLIT_K = _has(MATMUL, "allow_fp16_reduced_precision_reduction_split_k")
REDUCTIONS = [n for n in ("allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction") if _has(MATMUL, n)]
ACCUMULATION = _has(MATMUL, "allow_fp16_accumulation")

# Every read another piece of code may do, through the public API it would use.
READS: List[Tuple[str, Callable[[], Any]]] = [
    ("cuda.matmul.allow_tf32", lambda: B.cuda.matmul.allow_tf32),
    ("cudnn.allow_tf32", lambda: B.cudnn.allow_tf32),
    ("cudnn.benchmark", lambda: B.cudnn.benchmark),
    ("float32_matmul_precision", torch.get_float32_matmul_precision),
]
READS += [(f"cuda.matmul.{n}", lambda n=n: getattr(B.cuda.matmul, n)) for n in REDUCTIONS]
READS += [(f"cuda.matmul.{n}_split_k", lambda n=n: getattr(B.cuda.matmul, n + "_split_k")) for n in REDUCTIONS if SPLIT_K]
READS += [("cuda.matmul.allow_fp16_accumulation", lambda: B.cuda.matmul.allow_fp16_accumulation)] if ACCUMULATION else []
if NEW_API:
    READS += [
        ("fp32_precision", lambda: B.fp32_precision),
        ("cudnn.fp32_precision", lambda: B.cudnn.fp32_precision),
        ("cuda.matmul.fp32_precision", lambda: B.cuda.matmul.fp32_precision),
        ("cudnn.conv.fp32_precision", lambda: B.cudnn.conv.fp32_precision),
        ("cudnn.rnn.fp32_precision", lambda: B.cudnn.rnn.fp32_precision),
        ("mkldnn.fp32_precision", lambda: B.mkldnn.fp32_precision),
        ("mkldnn.matmul.fp32_precision", lambda: B.mkldnn.matmul.fp32_precision),
        ("mkldnn.conv.fp32_precision", lambda: B.mkldnn.conv.fp32_precision),
        ("mkldnn.rnn.fp32_precision", lambda: B.mkldnn.rnn.fp32_precision),
    ]


def reads() -> Dict[str, Any]:
    out = {}
    for name, read in READS:
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = RAISES
    return out


def fingerprint() -> List[Dict[str, Any]]:
    """Reads under a fixed series of parent and legacy-check probes: equal for equal hidden settings.

    Destroys the state; the caller rebuilds it.
    """
    out = [reads()]
    if not NEW_API:
        return out
    for parent in (("generic", "all"), ("cuda", "all"), ("mkldnn", "all")):
        for value in ("ieee", "tf32", "none"):
            C._set_fp32_precision_setter(*parent, value)
            out.append(reads())
    for value in ("tf32", "ieee"):  # shows the stored cuDNN flag
        for op in ("conv", "rnn"):
            C._set_fp32_precision_setter("cuda", op, value)
        out.append(reads())
    C._set_fp32_precision_setter("cuda", "matmul", "ieee")
    for value in ("ieee", "tf32", "bf16"):  # shows the stored matmul precision
        C._set_fp32_precision_setter("mkldnn", "matmul", value)
        out.append(reads())
    return out


def reset() -> None:
    """A fresh process's flags, as they read.  (torch 2.13's unsettable cuDNN default becomes "tf32".)"""
    B.cudnn.benchmark = False
    for name in REDUCTIONS:
        setattr(MATMUL, name, True)
    if ACCUMULATION:
        MATMUL.allow_fp16_accumulation = False
    torch.set_float32_matmul_precision("highest")
    B.cudnn.allow_tf32 = True
    if NEW_API:
        for level in LEVELS:
            C._set_fp32_precision_setter(*level, "tf32" if level in (("cuda", "conv"), ("cuda", "rnn")) else "none")


def random_ops(rng: random.Random) -> List[Tuple[str, Any, Any]]:
    ops: List[Tuple[str, Any, Any]] = []
    for _ in range(rng.choice((0, 1, 2, 3, 4, 6, 8, 10))):
        kind = rng.choice(("legacy", "legacy", "precision", "new", "new", "new", "switch"))
        if kind == "legacy":
            ops.append(("legacy", rng.choice(("matmul", "cudnn")), rng.random() < 0.6))
        elif kind == "precision":
            ops.append(("precision", rng.choice(("highest", "high", "medium")), None))
        elif kind == "new" and NEW_API:
            level = rng.choice(LEVELS + [("mkldnn", "attr")])  # "attr": the public mkldnn setter, which writes generic
            values = ["none", "ieee", "tf32"] + ([] if level[0] == "cuda" else ["bf16"])
            ops.append(("new", level, rng.choice(values)))
        elif kind == "switch":
            name = rng.choice(["cudnn.benchmark"] + REDUCTIONS + (["allow_fp16_accumulation"] if ACCUMULATION else []))
            if name in REDUCTIONS and SPLIT_K:
                value: Any = rng.choice(((True, True), (False, True), (False, False)))
            else:
                value = rng.random() < 0.5
            ops.append(("switch", name, value))
    return ops


def apply(ops: List[Tuple[str, Any, Any]]) -> None:
    reset()
    for kind, what, value in ops:
        if kind == "legacy":
            (B.cuda.matmul if what == "matmul" else B.cudnn).allow_tf32 = value
        elif kind == "precision":
            torch.set_float32_matmul_precision(what)
        elif kind == "new":
            if what == ("mkldnn", "attr"):
                B.mkldnn.fp32_precision = value
            else:
                C._set_fp32_precision_setter(*what, value)
        elif what == "cudnn.benchmark":
            B.cudnn.benchmark = value
        else:
            setattr(MATMUL, what, value)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries = 0
        self.tf32_inside = 0
        self.precision_inside = 0
        self.errors: List[str] = []

    def check_inside(self) -> None:
        effective = effective_tf32()
        try:
            highest = torch.get_float32_matmul_precision() == "highest"
        except RuntimeError:
            highest = False
        with self.lock:
            self.entries += 1
            self.tf32_inside += any(effective.values())
            self.precision_inside += not highest


class Injected(Exception):
    pass


def guarded(tally: Tally, rng: random.Random, depth: int = 0) -> None:
    """One guard entry: maybe nested, maybe leaving by an exception or KeyboardInterrupt."""
    with precision_guard():
        tally.check_inside()
        roll = rng.random()
        if roll < 0.3 and depth < 3:
            try:
                guarded(tally, rng, depth + 1)
            except (Injected, KeyboardInterrupt):
                pass
            tally.check_inside()
        elif roll < 0.45:
            raise Injected
        elif roll < 0.55:
            raise KeyboardInterrupt
        elif roll < 0.6:
            time.sleep(0)  # let another thread run while this one is inside


def scenario(tally: Tally, rng: random.Random, threads: int) -> None:
    for _ in range(3):
        try:
            guarded(tally, rng)
        except (Injected, KeyboardInterrupt):
            pass
    seeds = [rng.random() for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def worker(seed: float) -> None:
        local = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(local.randint(1, 3)):
                try:
                    guarded(tally, local)
                except (Injected, KeyboardInterrupt):
                    pass
        except BaseException as exc:  # noqa: BLE001
            with tally.lock:
                tally.errors.append(repr(exc))

    pool = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=10000, help="random initial flag states")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    tally = Tally()
    leaked = raised_after = hidden = mixed = 0
    examples: List[str] = []
    fresh = reads()
    reset()
    reset_ok = reads() == fresh
    start = time.perf_counter()
    for _ in range(args.states):
        ops = random_ops(rng)
        apply(ops)
        expected = fingerprint() if NEW_API else None
        apply(ops)
        before = reads()
        mixed += RAISES in before.values()
        scenario(tally, rng, args.threads)
        after = reads()
        changed = [k for k in before if before[k] != after[k]]
        leaked += sum(1 for k in changed if after[k] != RAISES)
        raised_after += sum(1 for k in changed if after[k] == RAISES)
        differs = expected is not None and fingerprint() != expected
        hidden += differs
        if (changed or differs) and len(examples) < 5:
            examples.append(f"ops={ops} changed={[(k, before[k], after[k]) for k in changed]} hidden={differs}")
    wall = time.perf_counter() - start
    reset()

    api = "fp32_precision + legacy" if NEW_API else "legacy only"
    print(f"precision guard reliability, torch {torch.__version__} ({api}), seed {args.seed}")
    print(f"states tried                      {args.states:>9}  ({mixed} with a legacy read raising before)")
    print(f"guard entries                     {tally.entries:>9}  (nested, exceptions, KeyboardInterrupt, {args.threads} threads)")
    print(f"leaked flags                      {leaked:>9}  must be 0")
    print(f"reads that raise afterwards       {raised_after:>9}  must be 0")
    print(f"hidden settings changed           {hidden:>9}  must be 0" + ("" if NEW_API else "  (no fp32_precision levels)"))
    print(f"TF32-effective-inside count       {tally.tf32_inside:>9}  must be 0")
    print(f"matmul precision not 'highest'    {tally.precision_inside:>9}  must be 0")
    print(f"thread errors                     {len(tally.errors):>9}  must be 0")
    print(f"wall time                         {wall:>8.1f}s")
    for line in examples + tally.errors[:5]:
        print("  e.g.", line)
    if not reset_ok:
        print("  the bench's reset() does not read as a fresh process on this torch: states are not the ones meant")
    ok = not (leaked or raised_after or hidden or tally.tf32_inside or tally.precision_inside or tally.errors)
    ok = ok and guard_depth() == 0 and reset_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
