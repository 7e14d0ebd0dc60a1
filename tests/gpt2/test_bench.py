"""gpt2.bench's measuring functions on a tiny model (speed itself lives in bench/, not here)."""

from __future__ import annotations

import json

import pytest

from gpt2 import bench
from gpt2.config import GPT2Config
from gpt2.engine import FastGPT2


def test_ours_workloads_report_times(tiny_model):
    with FastGPT2(tiny_model.weights, "cpu", n_threads=1, n_slots=3) as engine:
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


def test_hf_compiled_decode_reports_times(tiny_model):
    pytest.importorskip("transformers")
    model = bench.hf_model(tiny_model.config, "cpu", "f32")
    stats = bench.hf_compiled_decode(model, prompt_len=4, new_tokens=4, warmup=2, backend="eager")
    assert 0 < stats["ms_p50"] <= stats["ms_p90"] and stats["tok_s"] > 0
    assert stats["warmup_ms"] > 0 and stats["backend"] == "eager" and stats["mode"] is None


def test_hf_compiled_decoder_matches_eager_greedy(tiny_model):
    """Exact: the static cache + compiled step (eager backend) picks the same greedy tokens
    as HF recomputing the whole sequence each step."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # the fixture's weights, not hf_model's N(0, 0.02): their logits have clear winners
    model = transformers.GPT2LMHeadModel.from_pretrained(tiny_model.hf_dir).eval()
    prompt, n_new = [5, 17, 42, 7], 12

    decoder = bench.HFCompiledDecoder(model, max_len=len(prompt) + n_new, backend="eager")
    token = decoder.start(prompt)
    compiled = [int(token)]
    for _ in range(n_new - 1):
        token = decoder.step(token)
        compiled.append(int(token))

    ids = torch.tensor([prompt])
    eager = []
    with torch.no_grad():
        for _ in range(n_new):
            nxt = model(input_ids=ids).logits[:, -1].argmax(-1)  # [1]
            eager.append(int(nxt))
            ids = torch.cat([ids, nxt[None]], dim=1)

    first_diff = next(
        (i for i, (a, b) in enumerate(zip(compiled, eager, strict=True)) if a != b), None
    )
    assert compiled == eager, f"first difference at step {first_diff}: {compiled} vs {eager}"
    assert len(set(eager)) > 1  # a constant sequence would prove little


@pytest.mark.parametrize("backend", ["eager", "no_such_backend"])
def test_cli_hf_compiled_column(tmp_path, monkeypatch, backend):
    """`--hf-compiled on` adds an hf-compiled row and a ratio; a failing compile is
    reported in its row and the other results stay."""
    pytest.importorskip("transformers")
    # default n_positions (1024): run() builds our engine with n_ctx=1024
    tiny = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)
    monkeypatch.setitem(bench.SHAPES, "tiny", tiny)
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--shapes", "tiny", "--dtypes", "f32", "--workloads", "decode",
            "--prompt-len", "4", "--new-tokens", "3", "--threads", "1", "--json", str(out),
            "--hf-compiled", "on", "--hf-compile-backend", backend]  # fmt: skip
    assert bench.main(argv) == 0

    rows = {r["engine"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ours", "hf", "hf-compiled"}
    assert rows["ours"]["speedup_vs_hf"] > 0
    compiled = rows["hf-compiled"]
    if backend == "eager":
        assert compiled["tok_s"] > 0 and compiled["backend"] == "eager"
        ratio = compiled["ms_mean"] / rows["ours"]["ms_mean"]
        assert rows["ours"]["speedup_vs_hf_compiled"] == pytest.approx(ratio)
    else:
        assert compiled["hf_compiled"].startswith("failed: ") and "ms_mean" not in compiled
        assert "speedup_vs_hf_compiled" not in rows["ours"]


def test_hf_compiled_skips_and_failures_in_ratios_and_table():
    assert bench.hf_compiled_skip_reason("auto", "cuda") is None
    assert bench.hf_compiled_skip_reason("on", "cpu") is None
    assert "auto is off on cpu" in bench.hf_compiled_skip_reason("auto", "cpu")
    assert bench.hf_compiled_skip_reason("off", "cuda") == "skipped: --hf-compiled off"

    def row(dtype, engine, ms=None, **extra):
        times = {"ms_mean": ms, "ms_p50": ms, "ms_p90": ms} if ms else {}
        return {"shape": "s", "dtype": dtype, "workload": "decode b1", "engine": engine,
                **times, **extra}  # fmt: skip

    rows = [
        row("f32", "ours", 1.0), row("f32", "hf", 4.0), row("f32", "hf-compiled", 2.0),
        row("f16", "ours", 1.0), row("f16", "hf", 8.0),
        row("f16", "hf-compiled", hf_compiled="failed: RuntimeError: boom"),
        row("q8_0", "ours", 0.5),
    ]  # fmt: skip
    bench._add_ratios(rows)
    assert rows[0]["speedup_vs_hf_compiled"] == pytest.approx(2.0)
    assert "speedup_vs_hf_compiled" not in rows[3]  # its own run failed: no f32 stand-in
    assert rows[6]["speedup_vs_hf_compiled"] == pytest.approx(4.0)  # q8_0 against HF f32
    table = bench.format_table(rows, {"date": "today"})
    assert "| s | f16 | decode b1 | hf-compiled | failed: RuntimeError: boom |" in table
    assert "| 4.00x | 2.00x |" in table  # f32 ours: vs HF, vs HF compiled
    assert bench._format_row(rows[5]).endswith("failed: RuntimeError: boom")


def test_results_name_the_ggml_that_ran():
    """A bench file records the ggml of the library that ran (libggml-base's own version and
    the pin the build stamped as its commit), not a string written by hand."""
    import re
    from pathlib import Path

    pin_file = Path(__file__).resolve().parents[2] / "native" / "ggml.pin"
    pin = dict(
        line.split("=", 1) for line in pin_file.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )  # fmt: skip
    got = bench.environment("cpu")["ggml"]
    stamp = re.escape(f"{pin['package']}-{pin['version']}")
    assert re.fullmatch(rf"\d+\.\d+\.\d+ \({stamp}\)", got), (got, pin)
