"""Batch invariance on the CPU: a sequence's logits and tokens do not depend on
which other sequences share its step (how many, which slots, their positions).

Tolerance: none. A member of a batch gets the same bits as the sequence stepped
alone (np.array_equal), for f32, f16 and q8_0 weights, in prefill and decode.

The model is tiny but shaped to take the kernels a real GPT-2 takes
(gpt2.engine.graph's module doc): 64-wide heads; n_embd 128 and a vocabulary of
512, multiples of 16 and 4, so every product of two or more columns runs in
ggml's tinyBLAS (GGML_LLAMAFILE), as gpt2-small's layers do; prompts of 64
tokens or more, where ggml-cpu's flash attention switches to its tiled kernel;
and decode past position 256 (a cache bucket of 512) with two threads, where
it splits a lone query's cache across threads. Each of those broke the promise
before the graph kept every row on one kernel: members were up to 1.4e-6 away
from the sequence alone in f32, 4.5e-3 in f16 and 0.055 in q8_0, and sampled
f16 and q8_0 generations took other tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpt2
from gpt2.config import GPT2Config
from gpt2.convert import write_gguf_llama_layout
from gpt2.engine import FastGPT2
from gpt2.random_weights import random_weights

CONFIG = GPT2Config(n_layer=2, n_embd=128, n_head=2, n_positions=512, vocab_size=512)
DTYPES = ("f32", "f16", "q8_0")
STEPS = 4  # decode steps compared after each prefill
# (batch size, the member that is the sequence under test)
MEMBERS = ((2, 1), (3, 0), (5, 2), (8, 7))
# the sequence under test: a short prompt (one-query attention alone, tiled in a
# batch with a longer prompt) and a long one (its decode steps attend past row 256)
PROMPT_LENGTHS = {"short": 9, "long": 270}


@pytest.fixture(scope="module")
def weights():
    return random_weights(CONFIG, seed=5)


@pytest.fixture(scope="module", params=DTYPES)
def engine(request, weights):
    with FastGPT2(weights, "cpu", request.param, n_slots=9, n_threads=2) as e:
        yield e


def run_batch(engine, prompts, steps, member):
    """Prefills prompts together in adjacent slots, then decodes steps[k] (a
    token for each member) together: member's logits after the prefill and
    after each step, [1 + len(steps), vocab]. The one place this file talks to
    the engine; a batch of one is the sequence alone."""
    with engine.batch(len(prompts)) as b:
        out = [b.start(prompts)[member]]
        for tokens in steps:
            out.append(b.step(tokens)[member])
    return np.stack(out)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        diff = np.abs(got.astype(np.float64) - want)
        worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise AssertionError(
            f"{what}: not bit-identical; largest difference {diff[worst]:.3g} at "
            f"(row, vocab id) {tuple(int(i) for i in worst)} (row 0: the prefill, "
            f"row k: decode step k); {int((diff > 0).sum())} values differ"
        )


@pytest.mark.parametrize("case", PROMPT_LENGTHS)
def test_member_of_a_batch_gets_what_it_gets_alone(engine, case):
    rng = np.random.default_rng(PROMPT_LENGTHS[case])
    vocab, length = CONFIG.vocab_size, PROMPT_LENGTHS[case]
    prompt = rng.integers(0, vocab, length).tolist()
    tokens = rng.integers(0, vocab, STEPS).tolist()
    alone = run_batch(engine, [prompt], [[t] for t in tokens], 0)
    for n, member in MEMBERS:
        # the others: shorter and longer prompts (one of 70 or more tokens),
        # so they sit at other positions, and random tokens of their own
        lengths = rng.integers(2, length + 100, n)
        lengths[(member + 1) % n] = max(lengths[(member + 1) % n], 70)
        prompts = [rng.integers(0, vocab, k).tolist() for k in lengths]
        prompts[member] = prompt
        steps = rng.integers(0, vocab, (STEPS, n))
        steps[:, member] = tokens
        got = run_batch(engine, prompts, steps.tolist(), member)
        assert_same(got, alone, f"{engine.dtype}, {case} prompt, member {member} of a batch of {n}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_generate_batch_equals_generate_alone(tmp_path, weights, dtype):
    """Sampled generation through the public API: each prompt of a batch gets the
    tokens it gets alone (the same seed draws the same uniforms)."""
    path = tmp_path / f"tiny_{dtype}.gguf"
    write_gguf_llama_layout(weights, path, dtype)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, CONFIG.vocab_size, k).tolist() for k in (3, 70, 12, 1, 40)]
    params = {"max_new_tokens": 24, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7}
    with gpt2.load(path, device="cpu", n_threads=1, n_slots=len(prompts)) as model:
        assert model.engine.dtype == dtype
        together = model.generate_batch(prompts, **params)
        alone = [model.generate(p, **params) for p in prompts]
    for i, (got, want) in enumerate(zip(together, alone, strict=True)):
        assert got == want, f"{dtype}, prompt {i}: batch {got} != alone {want}"


def test_one_prefill_graph_serves_every_slot(weights):
    """A prefill graph gathers its sequences' cache rows by runtime index: the same
    prompt in another slot reuses the graph (no build) and gets the same bits."""
    prompt = np.random.default_rng(3).integers(0, CONFIG.vocab_size, 40).tolist()
    with FastGPT2(weights, "cpu", "f16", n_slots=3, n_threads=1) as e:
        with e.sequence() as first:
            want = first.start(prompt)
            builds = e.prefill_graph_builds
            with e.sequence() as second:  # the next free slot
                got = second.start(prompt)
                assert second.slot != first.slot
        assert e.prefill_graph_builds == builds
        assert_same(got[None], want[None], "the same prompt in another slot")
