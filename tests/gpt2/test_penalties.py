"""Repetition, frequency and presence penalties (gpt2.params) through the library,
the CLI and the server.

Oracles: the tokens of today's path (neutral penalties change nothing, exactly), a
numpy reference of the rule over the full engine's logits (the chosen ids equal), and
the embedded GPT-2's greedy loop, which a repetition penalty breaks.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import gpt2
from gpt2.cli import main
from gpt2.generate import Member, complete
from gpt2.params import GenerationParams
from gpt2.penalties import TokenHistory

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tiny(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=4, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def embedded():
    with gpt2.load(None, device="cpu") as m:
        yield m


def repeated_4grams(ids: list[int]) -> list[tuple[int, ...]]:
    seen, again = set(), []
    for i in range(len(ids) - 3):
        g = tuple(ids[i : i + 4])
        if g in seen:
            again.append(g)
        seen.add(g)
    return again


def test_params_validate_penalties():
    p = GenerationParams(repetition_penalty=2, frequency_penalty=-2, presence_penalty=1)
    assert p.penalties == (2.0, -2.0, 1.0) and p.penalized
    assert not GenerationParams().penalized
    for kw in (
        {"repetition_penalty": 0},
        {"repetition_penalty": float("inf")},
        {"repetition_penalty": True},
        {"frequency_penalty": 2.01},
        {"presence_penalty": -3},
        {"presence_penalty": float("nan")},
        {"frequency_penalty": "1"},
    ):
        with pytest.raises(ValueError, match=next(iter(kw))):
            GenerationParams(**kw)


def test_history_counts_incrementally():
    h = TokenHistory((1.3, 0.0, 0.0), [5, 6, 5])
    h.add(6)
    h.add(7)
    h.add(7)
    pen = h.penalty()
    assert dict(zip(pen.ids.tolist(), pen.counts.tolist(), strict=True)) == {5: 0, 6: 1, 7: 2}
    for t in range(200):  # grows past its first arrays
        h.add(1000 + t)
    assert len(h) == 203 and h.count(1199) == 1 and h.count(5) == 0


@pytest.mark.parametrize("sampled", [False, True])
def test_neutral_penalties_change_nothing(tiny, sampled):
    kw = {"temperature": 0.9, "top_k": 20, "seed": 3} if sampled else {}
    neutral = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
    a = tiny.complete("the cat", max_new_tokens=12, logprobs=2, **kw)
    b = tiny.complete("the cat", max_new_tokens=12, logprobs=2, **kw, **neutral)
    assert a.token_ids == b.token_ids and a.logprobs == b.logprobs


def reference_greedy(tiny, prompt_ids, n, rep, freq, pres):
    """Greedy with the rule applied in numpy to each step's full logits."""
    ids = list(prompt_ids)
    out = []
    for _ in range(n):
        x = tiny.logits(ids)[-1].astype(np.float32)
        counts = {t: out.count(t) for t in set(out)}
        for t in set(ids):
            v = x[t]
            v = v / np.float32(rep) if v > 0 else v * np.float32(rep)
            c = counts.get(t, 0)
            if c:
                v = v - (np.float32(freq) * np.float32(c) + np.float32(pres))
            x[t] = v
        t = int(np.argmax(x))
        out.append(t)
        ids.append(t)
    return out


@pytest.mark.parametrize("pen", [(1.5, 0.0, 0.0), (1.0, 1.0, 0.5), (0.8, -0.5, 1.5)])
def test_greedy_choice_matches_a_numpy_reference(tiny, pen):
    prompt = tiny.tokenizer.encode("the cat sat on the")
    params = GenerationParams(
        max_new_tokens=10, repetition_penalty=pen[0], frequency_penalty=pen[1],
        presence_penalty=pen[2],
    )  # fmt: skip
    got = complete(tiny.engine, Member(tiny.engine, None, prompt, params)).token_ids
    assert got == reference_greedy(tiny, prompt, 10, *pen)


def test_logprobs_stay_those_of_the_raw_logits(tiny):
    c = tiny.complete("the cat", max_new_tokens=6, logprobs=3, repetition_penalty=1.8)
    ids = tiny.tokenizer.encode("the cat")
    for lp in c.logprobs:
        x = tiny.logits(ids)[-1].astype(np.float64)
        lse = x.max() + np.log(np.exp(x - x.max()).sum())
        want = x[lp.token_id] - lse
        assert abs(lp.logprob - want) < 1e-4, (lp.logprob, want)
        assert lp.top[0][0] == int(np.argmax(x))  # the raw ranking
        ids.append(lp.token_id)


def test_repetition_penalty_breaks_the_embedded_models_loop(embedded):
    plain = embedded.complete(PROMPT, max_new_tokens=60)
    assert len(repeated_4grams(plain.token_ids)) > 5, plain.text  # it really loops
    penalized = embedded.complete(PROMPT, max_new_tokens=60, repetition_penalty=1.3)
    assert repeated_4grams(penalized.token_ids) == [], penalized.text
    batch = embedded.generate_batch([PROMPT, PROMPT], max_new_tokens=60, repetition_penalty=1.3)
    assert batch == [penalized.text] * 2


def test_cli_takes_the_penalties(capsys, tiny_model):
    argv = ["generate", "the cat", "--model", str(tiny_model.gguf_llama), "--device", "cpu"]
    argv += ["--max-new-tokens", "8", "--no-stream", "--temperature", "0"]
    assert main(argv) == 0
    default = capsys.readouterr().out  # the CLI's default repetition penalty: 1.1
    assert main([*argv, "--repetition-penalty", "1.1", "--frequency-penalty", "0"]) == 0
    assert capsys.readouterr().out == default
    assert main([*argv, "--presence-penalty", "1.5", "--repetition-penalty", "2"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


def test_server_accepts_penalties_and_refuses_out_of_range(tiny):
    pytest.importorskip("uvicorn")
    from tests.gpt2.test_serve import live_server

    with live_server(tiny, max_batch=2) as (url, _):
        body = {"prompt": "the cat", "max_tokens": 8}
        want = tiny.complete("the cat", max_new_tokens=8, repetition_penalty=1.4,
                             frequency_penalty=0.5, presence_penalty=-0.5).text  # fmt: skip
        r = httpx.post(
            url + "/v1/completions",
            json={
                **body,
                "repetition_penalty": 1.4,
                "frequency_penalty": 0.5,
                "presence_penalty": -0.5,
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want
        for field, value in [
            ("frequency_penalty", 2.5),
            ("presence_penalty", -2.1),
            ("repetition_penalty", 0),
            ("repetition_penalty", -1.0),
        ]:
            r = httpx.post(url + "/v1/completions", json={**body, field: value})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == field
