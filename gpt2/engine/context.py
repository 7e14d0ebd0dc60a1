"""A model's context: its cache slots and the one table of their positions.

The weights are the model's, read-only and shared; what changes as sequences
run lives here, as llama.cpp keeps it in a `llama_context`: which slots are
held (gpt2.slots.SlotPool, with the lock device work runs under) and, for
each slot, the next position its sequence will fill. That table is the only
place a sequence's position lives: a step plan's rows are checked against it
and move it on.
"""

from __future__ import annotations

import operator

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

    def check_plan(
        self, plan: StepPlan, vocab_size: int, max_positions: int
    ) -> tuple[np.ndarray, list[int], list[int]]:
        """Checks every row against the table and the model; the tokens of all rows,
        concatenated (int32), each row's slot and the position it moves it to (what
        `move` takes once the step has run). Raises ValueError naming the row.

        The checks run over the rows' columns at once (a few C-level passes, not a
        Python loop a row); a plan that fails any of them, or has rows of an
        unusual shape, goes through `_check_rows`, the same checks a row at a time,
        which names the first bad row."""
        rows = plan.rows if isinstance(plan, StepPlan) else None
        if rows is None:
            raise TypeError(f"step takes a StepPlan, got {type(plan).__name__}")
        n = len(rows)
        if n == 0:
            raise ValueError("the step plan has no rows")
        columns = zip(*map(_COLUMNS, rows), strict=True)  # a tuple a field, a row an entry
        slots, tokens, starts, samplings, uniforms, logprobs, logits = columns
        if not _slots_pass(slots, self.n_slots):
            self._check_slots(slots)
        all_tokens = _decode_tokens(tokens)
        if all_tokens is not None:  # the common step: one token a row
            lengths = None
        else:
            arrays = [_token_array(i, t) for i, t in enumerate(tokens)]
            lengths = [len(t) for t in arrays]
            all_tokens = np.concatenate(arrays) if n > 1 else arrays[0]
        lo, hi = int(all_tokens.min()), int(all_tokens.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
        ends = _columns_pass(
            self.positions.tolist(),
            max_positions,
            slots,
            starts,
            lengths,
            samplings,
            uniforms,
            logprobs,
            logits,
        )
        if ends is None:
            self._check_rows(rows, lengths or [1] * n, max_positions)
            ends = [p + k for p, k in zip(starts, lengths or [1] * n, strict=True)]
        return all_tokens.astype(np.int32, copy=False), list(slots), ends

    def _check_slots(self, slots) -> None:
        """Raises for the first row whose slot is not one of the context's, or for
        a slot given twice."""
        if any(type(s) is not int or not 0 <= s < self.n_slots for s in slots):
            bad = next(
                i for i, s in enumerate(slots) if type(s) is not int or not 0 <= s < self.n_slots
            )
            raise ValueError(
                f"row {bad}: slot must be an int in 0..{self.n_slots - 1}, got {slots[bad]!r}"
            )
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot appears in more than one row: {list(slots)}")

    def _check_rows(self, rows, lengths: list[int], max_positions: int) -> None:
        """The checks of `check_plan` after the slots' and tokens', a row at a time:
        raises for the first bad row."""
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

    def move(self, slots: list[int], ends: list[int]) -> None:
        """Moves slots[i] to position ends[i] (check_plan's slots and ends), at once."""
        self.positions.put(slots, ends)


_COLUMNS = operator.attrgetter(
    "slot", "tokens", "position", "sampling", "uniform", "logprobs", "logits"
)
_ROW_SAMPLING = {SamplingParams, type(None)}
_ROW_LOGPROBS = {int, type(None)}
_LOGITS = set(LOGITS)


def _slots_pass(slots, n_slots: int) -> bool:
    """Whether every slot is an int in 0..n_slots - 1, each at most once."""
    try:
        if set(map(type, slots)) != {int} or min(slots) < 0 or max(slots) >= n_slots:
            return False
    except (TypeError, ValueError):
        return False
    return len(set(slots)) == len(slots)


def _columns_pass(
    table, max_positions, slots, starts, lengths, samplings, uniforms, logprobs, logits
) -> list[int] | None:
    """The positions the rows move their slots to, where every row passes the checks
    of Context._check_rows, each done over a column at once; None where any fails
    (or a column holds something these passes do not judge: _check_rows will)."""
    try:
        if set(map(type, starts)) != {int} or min(starts) < 0:
            return None
        if not all(map(operator.le, starts, map(table.__getitem__, slots))):
            return None
        if lengths is None:
            ends = [p + 1 for p in starts]
        else:
            ends = list(map(operator.add, starts, lengths))
        if max(ends) > max_positions:
            return None
        if not set(map(type, samplings)) <= _ROW_SAMPLING:
            return None
        lo, hi, total = min(uniforms), max(uniforms), sum(uniforms)
        if not (0.0 <= lo and hi < 1.0 and total == total):  # total: NaN if any is
            return None
        if set(logprobs) != {None}:  # rows that ask for log-probabilities
            if not set(map(type, logprobs)) <= _ROW_LOGPROBS:
                return None
            asked = set(logprobs) - {None}
            if min(asked) < 0 or max(asked) > MAX_LOGPROBS:
                return None
            if any(k is not None and s is None for k, s in zip(logprobs, samplings, strict=True)):
                return None
        if not set(logits) <= _LOGITS:
            return None
    except (TypeError, ValueError):  # a column of unorderable or unhashable values
        return None
    return ends


def _decode_tokens(tokens) -> np.ndarray | None:
    """The tokens of a step whose every row's tokens are one int in a tuple or list
    (what the generation loop builds), as one array; None for any other step."""
    if not set(map(type, tokens)) <= {tuple, list}:
        return None
    try:
        ones = [t for (t,) in tokens]
    except ValueError:  # a row of another length
        return None
    if set(map(type, ones)) != {int}:
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
