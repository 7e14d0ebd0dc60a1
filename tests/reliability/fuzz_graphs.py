"""Fuzz family "graphs": graphs that fragment ggml's compute allocator realize and compute.

Run as a child (tests/reliability/test_fuzz.py does it):
``python -m tests.reliability.fuzz_graphs --repro FILE --examples N --seed S``.

ggml's graph allocator aborts when freeing a result would need a 257th free block in
its buffer, which a graph keeping many results alive between freed ones reaches. Each
example builds such a graph on the CPU: up to 700 results of an input, each kept as
an output or left pending (some read by later results; some twice as wide, so freed
holes are not simply reused), then the pending ones summed in a random order (each
freed after its add). ``realize`` must succeed and the compute give numpy's values:
never abort.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from hypothesis import given, seed
from hypothesis import strategies as st

from tinynn import Session

from .child import Repro, fuzz_settings, summary

WIDTH = 8  # columns of the input; wide results have twice as many


def plan_strategy():
    """(kinds, reads, random): per result, 'out' (kept) or 'pending' and a width
    factor (1 or 2), alternating or drawn at random; the earlier result it reads
    (or -1: the input); and the random source that orders the sum of the
    pending results."""
    kind = st.tuples(st.sampled_from(["out", "pending"]), st.integers(1, 2))

    def plan(k: int):
        alternating = st.just([("out" if i % 2 else "pending", 1) for i in range(k)])
        return st.tuples(
            st.one_of(alternating, st.lists(kind, min_size=k, max_size=k)),
            st.lists(st.integers(-1, k - 1), min_size=k, max_size=k),
            st.randoms(use_true_random=False),
        )

    # many results often: a few hundred freed between kept ones is the case at stake
    return st.one_of(st.integers(1, 700), st.integers(500, 700)).flatmap(plan)


def build_and_check(plan, outcomes: Counter) -> None:
    kinds, reads, rnd = plan
    x_host = np.arange(WIDTH, dtype=np.float32) / WIDTH
    with Session() as s:
        x = s.input_2d_f32(1, WIDTH)
        results, values, pending, outputs = [], [], [], []
        for i, ((kind, factor), read) in enumerate(zip(kinds, reads, strict=True)):
            src = read if 0 <= read < i and kinds[read][1] == 1 else -1  # same width only
            base, base_v = (x, x_host) if src < 0 else (results[src], values[src])
            t = s.scale(base, 1.0 + i % 3)
            v = base_v * (1.0 + i % 3)
            if factor == 2:  # a wider result: its hole fits none of the narrow ones
                t = s.concat(t, s.scale(t, 0.5), 0)
                v = np.concatenate([v, v * 0.5])
            results.append(t)
            values.append(v)
            if kind == "out":
                outputs.append(i)
                s.set_output(t)
            elif t.ne[0] == WIDTH:
                pending.append(i)
            s.add_to_graph(t)  # computed in this order, pending ones too
        rnd.shuffle(pending)
        acc, acc_v = s.scale(x, 0.0), np.zeros(WIDTH, np.float32)
        for i in pending:
            acc, acc_v = s.add(acc, results[i]), acc_v + values[i]
        s.realize(s.set_output(acc))
        x.upload(x_host.reshape(1, WIDTH))
        s.compute()
        np.testing.assert_allclose(acc.download().reshape(-1), acc_v, rtol=1e-5)
        for i in outputs:
            got = results[i].download().reshape(-1)
            np.testing.assert_allclose(got, values[i], rtol=1e-5)
        outcomes["results"] += len(kinds)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repro", required=True)
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    repro = Repro(a.repro)
    outcomes: Counter = Counter()
    started = time.perf_counter()

    @fuzz_settings(a.examples)
    @seed(a.seed)
    @given(plan_strategy())
    def run(plan) -> None:
        kinds, reads, _ = plan
        repro.write(f"seed {a.seed}\nkinds {kinds}\nreads {reads}\n")
        build_and_check(plan, outcomes)
        outcomes["examples"] += 1

    run()
    summary(
        family="graphs",
        seed=a.seed,
        seconds=round(time.perf_counter() - started, 1),
        **outcomes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
