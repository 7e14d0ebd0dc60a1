"""Decode speed quiet and beside busy neighbours (`yes > /dev/null`), issue 15 item 15.

    python scripts/busy_neighbour.py --out bench/cpu_<date>_busy_neighbour.json

Two workloads: the embedded model (`gpt2.load()`, greedy, 64 tokens) and GPT-2-small-
shaped q8_0 random weights (`gpt2.bench --workloads decode`). Two thread settings:
`fixed` (n_threads = the old default, min(cores, 8), every compute) and `auto` (the
default now: no more threads than the cores other runnable tasks leave). Each run in
its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy

ROOT = Path(__file__).resolve().parents[1]

EMBEDDED = """
import json, sys, time
import gpt2
threads = None if sys.argv[1] == "auto" else int(sys.argv[1])
with gpt2.load(device="cpu", n_threads=threads) as model:
    model.generate([464], max_new_tokens=8, temperature=0)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        n = len(model.generate([464, 1136], max_new_tokens=64, temperature=0))
        best = min(best, (time.perf_counter() - t0) / n)
print("RESULT " + json.dumps({"ms_per_token": 1000 * best}))
"""


def run_embedded(threads: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDED, threads], cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=1200,
    )  # fmt: skip
    return json.loads(out.stdout.split("RESULT ")[-1])["ms_per_token"]


def run_small_q8(threads: str, tmp: Path) -> dict:
    out = tmp / f"bench_{threads}.json"
    cmd = [sys.executable, "-m", "gpt2.bench", "--device", "cpu", "--shapes", "gpt2",
           "--dtypes", "q8_0", "--workloads", "decode", "--no-hf", "--new-tokens", "16",
           "--json", str(out)]  # fmt: skip
    if threads != "auto":
        cmd += ["--threads", threads]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.read_text())


def with_neighbours(n: int, fn, *args):
    procs = [
        subprocess.Popen("yes > /dev/null", shell=True, start_new_session=True) for _ in range(n)
    ]
    try:
        time.sleep(1.0)
        return fn(*args)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--neighbours", type=int, default=1)
    ap.add_argument("--skip-q8", action="store_true")
    args = ap.parse_args()
    tmp = Path("/tmp") / f"busy_neighbour_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    fixed = str(min(os.cpu_count() or 1, 8))
    rows = []
    for mode, threads in (("fixed", fixed), ("auto", "auto")):
        for label, n in (("quiet", 0), ("busy", args.neighbours)):
            load_before = os.getloadavg()
            t0 = time.time()
            emb = with_neighbours(n, run_embedded, threads)
            q8 = None if args.skip_q8 else with_neighbours(n, run_small_q8, threads, tmp)
            rows.append({
                "threads": mode, "n_threads": threads, "neighbours": n, "case": label,
                "embedded_ms_per_token": round(emb, 3), "gpt2_q8_0_decode": q8,
                "loadavg_before": load_before, "seconds": round(time.time() - t0, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1])[:300], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    sys.path.insert(0, str(ROOT))  # this checkout's gpt2, as the children run it
    from gpt2.bench import ggml_version

    result = {
        "what": "decode speed quiet and beside busy `yes > /dev/null` neighbours (issue 15)",
        "date": date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "system": platform.platform(),
        },  # fmt: skip
        "versions": {
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "commit": commit,
            "ggml": ggml_version(),
        },  # fmt: skip
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
