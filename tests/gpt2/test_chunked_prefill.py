"""Prompts prefilled in chunks, and prefill graphs kept by a bucket of lengths.

A member can prefill its prompt a chunk at a time (gpt2.generate.Member.row's
budget); only the chunk that ends the prompt chooses a token, so a completion
is the same however its prompt is cut. The server's scheduler cuts prompts to
fit a step's token budget (gpt2.serve.scheduler). The fast engine pads a
prefill to a bucket of lengths (gpt2.engine.fast.prefill_bucket).

Tolerance: token equality for completions; on the CPU the fast engine's
prefill is batch invariant (gpt2.engine.graph's module doc), and the logits
of a chunked prefill's prompt chunks of two tokens or more, and of a bucketed
prefill, are asserted bit-identical to the whole, unpadded one.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gpt2
import gpt2.engine.fast as fast_mod
import gpt2.serve.scheduler as scheduler_mod
from gpt2.api import make_engine
from gpt2.config import GPT2Config
from gpt2.engine import FastGPT2
from gpt2.engine.step import StepPlan, StepRow
from gpt2.generate import Member, complete, greedy_generate, step_members
from gpt2.params import GenerationParams
from gpt2.random_weights import random_weights
from gpt2.serve.scheduler import Request, Scheduler

CHUNKS = (1, 3, 7)
PARAMS = {
    "greedy": GenerationParams(max_new_tokens=8),
    "sampled": GenerationParams(max_new_tokens=8, temperature=0.9, top_k=20, seed=11),
    "logprobs": GenerationParams(max_new_tokens=4, temperature=1.0, seed=5, logprobs=3),
}
# 64-wide heads, a context of 256: prompts of 1..200 tokens
BUCKET_CONFIG = GPT2Config(n_layer=2, n_embd=64, n_head=1, n_positions=256, vocab_size=300)


def _prompt(vocab: int, n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


def _complete_in_chunks(engine, prompt, params, chunk):
    """A completion whose prompt goes chunk tokens a step; its result and the
    pieces each step showed (None after the chunks that do not end the prompt)."""
    member = Member(engine, None, prompt, params)
    shown = []
    with engine.batch(1) as batch:
        while not member.cont.done:
            shown.append(step_members(batch, [member], [chunk])[0])
    return member.cont.result(), shown


@pytest.mark.parametrize("kind", ["fast", "full", "kv"])
@pytest.mark.parametrize("how", PARAMS)
def test_chunked_prefill_gives_the_whole_prompts_completion(tiny_model, kind, how):
    params = PARAMS[how]
    prompt = _prompt(tiny_model.config.vocab_size, 23, seed=1)
    with make_engine(tiny_model.weights, kind, n_slots=1, n_threads=1) as engine:
        whole = complete(engine, Member(engine, None, prompt, params))
        for chunk in CHUNKS:
            got, shown = _complete_in_chunks(engine, prompt, params, chunk)
            what = f"{kind}, {how}, chunks of {chunk}"
            assert got.token_ids == whole.token_ids, what
            assert got.finish_reason == whole.finish_reason, what
            n_chunks = -(-len(prompt) // chunk)
            assert shown[: n_chunks - 1] == [None] * (n_chunks - 1), what
            assert all(s is not None for s in shown[n_chunks - 1 :]), what
            if params.logprobs is not None:
                for a, b in zip(got.logprobs, whole.logprobs, strict=True):
                    assert a.token_id == b.token_id and abs(a.logprob - b.logprob) < 1e-5, what


def _chunked_logits(engine, prompt, chunk):
    """The last token's logits after prefilling prompt chunk tokens a step."""
    with engine.batch(1) as batch:
        slot = batch.first
        for start in range(0, len(prompt), chunk):
            part = prompt[start : start + chunk]
            last = start + chunk >= len(prompt)
            row = StepRow(slot, part, start, sampling=None, logits="last" if last else None)
            out = engine.step(StepPlan([row]))
        return out.logits[0]


def test_chunked_prefill_logits_on_the_cpu(tiny_model):
    """The fast engine on the CPU: a prompt cut in chunks of two tokens or more
    gives the whole prompt's bits (prefill graphs are batch invariant, whatever
    n_q); a one-token chunk runs as a decode step, whose kernels sum in another
    order (f32: up to about 1e-6 here; f16 2e-3, q8_0 0.03 on a 64-wide head),
    which is why the scheduler never cuts one (scheduler._prompt_chunk)."""
    prompt = _prompt(tiny_model.config.vocab_size, 40, seed=2)
    with FastGPT2(tiny_model.weights, n_slots=1, n_threads=2) as engine:
        whole = _chunked_logits(engine, prompt, len(prompt))
        for chunk in (2, 7, 16, 38):  # the last chunks: 2, 5, 8, 2 tokens
            got = _chunked_logits(engine, prompt, chunk)
            diff = float(np.abs(got - whole).max())
            assert np.array_equal(got, whole), f"chunks of {chunk}: largest difference {diff:.3g}"
        for chunk in (1, 3, 39):  # a one-token chunk
            got = _chunked_logits(engine, prompt, chunk)
            diff = float(np.abs(got - whole).max())
            assert diff < 1e-4, f"chunks of {chunk}: largest difference {diff:.3g}"


