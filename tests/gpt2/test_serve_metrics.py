"""/metrics after a known load: the histograms count what was served, their
buckets are cumulative, and the text is Prometheus' exposition format (parsed
here line by line, and by prometheus_client where it is installed)."""

from __future__ import annotations

import math
import re
import threading

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import gpt2  # noqa: E402
from gpt2.serve.metrics import Histogram, histogram_lines  # noqa: E402
from tests.gpt2.test_serve import live_server  # noqa: E402

HISTOGRAMS = (
    "gpt2_time_to_first_token_seconds",
    "gpt2_inter_token_latency_seconds",
    "gpt2_batch_occupancy",
)
# a sample line: name, optional {labels}, a value (no timestamps: we write none)
SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_]+="[^"]*")(,[a-zA-Z_]+="[^"]*")*\})? (\S+)$'
)


def parse_exposition(text: str) -> dict[str, dict]:
    """Families by name: {"type", "help", "samples": [(name, labels, value)]}. Raises
    AssertionError at the first line that is not Prometheus' text format."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, dict] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, kind, name, rest = line.split(" ", 3)
            fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert fam["type"] is None and not fam["samples"], f"line {n}: TYPE after samples"
                fam["type"] = rest
            else:
                fam["help"] = rest
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n} is not a sample: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(5)
        float(value)  # "+Inf", "NaN" and numbers parse
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        fam = families.get(name) or families.get(base)
        assert fam is not None and fam["type"] is not None, f"line {n}: no TYPE for {name}"
        label_map = dict(re.findall(r'([a-zA-Z_]+)="([^"]*)"', labels))
        fam["samples"].append((name, label_map, float(value)))
    return families


def scalar(families: dict, name: str) -> float:
    ((_, _, value),) = families[name]["samples"]
    return value


def histogram(families: dict, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) in order, the sum and the count of a histogram."""
    fam = families[name]
    assert fam["type"] == "histogram"
    buckets = [(float(lb["le"]), v) for n, lb, v in fam["samples"] if n == name + "_bucket"]
    (total,) = [v for n, _, v in fam["samples"] if n == name + "_sum"]
    (count,) = [v for n, _, v in fam["samples"] if n == name + "_count"]
    return buckets, total, count


def check_buckets(name: str, buckets, total: float, count: float) -> None:
    les = [le for le, _ in buckets]
    counts = [c for _, c in buckets]
    assert les == sorted(les) and les[-1] == math.inf, f"{name}: bounds {les}"
    assert all(a <= b for a, b in zip(counts, counts[1:], strict=False)), f"{name}: {counts}"
    assert counts[-1] == count, f"{name}: +Inf bucket {counts[-1]} != count {count}"
    assert total >= 0 and (count > 0 or total == 0), f"{name}: sum {total}, count {count}"


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=5, n_threads=1) as m:
        yield m


def test_histogram_buckets_are_inclusive_and_cumulative():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.snapshot() == ([2, 4, 5], pytest.approx(4.65), 5)
    lines = histogram_lines("x_seconds", "what", h)
    assert lines[2:5] == [
        'x_seconds_bucket{le="0.1"} 2',
        'x_seconds_bucket{le="1"} 4',
        'x_seconds_bucket{le="+Inf"} 5',
    ]
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))


def test_metrics_count_what_was_served(model):
    n_requests = 12
    jobs = [
        {"prompt": ["the cat", "a dog and", "one", "x y z w"][i % 4], "max_tokens": 3 + i % 5}
        for i in range(n_requests)
    ]
    jobs.append({"prompt": "the", "max_tokens": 0})  # no token: no time to first token
    with live_server(model, max_batch=4) as (url, app):
        results: list = [None] * len(jobs)

        def post(i: int) -> None:
            body = {**jobs[i], "temperature": 0, "stream": i % 2 == 0}
            if body["stream"]:
                body["stream_options"] = {"include_usage": True}
                with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                    assert r.status_code == 200
                    lines = [ln for ln in r.iter_lines() if ln.startswith("data: {")]
                results[i] = httpx.Response(200, content=lines[-1][6:])
            else:
                results[i] = httpx.post(url + "/v1/completions", json=body, timeout=60)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        usages = [r.json()["usage"] for r in results]
        text = httpx.get(url + "/metrics").text
        stats = app.state.scheduler.stats

    families = parse_exposition(text)
    completion = sum(u["completion_tokens"] for u in usages)
    served = [u for u in usages if u["completion_tokens"] > 0]
    assert len(served) == n_requests and completion > 0

    for name in HISTOGRAMS:
        check_buckets(name, *histogram(families, name))
    _, ttft_sum, ttft_count = histogram(families, "gpt2_time_to_first_token_seconds")
    _, itl_sum, itl_count = histogram(families, "gpt2_inter_token_latency_seconds")
    _, rows_sum, rows_count = histogram(families, "gpt2_batch_occupancy")
    assert ttft_count == len(served)  # one first token per request that got a token
    assert itl_count == completion - len(served)  # each later token follows another
    assert scalar(families, "gpt2_decode_tokens_total") == itl_count
    assert scalar(families, "gpt2_prefill_tokens_total") == sum(u["prompt_tokens"] for u in served)
    assert scalar(families, "gpt2_completion_tokens_total") == completion
    assert rows_count == scalar(families, "gpt2_steps_total") == stats.steps
    assert 1 <= rows_sum / rows_count <= 4  # the batch holds 1..max_batch sequences
    assert rows_sum >= completion  # a step gives each of its sequences at most one token
    assert 0 < ttft_sum / ttft_count < 60 and 0 < itl_sum / itl_count < 60
    # the engine's graph builds, by kind: what a step that needs a new graph waits for
    builds = {lb["kind"]: v for _, lb, v in families["gpt2_graph_builds_total"]["samples"]}
    assert families["gpt2_graph_builds_total"]["type"] == "counter"
    assert builds == {
        "prefill": model.engine.prefill_graph_builds,
        "decode": model.engine.decode_graph_builds,
    }
    assert builds["prefill"] >= 1 and builds["decode"] >= 1
    # the series that were there before keep their names
    for name in (
        "gpt2_requests_total",
        "gpt2_prompt_tokens_total",
        "gpt2_rejected_total",
        "gpt2_queue_depth",
        "gpt2_batch_size",
        "gpt2_batch_capacity",
    ):
        assert name in families, name

    parser = pytest.importorskip("prometheus_client.parser")
    parsed = {f.name: f for f in parser.text_string_to_metric_families(text)}
    for name in HISTOGRAMS:
        assert parsed[name].type == "histogram"
    count = next(s for s in parsed[HISTOGRAMS[0]].samples if s.name.endswith("_count"))
    assert count.value == ttft_count
    assert parsed["gpt2_decode_tokens"].type == "counter"  # the parser drops _total
