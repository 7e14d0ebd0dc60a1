"""One generation loop over any engine's step plans (gpt2.engine.step).

A completion is a `Member`: its prompt, parameters, seeded draws and the
`Continuation` that decides its text and end. Each step, every member still
going gives one row to one plan (`member.row`): its prompt (or the next
chunk of it) when it starts, else its last token at its position, with its sampling
parameters, its uniform draw and the log-probabilities it wants; one
`engine.step` runs them all and each member takes its chosen token back. A
caller may cut prompts into chunks (`step_members`' budgets, the server's
scheduler): only the chunk that ends a prompt chooses a token.
Token choice happens in native code for the whole step (the device, or the
shim's C sampler), by the rule of gpt2.sampling. A single completion, a
batch, id prompts (`generate_ids`) and the server's scheduler all run this
loop, so a completion is the same whichever way it runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpt2.completion import Completion, Continuation, TokenLogprob
from gpt2.engine.base import Engine
from gpt2.engine.choice import position_logprobs
from gpt2.engine.step import RowBias, StepPlan, StepResult, StepRow
from gpt2.params import GenerationParams
from gpt2.penalties import TokenHistory
from gpt2.sampling import draw_uniforms

# uniforms a member draws at once (fewer when its completion needs fewer)
_UNIFORM_BLOCK = 64


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
    if isinstance(max_new_tokens, int) and max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    params = GenerationParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    member = Member(engine, None, prompt_ids, params, eos_id)
    return _new_ids(engine, member, timings)


def _new_ids(engine: Engine, member: Member, timings: StepTimings | None) -> Iterator[int]:
    sent = 0
    for _ in completion_pieces(engine, member, timings, every_token=True):
        ids = member.cont.token_ids
        while sent < len(ids):
            yield ids[sent]
            sent += 1
    if member.cont.finish_reason == "eos":
        yield member.cont.eos_id


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
    if isinstance(max_new_tokens, int) and max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    params = GenerationParams(max_new_tokens=max_new_tokens)
    members = [Member(engine, None, p, params, eos_id) for p in prompts]
    done = complete_batch(engine, members)
    return [c.token_ids + ([eos_id] if c.finish_reason == "eos" else []) for c in done]


def check_prompt_length(engine: Engine, prompt_ids: Sequence[int]) -> None:
    """The checks a prompt passes before it takes a slot."""
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt_ids) > engine.max_positions:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens, the context holds {engine.max_positions}"
        )


class Member:
    """One completion's sequence: its parameters, its draws (a generator seeded
    by params.seed), its continuation and the token it feeds at the next step
    (None once it has finished, or before it starts).

    echo (None, or n >= 0): its prompt chunks also ask the step for every
    position's logits, and `prompt_logprobs` gets each prompt token's
    log-probability with n alternatives (None for the first token, which
    has none), as its chunks run; then a member with max_new_tokens 0 is
    prefilled too (its last chunk chooses nothing)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        eos_id: int | None = None,
        echo: int | None = None,
    ):
        check_prompt_length(engine, prompt_ids)
        self.prompt_ids = engine.check_prompt(prompt_ids)
        self.params = params
        self.echo = echo
        self.prompt_logprobs: list[TokenLogprob | None] | None = None if echo is None else [None]
        self.bias = None  # RowBias of params.logit_bias
        if params.logit_bias:
            ids = np.array([t for t, _ in params.logit_bias], dtype=np.int32)
            if int(ids[-1]) >= engine.vocab_size:  # sorted
                raise ValueError(
                    f"logit_bias: token {int(ids[-1])} is past the vocabulary "
                    f"({engine.vocab_size} tokens)"
                )
            values = np.array([b for _, b in params.logit_bias], dtype=np.float32)
            self.bias = RowBias(ids, values)
        self.sampling = params.sampling
        self._greedy = params.sampling.greedy
        self._logprobs = params.logprobs
        self.rng = np.random.default_rng(params.seed)
        self._uniforms: list[float] = []  # the next draws, last one first (draw())
        self._drawn = 0  # uniforms taken from rng so far
        self.cont = Continuation(tokenizer, len(prompt_ids), params, engine.max_positions, eos_id)
        self._decode = tokenizer.decode if tokenizer is not None else None
        self.next_token: int | None = None
        self.started = False  # its prompt is in the cache and its first token chosen
        self.prefilled = 0  # prompt tokens in its cache
        self._chunk = 0  # prompt tokens of the row it gave last
        self._decode_row: StepRow | None = None  # decode_row's, given again each step
        # its tokens and generated counts, for penalties only (None: no penalty, no cost)
        self.history = TokenHistory(params.penalties, self.prompt_ids) if params.penalized else None

    def draw(self) -> float:
        """The uniform of this token: one draw when sampling, none when greedy.
        Draws come from rng in blocks (gpt2.sampling.draw_uniforms), the same
        floats in the same order as one draw_uniform(rng) a token."""
        if self._greedy:
            return 0.0
        if not self._uniforms:
            n = max(1, min(_UNIFORM_BLOCK, self.params.max_new_tokens - self._drawn))
            self._uniforms = draw_uniforms(self.rng, n)[::-1]
            self._drawn += n
        return self._uniforms.pop()

    @property
    def going(self) -> bool:
        """Whether it gives a row at the next step: a prompt (or the rest of one)
        to prefill, or a token to feed back."""
        if self.started:
            return self.next_token is not None
        return not self.cont.done or self.echo is not None

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in its cache."""
        return 0 if self.started else len(self.prompt_ids) - self.prefilled

    def row(self, slot: int, position: int, budget: int | None = None) -> StepRow:
        """This member's row of the next step: its last token at position once it
        has started, else the next chunk of its prompt (at most budget tokens,
        all of it without one) from what its cache holds. Only the chunk that
        ends the prompt chooses a token (and draws its uniform), so a completion
        is the same however its prompt is cut."""
        if self.started:
            return self.decode_row(slot, position)
        if budget is not None and budget < 1:
            raise ValueError(f"a prompt chunk needs a budget of at least 1 token, got {budget}")
        start = self.prefilled
        end = len(self.prompt_ids) if budget is None else min(start + budget, len(self.prompt_ids))
        self._chunk = end - start
        tokens = self.prompt_ids[start:end]
        every = None if self.echo is None else "all"
        if end < len(self.prompt_ids) or self.cont.done:  # done: an echo's prefill only
            return StepRow(slot, tokens, start, sampling=None, logits=every)
        return self._choosing_row(slot, tokens, start, every)

    def decode_row(self, slot: int, position: int) -> StepRow:
        """The row of a started member: its last token at position (row()'s
        common case, without its checks)."""
        if self._greedy:
            u = 0.0
        else:
            u = self._uniforms.pop() if self._uniforms else self.draw()
        row = self._decode_row
        if row is None or row.slot != slot:
            row = self._decode_row = StepRow(
                slot, (self.next_token,), position, self.sampling, u, self._logprobs, None
            )
            row.bias = self.bias
        else:  # the row of its last step, which no one holds past that step: moved on
            row.tokens, row.position, row.uniform = (self.next_token,), position, u
        if self.history is not None:
            row.penalty = self.history.penalty()
        return row

    def _choosing_row(self, slot: int, tokens, position: int, logits=None) -> StepRow:
        penalty = None if self.history is None else self.history.penalty()
        return StepRow(
            slot,
            tokens,
            position,
            self.sampling,
            self.draw(),
            self.params.logprobs,
            logits,
            penalty,
            self.bias,
        )

    def take(self, result: StepResult, k: int) -> str | None:
        """Feeds row k's chosen token to the continuation; the text it shows.
        After a chunk that does not end the prompt: None (nothing chosen)."""
        if not self.started:
            if self.echo is not None:
                self._prompt_logprobs(result.logits[k])
            self.prefilled += self._chunk
            if self.prefilled < len(self.prompt_ids):
                return None
            if self.cont.done:  # an echo's prefill: nothing was chosen
                self.started = True
                return None
        self.started = True
        return self.take_token(int(result.tokens[k]), result, k)

    def take_token(self, token: int, result: StepResult, k: int) -> str:
        """take() of a started member whose row k chose `token`."""
        if self.history is not None:
            self.history.add(token)
        cont = self.cont
        if self._logprobs is None:
            piece = cont.feed(token)
        else:
            piece = cont.feed(token, logprob=self._logprob(token, result, k))
        self.next_token = token if cont.finish_reason is None else None
        return piece

    def _prompt_logprobs(self, logits: np.ndarray) -> None:
        """The log-probabilities of the prompt tokens that the chunk just run
        predicts (its positions' logits [chunk, vocab]; the last position of the
        last chunk predicts the first new token, not a prompt token)."""
        start = self.prefilled
        nxt = self.prompt_ids[start + 1 : start + self._chunk + 1]
        if len(nxt) == 0:
            return
        lps, top_ids, top_lps = position_logprobs(logits[: len(nxt)], nxt, self.echo)
        text = self._decode or (lambda ids: "")
        for t, lp, ids, tlps in zip(nxt.tolist(), lps.tolist(), top_ids, top_lps, strict=True):
            top = tuple((i, text([i]), v) for i, v in zip(ids.tolist(), tlps.tolist(), strict=True))
            self.prompt_logprobs.append(TokenLogprob(t, text([t]), lp, top))

    def _logprob(self, token: int, result: StepResult, k: int) -> TokenLogprob:
        text = self._decode or (lambda ids: "")
        top_ids, top_lps = result.top_ids[k], result.top_logprobs[k]
        top = tuple(
            (int(i), text([int(i)]), float(lp)) for i, lp in zip(top_ids, top_lps, strict=True)
        )
        return TokenLogprob(token, text([token]), float(result.logprobs[k]), top)


def step_members(
    batch, members: Sequence[Member | None], budgets: Sequence[int | None] | None = None
) -> list[str | None]:
    """One step of every member of the batch that is still going or has yet to
    start (member i in slot batch.first + i; None, or a finished one: idle);
    the text each shows (None for the idle ones, for a prompt chunk that
    does not end its prompt, and for an echo's prefill that chooses nothing).
    budgets[i], where given, caps member i's prompt chunk (0: it sits this step
    out); without budgets prompts go in whole."""
    table = batch.engine.context.positions.tolist()
    first = batch.first
    rows, live = [], []
    for i, m in enumerate(members):
        if m is None:
            continue
        if m.started:  # the common row: a decode step's
            if m.next_token is not None:
                slot = first + i
                rows.append(m.decode_row(slot, table[slot]))
                live.append(i)
            continue
        if not m.going:
            continue
        budget = None if budgets is None else budgets[i]
        if budget == 0:
            continue
        rows.append(m.row(first + i, table[first + i], budget))
        live.append(i)
    pieces: list[str | None] = [None] * len(members)
    if not rows:
        return pieces
    result = batch.engine.step(StepPlan(rows))
    tokens = result.tokens.tolist()
    for k, i in enumerate(live):
        m = members[i]
        pieces[i] = m.take_token(tokens[k], result, k) if m.started else m.take(result, k)
    return pieces


def prefill_member(batch, i: int, member: Member) -> str:
    """Starts member i of a running batch alone (the others keep their
    positions) and takes its first token; the text it shows."""
    members: list[Member | None] = [None] * batch.n
    members[i] = member
    return step_members(batch, members)[i] or ""


def completion_pieces(
    engine: Engine,
    member: Member,
    timings: StepTimings | None = None,
    every_token: bool = False,
) -> Iterator[str]:
    """Runs one completion in a sequence of its own, yielding its text as it is
    decided (every_token: a piece, maybe empty, for every token); member.cont
    holds the rest (ids, finish reason, log-probabilities). The slot is taken
    at the first piece and given back when the generator ends or is closed."""
    if member.cont.done:
        return
    timings = timings if timings is not None else StepTimings()
    with engine.batch(1) as batch:
        while not member.cont.done:
            t0 = time.perf_counter()
            piece = step_members(batch, [member])[0]
            if timings.prefill_s is None:
                timings.prefill_s = time.perf_counter() - t0
            else:
                timings.step_s.append(time.perf_counter() - t0)
            if piece or every_token:
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
        while any(m.cont.finish_reason is None for m in members):
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
