"""Token choice and log-probabilities for the rows of a step, in one native call.

Rows whose choice the device made (greedy argmax in the graph, or our CUDA
sampler) skip this; every other row that chooses or wants log-probabilities
is gathered here and handed to the shim's C sampler (tinynn.sample_rows,
THE SAMPLING RULE of gpt2.sampling) as one [m, vocab] array.

Rows with a penalty (gpt2.params) choose from a copy of their logits that
tinynn.penalize_rows (tnn_penalize_rows, one call for all of them) has
penalized; their log-probabilities and alternatives are still those of the
raw logits. Rows without one take exactly today's path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.engine.step import GREEDY, StepResult, StepRow
from tinynn import penalize_rows, sample_rows
from tinynn.decoder import SAMPLING_DTYPE


def sampling_records(rows: Sequence[StepRow]) -> np.ndarray:
    """The rows' tnn_sampling_params records (greedy for a row that chooses none)."""
    records = np.empty(len(rows), dtype=SAMPLING_DTYPE)
    params = [r.sampling or GREEDY for r in rows]
    records["temperature"] = [p.temperature for p in params]
    records["top_k"] = [p.top_k for p in params]
    records["top_p"] = [p.top_p for p in params]
    records["uniform"] = [r.uniform for r in rows]
    return records


def all_greedy(rows: Sequence[StepRow]) -> bool:
    """Whether every row is answered by a device argmax alone."""
    return all(not r.needs_logits and (r.sampling is None or r.sampling.greedy) for r in rows)


def penalized_logits(rows: Sequence[StepRow], logits: np.ndarray) -> np.ndarray:
    """A penalized copy of logits [m, vocab] for rows (each with a penalty), one native call."""
    out = np.array(logits, dtype=np.float32, order="C")  # a copy: the raw logits stay
    penalties = [r.penalty for r in rows]
    starts = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(p.ids) for p in penalties], out=starts[1:])
    penalize_rows(
        out,
        np.concatenate([p.ids for p in penalties]).astype(np.int32, copy=False),
        np.concatenate([p.counts for p in penalties]).astype(np.int32, copy=False),
        starts,
        np.array([p.params for p in penalties], dtype=np.float32).reshape(len(rows), 3),
    )
    return out


def raw_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log_softmax of logits [m, vocab] (float64) at ids [m], as float32."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return (x[np.arange(len(ids)), ids] - lse).astype(np.float32)


def choose_rows(
    result: StepResult, rows: Sequence[StepRow], index: Sequence[int], logits: np.ndarray
) -> None:
    """Fills result for rows[k] (result row index[k]) from logits[k] [vocab]:
    the chosen token, its log-probability and alternatives where asked."""
    want = [k for k, r in enumerate(rows) if r.chooses]
    if not want:
        return
    if len(want) < len(rows):
        rows = [rows[k] for k in want]
        index = [index[k] for k in want]
        logits = logits[want]
    n_top = min(max((r.logprobs or 0) for r in rows), logits.shape[1])  # a tiny vocabulary
    wants_lp = any(r.logprobs is not None for r in rows)
    records = sampling_records(rows)
    pen = [k for k, r in enumerate(rows) if r.penalty is not None]
    if pen:
        pen_rows = [rows[k] for k in pen]
        pen_ids = sample_rows(penalized_logits(pen_rows, logits[pen]), records[pen]).ids
        if len(pen) == len(rows) and not wants_lp:
            result.tokens[index] = pen_ids
            return
        records["temperature"][pen] = 0.0  # greedy there: this call only ranks their raw logits
    ids, lps, top_ids, top_lps = sample_rows(
        np.ascontiguousarray(logits, dtype=np.float32),
        records,
        n_top=n_top,
        want_logprobs=wants_lp,
    )
    if pen:
        ids[pen] = pen_ids
        lp_pen = [k for k in pen if rows[k].logprobs is not None]
        if lp_pen:
            lps[lp_pen] = raw_logprobs(logits[lp_pen], ids[lp_pen])
    result.tokens[index] = ids
    if not wants_lp:
        return
    for k, (i, r) in enumerate(zip(index, rows, strict=True)):
        if r.logprobs is None:
            continue
        result.logprobs[i] = lps[k]
        result.top_ids[i] = top_ids[k, : r.logprobs]
        result.top_logprobs[i] = top_lps[k, : r.logprobs]
