"""Sequences and batches: slots of an engine's context, stepped through plans.

A `SequenceBatch` holds n adjacent slots of the engine's context (gpt2.engine
.context) for as long as it lives; each of its calls is one step plan
(gpt2.engine.step) with a row for every member it moves. Positions are read
from the context's table, never kept here. Members may start together
(`start`) or one at a time while the others keep their positions
(`start_member`); a member given None in a step is idle (finished or not
yet started) and has no row in the plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.engine.step import GREEDY, StepPlan, StepRow
from gpt2.sampling import SamplingParams


class SequenceBatch:
    """n sequences in n adjacent slots, each at its own position."""

    def __init__(self, engine, n: int, timeout: float | None = None):
        self.engine = engine
        self.first = engine.context.acquire(n, timeout, owner=self)
        self.n = n
        self._started = False
        self._open = True

    @property
    def positions(self) -> list[int]:
        """The next position of each member (the context's table)."""
        table = self.engine.context.positions
        return [int(p) for p in table[self.first : self.first + self.n]]

    def _check(self) -> None:
        if not self._open:
            raise ValueError("the sequence is closed")

    def _prompt_row(self, i: int, prompt: Sequence[int], greedy: bool) -> StepRow:
        ids = self.engine.check_prompt(prompt)
        if len(ids) == 0:
            raise ValueError("the prompt is empty: give at least one token")
        if greedy:
            return StepRow(self.first + i, ids, 0)
        return StepRow(self.first + i, ids, 0, sampling=None, logits="last")

    def start(self, prompts: Sequence[Sequence[int]], greedy: bool = False) -> np.ndarray:
        """Prefills sequence i with prompts[i] from position 0: the greedy ids [n]
        or the last tokens' logits [n, vocab]. Starting again restarts."""
        self._check()
        if len(prompts) != self.n:
            raise ValueError(f"this batch holds {self.n} sequences, got {len(prompts)} prompts")
        plan = StepPlan([self._prompt_row(i, p, greedy) for i, p in enumerate(prompts)])
        out = self.engine.step(plan)
        self._started = True
        return out.tokens.copy() if greedy else np.stack(out.logits)

    def start_member(self, i: int, prompt: Sequence[int], greedy: bool = False):
        """Prefills member i alone with prompt from position 0 (its slot only; the
        other members keep their positions): the greedy id (an int) or the last
        token's logits [vocab]. Between steps, this is how a new sequence joins a
        running batch."""
        self._check()
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n:
            raise ValueError(f"member must be an int in 0..{self.n - 1}, got {i!r}")
        out = self.engine.step(StepPlan([self._prompt_row(i, prompt, greedy)]))
        self._started = True
        return int(out.tokens[0]) if greedy else out.logits[0]

    def _decode_plan(self, token_ids: Sequence[int | None], make_row) -> tuple[StepPlan, list[int]]:
        """A row for each active member (make_row(i, slot, token, position))."""
        self._check()
        if not self._started:
            raise ValueError("no sequence started: call start() first")
        if len(token_ids) != self.n:
            raise ValueError(f"expected {self.n} token ids, got {len(token_ids)}")
        active = [i for i, t in enumerate(token_ids) if t is not None]
        if not active:
            raise ValueError("every sequence of the batch is finished")
        table = self.engine.context.positions
        limit = self.engine.max_positions
        rows = []
        for i in active:
            p = int(table[self.first + i])
            if p >= limit:
                raise ValueError(f"position {p} is past the context ({limit}) of sequence {i}")
            t = token_ids[i]
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"token ids must be ints, got {t!r}")
            rows.append(make_row(i, self.first + i, [int(t)], p))
        return StepPlan(rows), active

    def step(self, token_ids: Sequence[int | None], greedy: bool = False) -> np.ndarray:
        """One token for each sequence at its position (None: a finished one, left
        where it is); the greedy ids [n] or logits [n, vocab] (rows of finished
        sequences are zero)."""
        if greedy:
            plan, active = self._decode_plan(token_ids, lambda i, s, t, p: StepRow(s, t, p))
        else:
            plan, active = self._decode_plan(
                token_ids, lambda i, s, t, p: StepRow(s, t, p, sampling=None, logits="last")
            )
        res = self.engine.step(plan)
        if greedy:
            ids = np.zeros(self.n, dtype=np.int32)
            ids[active] = res.tokens
            return ids
        logits = np.zeros((self.n, self.engine.vocab_size), dtype=np.float32)
        logits[active] = np.stack(res.logits)
        return logits

    def step_sample(
        self,
        token_ids: Sequence[int | None],
        params: SamplingParams | Sequence[SamplingParams | None],
        uniforms: Sequence[float],
    ) -> list[int | None]:
        """One token for each sequence, each next one chosen by the sampling rule
        (gpt2.sampling) with its params (one for all, or one a member; None for
        an idle one) and its uniform draw; on the device where the engine can."""
        if len(uniforms) != self.n:
            raise ValueError(f"expected {self.n} uniform draws, got {len(uniforms)}")
        if isinstance(params, SamplingParams):
            per_member = [params] * self.n
        else:
            per_member = list(params)
            if len(per_member) != self.n:
                raise ValueError(f"expected {self.n} sampling params, got {len(per_member)}")
            for t, p in zip(token_ids, per_member, strict=False):
                if t is not None and not isinstance(p, SamplingParams):
                    raise ValueError(f"an active member needs SamplingParams, got {p!r}")
        plan, active = self._decode_plan(
            token_ids,
            lambda i, s, t, p: StepRow(
                s, t, p, sampling=per_member[i] or GREEDY, uniform=float(uniforms[i])
            ),
        )
        res = self.engine.step(plan)
        out: list[int | None] = [None] * self.n
        for k, i in enumerate(active):
            out[i] = int(res.tokens[k])
        return out

    def start_greedy(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        return [int(t) for t in self.start(prompts, greedy=True)]

    def step_greedy(self, token_ids: Sequence[int | None]) -> list[int | None]:
        out = self.step(token_ids, greedy=True)
        return [None if t is None else int(o) for t, o in zip(token_ids, out, strict=True)]

    def close(self) -> None:
        if self._open:
            self._open = False
            self.engine.context.release(self.first, self.n, owner=self)

    def __enter__(self) -> SequenceBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # a stream abandoned without close() gives its slot back when collected
        if getattr(self, "_open", False):
            self.close()


class SingleSequence:
    """One sequence: the scalar face of a batch of one."""

    def __init__(self, batch: SequenceBatch):
        self._batch = batch

    @property
    def slot(self) -> int:
        return self._batch.first

    @property
    def position(self) -> int:
        return self._batch.positions[0]

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        return self._batch.start([prompt_ids])[0]

    def start_greedy(self, prompt_ids: Sequence[int]) -> int:
        return int(self._batch.start([prompt_ids], greedy=True)[0])

    def step(self, token_id: int) -> np.ndarray:
        return self._batch.step([token_id])[0]

    def step_greedy(self, token_id: int) -> int:
        return int(self._batch.step([token_id], greedy=True)[0])

    def step_sample(self, token_id: int, params: SamplingParams, uniform: float) -> int:
        return int(self._batch.step_sample([token_id], params, [uniform])[0])

    def close(self) -> None:
        self._batch.close()

    def __enter__(self) -> SingleSequence:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
