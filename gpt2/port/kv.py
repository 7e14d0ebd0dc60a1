"""The close port of the Ruby `GPT2KVFFICache` (and its Cuda twin).

Persistent per-layer, per-head K and V caches of `max_T` positions; each
decode step builds a graph for one token at an explicit position, writes its
K and V rows with `cpy` into views of the caches, and attends over the
positions 0..pos (RUBY_ENGINE.md 4). The prompt goes one token per step, as
in the original.

Fixed: V is stored like K, one contiguous row per position (the original's
strided V column write hits ggml-cuda's cpy bug, ggml issue 1497), so the
read takes `cont(transpose(V_hist))`; positions past max_T raise; caches
start zeroed; the session is freed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gpt2.port.blocks import (
    GPT2BlockFFI,
    PortEngine,
    port_layer_norm,
    port_matmul,
    port_softmax,
    upload_row_major,
)
from gpt2.token_ids import check_token_ids
from gpt2.weights import GPT2Weights
from tinynn import Session, Tensor

F32_BYTES = 4


class GPT2KVBlockFFI(GPT2BlockFFI):
    """A block's weights plus per-slot, per-head caches, ne = [d_head, max_T] each:
    t_K[slot][head]."""

    def __init__(
        self, sess: Session, d_model: int, d_ff: int, n_heads: int, max_t: int, n_slots: int
    ):
        super().__init__(sess, d_model, d_ff, n_heads)
        self.t_K = [
            [sess.input_2d_f32_persistent(max_t, self.d_head) for _ in range(n_heads)]
            for _ in range(n_slots)
        ]
        self.t_V = [
            [sess.input_2d_f32_persistent(max_t, self.d_head) for _ in range(n_heads)]
            for _ in range(n_slots)
        ]


class GPT2KVFFICache(PortEngine):
    """KV-cache GPT-2 on the CPU backend, one graph per decoded token."""

    DEVICE = "cpu"

    def __init__(
        self, n_threads: int | None = None, gelu: str = "exact", n_slots: int | None = None
    ):
        super().__init__(n_threads, gelu, n_slots)
        self.max_T = self.context_length = 0
        self.kv_blocks_ffi: list[GPT2KVBlockFFI] = []

    @classmethod
    def from_weights(
        cls,
        weights: GPT2Weights,
        max_t: int | None = None,
        n_threads: int | None = None,
        gelu: str = "exact",
        n_slots: int | None = None,
    ) -> GPT2KVFFICache:
        c = weights.config
        engine = cls(n_threads=n_threads, gelu=gelu, n_slots=n_slots)
        engine.realize_for(
            max_t or c.n_positions,
            c.n_embd,
            c.d_ff,
            c.n_head,
            c.n_layer,
            c.vocab_size,
            c.n_positions,
            layer_norm_epsilon=c.layer_norm_epsilon,
        )
        engine.upload_from(weights)
        return engine

    def realize_for(
        self,
        max_t: int,
        d_model: int,
        d_ff: int,
        n_heads: int,
        n_layers: int,
        vocab_size: int,
        context_length: int,
        *,
        layer_norm_epsilon: float = 1e-5,
    ) -> None:
        """Declares weights and caches; no graph yet (one is built per step)."""
        if self.realized:
            raise ValueError("realize_for was already called; make a new engine")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if not 0 < max_t <= context_length:
            raise ValueError(f"max_T={max_t} must be in 1..context_length={context_length}")
        self.max_T, self.d_model, self.d_ff = max_t, d_model, d_ff
        self.n_heads, self.d_head, self.n_layers = n_heads, d_model // n_heads, n_layers
        self.vocab_size, self.context_length, self.eps = (
            vocab_size,
            context_length,
            layer_norm_epsilon,
        )

        sess = self.sess = Session(self.DEVICE, n_threads=self.n_threads)
        self.t_token_embed = sess.input_2d_f32_persistent(vocab_size, d_model)  # [d, V]
        self.t_pos_embed = sess.input_2d_f32_persistent(context_length, d_model)  # [d, n_ctx]
        self.t_ln_f_gamma = sess.input_1d_f32_persistent(d_model)
        self.t_ln_f_beta = sess.input_1d_f32_persistent(d_model)
        self.kv_blocks_ffi = [
            GPT2KVBlockFFI(sess, d_model, d_ff, n_heads, max_t, self.n_slots)
            for _ in range(n_layers)
        ]
        sess.finalize_weights()  # zero-filled: the caches start empty
        self.realized = True

    def upload_from(self, weights: GPT2Weights) -> None:
        self.check_weights(weights)
        c = self.config = weights.config
        if c.n_positions != self.context_length:
            raise ValueError(
                f"weights have a context of {c.n_positions}, the engine was realized for "
                f"{self.context_length}"
            )
        upload_row_major(self.t_token_embed, weights["wte"])
        upload_row_major(self.t_pos_embed, weights["wpe"])
        upload_row_major(self.t_ln_f_gamma, weights["ln_f.weight"])
        upload_row_major(self.t_ln_f_beta, weights["ln_f.bias"])
        for layer, block in enumerate(self.kv_blocks_ffi):
            block.upload_from(weights, layer)

    # -- one decode step ----------------------------------------------------------
    def build_decode_step(self, pos: int, slot: int = 0) -> tuple[Tensor, Tensor]:
        """The graph of one token at position pos of the sequence in `slot`:
        (token id input, logits [V, 1])."""
        sess, d = self.sess, self.d_model
        t_token_id = sess.input_1d_i32(1)
        pos_row = sess.view_2d(self.t_pos_embed, d, 1, d * F32_BYTES, pos * d * F32_BYTES)  # [d, 1]
        x = sess.add(sess.get_rows(self.t_token_embed, t_token_id), pos_row)  # [d, 1]
        for block in self.kv_blocks_ffi:
            h1 = port_layer_norm(sess, x, block.t_ln1_gamma, block.t_ln1_beta, self.eps)  # [d, 1]
            heads = [
                self.build_attention_head(block, h1, h, pos, slot) for h in range(self.n_heads)
            ]
            x = sess.add(x, block.build_out_proj(sess, heads))  # [d, 1]
            x = block.build_ffn(sess, x, self.eps, self.gelu)  # [d, 1]
        x = port_layer_norm(sess, x, self.t_ln_f_gamma, self.t_ln_f_beta, self.eps)  # [d, 1]
        logits = sess.set_output(port_matmul(sess, self.t_token_embed, x))  # [V, 1]
        return t_token_id, logits

    def build_attention_head(
        self, block: GPT2KVBlockFFI, h1: Tensor, h: int, pos: int, slot: int = 0
    ) -> Tensor:
        """Writes this token's K, V rows at pos and attends over 0..pos: [d_head, 1]."""
        cache_k, cache_v = block.t_K[slot][h], block.t_V[slot][h]
        sess, dh = self.sess, self.d_head
        row = dh * F32_BYTES
        q = sess.add(port_matmul(sess, block.t_w_q[h], h1), block.t_b_q[h])  # [d_head, 1]
        k_new = sess.add(port_matmul(sess, block.t_w_k[h], h1), block.t_b_k[h])  # [d_head, 1]
        b_v = sess.reshape(block.t_b_v[h], dh)  # [1, d_head] -> [d_head]
        v_new = sess.add(port_matmul(sess, block.t_w_v[h], h1), b_v)  # [d_head, 1]
        # Side effects: expanded before the reads below, so they run first.
        sess.add_to_graph(sess.cpy(k_new, sess.view_2d(cache_k, dh, 1, row, pos * row)))
        sess.add_to_graph(sess.cpy(v_new, sess.view_2d(cache_v, dh, 1, row, pos * row)))
        k_hist = sess.view_2d(cache_k, dh, pos + 1, row, 0)  # [d_head, pos+1]
        v_hist = sess.view_2d(cache_v, dh, pos + 1, row, 0)  # [d_head, pos+1]
        scores = port_matmul(sess, k_hist, q)  # [pos+1, 1]
        attn = port_softmax(sess, sess.scale(scores, 1.0 / math.sqrt(dh)))  # over 0..pos
        v_t = sess.cont(sess.transpose(v_hist))  # [pos+1, d_head]
        return port_matmul(sess, v_t, attn)  # [d_head, 1]

    def decode_step(self, token_id: int, pos: int, slot: int = 0) -> np.ndarray:
        """Logits [vocab] (float32) after feeding token_id at position pos of the
        sequence in cache slot `slot`."""
        self._require_realized()
        if not 0 <= pos < self.max_T:
            raise ValueError(f"position {pos} is outside the cache [0, max_T={self.max_T})")
        ids = check_token_ids([token_id], self.vocab_size)
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} is outside [0, n_slots={self.n_slots})")
        with self.pool.lock:  # the graph is rebuilt each step: one caller at a time
            self._require_realized()
            self.sess.reset_for_rebuild()
            t_token_id, logits = self.build_decode_step(pos, slot)
            self.sess.realize(logits)
            t_token_id.upload(ids)
            self.sess.compute()
            return logits.download().reshape(self.vocab_size)

    def logits_for(self, token_ids: Sequence[int], start_pos: int = 0, slot: int = 0) -> np.ndarray:
        """Feeds token_ids one by one from start_pos: logits [T, vocab] of every step."""
        ids = check_token_ids(token_ids, self.vocab_size)
        if start_pos < 0 or start_pos + len(ids) > self.max_T:
            raise ValueError(
                f"{len(ids)} tokens from position {start_pos} do not fit in max_T={self.max_T}"
            )
        return np.stack([self.decode_step(int(t), start_pos + i, slot) for i, t in enumerate(ids)])

    # -- the step (gpt2.engine.base) ---------------------------------------------------
    @property
    def max_positions(self) -> int:
        return self.max_T

    def _row_logits(self, row) -> np.ndarray:
        return self.logits_for(row.tokens, row.position, row.slot)


class GPT2KVFFICacheCuda(GPT2KVFFICache):
    """The same engine on ggml's CUDA backend; raises if CUDA is unavailable."""

    DEVICE = "cuda"
