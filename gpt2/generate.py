"""Generation over any engine that speaks the step protocol.

An engine gives the logits of the last position with ``start(prompt_ids)``,
then ``step(token_id)`` feeds one more token; ``max_positions`` bounds the
positions. Engines that can pick the argmax on their own device also offer
``start_greedy``/``step_greedy`` returning the id, which greedy decoding
prefers (one 4-byte download a token instead of a whole logits row).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from gpt2.sampling import StopChecker, sample


class StepEngine(Protocol):
    max_positions: int

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray: ...

    def step(self, token_id: int) -> np.ndarray: ...


def generate_ids(
    engine: StepEngine,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_id: int | None = None,
) -> Iterator[int]:
    """Yields new token ids; stops after max_new_tokens, at eos_id (which is
    yielded), or when the context is full."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt_ids) > engine.max_positions:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens, the context holds {engine.max_positions}"
        )
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    on_device = temperature == 0.0 and hasattr(engine, "start_greedy")
    if on_device:
        token = engine.start_greedy(prompt_ids)
    else:
        token = sample(engine.start(prompt_ids), rng, temperature, top_k, top_p)
    n_positions = len(prompt_ids)
    for produced in range(1, max_new_tokens + 1):
        yield token
        if token == eos_id or produced == max_new_tokens:
            return
        if n_positions >= engine.max_positions:
            return  # the next token would need a position past the context
        n_positions += 1
        if on_device:
            token = engine.step_greedy(token)
        else:
            token = sample(engine.step(token), rng, temperature, top_k, top_p)


def greedy_generate(
    engine: StepEngine, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: int | None = None
) -> list[int]:
    """The greedy continuation (new ids only)."""
    return list(generate_ids(engine, prompt_ids, max_new_tokens, eos_id=eos_id))


def greedy_generate_batch(
    engine, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | None = None
) -> list[list[int]]:
    """Greedy continuations of several prompts decoded together (new ids of
    each), equal to greedy_generate of each prompt alone. A sequence ends after
    max_new_tokens or at eos_id (kept); all end when the longest one's next
    token would need a position past the context. Needs an engine with
    start_batch / step_batch_greedy (FastGPT2 with max_batch >= len(prompts))."""
    if not hasattr(engine, "step_batch_greedy"):
        raise ValueError("decoding several prompts together needs the fast engine")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompts) == 0:
        raise ValueError("no prompts: give at least one")
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return out
    tokens = engine.start_batch(prompts)
    done = [False] * len(prompts)
    position = max(len(p) for p in prompts)  # where the longest one's next token goes
    while True:
        for i, token in enumerate(tokens):
            if not done[i]:
                out[i].append(token)
                done[i] = token == eos_id or len(out[i]) == max_new_tokens
        if all(done) or position >= engine.max_positions:
            return out
        tokens = engine.step_batch_greedy(tokens)  # finished ones run on, unread
        position += 1


def stream_text(
    engine: StepEngine,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    stop: Sequence[str] = (),
    **sampling,
) -> Iterator[str]:
    """Yields pieces of the continuation's text as tokens arrive, ending at
    end-of-text or before the first stop string."""
    prompt_ids = tokenizer.encode(prompt)
    checker = StopChecker(list(stop))
    new_ids: list[int] = []
    shown = ""  # decoded text handed to the checker so far
    for token in generate_ids(
        engine, prompt_ids, max_new_tokens, eos_id=tokenizer.eos_id, **sampling
    ):
        if token == tokenizer.eos_id:
            break
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):
            continue  # a character split across tokens: wait for the rest
        piece = checker.feed(text[len(shown) :])
        shown = text
        if piece:
            yield piece
        if checker.stopped:
            return
    text = tokenizer.decode(new_ids) if new_ids else ""
    tail = checker.feed(text[len(shown) :]) if len(text) > len(shown) else ""
    tail += checker.flush()
    if tail:
        yield tail
