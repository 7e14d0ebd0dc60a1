"""The first second after a CPU load, two sides A/B, interleaved, fresh processes.

    python scripts/first_second_cpu.py --before-root /tmp/main --before-lib A.so \\
        --after-root . --after-lib B.so --rounds 6 --out bench/cpu_DATE_first_second.json

What a user meets right after a load, while the weights are still being moved
onto huge pages in the background (native/host_weights.c): each measurement is
a fresh process that loads a model (case "gpt2:f16": GPT-2-small's shape with
random weights; "embedded": gpt2.load() with no arguments, the embedded default
model), then at once times a 16-token prefill (the first call builds its graph),
a second one, and --steps greedy decode steps, each timed. Also the share of the
process's memory on huge pages at the end (AnonHugePages), to see how far the
move got. A side is a checkout (its gpt2 and tinynn on PYTHONPATH) and a
library (TINYNN_LIB), so an ABI change between the sides is fine. Rounds
alternate which side goes first; the machine's other load falls on both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = list(range(1, 17))


def anon_huge_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(case: str, steps: int) -> dict:
    """In the worker process: load, then the first prefills and steps."""
    import gpt2

    t0 = time.perf_counter()
    if case == "embedded":
        opened = gpt2.load(None, device="cpu")
        engine = opened.engine
    else:
        from gpt2.bench import SHAPES, WEIGHT_SCALE
        from gpt2.engine import FastGPT2
        from gpt2.random_weights import random_weights

        model, dtype = case.split(":")
        weights = random_weights(SHAPES[model], seed=0, scale=WEIGHT_SCALE)
        t0 = time.perf_counter()  # the engine's load, not numpy's random weights
        opened = engine = FastGPT2(weights, "cpu", dtype, n_slots=1)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        with engine.sequence() as seq:
            t = time.perf_counter()
            seq.start_greedy(PROMPT)
            first_prefill = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            token = seq.start_greedy(PROMPT)
            second_prefill = (time.perf_counter() - t) * 1e3
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                token = seq.step_greedy(token)
                times.append((time.perf_counter() - t) * 1e3)
        huge = anon_huge_mb()
    finally:
        opened.close()
    half = len(times) // 2
    return {
        "load_ms": round(load_ms, 1),
        "first_prefill_ms": round(first_prefill, 2),
        "second_prefill_ms": round(second_prefill, 2),
        "first_half_step_ms": round(statistics.mean(times[:half]), 3),
        "second_half_step_ms": round(statistics.mean(times[half:]), 3),
        "step_max_ms": round(max(times), 2),
        "huge_pages_mb_at_end": round(huge, 1),
    }


def run_side(root: Path, lib: str, case: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), TINYNN_LIB=lib)
    cmd = [sys.executable, __file__, "--worker", case, "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(rounds: list[dict]) -> dict:
    return {
        key: {
            "min": min(r[key] for r in rounds),
            "median": round(statistics.median(r[key] for r in rounds), 3),
            "max": max(r[key] for r in rounds),
        }
        for key in rounds[0]
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-root", type=Path)
    p.add_argument("--before-lib")
    p.add_argument("--after-root", type=Path)
    p.add_argument("--after-lib")
    p.add_argument("--cases", nargs="+", default=["gpt2:f16", "embedded"])
    p.add_argument("--steps", type=int, default=50, help="decode steps timed after the prefills")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps)))
        return 0
    sides = {
        "before": (args.before_root.resolve(), args.before_lib),
        "after": (args.after_root.resolve(), args.after_lib),
    }
    raw: dict = {case: {side: [] for side in sides} for case in args.cases}
    for k in range(args.rounds):
        order = list(sides) if k % 2 == 0 else list(reversed(sides))
        for case in args.cases:
            for side in order:
                r = run_side(*sides[side], case, args.steps)
                raw[case][side].append(r)
                load = os.getloadavg()[0]
                print(f"round {k} {case:10s} {side:6s} {r} load {load:.2f}", flush=True)
    report = {
        "what": "the first prefill and decode steps after a CPU load, two sides interleaved "
        "(scripts/first_second_cpu.py)",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sides": {s: {"library": lib} for s, (_, lib) in sides.items()},
        "steps": args.steps,
        "rounds": args.rounds,
        "results": {c: {s: spread(rs) for s, rs in by.items()} for c, by in raw.items()},
        "raw": raw,
    }
    for case, by_side in report["results"].items():
        for side, r in by_side.items():
            print(case, side, json.dumps({k: v["median"] for k, v in r.items()}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
