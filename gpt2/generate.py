"""Generation over any engine of the protocol (gpt2.protocol).

Each call opens its own sequence (a cache slot and a position), so calls on
one model, interleaved or from several threads, never see each other's state.
Greedy decoding picks on the engine's device (one id a token); sampling
chooses by the rule of gpt2.sampling with one uniform draw a token from the
seeded generator, on the device where the engine can (the fused CUDA step),
else on the host from the step's logits: the same rule on the same draws.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from gpt2.protocol import Engine
from gpt2.sampling import SamplingParams, StopChecker, draw_uniform, sample


@dataclass
class StepTimings:
    """Wall time of a generation's prefill and of each decode step (what the
    CLI's --timing prints)."""

    prefill_s: float | None = None
    step_s: list[float] = field(default_factory=list)


def generate_ids(
    engine: Engine,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_id: int | None = None,
    timings: StepTimings | None = None,
) -> Iterator[int]:
    """Yields new token ids; stops after max_new_tokens, at eos_id (which is
    yielded), or when the context is full. The sequence's slot is taken at the
    first token and given back when the generator ends or is closed."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt_ids) > engine.max_positions:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens, the context holds {engine.max_positions}"
        )
    params = SamplingParams(temperature, top_k, top_p)  # checked once, not every token
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    greedy = params.greedy
    timings = timings if timings is not None else StepTimings()
    with engine.sequence() as seq:
        t0 = time.perf_counter()
        if greedy:
            token = seq.start_greedy(prompt_ids)
        else:
            token = sample(seq.start(prompt_ids), params, rng)
        timings.prefill_s = time.perf_counter() - t0
        for produced in range(1, max_new_tokens + 1):
            yield token
            if token == eos_id or produced == max_new_tokens:
                return
            if seq.position >= engine.max_positions:
                return  # the next token would need a position past the context
            t0 = time.perf_counter()
            if greedy:
                token = seq.step_greedy(token)
            else:
                token = seq.step_sample(token, params, draw_uniform(rng))
            timings.step_s.append(time.perf_counter() - t0)


def greedy_generate(
    engine: Engine, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: int | None = None
) -> list[int]:
    """The greedy continuation (new ids only)."""
    return list(generate_ids(engine, prompt_ids, max_new_tokens, eos_id=eos_id))


def greedy_generate_batch(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of several prompts decoded together (new ids of
    each), each equal to greedy_generate of that prompt alone: a sequence ends
    after max_new_tokens, at eos_id (kept), or at the end of its own context,
    while the others go on."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if len(prompts) == 0:
        raise ValueError("no prompts: give at least one")
    for p in prompts:
        if len(p) > engine.max_positions:
            raise ValueError(
                f"a prompt has {len(p)} tokens, the context holds {engine.max_positions}"
            )
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return out
    with engine.batch(len(prompts)) as batch:
        tokens: list[int | None] = list(batch.start_greedy(prompts))
        while True:
            for i, token in enumerate(tokens):
                if token is None:
                    continue
                out[i].append(token)
                full = batch.positions[i] >= engine.max_positions
                if token == eos_id or len(out[i]) == max_new_tokens or full:
                    tokens[i] = None  # finished: not fed again
            if all(t is None for t in tokens):
                return out
            tokens = batch.step_greedy(tokens)


def stream_text(
    engine: Engine,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    stop: str | Sequence[str] = (),
    **sampling,
) -> Iterator[str]:
    """Yields pieces of the continuation's text as tokens arrive, ending at
    end-of-text or before the first stop string (one string or several)."""
    prompt_ids = tokenizer.encode(prompt)
    checker = StopChecker([stop] if isinstance(stop, str) else list(stop))
    new_ids: list[int] = []
    shown = ""  # decoded text handed to the checker so far
    tokens = generate_ids(engine, prompt_ids, max_new_tokens, eos_id=tokenizer.eos_id, **sampling)
    with closing(tokens):  # ending early gives the sequence's slot back at once
        for token in tokens:
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
