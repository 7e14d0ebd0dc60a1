"""A completion's token history for its penalties (gpt2.params), kept incrementally.

`TokenHistory` holds the distinct tokens of a prompt and of what has been
generated, each with how often it was generated (0: prompt only), in two int32
arrays that grow by doubling. Feeding a token costs one dict look-up; a step's
`RowPenalty` is two views of those arrays, so what a step does beyond the C call
(tnn_penalize_rows, O(distinct tokens)) is O(1) Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gpt2.engine.step import RowPenalty


class TokenHistory:
    """The distinct tokens seen by one completion and their generated counts."""

    def __init__(self, params: tuple[float, float, float], prompt_ids: Iterable[int] = ()):
        self.params = params  # repetition, frequency, presence
        self._at: dict[int, int] = {}  # token -> its index in ids / counts
        self._ids = np.empty(64, dtype=np.int32)
        self._counts = np.empty(64, dtype=np.int32)
        for t in prompt_ids:
            self._index(int(t))

    def __len__(self) -> int:
        return len(self._at)

    def _index(self, token: int) -> int:
        k = self._at.get(token)
        if k is not None:
            return k
        k = len(self._at)
        if k == len(self._ids):
            self._ids = np.concatenate([self._ids, np.empty_like(self._ids)])
            self._counts = np.concatenate([self._counts, np.empty_like(self._counts)])
        self._ids[k] = token
        self._counts[k] = 0
        self._at[token] = k
        return k

    def add(self, token: int) -> None:
        """Counts one generated token."""
        k = self._index(int(token))  # first: it may grow the arrays
        self._counts[k] += 1

    def count(self, token: int) -> int:
        """How often token was generated (0 when it was not, or only in the prompt)."""
        k = self._at.get(int(token))
        return 0 if k is None else int(self._counts[k])

    def penalty(self) -> RowPenalty:
        """The next choice's penalty (views of the history, valid until the next add)."""
        n = len(self._at)
        return RowPenalty(self.params, self._ids[:n], self._counts[:n])
