"""model.complete(): finish reasons, usage, log-probabilities; one parameter object
for generate/stream/complete/generate_batch; members joining a running batch.

Log-probabilities are checked against the numpy float64 reference model's logits
(tolerance 1e-3 on each log-probability, the engine computing in f32).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpt2
from gpt2.bench_runtime import InstantEngine
from gpt2.completion import Continuation
from gpt2.config import GPT2Config
from gpt2.engine.step import StepPlan, StepRow
from gpt2.generate import Member
from gpt2.params import GenerationParams
from gpt2.reference import GPT2Reference
from gpt2.sampling import SamplingParams, choose, draw_uniform, draw_uniforms

SAMPLED = {"temperature": 0.9, "top_k": 20, "seed": 3}


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=4, n_threads=1) as m:
        yield m


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def test_length_and_usage(model):
    c = model.complete("the cat", max_new_tokens=7)
    assert c.finish_reason in ("length", "eos")
    ids = model.tokenizer.encode("the cat")
    assert c.usage.prompt_tokens == len(ids)
    assert c.usage.completion_tokens == len(c.token_ids)
    assert c.usage.total_tokens == len(ids) + len(c.token_ids)
    assert c.text == model.generate("the cat", max_new_tokens=7)
    if c.finish_reason == "length":
        assert len(c.token_ids) == 7
    assert c.logprobs is None


def test_context_finish(model, tiny_model):
    n = tiny_model.config.n_positions
    c = model.complete([1] * (n - 3), max_new_tokens=50)
    assert c.finish_reason == "context"
    assert len(c.token_ids) == 4  # as generate() of ids
    assert c.token_ids == model.generate([1] * (n - 3), max_new_tokens=50)


def test_stop_finish_cuts_the_text(model):
    full = model.complete("the cat", max_new_tokens=30)
    assert len(full.text) > 6, full.text
    stop = full.text[3:6]
    c = model.complete("the cat", max_new_tokens=30, stop=stop)
    assert c.finish_reason == "stop"
    assert c.text == full.text[: full.text.find(stop)]
    assert "".join(model.stream("the cat", max_new_tokens=30, stop=[stop])) == c.text


def test_eos_finish_leaves_it_out():
    cont = Continuation(None, 3, GenerationParams(max_new_tokens=5), 64, eos_id=7)
    cont.feed(4)
    cont.feed(7)
    c = cont.result()
    assert (c.finish_reason, c.token_ids, c.usage.completion_tokens) == ("eos", [4], 1)
    with pytest.raises(ValueError, match="finished"):
        cont.feed(1)


def test_zero_new_tokens(model):
    c = model.complete("the cat", max_new_tokens=0)
    assert (c.text, c.token_ids, c.finish_reason) == ("", [], "length")


@pytest.mark.parametrize("params", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_logprobs_match_the_reference(model, tiny_model, params):
    prompt = [5, 17, 42, 99]
    c = model.complete(prompt, max_new_tokens=6, logprobs=4, **params)
    ref = GPT2Reference(tiny_model.weights)
    assert len(c.logprobs) == len(c.token_ids)
    seq = list(prompt)
    for tok, lp in zip(c.token_ids, c.logprobs, strict=True):
        want = _log_softmax(ref.logits(seq)[-1])
        assert lp.token_id == tok
        assert abs(lp.logprob - want[tok]) < 1e-3, (lp.logprob, want[tok])
        assert len(lp.top) == 4
        top_lp = np.array([t[2] for t in lp.top])
        assert np.all(np.diff(top_lp) <= 0)
        assert np.abs(top_lp - np.sort(want)[::-1][:4]).max() < 1e-3
        assert np.exp(top_lp).sum() <= 1.0 + 1e-6
        if not params:
            assert lp.top[0][0] == tok  # greedy: the most likely one
        seq.append(tok)
    # asking for log-probabilities does not change the tokens
    assert c.token_ids == model.complete(prompt, max_new_tokens=6, **params).token_ids


def test_params_object_and_keywords(model):
    p = GenerationParams(max_new_tokens=8, **SAMPLED)
    assert model.complete("a dog", p).text == model.generate("a dog", params=p)
    assert model.generate("a dog", params=p) == model.generate("a dog", max_new_tokens=8, **SAMPLED)
    assert model.complete("a dog", p, seed=4).text == model.generate(
        "a dog", 8, **{**SAMPLED, "seed": 4}
    )
    greedy = model.generate("a dog", max_new_tokens=8)
    assert model.generate("a dog", max_new_tokens=8, do_sample=False, temperature=0.7) == greedy


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_length": 5}, "max_new_tokens"),
        ({"eos_token_id": 5}, "Supported: max_new_tokens"),
        ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size"),
        ({"num_return_sequences": 2}, "generate_batch"),
        ({"foo": 1}, "Supported"),
    ],
)
def test_unsupported_keywords_say_what_is_supported(model, kw, match):
    with pytest.raises(TypeError, match=match) as e:
        model.generate("a dog", **kw)
    assert "generate_ids" not in str(e.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": -2},
        {"max_new_tokens": -1},
        {"seed": -1},
        {"logprobs": 99},
        {"stop": [""]},
        {"do_sample": "yes"},
    ],
)
def test_bad_values_are_value_errors(model, kw):
    with pytest.raises(ValueError):
        model.complete("a dog", **kw)


def test_generate_batch_samples_with_stops_each_as_alone(model):
    prompts = ["the cat", "a dog and", "one"]
    full = model.generate(prompts[0], max_new_tokens=12, **SAMPLED)
    kw = {"max_new_tokens": 12, "stop": [full[4:6]], **SAMPLED}
    alone = [model.generate(p, **kw) for p in prompts]
    assert model.generate_batch(prompts, **kw) == alone
    ids = [model.tokenizer.encode(p) for p in prompts]
    kw.pop("stop")
    assert model.generate_batch(ids, **kw) == [model.generate(i, **kw) for i in ids]
    done = model.complete_batch(prompts, max_new_tokens=5, logprobs=2)
    assert [c.text for c in done] == [model.complete(p, max_new_tokens=5).text for p in prompts]


def test_step_sample_takes_one_params_per_member(model):
    engine = model.engine
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    params = [SamplingParams(0.9, 10, 1.0), SamplingParams(), SamplingParams(1.2, 0, 0.8)]
    uniforms = [0.3, 0.0, 0.7]
    want = []
    for p, sp, u in zip(prompts, params, uniforms, strict=True):
        with engine.sequence() as seq:
            first = int(np.argmax(seq.start(p)))
            want.append(choose(seq.step(first), sp, u))
    with engine.batch(3) as batch:
        firsts = [int(np.argmax(r)) for r in batch.start(prompts)]
        assert batch.step_sample(firsts, params, uniforms) == want
    with engine.batch(3) as batch:  # idle members: None, with or without params
        firsts = [int(np.argmax(r)) for r in batch.start(prompts)]
        got = batch.step_sample(
            [firsts[0], None, firsts[2]], [params[0], None, params[2]], uniforms
        )
        assert got == [want[0], None, want[2]]


def test_a_member_joins_a_running_batch(model):
    """start_member prefills one member while the others keep their positions."""
    engine = model.engine
    a, b = [3, 4, 5, 6], [7, 8]
    alone_a = model.generate(a, max_new_tokens=8)
    alone_b = model.generate(b, max_new_tokens=5)
    with engine.batch(3) as batch:
        got_a = [batch.start_member(0, a, greedy=True)]
        for _ in range(3):
            got_a.append(batch.step_greedy([got_a[-1], None, None])[0])
        got_b = [batch.start_member(2, b, greedy=True)]  # member 1 stays idle
        assert batch.positions[0] == len(a) + 3
        for _ in range(4):
            out = batch.step_greedy([got_a[-1], None, got_b[-1]])
            got_a.append(out[0])
            got_b.append(out[2])
    assert got_a == alone_a
    assert got_b == alone_b
    with engine.batch(2) as batch, pytest.raises(ValueError, match="member"):
        batch.start_member(2, a)


class _Fixed:
    """A generator stand-in whose every draw is `value`."""

    def __init__(self, value: float):
        self.value = value

    def random(self, n: int | None = None):
        return self.value if n is None else np.full(n, self.value)


def test_uniforms_drawn_in_blocks_are_the_single_draws_stream():
    """A member draws its uniforms in blocks (draw_uniforms: rng.random(n)); they are
    the floats of one draw_uniform(rng) a token, in order, across block edges, and
    a draw that rounds up to 1 is clamped below it as draw_uniform clamps it."""
    for seed, n_new in [(0, 1), (1, 63), (2, 64), (3, 65), (4, 200)]:
        rng = np.random.default_rng(seed)
        want = [draw_uniform(rng) for _ in range(n_new)]
        assert draw_uniforms(np.random.default_rng(seed), n_new) == want
        p = GenerationParams(max_new_tokens=n_new, temperature=0.8, seed=seed)
        with InstantEngine(GPT2Config(vocab_size=64), 1) as engine:
            member = Member(engine, None, [1, 2], p)
            assert [member.draw() for _ in range(n_new)] == want
    high = _Fixed(1.0 - 1e-12)  # rounds to 1.0 in float32
    assert draw_uniforms(high, 3) == [draw_uniform(high)] * 3
    assert draw_uniforms(high, 1)[0] < 1.0


def test_a_sampled_completion_is_a_draw_a_token_stepped_by_hand(model):
    """complete() with a seed gives the tokens of a loop that draws one
    draw_uniform(rng) a token and runs a one-row plan a step (what it did before
    uniforms were drawn in blocks)."""
    engine, tok = model.engine, model.tokenizer
    ids = tok.encode("the cat")
    for seed in (1, 2, 3):
        p = GenerationParams(max_new_tokens=40, temperature=1.3, top_k=50, seed=seed)
        got = model.complete(ids, params=p)
        rng, want = np.random.default_rng(seed), []
        with engine.sequence() as seq:
            row = StepRow(seq.slot, ids, 0, p.sampling, draw_uniform(rng))
            token = int(engine.step(StepPlan([row])).tokens[0])
            while token != tok.eos_id:
                want.append(token)
                position = len(ids) + len(want) - 1
                if len(want) == 40 or position + 1 > engine.max_positions:
                    break
                row = StepRow(seq.slot, [token], position, p.sampling, draw_uniform(rng))
                token = int(engine.step(StepPlan([row])).tokens[0])
        assert got.token_ids == want, seed
