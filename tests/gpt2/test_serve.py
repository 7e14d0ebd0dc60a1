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

import numpy as np
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
        ('{"prompt": "x", "logit_bias": {"300": 1}}', 400, "logit_bias"),  # vocab 300
        ('{"prompt": "x", "logit_bias": {"5": 100.5}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": {"5": -101}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": {"-5": 1}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": {"cat": 1}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": {"5": "1"}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": {"7": 1, "007": 2}}', 400, "logit_bias"),
        ('{"prompt": "x", "logit_bias": [1, 2]}', 400, "logit_bias"),
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


def test_any_model_name_is_this_servers_model(client):
    """One model a server: whatever `model` a client sends is answered by it (as
    llama-cpp-python's server does), never 404."""
    want = client.completions.create(model="tiny", prompt="the cat", max_tokens=5)
    for name in ("gpt-4", "/some/local/folder", ""):
        r = client.completions.create(model=name, prompt="the cat", max_tokens=5)
        assert r.choices[0].text == want.choices[0].text and r.model == "tiny"


def _reference_logprobs(model, ids: list[int], n_top: int):
    """Each prompt token's log-probability (after the first) and its n_top most
    likely ids (ties: lower id first), from the engine's own logits of the whole
    prompt in a slot of their own, in float64."""
    x = model.engine.logits(ids).astype(np.float64)
    lp = x - (
        x.max(axis=1, keepdims=True)
        + np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
    )
    tokens = [float(lp[i - 1, t]) for i, t in enumerate(ids) if i > 0]
    tops = [np.lexsort((np.arange(lp.shape[1]), -row))[:n_top].tolist() for row in lp[:-1]]
    return tokens, tops, lp


def _check_echo(model, ids: list[int], lps, n_top: int) -> None:
    tokens, tops, lp = _reference_logprobs(model, ids, n_top)
    dec = model.tokenizer.decode
    assert lps.tokens[: len(ids)] == [dec([t]) for t in ids]
    assert lps.token_logprobs[0] is None and lps.top_logprobs[0] is None
    got = lps.token_logprobs[1 : len(ids)]
    assert np.allclose(got, tokens, atol=1e-5, rtol=0), (got, tokens)
    for i, top in enumerate(lps.top_logprobs[1 : len(ids)]):
        want = {dec([t]): float(lp[i, t]) for t in reversed(tops[i])}  # a text's best last
        assert top.keys() == want.keys()
        assert np.allclose(list(top.values()), [want[k] for k in top], atol=1e-5, rtol=0)
    for i, (lp_i, top) in enumerate(zip(got, lps.top_logprobs[1 : len(ids)], strict=True)):
        best = max(top.values())  # lm-eval's is_greedy: the token's logprob == its best
        assert lp_i == best if ids[i + 1] == tops[i][0] else lp_i < best
    offsets = np.cumsum([0] + [len(t) for t in lps.tokens])[: len(lps.tokens)]
    assert lps.text_offset == offsets.tolist()


@pytest.mark.parametrize("max_tokens", [0, 1, 4])
def test_echo_logprobs_are_the_prompts_own(model, client, max_tokens):
    """echo + logprobs: every prompt token's log-probability (the first null) and
    its alternatives, as the engine's logits of the whole prompt give them;
    max_tokens 0 answers with the prompt, its usage and those, streamed or not."""
    ids = model.tokenizer.encode("the cat sat on the mat, and the dog")
    kw = {"model": "tiny", "prompt": ids, "echo": True, "logprobs": 3, "max_tokens": max_tokens}
    r = client.completions.create(**kw)
    c = r.choices[0]
    assert len(c.logprobs.tokens) == len(ids) + max_tokens
    _check_echo(model, ids, c.logprobs, 3)
    want = model.complete(ids, max_new_tokens=max_tokens, logprobs=3)
    assert c.text == model.tokenizer.decode(ids) + want.text
    assert c.logprobs.tokens[len(ids) :] == [e.token for e in want.logprobs]
    assert np.allclose(
        c.logprobs.token_logprobs[len(ids) :], [e.logprob for e in want.logprobs], atol=1e-5
    )
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == max_tokens
    assert c.finish_reason == "length"
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == c.text
    streamed = [ch.choices[0].logprobs for ch in chunks if ch.choices and ch.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == c.logprobs.tokens
    assert [v for lp in streamed for v in lp.token_logprobs] == c.logprobs.token_logprobs


def test_echo_logprobs_as_lm_eval_asks_for_them(model, client):
    """lm-evaluation-harness's local-completions: several id prompts in one request,
    max_tokens 1, logprobs 1; the choice of a greedy token carries its logprob
    as its top alternative's, the very same number."""
    prompts = [model.tokenizer.encode(p) for p in ("one two three", "the", "a dog and a cat")]
    r = client.completions.create(
        model="whatever", prompt=prompts, max_tokens=1, logprobs=1, echo=True, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    for ids, c in zip(prompts, r.choices, strict=True):
        _check_echo(model, ids, c.logprobs, 1)
        last_lp, last_top = c.logprobs.token_logprobs[-1], c.logprobs.top_logprobs[-1]
        assert last_lp == max(last_top.values())  # the greedy token is its own top


def test_echo_logprobs_need_no_slot_beside_the_batch(tiny_model):
    """A model with exactly max_batch slots answers echo with logprobs: they come
    from the request's own prefill, also when its prompt is cut in chunks (a step
    of 4 tokens), and for n choices."""
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=2, n_threads=1) as m:
        ids = m.tokenizer.encode("once upon a time there was a little robot")
        assert len(ids) > 8
        with live_server(m, max_batch=2, max_step_tokens=4) as (url, _):
            c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            r = c.completions.create(
                model="tiny", prompt=ids, max_tokens=2, logprobs=2, echo=True, n=2, timeout=30
            )
        for choice in r.choices:  # the reference needs a slot: the server is gone
            _check_echo(m, ids, choice.logprobs, 2)
        assert r.choices[0].logprobs.token_logprobs == r.choices[1].logprobs.token_logprobs


def test_logit_bias_steers_every_choice(model, client):
    """+100 forces a token, -100 bans one: greedy and sampled, streamed or not;
    the reported log-probabilities stay the raw logits' (OpenAI's logprobs are
    the model's)."""
    ids = model.tokenizer.encode("the cat")
    plain = model.complete(ids, max_new_tokens=6, logprobs=1)
    forced = next(t for t in (42, 43, 44) if t not in (plain.token_ids[0], model.tokenizer.eos_id))
    r = client.completions.create(
        model="tiny", prompt=ids, max_tokens=6, logprobs=1, logit_bias={str(forced): 100}
    )
    got = r.choices[0].logprobs
    assert got.tokens == [model.tokenizer.decode([forced])] * 6
    assert got.token_logprobs[0] == pytest.approx(
        _reference_logprobs(model, ids + [forced], 1)[0][-1], abs=1e-5
    )
    banned = {str(t): -100 for t in set(plain.token_ids)}
    for extra in ({}, {"temperature": 1.0, "seed": 3}):
        r = client.completions.create(
            model="tiny", prompt=ids, max_tokens=12, logit_bias=banned, **extra
        )
        again = model.tokenizer.encode(r.choices[0].text)
        assert not set(again) & set(plain.token_ids), (again, plain.token_ids)
        stream = client.completions.create(
            model="tiny", prompt=ids, max_tokens=12, logit_bias=banned, stream=True, **extra
        )
        assert "".join(ch.choices[0].text for ch in stream) == r.choices[0].text


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
