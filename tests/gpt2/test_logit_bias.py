"""logit_bias (OpenAI's: token id -> a bias in [-100, 100]) through the library, on
every engine: added to the raw logits before the penalties and the token choice,
never to the reported log-probabilities.

Oracles: a numpy reference of the rule over the full logits of each step (the
greedy ids equal), the set of tokens a bias of -100 leaves (a sampled completion
never leaves it), and the raw log_softmax of the logits (the reported logprobs).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpt2.api import make_engine
from gpt2.engine.choice import adjusted_logits
from gpt2.engine.step import RowBias, RowPenalty, StepRow
from gpt2.generate import Member, complete
from gpt2.params import GenerationParams

KINDS = ["fast", "full", "kv"]


def _prompt(vocab: int) -> list[int]:
    return np.random.default_rng(4).integers(0, vocab, 9).tolist()


def test_params_validate_logit_bias():
    p = GenerationParams(logit_bias={7: 1, 3: -100.0})
    assert p.logit_bias == ((3, -100.0), (7, 1.0))
    assert GenerationParams(logit_bias=[(3, 2)]).logit_bias == ((3, 2.0),)
    assert GenerationParams(logit_bias=None).logit_bias == ()
    for bad in (
        {-1: 1.0},
        {True: 1.0},
        {"3": 1.0},
        {3: 100.5},
        {3: float("nan")},
        {3: "1"},
        [(3, 1.0), (3, 2.0)],
        [(3,)],
        "3",
    ):
        with pytest.raises(ValueError, match="logit_bias"):
            GenerationParams(logit_bias=bad)


def test_bias_then_penalties_in_one_adjustment():
    """Rows with a bias, a penalty, both or (in the middle) the raw logits: each
    row's copy equals the rule applied in numpy to that row alone."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 50)).astype(np.float32)
    bias = RowBias(np.array([1, 4, 9], np.int32), np.array([5.0, -100.0, 0.5], np.float32))
    pen = RowPenalty(
        (1.7, 0.5, 0.25), np.array([4, 9, 20], np.int32), np.array([0, 2, 1], np.int32)
    )
    rows = [
        StepRow(0, [1], 0, bias=bias),
        StepRow(1, [1], 0, penalty=pen),
        StepRow(2, [1], 0, bias=bias, penalty=pen),
        StepRow(3, [1], 0, bias=RowBias(np.array([0], np.int32), np.array([1.0], np.float32))),
    ]
    got = adjusted_logits(rows, logits)
    want = logits.copy()
    for k, r in enumerate(rows):
        if r.bias is not None:
            want[k, r.bias.ids] += r.bias.values
        if r.penalty is not None:
            rep, freq, pres = (np.float32(v) for v in r.penalty.params)
            for t, c in zip(r.penalty.ids, r.penalty.counts, strict=True):
                v = want[k, t]
                v = v / rep if v > 0 else v * rep
                want[k, t] = v - (freq * np.float32(c) + pres) if c else v
    assert np.array_equal(got, want)
    assert np.array_equal(logits, logits.copy())  # the raw logits stay


def reference_greedy(engine, prompt, n, bias: dict[int, float], rep: float):
    """Greedy with the bias, then a repetition penalty, applied in numpy to each
    step's full logits."""
    ids, out = list(prompt), []
    for _ in range(n):
        x = engine.logits(ids)[-1].astype(np.float32)
        for t, b in bias.items():
            x[t] += np.float32(b)
        for t in set(ids):
            x[t] = x[t] / np.float32(rep) if x[t] > 0 else x[t] * np.float32(rep)
        t = int(np.argmax(x))
        out.append(t)
        ids.append(t)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_with_a_bias_matches_a_numpy_reference(tiny_model, kind):
    vocab = tiny_model.config.vocab_size
    prompt = _prompt(vocab)
    with make_engine(tiny_model.weights, kind, n_slots=1, n_threads=1) as engine:
        plain = complete(engine, Member(engine, None, prompt, GenerationParams(max_new_tokens=8)))
        # push the plain choices down, two others up a little
        bias = {t: -7.5 for t in set(plain.token_ids)} | {11: 2.0, 12: 1.5}
        for rep in (1.0, 1.4):
            params = GenerationParams(max_new_tokens=8, logit_bias=bias, repetition_penalty=rep)
            got = complete(engine, Member(engine, None, prompt, params)).token_ids
            assert got == reference_greedy(engine, prompt, 8, bias, rep), (kind, rep)
            assert got != plain.token_ids


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_tokens_never_leave_what_the_bias_allows(tiny_model, kind):
    vocab = tiny_model.config.vocab_size
    allowed = {5, 17, 99}
    bias = {t: -100.0 for t in range(vocab) if t not in allowed}
    with make_engine(tiny_model.weights, kind, n_slots=1, n_threads=1) as engine:
        for seed in range(3):
            params = GenerationParams(
                max_new_tokens=12, temperature=1.5, seed=seed, logit_bias=bias, logprobs=2
            )
            prompt = _prompt(vocab)
            c = complete(engine, Member(engine, None, prompt, params))
            assert set(c.token_ids) <= allowed, (kind, c.token_ids)
            # logprobs stay the raw logits': not those of the three tokens left
            x = engine.logits(prompt)[-1].astype(np.float64)
            raw = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            assert abs(c.logprobs[0].logprob - raw[c.token_ids[0]]) < 1e-4
            assert c.logprobs[0].top[0][0] == int(np.argmax(raw))


def test_a_bias_past_the_vocabulary_is_refused(tiny_model):
    with make_engine(tiny_model.weights, "fast", n_slots=1, n_threads=1) as engine:
        params = GenerationParams(logit_bias={tiny_model.config.vocab_size: 1.0})
        with pytest.raises(ValueError, match="past the vocabulary"):
            Member(engine, None, [1, 2], params)
