"""`gpt2 bench --workloads load` (gpt2.bench_load) on a tiny shape: a GGUF written once,
fresh processes timing gpt2.load, seconds and GB/s, llama.cpp's whole process beside it (a
stand-in llama-bench here: the real one is built on the GPU machine)."""

from __future__ import annotations

import json
import stat

from gpt2 import bench
from gpt2.config import GPT2Config
from gpt2.weights import load_model


def _fake_llama_bench(path, code: int):
    path.write_text(f'#!/bin/sh\necho llama-bench "$@" >&2\nexit {code}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_load_workload_rows(tmp_path, monkeypatch):
    tiny = GPT2Config(n_layer=1, n_embd=64, n_head=1, n_positions=64, vocab_size=300)
    monkeypatch.setitem(bench.SHAPES, "tiny", tiny)
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--shapes", "tiny", "--dtypes", "f16", "q8_0",
            "--workloads", "load", "--load-dir", str(tmp_path / "files"), "--load-repeats", "2",
            "--llama-bench", str(_fake_llama_bench(tmp_path / "llama-bench", 0)),
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["dtype"], r["engine"]) for r in rows} == {
        (d, e) for d in ("f16", "q8_0") for e in ("ours", "llama.cpp")
    }
    for r in rows:
        assert r["workload"] == "load" and r["gb_s"] > 0, r
        assert r.get("idle_s_before_each", 0.0) == 0.0  # back to back by default
        path = tmp_path / "files" / f"tiny_{r['dtype']}.gguf"
        assert r["file_bytes"] == path.stat().st_size
        if r["engine"] == "ours":
            # the file's own type, a load per fresh process, CUDA apart (none on the CPU)
            assert r["file_dtype"] == r["dtype"] and r["cuda_start_s"] is None
            assert len(r["runs_load_s"]) == 2
            assert round(r["load_s"], 4) == min(r["runs_load_s"])
            assert r["gb_s"] == r["file_bytes"] / r["load_s"] / 1e9
            assert r["peak_over_baseline_mib"] > 0 and not r["failed_runs"]
        else:
            assert r["command"].startswith(str(tmp_path / "llama-bench"))
            assert f"-m tiny_{r['dtype']}.gguf -p 16 -n 0 -r 1 -ngl 0" in r["command"]
    # the file carries a tokenizer of the shape's vocabulary, as a GPT-2 file does
    loaded = load_model(tmp_path / "files" / "tiny_q8_0.gguf")
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == 300


def test_a_failing_llama_bench_is_a_row_not_a_crash(tmp_path, monkeypatch, capsys):
    tiny = GPT2Config(n_layer=1, n_embd=64, n_head=1, n_positions=64, vocab_size=300)
    monkeypatch.setitem(bench.SHAPES, "tiny", tiny)
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--shapes", "tiny", "--dtypes", "f32", "--workloads", "load",
            "--load-dir", str(tmp_path), "--load-repeats", "1", "--load-idle-s", "0.01",
            "--llama-bench", str(_fake_llama_bench(tmp_path / "llama-bench", 3)),
            "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = {r["engine"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["ours"]["gb_s"] > 0 and rows["ours"]["idle_s_before_each"] == 0.01
    assert rows["llama.cpp"]["error"].startswith("llama-bench exit 3")
    assert "llama-bench exit 3" in capsys.readouterr().out
