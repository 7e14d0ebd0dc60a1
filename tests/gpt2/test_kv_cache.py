"""The fast engine's cache tensors: the causal mask table."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2.engine.kv_cache import declare_cache, upload_mask_table
from tinynn import Session


@pytest.mark.parametrize("n_rows", [1, 2, 17, 300])
def test_mask_table_is_causal(n_rows):
    """Row p holds 0 for keys 0..p and -inf after, every row of every size."""
    with Session("cpu") as s:
        cache = declare_cache(s, 1, 64, n_rows, 2, "f32")
        s.finalize_weights()
        upload_mask_table(cache)
        got = np.asarray(cache.mask_table.download()).reshape(n_rows, n_rows)
    keys, queries = np.meshgrid(np.arange(n_rows), np.arange(n_rows))
    want = np.where(keys > queries, -np.inf, 0.0).astype(np.float32)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)
