"""`gpt2 serve` through the official `openai` client, against a live server on
127.0.0.1 (a free port, uvicorn in a thread) over the tiny fixture model.

Every answer is compared exactly (text equality) with the library's own
generate()/complete() of the same prompt and parameters.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import gpt2  # noqa: E402
import gpt2.serve.scheduler as scheduler_mod  # noqa: E402
from gpt2.serve.app import create_app  # noqa: E402

PROMPTS = ["the cat", "a dog and", "one two", "the", "numbers: 1, 2", "why", "it is", "so"]


@contextlib.contextmanager
def live_server(model, **kw):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app = create_app(model, "tiny", **kw)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=5, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def server(model):
    with live_server(model, max_batch=4) as (url, app):
        yield url, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models_health_metrics(server, client):
    url, _ = server
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    text = httpx.get(url + "/metrics").text
    for name in ("gpt2_requests_total", "gpt2_completion_tokens_total", "gpt2_queue_depth"):
        assert name in text
    assert "gpt2_batch_size" in text


def test_greedy_and_seeded_equal_the_library(model, client):
    for prompt in PROMPTS[:3]:
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
        want = model.complete(prompt, max_new_tokens=12)
        assert r.choices[0].text == want.text
        assert r.usage.prompt_tokens == want.usage.prompt_tokens
        assert r.usage.completion_tokens == want.usage.completion_tokens
        sampled = {"temperature": 0.9, "top_p": 0.9, "seed": 5}
        r = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=12, extra_body={"top_k": 20}, **sampled
        )
        assert r.choices[0].text == model.generate(prompt, max_new_tokens=12, top_k=20, **sampled)


def test_stream_equals_non_stream(client):
    kw = {"model": "tiny", "prompt": "a dog and", "max_tokens": 15, "logprobs": 2}
    whole = client.completions.create(**kw, temperature=0.8, seed=2)
    chunks = list(client.completions.create(**kw, temperature=0.8, seed=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    tokens = [
        t for c in chunks for t in (c.choices[0].logprobs.tokens if c.choices[0].logprobs else [])
    ]
    assert tokens == whole.choices[0].logprobs.tokens


def test_n_stop_echo(model, client):
    r = client.completions.create(
        model="tiny", prompt="the cat", max_tokens=8, n=2, temperature=1.0, seed=7, echo=True
    )
    for j, choice in enumerate(r.choices):
        want = model.generate("the cat", max_new_tokens=8, temperature=1.0, seed=7 + j)
        assert choice.index == j and choice.text == "the cat" + want
    full = model.generate("one two", max_new_tokens=20)
    stop = full[2:4]
    r = client.completions.create(model="tiny", prompt="one two", max_tokens=20, stop=[stop])
    assert r.choices[0].text == full[: full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_16_concurrent_clients_each_equal_their_single_answer(model, server):
    url, _ = server
    jobs = [
        (
            PROMPTS[i % len(PROMPTS)],
            {"temperature": 0.0} if i % 2 else {"temperature": 0.9, "seed": i},
        )
        for i in range(16)
    ]
    want = [model.generate(p, max_new_tokens=10 + i, **kw) for i, (p, kw) in enumerate(jobs)]
    got: list = [None] * 16

    def run(i: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        p, kw = jobs[i]
        if i % 3 == 0:
            stream = c.completions.create(
                model="tiny", prompt=p, max_tokens=10 + i, stream=True, **kw
            )
            got[i] = "".join(ch.choices[0].text for ch in stream)
        else:
            got[i] = c.completions.create(model="tiny", prompt=p, max_tokens=10 + i, **kw)
            got[i] = got[i].choices[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ('{"prompt": "x"', 400, None),  # malformed JSON
        ('{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens"),
        ('{"prompt": "x", "temperature": -1}', 400, "temperature"),
        ('{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
        ('{"prompt": [1, 2, 999999]}', 400, "prompt"),
        ('{"prompt": "x", "frequency_penalty": 2.5}', 400, "frequency_penalty"),
        ('{"prompt": "x", "presence_penalty": -3}', 400, "presence_penalty"),
        ('{"prompt": "x", "repetition_penalty": 0}', 400, "repetition_penalty"),
        ('{"prompt": "x", "bogus": 1}', 400, "bogus"),
        ('{"prompt": "x", "model": "gpt-4"}', 404, "model"),
        ("[1, 2]", 400, None),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, client, body, status, param):
    url, _ = server
    r = httpx.post(
        url + "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["param"] == param
    assert client.completions.create(model="tiny", prompt="the", max_tokens=2).choices[0].text


def test_max_tokens_0_answers_with_the_prompts_usage(client):
    """Finished before any step: answered at once (streamed or not), never left waiting."""
    r = client.completions.create(model="tiny", prompt="the cat", max_tokens=0, timeout=10)
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    chunks = list(
        client.completions.create(
            model="tiny", prompt="the cat", max_tokens=0, stream=True, timeout=10
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ""


def test_too_long_prompt_through_the_client(client, tiny_model):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt=[1] * (tiny_model.config.n_positions + 1))


def _slow_steps(monkeypatch, seconds: float) -> None:
    real = scheduler_mod.step_members

    def slow(batch, members, *budgets):
        time.sleep(seconds)
        return real(batch, members, *budgets)

    monkeypatch.setattr(scheduler_mod, "step_members", slow)


def test_a_client_that_drops_mid_stream_frees_its_member(server, client, monkeypatch):
    url, app = server
    _slow_steps(monkeypatch, 0.02)
    cancelled = app.state.scheduler.stats.requests["cancelled"]
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 50, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one token read; the connection closes here
    deadline = time.monotonic() + 10
    while app.state.scheduler.stats.requests["cancelled"] == cancelled:
        assert time.monotonic() < deadline, "the dropped stream was not cancelled"
        time.sleep(0.02)
    while _metric(url, "gpt2_batch_size") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.completions.create(model="tiny", prompt="the", max_tokens=3).choices[0].text


def test_a_full_queue_answers_429_with_retry_after(model, monkeypatch):
    _slow_steps(monkeypatch, 0.05)
    with live_server(model, max_batch=1, max_queue=1) as (url, _):
        body = {"prompt": "the cat", "max_tokens": 20}
        results: list = []

        def post() -> None:
            results.append(httpx.post(url + "/v1/completions", json=body, timeout=60))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert 200 in codes and 429 in codes, codes
        busy = next(r for r in results if r.status_code == 429)
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        assert httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200