def test_the_scheduler_never_cuts_a_one_token_chunk():
    chunk = scheduler_mod._prompt_chunk
    assert [chunk(1, 5), chunk(5, 5), chunk(6, 5), chunk(7, 5), chunk(3, 2), chunk(9, 1)] == [
        1,
        5,
        4,
        5,
        0,
        0,
    ]
    for left in range(1, 40):
        for budget in range(3, 12):
            n = chunk(left, budget)
            assert 0 < n <= budget and (n == left or (n >= 2 and left - n >= 2)), (left, budget)


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=4, n_threads=1) as m:
        yield m


def test_scheduler_chunks_a_long_prompt_beside_short_ones(model, tiny_model, monkeypatch):
    """A budget of 6 tokens a step with 3 members: the long prompt goes over
    several steps, every answer is model.complete()'s alone, no step passes
    the budget and every decoding member is in every step."""
    vocab = tiny_model.config.vocab_size
    prompts = [_prompt(vocab, n, seed=n) for n in (50, 3, 9, 2, 30)]
    params = [PARAMS["sampled"], PARAMS["greedy"], PARAMS["sampled"], PARAMS["greedy"]] + [
        GenerationParams(max_new_tokens=12, temperature=0.8, seed=2)
    ]
    alone = [model.complete(p, params=q) for p, q in zip(prompts, params, strict=True)]
    real_step, real_members = model.engine.step, scheduler_mod.step_members
    steps: list[int] = []
    left_out: list[str] = []

    def step(plan):
        steps.append(sum(len(r.tokens) for r in plan.rows))
        return real_step(plan)

    def members_step(batch, members, budgets=None):
        decoding = [
            i for i, m in enumerate(members) if m is not None and m.started and m.next_token
        ]
        pieces = real_members(batch, members, budgets)
        left_out.extend(f"member {i}" for i in decoding if pieces[i] is None)
        return pieces

    monkeypatch.setattr(model.engine, "step", step)
    monkeypatch.setattr(scheduler_mod, "step_members", members_step)
    done: list = [None] * len(prompts)
    finished = threading.Event()
    with Scheduler(model, max_batch=3, max_step_tokens=6) as s:

        def sink(k):
            def send(ev):
                if ev.done is not None or ev.error is not None:
                    done[k] = ev
                    if all(d is not None for d in done):
                        finished.set()

            return send

        s.submit(
            [
                Request(model, p, q, sink(k))
                for k, (p, q) in enumerate(zip(prompts, params, strict=True))
            ]
        )
        assert finished.wait(60), "the requests did not finish"
    assert not left_out, f"decode rows left out of a step: {left_out}"
    assert steps and max(steps) <= 6, steps
    for k, (ev, want) in enumerate(zip(done, alone, strict=True)):
        assert ev.error is None, ev.error
        assert ev.done.token_ids == want.token_ids, f"prompt {k}"
        assert ev.done.finish_reason == want.finish_reason, f"prompt {k}"


def test_scheduler_budget_must_hold_a_token_a_member(model):
    with pytest.raises(ValueError, match="max_step_tokens"):
        Scheduler(model, max_batch=3, max_step_tokens=4)


def test_prefill_buckets():
    b = fast_mod.prefill_bucket
    assert [b(t) for t in (2, 16, 17, 100, 256, 257, 512, 513, 1024, 1025)] == [
        16,
        16,
        32,
        128,
        256,
        512,
        512,
        1024,
        1024,
        1536,
    ]


@pytest.fixture(scope="module")
def bucket_weights():
    return random_weights(BUCKET_CONFIG, seed=4)


def test_every_prompt_length_shares_a_few_prefill_graphs(bucket_weights, monkeypatch):
    """Prompts of 1..200 tokens build at most 5 prefill graphs a kind (16, 32,
    64, 128, 256) and give the bits of an engine that pads nothing (checked on
    every 7th length); the same greedy tokens. A prompt near the end of the
    context has no room for its bucket and runs at its own length."""
    vocab = BUCKET_CONFIG.vocab_size
    prompts = [_prompt(vocab, t, seed=t) for t in range(1, 201)]
    with FastGPT2(bucket_weights, n_slots=1, n_threads=2) as engine:
        bucketed = [engine.logits(p)[-1] for p in prompts]
        tokens = [greedy_generate(engine, p, 3) for p in prompts[::17]]
        builds = engine.prefill_graph_builds
        shapes = {(g.n_q, g.last_only) for g in engine._prefill_graphs}
    assert builds <= 10, (builds, shapes)  # "all" logits and the last token's, 5 each
    assert {n_q for n_q, _ in shapes} <= {16, 32, 64, 128, 256}, shapes
    monkeypatch.setattr(fast_mod, "prefill_bucket", lambda t: t)
    with FastGPT2(bucket_weights, n_slots=1, n_threads=2) as engine:
        for t in range(2, 201, 7):  # a graph a length: a few of them
            p, got = prompts[t - 1], bucketed[t - 1]
            want = engine.logits(p)[-1]
            diff = float(np.abs(got - want).max())
            assert np.array_equal(got, want), f"{t} tokens: largest difference {diff:.3g}"
        plain = [greedy_generate(engine, p, 3) for p in prompts[::17]]
        assert engine.prefill_graph_builds > 20
    assert tokens == plain
    with FastGPT2(bucket_weights, n_slots=1, n_threads=2) as engine:
        with engine.sequence() as seq:  # 250 + 5: past the context for a bucket of 16
            seq.start_greedy(prompts[-1][:200] + prompts[-1][:50])
            seq.step_greedy(1)
            engine.step(StepPlan([StepRow(seq.slot, [1] * 5, 251)]))
