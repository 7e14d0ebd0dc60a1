"""A hostile client cannot freeze `gpt2 serve`: a live server on 127.0.0.1 (as in
test_serve.py) over the tiny fixture model, clients with httpx or raw sockets,
every wait bounded. The last tests run `python -m gpt2 serve` (the embedded
model) in a subprocess and signal it while a client holds a half-sent body.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import gpt2  # noqa: E402
from tests.gpt2.test_serve import _metric, _slow_steps, live_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=3, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def server(model):
    with live_server(model, max_batch=2, max_queue=4, max_request_bytes=32 << 20) as s:
        yield s


def _post(url: str, body, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, timeout=kw.pop("timeout", 30), **kw)


def _error(r: httpx.Response, status: int, param: str | None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] and err["message"], err
    return err["message"]


def test_a_10_mb_prompt_is_refused_while_health_answers_in_100_ms(server, model):
    url, _ = server
    result: list = []
    body = {"prompt": "a" * 10_000_000, "max_tokens": 1}
    t = threading.Thread(target=lambda: result.append(_post(url, body)))
    with httpx.Client(timeout=5) as c:
        c.get(url + "/health")  # the connection is open before the timing
        t.start()
        worst = 0.0
        while t.is_alive() or not result:
            t0 = time.perf_counter()
            assert c.get(url + "/health").status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            t.join(0.005)
            assert len(result) or t.is_alive()
    t.join(30)
    assert "prompt longer than the context" in _error(result[0], 400, "prompt")
    assert result[0].json()["error"]["code"] == "context_length_exceeded"
    assert worst < 0.1, f"/health took {worst * 1e3:.0f} ms"
    # under the length bound but over the context in tokens: the tokenizer's count decides
    n_ctx = model.engine.max_positions
    r = _post(url, {"prompt": "the cat " * n_ctx, "max_tokens": 1})
    assert "prompt longer than the context" in _error(r, 400, "prompt")


def test_a_body_over_the_limit_is_413_unread(model):
    with live_server(model, max_batch=1, max_request_bytes=1000) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:  # headers alone
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            )
            head = s.recv(65536).decode()
        assert head.startswith("HTTP/1.1 413"), head
        assert '"error":' in head and "1,000 bytes" in head

        def chunks():  # chunked: no Content-Length; stops being read past the limit
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"a" * 100

        r = httpx.post(
            url + "/v1/completions",
            content=chunks(),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert "larger than 1,000 bytes" in _error(r, 413, None)
        assert _post(url, {"prompt": "the", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(
    "stop",
    [["a", "b", "c", "d", "e"], "x" * 257, ["ok", "y" * 300], ["s"] * 100_000],
)
def test_stop_strings_are_bounded(server, stop):
    r = _post(server[0], {"prompt": "the", "max_tokens": 2, "stop": stop})
    assert "stop" in _error(r, 400, "stop")


def test_stop_strings_at_the_limit_are_served(server):
    r = _post(server[0], {"prompt": "the", "max_tokens": 2, "stop": ["z" * 256, "a", "b", "c"]})
    assert r.status_code == 200, r.text


def test_n_past_the_queue_is_400_not_429(server):
    url, _ = server  # max_queue 4
    r = _post(url, {"prompt": "the", "max_tokens": 1, "n": 5})
    assert "queues at most 4" in _error(r, 400, "n")
    r = _post(url, {"prompt": ["a", "b", "c"], "max_tokens": 1, "n": 2})
    _error(r, 400, "n")
    assert _post(url, {"prompt": "the", "max_tokens": 1, "n": 4}).status_code == 200


def test_echo_logprobs_of_a_full_context_and_a_bias_on_every_token(server, model):
    """The largest echo a request can ask (a prompt filling the context, 20
    alternatives each, max_tokens 0, n choices) and a logit_bias naming every
    token are answered, and /health keeps answering meanwhile."""
    url, _ = server
    n_ctx, vocab = model.engine.max_positions, model.config.vocab_size
    ids = [(7 * i) % vocab for i in range(n_ctx)]
    body = {"prompt": ids, "echo": True, "logprobs": 20, "max_tokens": 0, "n": 2}
    result: list = []
    t = threading.Thread(target=lambda: result.append(_post(url, body)))
    with httpx.Client(timeout=5) as c:
        t.start()
        while t.is_alive():
            assert c.get(url + "/health").status_code == 200
            t.join(0.01)
    assert result[0].status_code == 200, result[0].text
    for choice in result[0].json()["choices"]:
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == n_ctx and lp["token_logprobs"][0] is None
        assert all(len(top) >= 1 for top in lp["top_logprobs"][1:])
    assert result[0].json()["usage"] == {
        "prompt_tokens": n_ctx,
        "completion_tokens": 0,
        "total_tokens": n_ctx,
    }
    allowed = 5
    bias = {str(t): (100 if t == allowed else -100) for t in range(vocab)}
    r = _post(url, {"prompt": [1, 2], "max_tokens": 4, "logit_bias": bias, "temperature": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == model.tokenizer.decode([allowed] * 4)


def test_a_huge_token_id_prompt_is_refused_before_its_types(server):
    t0 = time.perf_counter()
    r = _post(server[0], {"prompt": [1] * 2_000_000})
    assert "65536" in _error(r, 400, "prompt")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    "body",
    [
        '{"prompt": "ab\\ud800c"}',
        '{"prompt": ["ok", "\\udfff"]}',
        '{"prompt": "x", "bogus\\ud800": 1}',
    ],
)
def test_text_the_tokenizer_refuses_is_400_not_500(server, body):
    url, _ = server
    r = httpx.post(
        url + "/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert _post(url, {"prompt": "the", "max_tokens": 2}).status_code == 200


def test_a_model_name_that_is_not_text_is_answered_by_the_servers_model(server):
    """The server answers any model name (it has one model); a lone surrogate in
    it is never echoed back, so the answer renders."""
    r = httpx.post(
        server[0] + "/v1/completions",
        content='{"prompt": "x", "max_tokens": 2, "model": "\\ud800"}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny"


def test_a_non_streamed_client_that_leaves_frees_its_member(server, model, monkeypatch):
    url, app = server
    _slow_steps(monkeypatch, 0.05)
    stats = app.state.scheduler.stats
    cancelled, steps = stats.requests["cancelled"], stats.steps
    body = {"prompt": [1], "max_tokens": model.engine.max_positions - 1}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up; its connection closes
        _post(url, body, timeout=0.3)
    deadline = time.monotonic() + 10
    while stats.requests["cancelled"] == cancelled or _metric(url, "gpt2_batch_size") != 0:
        assert time.monotonic() < deadline, "the gone client's request was not cancelled"
        time.sleep(0.02)
    assert stats.steps - steps < body["max_tokens"] - 1  # it did not decode to its end
    assert _post(url, {"prompt": "the", "max_tokens": 2}).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_drains_within_the_grace_whatever_clients_do(sig, code):
    port, grace = _free_port(), 1.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "gpt2", "serve", "--device", "cpu", "--threads", "1"]
    argv += ["--max-batch", "2", "--port", str(port), "--shutdown-grace", str(grace)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        half = socket.create_connection(("127.0.0.1", port), timeout=5)  # a half-sent body
        half.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt": '
        )
        unread = socket.create_connection(("127.0.0.1", port), timeout=5)  # a stream never read
        body = b'{"prompt": "the", "max_tokens": 200, "stream": true}'
        unread.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        held += [half, unread]
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(sig)
        try:
            rc = proc.wait(grace + 8)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {grace + 8} s after {sig.name}")
        took = time.monotonic() - t0
        assert rc == code, (rc, proc.stdout.read().decode())
        assert took < grace + 4, took
    finally:
        for s in held:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
