"""What a user gets: whole calls through `gpt2.load`, per token, on GGUF files.

For each file: `gpt2.load(path, device=..., decode=MODE)` (dtype: the file's own),
then `complete()` of a 16-token prompt for 128 new tokens, greedy and with the default
sampling (temperature 0.8, top-k 40, top-p 0.95), the best of --repeats calls after a
warm-up call; ms a token is the call's wall time over the tokens it produced (the
prefill included, as a user feels it). Then `generate_batch` of --batch prompts on a
model loaded with that many slots: tokens/s of the whole call. Each decode mode asked
for (auto: our fused kernels where they run; graphs: ggml's) gets its own rows, in the
same process, so they compare.

    python scripts/bench_user_path.py FILE.gguf [...] --device cuda --out bench/....json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

import gpt2  # noqa: E402

SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95}


def per_token(model, prompt: list[int], n_new: int, repeats: int, **kw) -> dict:
    """Best ms a token of complete() over repeats calls (after one warm-up)."""
    times, produced = [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        c = model.complete(prompt, max_new_tokens=n_new, seed=r, **kw)
        dt = time.perf_counter() - t0
        if r:
            times.append(dt / max(1, len(c.token_ids)))
            produced.append(len(c.token_ids))
    return {
        "ms_per_token": 1e3 * min(times),
        "all_ms": [1e3 * t for t in times],
        "tokens": produced,
    }


def batch_rate(path: str, device: str, mode: str, n_seq: int, prompt_len: int, n_new: int) -> dict:
    with gpt2.load(path, device=device, n_slots=n_seq, decode=mode) as model:
        rng = np.random.default_rng(1)
        vocab = model.config.vocab_size
        prompts = [rng.integers(0, vocab - 1, prompt_len).tolist() for _ in range(n_seq)]
        model.generate_batch(prompts, max_new_tokens=8)  # warm-up: graphs built
        best = 0.0
        for r in range(2):
            t0 = time.perf_counter()
            outs = model.generate_batch(prompts, max_new_tokens=n_new, seed=r, **SAMPLED)
            dt = time.perf_counter() - t0
            best = max(best, sum(len(o) for o in outs) / dt)
    return {"n_seq": n_seq, "tokens_per_s": best}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", help="GGUF files (or None for the embedded model)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", default=["auto", "graphs"])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="sequences of the batch row (0: none)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    for path in args.files:
        path = None if path == "None" else path
        for mode in args.modes:
            t0 = time.perf_counter()
            with gpt2.load(path, device=args.device, decode=mode) as model:
                load_s = time.perf_counter() - t0
                vocab = model.config.vocab_size
                prompt = np.random.default_rng(0).integers(0, vocab - 1, args.prompt_len).tolist()
                fused = getattr(model.engine, "decoder", None) is not None
                greedy = per_token(model, prompt, args.new_tokens, args.repeats)
                sampled = per_token(model, prompt, args.new_tokens, args.repeats, **SAMPLED)
            row = {
                "file": Path(path).name if path else "embedded",
                "decode": mode,
                "fused": fused,
                "load_s": load_s,
                "greedy": greedy,
                "sampled": sampled,
                "sampled_over_greedy": sampled["ms_per_token"] / greedy["ms_per_token"],
            }
            if args.batch:
                row["batch"] = batch_rate(
                    path, args.device, mode, args.batch, args.prompt_len, min(64, args.new_tokens)
                )
            rows.append(row)
            b = row.get("batch", {})
            print(
                f"{row['file']:<22} {mode:<6} fused={fused!s:<5} greedy "
                f"{greedy['ms_per_token']:.3f} ms  sampled {sampled['ms_per_token']:.3f} ms "
                f"({row['sampled_over_greedy']:.2f}x)  batch {b.get('n_seq', '-')}: "
                f"{b.get('tokens_per_s', 0):,.0f} tok/s",
                flush=True,
            )
    if args.out:
        env = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }
        try:
            import subprocess

            env["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        except OSError:
            env["gpu"] = None
        args.out.write_text(json.dumps({"env": env, "args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=2, default=str) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
