"""A model's context: its cache slots and the one table of their positions.

The weights are the model's, read-only and shared; what changes as sequences
run lives here, as llama.cpp keeps it in a `llama_context`: which slots are
held (gpt2.slots.SlotPool, with the lock device work runs under) and, for
each slot, the next position its sequence will fill. That table is the only
place a sequence's position lives: a step plan's rows are checked against it
and move it on.
"""

from __future__ import annotations

import numpy as np

from gpt2.engine.step import LOGITS, StepPlan
from gpt2.params import MAX_LOGPROBS
from gpt2.sampling import SamplingParams
from gpt2.slots import DEFAULT_SLOTS, SlotPool


class Context:
    """n_slots cache slots and the next position of each."""

    def __init__(self, n_slots: int | None, owner: str = "model"):
        self.pool = SlotPool(DEFAULT_SLOTS if n_slots is None else n_slots, owner)
        self.positions = np.zeros(self.pool.n_slots, dtype=np.int64)

    @property
    def n_slots(self) -> int:
        return self.pool.n_slots

    @property
    def lock(self):
        return self.pool.lock

    def acquire(self, count: int, timeout: float | None = None, owner: object = None) -> int:
        """count adjacent free slots, each at position 0; the first one. With an
        owner (an object the caller keeps), the slots come back when it is
        collected without release (gpt2.slots)."""
        first = self.pool.acquire(count, timeout, owner=owner)
        self.positions[first : first + count] = 0
        return first

    def release(self, first: int, count: int, owner: object = None) -> None:
        """Gives the slots back (pass the owner acquire was given, or none)."""
        self.pool.release(first, count, owner=owner)

    def check_plan(self, plan: StepPlan, vocab_size: int, max_positions: int) -> np.ndarray:
        """Checks every row against the table and the model; the tokens of all
        rows, concatenated (int32). Raises ValueError naming the row."""
        rows = plan.rows if isinstance(plan, StepPlan) else None
        if rows is None:
            raise TypeError(f"step takes a StepPlan, got {type(plan).__name__}")
        n = len(rows)
        if n == 0:
            raise ValueError("the step plan has no rows")
        slots = [r.slot for r in rows]
        if any(type(s) is not int or not 0 <= s < self.n_slots for s in slots):
            bad = next(
                i for i, s in enumerate(slots) if type(s) is not int or not 0 <= s < self.n_slots
            )
            raise ValueError(
                f"row {bad}: slot must be an int in 0..{self.n_slots - 1}, got {slots[bad]!r}"
            )
        if len(set(slots)) != n:
            raise ValueError(f"a slot appears in more than one row: {slots}")
        all_tokens = _decode_tokens(rows)
        if all_tokens is not None:  # the common step: one token a row
            lengths = [1] * n
        else:
            tokens = [_token_array(i, r.tokens) for i, r in enumerate(rows)]
            lengths = [len(t) for t in tokens]
            all_tokens = np.concatenate(tokens) if n > 1 else tokens[0]
        lo, hi = int(all_tokens.min()), int(all_tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
        positions = self.positions.tolist()
        for i, r in enumerate(rows):
            p, table = r.position, positions[r.slot]
            if type(p) is not int or not 0 <= p <= table:
                raise ValueError(
                    f"row {i}: position must be an int in 0..{table} (slot {r.slot}'s next "
                    f"position), got {p!r}"
                )
            if p + lengths[i] > max_positions:
                raise ValueError(
                    f"row {i}: {lengths[i]} tokens from position {p} pass the context "
                    f"({max_positions} positions)"
                )
            if r.sampling is not None and type(r.sampling) is not SamplingParams:
                raise ValueError(f"row {i}: sampling must be SamplingParams or None")
            if not 0.0 <= r.uniform < 1.0:
                raise ValueError(f"row {i}: uniform must be in [0, 1), got {r.uniform!r}")
            if r.logprobs is not None and (
                type(r.logprobs) is not int or not 0 <= r.logprobs <= MAX_LOGPROBS
            ):
                raise ValueError(
                    f"row {i}: logprobs must be None or an int in 0..{MAX_LOGPROBS}, "
                    f"got {r.logprobs!r}"
                )
            if r.logprobs is not None and r.sampling is None:
                raise ValueError(f"row {i}: log-probabilities are of a chosen token: give sampling")
            if r.logits not in LOGITS:
                raise ValueError(f"row {i}: logits must be one of {LOGITS}, got {r.logits!r}")
        return all_tokens.astype(np.int32, copy=False)

    def advance(self, plan: StepPlan) -> None:
        """Moves each row's slot past its tokens (after the step ran)."""
        for r in plan.rows:
            self.positions[r.slot] = r.position + len(r.tokens)


def _decode_tokens(rows) -> np.ndarray | None:
    """The tokens of a step whose every row is one int in a tuple or list (what the
    generation loop builds), as one array; None for any other step."""
    ones = [r.tokens[0] for r in rows if type(r.tokens) in (tuple, list) and len(r.tokens) == 1]
    if len(ones) != len(rows) or any(type(t) is not int for t in ones):
        return None
    return np.array(ones, dtype=np.int64)


def _token_array(i: int, tokens) -> np.ndarray:
    """Row i's tokens as a 1-D integer array (a decode row's one int without numpy's
    type inference: the step's most common case)."""
    if type(tokens) in (list, tuple) and len(tokens) == 1 and type(tokens[0]) is int:
        return np.array(tokens, dtype=np.int64)
    t = np.asarray(tokens)
    if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "iu":
        raise ValueError(f"row {i}: tokens must be a non-empty list of ints")
    return t
