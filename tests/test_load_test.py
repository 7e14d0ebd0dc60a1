"""scripts/load_test.py end to end on the CPU: a short run over the embedded model
(the server started by the script in a process of its own, and the same requests
on the scheduler alone) gives a report of the documented structure and no errors.
Speeds are not asserted: they belong to the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the server extra (uvicorn) is not installed")
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {
    "clients", "wall_s", "requests", "requests_per_s", "prompt_tokens", "prompt_tokens_p50",
    "prompt_tokens_max", "tokens", "tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50",
    "itl_ms_p99", "latency_ms_p50", "latency_ms_p99", "errors", "first_errors", "server",
    "load_average_1m_after",
}  # fmt: skip
SERVER_KEYS = {
    "gpt2_prefill_tokens_total", "gpt2_decode_tokens_total", "gpt2_completion_tokens_total",
    "gpt2_steps_total", "gpt2_rejected_total", "ttft_ms_p50", "ttft_ms_p99", "ttft_ms_mean",
    "itl_ms_p50", "itl_ms_p99", "itl_ms_mean", "batch_rows_mean",
    'gpt2_graph_builds_total{kind="prefill"}', 'gpt2_graph_builds_total{kind="decode"}',
}  # fmt: skip


KINDS = ("prefill", "decode")
DIRECT_KEYS = {
    "clients", "wall_s", "requests", "tokens", "tokens_per_s", "steps", "load_average_1m_after",
}  # fmt: skip


def test_a_short_cpu_run_reports_its_structure_and_no_errors(tmp_path):
    out = tmp_path / "report.json"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "load_test.py"), "--device", "cpu",
        "--threads", "1", "--clients", "1,8", "--seconds", "3", "--max-tokens", "16",
        "--direct", "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("date", "machine", "versions", "server", "request", "results"):
        assert key in report, key
    context = report["request"]["context"]
    assert [row["clients"] for row in report["results"]] == [1, 8]
    for row in report["results"]:
        assert set(row) == ROW_KEYS, set(row) ^ ROW_KEYS
        assert row["errors"] == 0, row["first_errors"]
        assert row["requests"] > 0 and row["tokens"] > 0
        assert 4 <= row["prompt_tokens_max"] <= context - 16
        assert row["ttft_ms_p50"] <= row["ttft_ms_p99"] and row["itl_ms_p50"] <= row["itl_ms_p99"]
        assert set(row["server"]) == SERVER_KEYS, set(row["server"]) ^ SERVER_KEYS
        # the server counted what this client count was served (and each end-of-text
        # token drawn, which usage leaves out: at most one a request)
        extra = row["server"]["gpt2_completion_tokens_total"] - row["tokens"]
        assert 0 <= extra <= row["requests"], extra
        assert row["server"]["gpt2_prefill_tokens_total"] == row["prompt_tokens"]
        assert all(row["server"][f'gpt2_graph_builds_total{{kind="{k}"}}'] >= 0 for k in KINDS)
    # --direct: the same clients on the scheduler alone, no HTTP
    assert [row["clients"] for row in report["direct"]] == [1, 8]
    for row in report["direct"]:
        assert set(row) == DIRECT_KEYS, set(row) ^ DIRECT_KEYS
        assert row["requests"] > 0 and row["tokens"] > 0 and row["steps"] > 0
    assert report["direct_speedup_last_vs_first"] > 0
    assert [row["sequences"] for row in report["engine"]] == [1, 8]
    assert all(row["tokens"] == row["sequences"] * 16 for row in report["engine"])
    after = report["server_metrics_after"]
    assert after["gpt2_time_to_first_token_seconds_count"] > 0
    assert (
        after['gpt2_time_to_first_token_seconds_bucket{le="+Inf"}']
        == (after["gpt2_time_to_first_token_seconds_count"])
    )
