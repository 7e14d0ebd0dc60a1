"""Token choice and log-probabilities for the rows of a step, in one native call.

Rows whose choice the device made (greedy argmax in the graph, or our CUDA
sampler) skip this; every other row that chooses or wants log-probabilities
is gathered here and handed to the shim's C sampler (tinynn.sample_rows,
THE SAMPLING RULE of gpt2.sampling) as one [m, vocab] array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.engine.step import GREEDY, StepResult, StepRow
from tinynn import sample_rows
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
    return all(
        r.logits is None and r.logprobs is None and (r.sampling is None or r.sampling.greedy)
        for r in rows
    )


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
    ids, lps, top_ids, top_lps = sample_rows(
        np.ascontiguousarray(logits, dtype=np.float32),
        sampling_records(rows),
        n_top=n_top,
        want_logprobs=wants_lp,
    )
    result.tokens[index] = ids
    if not wants_lp:
        return
    for k, (i, r) in enumerate(zip(index, rows, strict=True)):
        if r.logprobs is None:
            continue
        result.logprobs[i] = lps[k]
        result.top_ids[i] = top_ids[k, : r.logprobs]
        result.top_logprobs[i] = top_lps[k, : r.logprobs]
