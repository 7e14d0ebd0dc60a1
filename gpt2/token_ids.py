"""The one check of token ids that every engine and the reference use."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_token_ids(ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """Token ids as int32, each in [0, vocab_size); a non-empty 1-D sequence of integers."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"token id {int(arr[i])} at position {i} is outside the vocabulary [0, {vocab_size})"
        )
    return arr.astype(np.int32)
