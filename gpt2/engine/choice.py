"""Token choice and log-probabilities for the rows of a step, in one native call.

Rows whose choice the device made (greedy argmax in the graph, or our CUDA
sampler) skip this; every other row that chooses or wants log-probabilities
is gathered here and handed to the shim's C sampler (tinynn.sample_rows,
THE SAMPLING RULE of gpt2.sampling) as one [m, vocab] array.

Rows with a logit_bias or a penalty (gpt2.params) choose from a copy of their
logits: the biases added (one numpy add for all of them), then penalized by
tinynn.penalize_rows (tnn_penalize_rows, one call for all of them); their
log-probabilities and alternatives are still those of the raw logits. Rows
without either take exactly today's path.

`position_logprobs` gives each position's log-probability of a given next token
(a prompt's own tokens, for echo) with its alternatives, from one native call.
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


def adjusted_logits(rows: Sequence[StepRow], logits: np.ndarray) -> np.ndarray:
    """A copy of logits [m, vocab] for rows (each with a bias, a penalty or both):
    biases added first, then penalties; a few numpy calls and one native call,
    however many rows."""
    out = np.array(logits, dtype=np.float32, order="C")  # a copy: the raw logits stay
    biased = [k for k, r in enumerate(rows) if r.bias is not None]
    if biased:
        biases = [rows[k].bias for k in biased]
        at = np.repeat(np.array(biased, dtype=np.intp), [len(b.ids) for b in biases])
        ids = np.concatenate([b.ids for b in biases])
        out[at, ids] += np.concatenate([b.values for b in biases])  # ids once a row
    pen = [k for k, r in enumerate(rows) if r.penalty is not None]
    if not pen:
        return out
    penalties = [rows[k].penalty for k in pen]
    starts = np.zeros(len(pen) + 1, dtype=np.int64)
    np.cumsum([len(p.ids) for p in penalties], out=starts[1:])
    part = out if len(pen) == len(rows) else np.ascontiguousarray(out[pen])
    penalize_rows(
        part,
        np.concatenate([p.ids for p in penalties]).astype(np.int32, copy=False),
        np.concatenate([p.counts for p in penalties]).astype(np.int32, copy=False),
        starts,
        np.array([p.params for p in penalties], dtype=np.float32).reshape(len(pen), 3),
    )
    if part is not out:
        out[pen] = part
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
    pen = [k for k, r in enumerate(rows) if r.penalty is not None or r.bias is not None]
    if pen:
        pen_rows = [rows[k] for k in pen]
        pen_ids = sample_rows(adjusted_logits(pen_rows, logits[pen]), records[pen]).ids
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


def position_logprobs(
    logits: np.ndarray, ids: np.ndarray, n_top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log_softmax(logits[t])[ids[t]] for each position t of logits [T, vocab]
    (float32 [T]) and its n_top most likely alternatives (top_ids [T, n],
    top_logprobs [T, n]; ties: lower id first), as a choosing row reports them.
    One native call ranks every position; the logsumexp it implies
    (x[argmax] - logprob(argmax)) gives the others, so the argmax's own
    log-probability is the very number its alternatives list."""
    x = np.ascontiguousarray(logits, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.intp)
    n_top = min(n_top, x.shape[1])
    best, best_lp, top_ids, top_lps = sample_rows(x, None, n_top=n_top, want_logprobs=True)
    t = np.arange(len(ids))
    lps = x[t, ids].astype(np.float64) - x[t, best].astype(np.float64) + best_lp
    return lps.astype(np.float32), top_ids, top_lps
