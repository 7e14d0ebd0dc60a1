"""Token choice and log-probabilities for a batch of logits rows, in C.

``sample_rows`` is one call of ``tnn_sample_rows`` (native/sampler.c): for each row
of logits [n, vocab] the token THE SAMPLING RULE picks (native/cuda/sampling.h, the
same id as ``gpt2.sampling.choose`` for the same uniform), and on request the
log_softmax of the raw logits (temperature 1) at that token and the row's n_top most
likely ids (ties: the lower id first) with theirs, as ``gpt2.completion.token_logprob``
gives them. ``penalize_rows`` is one call of ``tnn_penalize_rows``: the repetition,
frequency and presence penalties of each row's history, applied to its logits in place
before the choice.

    tinynn.penalize_rows(logits, ids, counts, row_starts, penalties)  # in place, first
    params = np.zeros(n, tinynn.SAMPLING_DTYPE)      # temperature 0: greedy
    params["temperature"], params["top_k"], params["top_p"] = 0.8, 40, 0.95
    params["uniform"] = [gpt2.sampling.draw_uniform(rng) for _ in range(n)]
    ids, logprobs, top_ids, top_logprobs = tinynn.sample_rows(logits, params, n_top=5,
                                                              want_logprobs=True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._lib import load
from .decoder import SAMPLING_DTYPE
from .session import INT64, c_integer

MAX_TOP = 100  # TNN_SAMPLE_MAX_TOP in native/tinynn.h: the most n_top a call ranks

__all__ = ["MAX_TOP", "SAMPLING_DTYPE", "SampledRows", "penalize_rows", "sample_rows"]


class SampledRows(NamedTuple):
    """What ``sample_rows`` returns, one entry a row."""

    ids: np.ndarray  # int32 [n]: the chosen ids
    logprobs: np.ndarray | None  # float32 [n]: log_softmax at the chosen id, when asked
    top_ids: np.ndarray  # int32 [n, n_top]: the most likely ids, most likely first
    top_logprobs: np.ndarray  # float32 [n, n_top]: their log-probabilities


def sample_rows(
    logits: np.ndarray,
    params: np.ndarray | None = None,
    n_top: int = 0,
    want_logprobs: bool = False,
) -> SampledRows:
    """Choose a token for each row of ``logits`` (float32 [n, vocab]).

    params: n records of ``SAMPLING_DTYPE`` (temperature, top_k, top_p, uniform; see
    tnn_sample_rows in native/tinynn.h for their ranges), or None: greedy for every row.
    n_top: 0..min(vocab, MAX_TOP) most likely ids to report a row. ValueError for a
    wrong shape or type here; TinyNNError, naming the row, for a NaN or +inf logit, a
    row of -inf only, or a parameter out of range.
    """
    arr = np.asarray(logits)
    if arr.dtype != np.float32:
        raise ValueError(f"logits must be float32, got {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"logits must be 2-D [n, vocab] with vocab >= 1, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    n, vocab = arr.shape
    if params is not None:
        # records with SAMPLING_DTYPE's fields (numpy would turn plain numbers into
        # records with every field set to the number)
        names = getattr(getattr(params, "dtype", None), "names", None)
        if names != SAMPLING_DTYPE.names:
            raise ValueError(
                f"params must be records of SAMPLING_DTYPE {SAMPLING_DTYPE.names}, "
                f"got {getattr(params, 'dtype', type(params).__name__)}"
            )
        params = np.ascontiguousarray(params, dtype=SAMPLING_DTYPE)
        if params.shape != (n,):
            raise ValueError(f"expected {n} params records (one a row), got shape {params.shape}")
    n_top = c_integer(n_top, "n_top", INT64)
    if not 0 <= n_top <= min(vocab, MAX_TOP):
        raise ValueError(f"n_top must be in 0..{min(vocab, MAX_TOP)} (vocab {vocab}), got {n_top}")
    ids = np.empty(n, np.int32)
    logprobs = np.empty(n, np.float32) if want_logprobs else None
    top_ids = np.empty((n, n_top), np.int32)
    top_logprobs = np.empty((n, n_top), np.float32)
    has_top = n_top > 0
    load().tnn_sample_rows(
        arr.ctypes.data,
        arr.nbytes,
        n,
        vocab,
        None if params is None else params.ctypes.data,
        0 if params is None else params.nbytes,
        ids.ctypes.data,
        ids.nbytes,
        None if logprobs is None else logprobs.ctypes.data,
        0 if logprobs is None else logprobs.nbytes,
        n_top,
        top_ids.ctypes.data if has_top else None,
        top_ids.nbytes,
        top_logprobs.ctypes.data if has_top else None,
        top_logprobs.nbytes,
    )
    return SampledRows(ids, logprobs, top_ids, top_logprobs)


def penalize_rows(
    logits: np.ndarray,
    ids: np.ndarray,
    counts: np.ndarray,
    row_starts: np.ndarray,
    penalties: np.ndarray,
) -> None:
    """Applies each row's penalties to ``logits`` (float32 [n, vocab], C-contiguous), in place.

    Row r's history is ``ids[row_starts[r]:row_starts[r + 1]]`` (int32, distinct, the
    tokens of its prompt and what it generated) with ``counts`` (int32 >= 0, how often
    each was generated); row_starts: int64 [n + 1]. penalties: float32 [n, 3], each row
    (repetition > 0, 1: off; frequency; presence), the rule of gpt2.params. ValueError for
    a wrong shape or type here; TinyNNError, naming the row, for an id out of range, a
    repeated id, a negative count or a penalty out of range (the logits are then unchanged).
    """
    arr = logits
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 2:
        raise ValueError(
            f"logits must be a float32 [n, vocab] array, got "
            f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
        )
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError("logits must be C-contiguous and writeable (they change in place)")
    n, vocab = arr.shape
    given = {"ids": (ids, np.int32), "counts": (counts, np.int32)}
    given["row_starts"] = (row_starts, np.int64)
    given["penalties"] = (penalties, np.float32)
    for name, (a, dtype) in given.items():
        if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} array")
    if ids.ndim != 1 or counts.shape != ids.shape:
        raise ValueError(
            f"ids and counts must be 1-D of one length, got {ids.shape}, {counts.shape}"
        )
    if row_starts.shape != (n + 1,):
        raise ValueError(f"row_starts must have shape ({n + 1},), got {row_starts.shape}")
    if penalties.shape != (n, 3):
        raise ValueError(f"penalties must have shape ({n}, 3), got {penalties.shape}")
    load().tnn_penalize_rows(
        arr.ctypes.data,
        arr.nbytes,
        n,
        vocab,
        ids.ctypes.data,
        ids.nbytes,
        counts.ctypes.data,
        counts.nbytes,
        row_starts.ctypes.data,
        row_starts.nbytes,
        penalties.ctypes.data,
        penalties.nbytes,
    )
