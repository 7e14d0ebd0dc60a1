"""The fast engine's KV cache: one tensor per layer, split into sequence slots.

Layout: per layer ne = [2 n_embd, n_rows * n_slots]; row r of slot s is
position r of the sequence in that slot, K | V side by side (heads side by
side within each). A decode graph's attention reads a run of adjacent slots
through views ne = [d_head, n_kv, n_head, n_seq]; a prefill graph gathers its
sequences' rows by runtime index (any slots). n_rows is n_ctx, or 17 where
n_ctx is shorter and a short prompt must be padded to 17 (pad_prefill).

Beside it, the causal mask table: row p is 0 for keys 0..p and -inf after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinynn import Session, Tensor

F32_BYTES, F16_BYTES, I32_BYTES = 4, 2, 4


@dataclass
class KVCache:
    layers: list[Tensor]  # kv dtype [2d, n_rows * n_slots]
    mask_table: Tensor  # f32 [n_rows, n_rows]
    n_rows: int  # rows (positions) of one slot
    n_slots: int
    dtype: str  # "f32" or "f16"
    n_embd: int

    @property
    def element_bytes(self) -> int:
        return F32_BYTES if self.dtype == "f32" else F16_BYTES

    @property
    def slot_bytes(self) -> int:
        """Bytes between the same row of two adjacent slots."""
        return self.n_rows * 2 * self.n_embd * self.element_bytes

    def rows(self, first_slot: int, n_seq: int, positions: np.ndarray) -> np.ndarray:
        """Cache rows of positions [n_seq, n_q] of slots first_slot.. (flattened)."""
        return self.rows_of(first_slot + np.arange(n_seq), positions)

    def rows_of(self, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cache rows of positions [n_seq, n_q] of the n_seq slots (flattened)."""
        slots = np.asarray(slots)
        return (slots[:, None] * self.n_rows + positions.reshape(len(slots), -1)).reshape(-1)


def declare_cache(
    s: Session, n_layer: int, n_embd: int, n_rows: int, n_slots: int, dtype: str
) -> KVCache:
    """The persistent cache tensors (zeroed by finalize_weights: empty caches)."""
    return KVCache(
        layers=[
            s.input_typed_persistent(dtype, (2 * n_embd, n_rows * n_slots)) for _ in range(n_layer)
        ],
        mask_table=s.input_typed_persistent("f32", (n_rows, n_rows)),
        n_rows=n_rows,
        n_slots=n_slots,
        dtype=dtype,
        n_embd=n_embd,
    )


def upload_mask_table(cache: KVCache) -> None:
    """Row p: 0 for keys 0..p, -inf after (the causal mask of a query at p).
    Every row is a window of one template, zeros then -infs, each starting one
    element earlier than the row before: one copy of n x n floats, no
    comparisons (a load's few milliseconds, with gpt2's 1024 positions)."""
    n = cache.n_rows
    template = np.full(2 * n - 1, -np.inf, dtype=np.float32)
    template[:n] = 0.0
    step = template.itemsize
    rows = np.lib.stride_tricks.as_strided(template[n - 1 :], shape=(n, n), strides=(-step, step))
    cache.mask_table.upload(np.ascontiguousarray(rows))
