"""The runtime benchmark's smoke run: the real generation loops over InstantEngine.

Timings are the benchmark's (bench/), not asserted here; what is asserted is
that the instant engine goes through the same plan, checks and loops as a
real one, so what the benchmark times is our runtime.
"""

from __future__ import annotations

import pytest

from gpt2 import bench_runtime
from gpt2.bench_runtime import InstantEngine
from gpt2.config import GPT2Config
from gpt2.engine.step import StepPlan, StepRow
from gpt2.generate import Member, complete_batch
from gpt2.params import GenerationParams


def test_instant_engine_runs_the_real_loops(tiny_model):
    tok = tiny_model.tokenizer
    with InstantEngine(GPT2Config(vocab_size=tok.vocab_size), n_slots=3) as engine:
        p = GenerationParams(max_new_tokens=5, temperature=0.8, top_k=4, seed=1)
        members = [Member(engine, tok, [1, 2, 3 + i], p, None) for i in range(3)]
        done = complete_batch(engine, members)
        for i, c in enumerate(done):
            assert c.token_ids == [4 + i, 5 + i, 6 + i, 7 + i, 8 + i]
            assert c.finish_reason == "length"
        with engine.sequence() as seq:
            seq.start_greedy([7])
            with pytest.raises(ValueError, match="position"):  # the context's checks ran
                engine.step(StepPlan([StepRow(seq.slot, [1], 5)]))


def test_the_benchmark_reports_every_batch(tiny_model):
    rows = bench_runtime.run(4, tiny_model.tokenizer, {"stop": ["\n\n"]}, batches=(1, 3))
    assert [r["n_seq"] for r in rows] == [1, 3]
    assert all(r["step_us"] > 0 and r["per_seq_us"] > 0 for r in rows)
