"""gpt2.bench's measuring functions on a tiny model (speed itself lives in bench/, not here)."""

from __future__ import annotations

import pytest

from gpt2 import bench
from gpt2.engine import FastGPT2


def test_ours_workloads_report_times(tiny_model):
    with FastGPT2(tiny_model.weights, "cpu", n_threads=1, max_batch=3) as engine:
        decode = bench.ours_decode(engine, prompt_len=4, new_tokens=6, warmup=2)
        prefill = bench.ours_prefill(engine, n_tokens=8, repeats=2)
        batch = bench.ours_batch(engine, n_seq=3, prompt_len=4, new_tokens=3)
    assert decode["ms_mean"] > 0 and decode["tok_s"] > 0
    assert decode["decode_graph_builds"] == 1  # one decode graph, recomputed every step
    assert prefill["ms_p50"] > 0 and prefill["first_call_ms"] > 0
    assert batch["tok_s"] > 0


def test_hf_workloads_and_table(tiny_model):
    pytest.importorskip("transformers")
    model = bench.hf_model(tiny_model.config, "cpu", "f32")
    rows = [
        {"shape": "tiny", "dtype": "f32", "workload": "decode b1", "engine": "hf",
         **bench.hf_decode(model, prompt_len=4, new_tokens=4, warmup=1)},
        {"shape": "tiny", "dtype": "f32", "workload": "decode b1", "engine": "ours",
         "ms_mean": 1.0, "ms_p50": 1.0, "ms_p90": 1.0, "tok_s": 1000.0},
    ]  # fmt: skip
    bench._add_ratios(rows)
    assert rows[1]["speedup_vs_hf"] == pytest.approx(rows[0]["ms_mean"] / 1.0)
    table = bench.format_table(rows, {"date": "today"})
    assert "| tiny | f32 | decode b1 | ours |" in table and "x |" in table


def test_random_weights_have_the_shapes():
    config = bench.SHAPES["gpt2"]
    small = bench.random_weights(type(config)(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert small["wte"].shape == (50, 32)
    assert small["h.0.ln_1.weight"].min() == 1.0
