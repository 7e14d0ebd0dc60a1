"""Generation over any engine of the protocol (gpt2.protocol).

Each call opens its own sequence (a cache slot and a position), so calls on
one model, interleaved or from several threads, never see each other's state.
Greedy decoding picks on the engine's device (one id a token); sampling
chooses by the rule of gpt2.sampling with one uniform draw a token from the
seeded generator, on the device where the engine can (the fused CUDA step),
else on the host from the step's logits: the same rule on the same draws.

Completions (text, finish reason, log-probabilities) are `Member`s of a batch,
one or many: `prefill_member` starts one, `step_members` advances all the
active ones by a token. A single completion, `generate_batch` and the server's
scheduler (gpt2.serve.scheduler) run the same two calls, so a completion is
the same whichever way it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpt2.completion import Completion, Continuation
from gpt2.params import GenerationParams
from gpt2.protocol import Engine
from gpt2.sampling import SamplingParams, choose, draw_uniform, sample


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


def check_prompt_length(engine: Engine, prompt_ids: Sequence[int]) -> None:
    """The checks a prompt passes before it takes a slot."""
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt_ids) > engine.max_positions:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens, the context holds {engine.max_positions}"
        )


class Member:
    """One completion's sequence in a batch: its parameters, its draws (a
    generator seeded by params.seed), its continuation and the token it feeds
    at the next step (None once it has finished)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        eos_id: int | None = None,
    ):
        check_prompt_length(engine, prompt_ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sampling = params.sampling
        self.rng = np.random.default_rng(params.seed)
        self.cont = Continuation(tokenizer, len(prompt_ids), params, engine.max_positions, eos_id)
        self.next_token: int | None = None

    @property
    def wants_logits(self) -> bool:
        return self.params.logprobs is not None

    def draw(self) -> float:
        """The uniform of this token: one draw when sampling, none when greedy."""
        return 0.0 if self.sampling.greedy else draw_uniform(self.rng)

    def choose(self, logits: np.ndarray) -> int:
        return choose(logits, self.sampling, self.draw())

    def take(self, token: int, logits: np.ndarray | None) -> str:
        """Feeds the chosen token to the continuation; the text it shows."""
        piece = self.cont.feed(int(token), logits)
        self.next_token = None if self.cont.done else int(token)
        return piece


def prefill_member(batch, i: int, member: Member) -> str:
    """Starts member i of a running batch (gpt2.sequence.SequenceBatch.start_member)
    and takes its first token; the text it shows."""
    greedy = member.sampling.greedy and not member.wants_logits
    out = batch.start_member(i, member.prompt_ids, greedy=greedy)
    if greedy:
        return member.take(out, None)
    return member.take(member.choose(out), out)


def step_members(batch, members: Sequence[Member | None]) -> list[str | None]:
    """One step of every member still going (None, or a finished one: idle);
    the text each shows (None for the idle ones). Greedy ids are picked on the
    device; sampled ones there too where the engine can, each with its own
    params and draw; a member that asks for log-probabilities makes the step
    return logits, and every member then chooses on the host by the same rule."""
    tokens = [m.next_token if m is not None else None for m in members]
    live = [(i, m) for i, m in enumerate(members) if tokens[i] is not None]
    pieces: list[str | None] = [None] * len(members)
    if not live:
        return pieces
    if any(m.wants_logits for _, m in live):
        logits = batch.step(tokens)
        for i, m in live:
            pieces[i] = m.take(m.choose(logits[i]), logits[i])
    elif all(m.sampling.greedy for _, m in live):
        ids = batch.step_greedy(tokens)
        for i, m in live:
            pieces[i] = m.take(ids[i], None)
    else:
        params: list[SamplingParams | None] = [None] * len(members)
        uniforms = [0.0] * len(members)
        for i, m in live:
            params[i], uniforms[i] = m.sampling, m.draw()
        ids = batch.step_sample(tokens, params, uniforms)
        for i, m in live:
            pieces[i] = m.take(ids[i], None)
    return pieces


def completion_pieces(
    engine: Engine, member: Member, timings: StepTimings | None = None
) -> Iterator[str]:
    """Runs one completion in a sequence of its own, yielding its text as it is
    decided; member.cont holds the rest (ids, finish reason, log-probabilities).
    The slot is taken at the first piece and given back when the generator ends
    or is closed."""
    if member.cont.done:
        return
    timings = timings if timings is not None else StepTimings()
    with engine.batch(1) as batch:
        t0 = time.perf_counter()
        piece = prefill_member(batch, 0, member)
        timings.prefill_s = time.perf_counter() - t0
        if piece:
            yield piece
        while not member.cont.done:
            t0 = time.perf_counter()
            piece = step_members(batch, [member])[0]
            timings.step_s.append(time.perf_counter() - t0)
            if piece:
                yield piece


def complete(engine: Engine, member: Member, timings: StepTimings | None = None) -> Completion:
    """Runs one completion to its end."""
    for _ in completion_pieces(engine, member, timings):
        pass
    return member.cont.result()


def complete_batch(engine: Engine, members: Sequence[Member]) -> list[Completion]:
    """Completions of several prompts decoded together (prefilled together, then
    one step for all that go on), each equal to that prompt alone."""
    if len(members) == 0:
        raise ValueError("no prompts: give at least one")
    with engine.batch(len(members)) as batch:
        greedy = all(m.sampling.greedy and not m.wants_logits for m in members)
        out = batch.start([m.prompt_ids for m in members], greedy=greedy)
        for i, m in enumerate(members):
            if m.cont.done:
                continue  # max_new_tokens 0
            if greedy:
                m.take(out[i], None)
            else:
                m.take(m.choose(out[i]), out[i])
        while any(m.next_token is not None for m in members):
            step_members(batch, members)
    return [m.cont.result() for m in members]


def stream_text(
    engine: Engine,
    tokenizer,
    prompt: str,
    params: GenerationParams,
    timings: StepTimings | None = None,
) -> Iterator[str]:
    """Yields pieces of the continuation's text as tokens arrive, ending at
    end-of-text or before the first stop string."""
    ids = tokenizer.encode(prompt, max_tokens=engine.max_positions)  # stops early when too long
    member = Member(engine, tokenizer, ids, params, tokenizer.eos_id)
    return completion_pieces(engine, member, timings)
