"""Fuzz family "engines": bad token ids, prompts and positions raise, never crash or corrupt.

Run as a child (tests/reliability/test_fuzz.py does it):
``python -m tests.reliability.fuzz_engines --repro FILE --examples N --seed S --hf-dir D``.

Three engines on one tiny model, on the CPU, with a short context (n_ctx 12): the fast
engine (FastGPT2, a sequence and a batch of 2 open throughout), the close ports
GPT2KVFFICache (max_T 12) and GPT2FullForwardFFICache (T_SEQ 12). Each example is a
list of calls with token ids from -3 to vocab + 3 plus 2^31, 2^63 and -2^63, empty
prompts, prompts of up to n_ctx + 3 tokens, decode steps past the context, KV positions
from -2 to max_T + 2, batches of mismatched sizes. Each call must succeed or raise
ValueError / TypeError / TinyNNError; after every example each engine's logits for a
fixed prompt must equal, bit for bit, the ones it gave before the run (so no failed call
left state behind).

Then "nan": a tensor of an HF folder gets NaN, +inf or -inf at a random place;
``load_model``, or reading its tensors, must refuse it with a ValueError naming the tensor.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import given, seed
from hypothesis import strategies as st

from gpt2.engine import FastGPT2
from gpt2.port import GPT2FullForwardFFICache, GPT2KVFFICache
from gpt2.weights import load_model, validate
from tests.tiny_models import write_hf_folder
from tinynn import TinyNNError

from .child import Repro, fuzz_settings, summary

ACCEPTED = (ValueError, TypeError, TinyNNError)
N_CTX = 12
GOLDEN_PROMPT = [5, 17, 42, 99, 3]


def ids_strategy(vocab: int):
    token = st.one_of(
        st.integers(0, vocab - 1),
        st.integers(-3, vocab + 3),
        st.sampled_from([2**31, 2**63, -(2**63), 2**31 - 1]),
    )
    return st.lists(token, min_size=0, max_size=N_CTX + 3)


def steps_strategy(vocab: int):
    ids = ids_strategy(vocab)
    tok = st.integers(-3, vocab + 3)
    return st.lists(
        st.one_of(
            st.tuples(st.just("fast.logits"), ids),
            st.tuples(st.just("fast.start"), ids),
            st.tuples(st.just("fast.step"), tok, st.integers(1, N_CTX + 3)),
            st.tuples(st.just("fast.batch"), st.lists(ids, min_size=0, max_size=3)),
            st.tuples(st.just("fast.step_batch"), st.lists(tok, min_size=0, max_size=3)),
            st.tuples(st.just("kv.logits_for"), ids, st.integers(-2, N_CTX + 2)),
            st.tuples(st.just("kv.decode"), tok, st.integers(-2, N_CTX + 2)),
            st.tuples(st.just("kv.start"), ids),
            st.tuples(st.just("kv.step"), tok, st.integers(1, N_CTX + 3)),
            st.tuples(st.just("full.forward"), ids),
            st.tuples(st.just("full.step"), tok, st.integers(1, N_CTX + 3)),
        ),
        min_size=1,
        max_size=8,
    )


class Engines:
    def __init__(self, weights):
        self.fast = FastGPT2(weights, "cpu", "f32", n_ctx=N_CTX, n_threads=1)
        self.kv = GPT2KVFFICache.from_weights(weights, N_CTX, n_threads=1)
        self.full = GPT2FullForwardFFICache.from_weights(weights, N_CTX, n_threads=1)
        # one long-lived sequence per engine, and a batch of 2 on the fast one
        self.seqs = {name: e.sequence() for name, e in self.engines.items()}
        self.fast_batch = self.fast.batch(2)
        self.golden = self.snapshot()

    @property
    def engines(self) -> dict:
        return {"fast": self.fast, "kv": self.kv, "full": self.full}

    def snapshot(self) -> dict[str, np.ndarray]:
        return {
            "fast": self.fast.logits(GOLDEN_PROMPT),
            "kv": self.kv.logits_for(GOLDEN_PROMPT),
            "full": self.full.forward(GOLDEN_PROMPT),
        }

    def run(self, step) -> None:
        name, *args = step
        if name == "fast.logits":
            out = self.fast.logits(args[0])
            assert out.shape == (len(args[0]), self.fast.config.vocab_size)
        elif name == "fast.start":
            self.seqs["fast"].start(args[0])
        elif name in ("fast.step", "kv.step", "full.step"):
            seq = self.seqs[name.split(".")[0]]
            for _ in range(args[1]):
                assert np.isfinite(seq.step(args[0])).all()
        elif name == "fast.batch":
            self.fast_batch.start_greedy(args[0])
        elif name == "fast.step_batch":
            self.fast_batch.step_greedy(args[0])
        elif name == "kv.logits_for":
            self.kv.logits_for(args[0], start_pos=args[1])
        elif name == "kv.decode":
            self.kv.decode_step(args[0], args[1])
        elif name == "kv.start":
            self.seqs["kv"].start(args[0])
        elif name == "full.forward":
            self.full.forward(args[0])

    def check(self) -> None:
        now = self.snapshot()
        for k, want in self.golden.items():
            if not np.array_equal(now[k], want):
                err = float(np.max(np.abs(now[k] - want)))
                raise AssertionError(f"{k} engine: golden logits changed (max-abs {err})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repro", required=True)
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf-dir", type=Path, required=True)
    a = ap.parse_args()
    repro = Repro(a.repro)
    loaded = load_model(a.hf_dir)
    weights, vocab = loaded.weights, loaded.config.vocab_size
    engines = Engines(weights)
    outcomes: Counter = Counter()
    t0 = time.perf_counter()

    @fuzz_settings(a.examples)
    @seed(a.seed)
    @given(steps_strategy(vocab))
    def calls(steps) -> None:
        # cumulative: the engines keep graphs across examples, so the history matters
        with open(a.repro, "a") as fh:
            fh.write(f"steps={steps!r}\n")
        for step in steps:
            try:
                engines.run(step)
                outcomes["ok"] += 1
            except ACCEPTED as e:
                outcomes[type(e).__name__] += 1
        engines.check()
        outcomes["examples"] += 1

    calls()

    folder = Path(a.repro + ".nan")
    names = sorted(weights.tensors)

    @fuzz_settings(max(5, a.examples // 10))
    @seed(a.seed)
    @given(
        st.sampled_from(names), st.integers(0, 2**31), st.sampled_from([np.nan, np.inf, -np.inf])
    )
    def nan(name: str, where: int, value: float) -> None:
        tensors = {k: v.copy() for k, v in weights.tensors.items()}
        flat = tensors[name].reshape(-1)
        flat[where % flat.size] = value
        repro.write(f"# nan fuzz, seed {a.seed}: {name}[{where % flat.size}] = {value}\n")
        shutil.rmtree(folder, ignore_errors=True)
        write_hf_folder(type(weights)(weights.config, tensors), folder, None)
        try:  # tensors stream from the file: reading them is where NaN shows
            validate(load_model(folder).weights, folder)
        except ValueError as e:
            assert "non-finite" in str(e) and name in str(e), f"unclear message: {e}"
            outcomes["nan_refused"] += 1
            return
        raise AssertionError(f"{name} with {value} was loaded")

    nan()
    summary(
        family="engines",
        seed=a.seed,
        examples=outcomes.pop("examples", 0),
        nan_files=outcomes["nan_refused"],
        outcomes=dict(sorted(outcomes.items())),
        seconds=round(time.perf_counter() - t0, 1),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
