"""The engine interface, declared once: a model on one device that runs step plans.

Generation, the API, the CLI, the server, bench and parity all speak it:

    with engine.sequence() as seq:            # a free slot of the engine's context
        token = seq.start_greedy(prompt_ids)   # a one-row plan: prefill from position 0
        token = seq.step_greedy(token)         # one token at seq.position
    result = engine.step(plan)                 # any rows, prefill and decode mixed
    logits = engine.logits(ids)                # [T, vocab], a slot of its own

An engine implements `_run(rows, tokens) -> StepResult` (the device work of
one checked plan) and `_free_device()`; everything else is here: the plan's
checks against the context (gpt2.engine.context), the lock device work runs
under, moving positions on, sequences and batches (gpt2.sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.config import GPT2Config
from gpt2.engine.context import Context
from gpt2.engine.step import StepPlan, StepResult, StepRow
from gpt2.token_ids import check_token_ids


class Engine:
    """A model on one device and its context (see the module docstring)."""

    config: GPT2Config
    device: str
    vocab_size: int
    context: Context

    # -- what each engine implements ------------------------------------------------
    @property
    def max_positions(self) -> int:
        """The positions a sequence may use (n_ctx)."""
        raise NotImplementedError

    def _run(self, rows: list[StepRow], tokens: np.ndarray) -> StepResult:
        """Runs a checked plan's rows (tokens: all rows' tokens, concatenated) under
        the context's lock; positions are moved on by the caller."""
        raise NotImplementedError

    def _free_device(self) -> None:
        """Frees the native sessions (called once, under the lock)."""
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------
    def _init_context(self, n_slots: int | None, what: str = "model") -> None:
        self.context = Context(n_slots, what)

    @property
    def pool(self):
        """The context's slot pool (gpt2.slots)."""
        return self.context.pool

    @property
    def n_slots(self) -> int:
        return self.context.n_slots

    @property
    def closed(self) -> bool:
        return self.context.pool.closed

    def step(self, plan: StepPlan) -> StepResult:
        """Runs one step: every row of the plan (gpt2.engine.step), one result row each."""
        context = self.context
        tokens, slots, ends = context.check_plan(plan, self.vocab_size, self.max_positions)
        with context.lock:
            context.pool.check_open()
            result = self._run(plan.rows, tokens)
            context.move(slots, ends)
        return result

    def check_prompt(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = check_token_ids(token_ids, self.vocab_size)
        if len(ids) > self.max_positions:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, the context holds {self.max_positions}"
            )
        return ids

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] (float32) of every position, in a slot of their own."""
        ids = self.check_prompt(token_ids)
        if len(ids) == 0:
            raise ValueError("the prompt is empty: give at least one token")
        slot = self.context.acquire(1)
        try:
            plan = StepPlan([StepRow(slot, ids, 0, sampling=None, logits="all")])
            return self.step(plan).logits[0]
        finally:
            self.context.release(slot, 1)

    def sequence(self, timeout: float | None = None):
        from gpt2.sequence import SequenceBatch, SingleSequence

        return SingleSequence(SequenceBatch(self, 1, timeout))

    def batch(self, n: int, timeout: float | None = None):
        from gpt2.sequence import SequenceBatch

        return SequenceBatch(self, n, timeout)

    def close(self) -> None:
        """Waits for a step in flight, then frees the device; later calls raise."""
        self.context.pool.close()
        with self.context.lock:
            if not getattr(self, "_device_freed", False):
                self._device_freed = True
                self._free_device()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
