"""Engine decode on the CPU, two checkouts A/B, interleaved on one machine.

    python scripts/ab_cpu_decode.py --before /tmp/base --after . --rounds 5 \\
        --out bench/cpu_DATE_batch_decode.json

Times decode steps (gpt2.bench's ours_decode and ours_batch: a 16-token prompt,
then greedy steps) at batch 1 and --batch for each case, a model and a weight
type: "gpt2:f16" is GPT-2-small's shape with random weights, "embedded:f32"
the embedded default model (gpt2.load() with no path) in f32. Each measurement
runs in a fresh process whose PYTHONPATH is one checkout (its gpt2 and tinynn);
both load the same native library (TINYNN_LIB, or the one this checkout's
tinynn finds), so only the Python differs; or one checkout (--before and
--after the same) with two libraries (--before-lib, --after-lib: two builds of
native/, say ggml's thread pool against OpenMP), so only the library differs.
--neighbours N keeps N busy-looping processes running throughout (a busy
machine). Rounds alternate which side goes
first, so that the machine's other load falls on both; each side reports the
best and worst round (ms a step, the mean of the steps of a round).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

PROMPT_LEN = 16


def measure(case: str, batch: int, new_tokens: int, threads: int | None) -> dict:
    """In the worker process: ms a decode step at batch 1 and `batch`."""
    import gpt2
    from gpt2.bench import WEIGHT_SCALE, ours_batch, ours_decode
    from gpt2.engine import FastGPT2

    model, dtype = case.split(":")
    if model == "embedded":
        opened = gpt2.load(None, device="cpu", dtype=dtype, n_slots=batch, n_threads=threads)
        engine = opened.engine
    else:
        from gpt2.bench import SHAPES
        from gpt2.random_weights import random_weights

        opened = None  # the engine is ours to close
        weights = random_weights(SHAPES[model], seed=0, scale=WEIGHT_SCALE)
        engine = FastGPT2(weights, "cpu", dtype, n_slots=batch, n_threads=threads)
    try:
        one = ours_decode(engine, PROMPT_LEN, new_tokens)
        many = ours_batch(engine, batch, PROMPT_LEN, new_tokens)
    finally:
        (opened or engine).close()
    return {"b1_ms": one["ms_mean"], f"b{batch}_ms": many["ms_mean"]}


def run_side(root: Path, args: argparse.Namespace, case: str, lib: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), TINYNN_LIB=lib)
    cmd = [sys.executable, __file__, "--worker", case, "--batch", str(args.batch)]
    cmd += ["--new-tokens", str(args.new_tokens)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def git_commit(root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()


def summary(rounds: list[dict], batch: int) -> dict:
    out = {}
    for key in ("b1_ms", f"b{batch}_ms"):
        values = [r[key] for r in rounds]
        out[key] = {"best": round(min(values), 3), "worst": round(max(values), 3)}
    b1, bn = out["b1_ms"]["best"], out[f"b{batch}_ms"]["best"]
    out[f"b{batch}_over_b1_step"] = round(bn / b1, 2)  # a step of the batch vs one of one
    out[f"b{batch}_tok_s_over_b1"] = round(batch * b1 / bn, 2)
    return out


def run_rounds(args: argparse.Namespace, sides: dict, libs: dict) -> dict:
    results: dict = {case: {side: [] for side in sides} for case in args.cases}
    for k in range(args.rounds):
        order = list(sides) if k % 2 == 0 else list(reversed(sides))
        for case in args.cases:
            for side in order:
                r = run_side(sides[side], args, case, libs[side])
                results[case][side].append(r)
                print(f"round {k} {case:14s} {side:6s} {r}", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="checkout A (its gpt2 and tinynn)")
    p.add_argument("--after", type=Path, help="checkout B")
    p.add_argument(
        "--cases",
        nargs="+",
        default=["gpt2:f16", "gpt2:q8_0", "gpt2:f32", "embedded:f16", "embedded:f32"],
        help="model:dtype, model a bench shape or 'embedded'",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64, help="decode steps timed a round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="None: the library's choice")
    p.add_argument("--before-lib", default=None, help="side A's libtinynn.so (default: TINYNN_LIB)")
    p.add_argument("--after-lib", default=None, help="side B's libtinynn.so")
    p.add_argument("--neighbours", type=int, default=0, help="busy-looping processes beside")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.batch, args.new_tokens, args.threads)))
        return 0
    from tinynn._lib import library_path

    lib = os.environ.get("TINYNN_LIB") or library_path()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    libs = {"before": args.before_lib or lib, "after": args.after_lib or lib}
    spin = [sys.executable, "-c", "while True: pass"]
    neighbours = [subprocess.Popen(spin) for _ in range(args.neighbours)]
    try:
        results = run_rounds(args, sides, libs)
    finally:
        for proc in neighbours:
            proc.kill()
            proc.wait()
    report = {
        "what": "CPU engine decode ms a step, batch 1 and N, two checkouts interleaved "
        "(scripts/ab_cpu_decode.py)",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": os.getloadavg()[0],
        },
        "sides": {
            side: {"commit": git_commit(root), "library": libs[side]}
            for side, root in sides.items()
        },
        "threads": args.threads,
        "neighbours": args.neighbours,
        "prompt_tokens": PROMPT_LEN,
        "steps_a_round": args.new_tokens,
        "rounds": args.rounds,
        "results": {
            case: {side: summary(rs, args.batch) for side, rs in by_side.items()}
            for case, by_side in results.items()
        },
        "raw": results,
    }
    for case, by_side in report["results"].items():
        print(case, json.dumps(by_side))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
