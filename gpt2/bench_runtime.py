"""The runtime alone: our Python's cost per step, over an engine that costs nothing.

`InstantEngine` answers every step plan at once (no graph, no device, no
sampler: each row's token is the next id after its last one), so timing the
real generation loops over it (gpt2.generate: `complete` for one sequence,
`complete_batch` for several, text members with the real tokenizer and stop
strings) measures what our runtime adds to every step: building the plan,
checking it against the context, moving positions, detokenizing, stop
strings. `python -m gpt2.bench_runtime --json bench/...json` writes the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import operator
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from gpt2.config import GPT2Config
from gpt2.engine.base import Engine
from gpt2.engine.step import StepResult, StepRow
from gpt2.generate import Member, complete, complete_batch
from gpt2.params import GenerationParams

BATCHES = (1, 8, 32)
RUNS = 5  # runs a batch size; the best is kept
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 1}


_WANTS = operator.attrgetter("logprobs", "logits")  # a row's asks beside its token


class InstantEngine(Engine):
    """The engine interface over no model: a row's token is the id after its last one,
    its log-probabilities fixed; logits rows are zeros."""

    device = "none"

    def __init__(self, config: GPT2Config, n_slots: int, n_ctx: int | None = None):
        self.config = config
        self.vocab_size = config.vocab_size
        self._n_ctx = n_ctx or config.n_positions
        self._init_context(n_slots, "instant engine")

    @property
    def max_positions(self) -> int:
        return self._n_ctx

    def _run(self, rows: list[StepRow], tokens: np.ndarray) -> StepResult:
        # It stands in for native code, so its own bookkeeping is what a real
        # engine's is (a few passes over the rows' columns, as fast.py's decode
        # step), not a Python loop a row that the benchmark would charge to us.
        n = len(rows)
        result = StepResult.empty(n)
        if len(tokens) == n:  # one token a row: each row's last token is its token
            last = tokens
        else:
            last = tokens[np.cumsum([len(r.tokens) for r in rows]) - 1]
        chooses = [r.sampling is not None for r in rows]
        nxt = (last + 1) % (self.vocab_size - 1)  # never eos
        result.tokens[:] = nxt if all(chooses) else np.where(chooses, nxt, -1)
        if set(map(_WANTS, rows)) != {(None, None)}:  # some row asks for more than a token
            for i, r in enumerate(rows):
                if r.logprobs is not None:
                    result.logprobs[i] = -1.0
                    result.top_ids[i] = np.arange(r.logprobs, dtype=np.int32)
                    result.top_logprobs[i] = np.full(r.logprobs, -2.0, dtype=np.float32)
                if r.logits == "last":
                    result.logits[i] = np.zeros(self.vocab_size, dtype=np.float32)
                elif r.logits == "all":
                    shape = (len(r.tokens), self.vocab_size)
                    result.logits[i] = np.zeros(shape, dtype=np.float32)
        return result

    def _free_device(self) -> None:
        pass


def time_batch(engine: InstantEngine, tokenizer, n_seq: int, n_new: int, params: dict) -> dict:
    """Seconds per step of n_seq text completions of n_new tokens run together
    (one, through complete(); several, through complete_batch())."""
    p = GenerationParams(max_new_tokens=n_new, **params)
    rng = np.random.default_rng(0)
    eos = tokenizer.eos_id if tokenizer is not None else None

    def members() -> list[Member]:
        prompts = [rng.integers(0, engine.vocab_size - 1, 16).tolist() for _ in range(n_seq)]
        return [Member(engine, tokenizer, q, p, eos) for q in prompts]

    best = float("inf")
    for _ in range(RUNS):  # the best run: the machine's noise only adds
        batch = members()
        t0 = time.process_time()  # this process's CPU time: other processes' work is not ours
        if n_seq == 1:
            complete(engine, batch[0])
        else:
            complete_batch(engine, batch)
        best = min(best, time.process_time() - t0)
    steps = n_new  # the prefill step gives the first token, then n_new - 1 decode steps
    per_step = best / steps
    return {"n_seq": n_seq, "new_tokens": n_new, "step_us": per_step * 1e6}


def run(n_new: int, tokenizer, params: dict, batches=BATCHES) -> list[dict]:
    config = GPT2Config(vocab_size=tokenizer.vocab_size if tokenizer else 50257)
    rows = []
    for n in batches:
        with InstantEngine(config, n_slots=n) as engine:
            rows.append(time_batch(engine, tokenizer, n, n_new, params))
    for row in rows:
        row["per_seq_us"] = row["step_us"] / row["n_seq"]
    return rows


def measure(n_new: int, tokenizer, sampled: bool) -> dict:
    """The table of one kind of rows (greedy or sampled), printed as it goes."""
    params = dict(SAMPLED) if sampled else {}
    params["stop"] = ["\n\n\n\n"]  # a stop string to check, as a server request has
    rows = run(n_new, tokenizer, params)
    print("sampled" if sampled else "greedy")
    for r in rows:
        print(
            f"batch {r['n_seq']:>3}: {r['step_us']:8.1f} us a step, "
            f"{r['per_seq_us']:6.2f} us a sequence"
        )
    b1 = rows[0]["step_us"]
    slope = (rows[-1]["step_us"] - b1) / max(1, rows[-1]["n_seq"] - 1)
    print(f"fixed ~{b1 - slope:.1f} us a step + {slope:.2f} us a sequence")
    return {"params": params, "rows": rows, "fixed_us": b1 - slope, "per_seq_us": slope}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt2.bench_runtime", description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per completion")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--sampled", action="store_true", help="temperature 0.8, top-k 40, top-p 0.95 rows"
    )
    kind.add_argument("--both", action="store_true", help="greedy rows, then sampled rows")
    args = parser.parse_args(argv)
    from gpt2.resolve import resolve_model
    from gpt2.weights import load_model

    tokenizer = load_model(resolve_model(None)).tokenizer  # the embedded model's: real text work
    kinds = [False, True] if args.both else [args.sampled]
    tables = {("sampled" if k else "greedy"): measure(args.new_tokens, tokenizer, k) for k in kinds}
    if args.json:
        out = {
            "date": dt.date.today().isoformat(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "clock": f"time.process_time, the best of {RUNS} runs",
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        if len(tables) == 1:
            out.update(next(iter(tables.values())))  # the layout of one kind, as before
        else:
            out.update(tables)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
