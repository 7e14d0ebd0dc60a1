"""Decode speed on the CPU against llama.cpp's llama-bench, on the same GGUF files
(issue 12's CPU row): ours through gpt2.load and gpt2.bench.ours_decode, llama.cpp's
tg128 with the same thread count, one after the other on a quiet machine.

    python scripts/cpu_vs_llama.py --llama-bench BUILD/bin/llama-bench --threads 2 \\
        --out bench/cpu_DATE_vs_llama_cpp.json A.gguf [B.gguf ...]

The GGUFs come from scripts/write_bench_ggufs.py (the bench's random weights, with a
vocabulary so that llama.cpp loads them); llama-bench from scripts/llama_bench.sh with
LLAMA_CUDA=OFF.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def llama_tg(bench: str, path: Path, threads: int, n: int, repeats: int) -> dict:
    out = subprocess.run(
        [
            bench,
            "-m",
            str(path),
            "-t",
            str(threads),
            "-p",
            "0",
            "-n",
            str(n),
            "-r",
            str(repeats),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout)[0]
    tok_s = row["avg_ts"]
    return {
        "tok_s": tok_s,
        "ms_per_token": 1e3 / tok_s,
        "stddev_tok_s": row.get("stddev_ts"),
        "type": row.get("model_type"),
        "build": row.get("build_commit"),
    }


def ours_tg(path: Path, threads: int, n: int) -> dict:
    import gpt2
    from gpt2.bench import ours_decode

    with gpt2.load(path, device="cpu", n_slots=1, n_threads=threads) as model:
        stats = ours_decode(model.engine, prompt_len=1, new_tokens=n)
        stats["dtype"] = model.engine.dtype
    stats["ms_per_token"] = stats["ms_mean"]
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = []
    for path in a.models:
        ours = ours_tg(path, a.threads, a.tokens)
        llama = llama_tg(a.llama_bench, path, a.threads, a.tokens, a.repeats)
        rows.append(
            {
                "model": path.name,
                "bytes": path.stat().st_size,
                "ours": ours,
                "llama_cpp": llama,
                "ours_over_llama_ms": round(ours["ms_per_token"] / llama["ms_per_token"], 3),
            }
        )
        print(
            f"{path.name}: ours {ours['ms_per_token']:.2f} ms/token, "
            f"llama.cpp {llama['ms_per_token']:.2f} ms/token",
            flush=True,
        )
    report = {
        "what": "decode b1, tg128 after a 1-token prompt (ours) / llama-bench tg128; same GGUFs",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "threads": a.threads,
        "rows": rows,
    }
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
