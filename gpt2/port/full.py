"""The close port of the Ruby `GPT2FullForwardFFICache` (and its Cuda twin).

One ggml graph for a fixed sequence length T_SEQ: token + position
embeddings, pre-LN blocks with per-head attention (RUBY_ENGINE.md 2.1 and 3),
the final LayerNorm and the tied unembedding, computed for all T_SEQ
positions. Prompts shorter than T_SEQ are right-padded with id 0; the causal
mask keeps the padding out of the real positions. The CUDA class computes a
T_SEQ of 4..16 as 17 positions, which keeps its products in strict f32.

`gelu="ggml"` builds the original graph exactly (ggml_gelu, an f16 table on
the CPU: about 1e-3 from f64); the default "exact" keeps GELU in f32.

Kept from the original: names, per-head Q/K/V, the transposed V with its
[1, d_head] bias, the concat chain. Fixed: every session is freed, LayerNorm
eps comes from the model, logits of any size download directly (no 16 MiB
scratch), the CUDA class really runs on CUDA or raises, and bad ids or
over-long prompts raise instead of being truncated.
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
from gpt2.tf32 import STRICT_F32_COLUMNS, TF32_COLUMNS
from gpt2.token_ids import check_token_ids
from gpt2.weights import GPT2Weights
from tinynn import Session, Tensor


class GPT2FullForwardFFICache(PortEngine):
    """Full-forward GPT-2 on the CPU backend (see module doc)."""

    DEVICE = "cpu"
    PAD_PAST_TF32 = False  # compute a T_SEQ in TF32_COLUMNS as 17 positions

    def __init__(
        self, n_threads: int | None = None, gelu: str = "exact", n_slots: int | None = None
    ):
        super().__init__(n_threads, gelu, n_slots)
        self.t_seq = self.t_graph = 0
        self.gpt2_blocks_ffi: list[GPT2BlockFFI] = []
        self._slot_ids: dict[int, list[int]] = {}  # the ids so far of each slot's sequence

    @classmethod
    def from_weights(
        cls,
        weights: GPT2Weights,
        t_seq: int | None = None,
        n_threads: int | None = None,
        gelu: str = "exact",
        n_slots: int | None = None,
    ) -> GPT2FullForwardFFICache:
        """Realized for `t_seq` positions (default: the model's context) and uploaded."""
        c = weights.config
        engine = cls(n_threads=n_threads, gelu=gelu, n_slots=n_slots)
        engine.realize_for(
            t_seq or c.n_positions,
            c.n_embd,
            c.d_ff,
            c.n_head,
            c.n_layer,
            c.vocab_size,
            layer_norm_epsilon=c.layer_norm_epsilon,
        )
        engine.upload_from(weights)
        return engine

    # -- graph --------------------------------------------------------------
    def realize_for(
        self,
        t_seq: int,
        d_model: int,
        d_ff: int,
        n_heads: int,
        n_layers: int,
        vocab_size: int,
        *,
        layer_norm_epsilon: float = 1e-5,
    ) -> None:
        """Declares the weights and builds the graph for sequences of `t_seq`."""
        if self.realized:
            raise ValueError("realize_for was already called; make a new engine")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.t_seq, self.d_model, self.d_ff = t_seq, d_model, d_ff
        pad = self.PAD_PAST_TF32 and t_seq in TF32_COLUMNS
        self.t_graph = STRICT_F32_COLUMNS if pad else t_seq  # positions computed, T
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.n_layers, self.vocab_size, self.eps = n_layers, vocab_size, layer_norm_epsilon

        sess = self.sess = Session(self.DEVICE, n_threads=self.n_threads)
        self.t_token_embed = sess.input_2d_f32_persistent(vocab_size, d_model)  # [d, V]
        self.t_pos_slice = sess.input_2d_f32_persistent(self.t_graph, d_model)  # [d, T]
        self.t_ln_f_gamma = sess.input_1d_f32_persistent(d_model)
        self.t_ln_f_beta = sess.input_1d_f32_persistent(d_model)
        self.gpt2_blocks_ffi = [GPT2BlockFFI(sess, d_model, d_ff, n_heads) for _ in range(n_layers)]
        sess.finalize_weights()

        self.t_token_ids = sess.input_1d_i32(self.t_graph)  # [T]
        x = sess.add(sess.get_rows(self.t_token_embed, self.t_token_ids), self.t_pos_slice)
        self.t_x_embed = sess.set_output(x)  # [d, T]
        for block in self.gpt2_blocks_ffi:
            x = self.build_block(block, x)  # [d, T]
        x = port_layer_norm(sess, x, self.t_ln_f_gamma, self.t_ln_f_beta, self.eps)
        self.t_x_final = sess.set_output(x)  # [d, T]
        logits = port_matmul(sess, self.t_token_embed, self.t_x_final)  # [V, T], tied unembedding
        self.t_logits = sess.set_output(logits)
        sess.realize(self.t_logits)
        self.realized = True

    def build_block(self, block: GPT2BlockFFI, x: Tensor) -> Tensor:
        """x + attn(LN1(x)), then + FFN(LN2(.)); x is [d, T]."""
        sess = self.sess
        h1 = port_layer_norm(sess, x, block.t_ln1_gamma, block.t_ln1_beta, self.eps)  # [d, T]
        heads = [self.build_attention_head(block, h1, h) for h in range(self.n_heads)]
        x = sess.add(x, block.build_out_proj(sess, heads))  # [d, T]
        return block.build_ffn(sess, x, self.eps, self.gelu)

    def build_attention_head(self, block: GPT2BlockFFI, h1: Tensor, h: int) -> Tensor:
        """Causal attention of head h: [d, T] -> [d_head, T]."""
        sess = self.sess
        q = sess.add(port_matmul(sess, block.t_w_q[h], h1), block.t_b_q[h])  # [d_head, T]
        k = sess.add(port_matmul(sess, block.t_w_k[h], h1), block.t_b_k[h])  # [d_head, T]
        v = sess.add(port_matmul(sess, h1, block.t_w_v[h]), block.t_b_v[h])  # [T, d_head]
        scores = port_matmul(sess, k, q)  # [T keys, T queries]
        scores = sess.scale(scores, 1.0 / math.sqrt(self.d_head))
        scores = sess.diag_mask_inf(scores, 0)
        attn = port_softmax(sess, scores)  # over keys
        return port_matmul(sess, v, attn)  # [d_head, T]

    # -- weights --------------------------------------------------------------
    def upload_from(self, weights: GPT2Weights) -> None:
        """Uploads canonical weights (see gpt2.weights) into the declared tensors."""
        self.check_weights(weights)
        c = self.config = weights.config
        if self.t_seq > c.n_positions:
            raise ValueError(f"T_SEQ={self.t_seq} exceeds the model's context {c.n_positions}")
        upload_row_major(self.t_token_embed, weights["wte"])
        wpe = weights["wpe"][: self.t_graph]
        # a padded T may pass a context shorter than 17: those rows are only padding
        wpe = np.pad(wpe, ((0, self.t_graph - len(wpe)), (0, 0)))
        upload_row_major(self.t_pos_slice, wpe)
        upload_row_major(self.t_ln_f_gamma, weights["ln_f.weight"])
        upload_row_major(self.t_ln_f_beta, weights["ln_f.bias"])
        for layer, block in enumerate(self.gpt2_blocks_ffi):
            block.upload_from(weights, layer)

    # -- running --------------------------------------------------------------
    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [len(token_ids), vocab] (float32) for the real positions."""
        self._require_realized()
        ids = check_token_ids(token_ids, self.vocab_size)
        if len(ids) > self.t_seq:
            raise ValueError(f"{len(ids)} tokens do not fit in T_SEQ={self.t_seq}")
        padded = np.zeros(self.t_graph, dtype=np.int32)  # id 0 pads; the mask hides it
        padded[: len(ids)] = ids
        with self.pool.lock:  # one graph, one input: one caller at a time
            self._require_realized()
            self.t_token_ids.upload(padded)
            self.sess.compute()
            return self.t_logits.download()[: len(ids)]

    # -- the step (gpt2.engine.base): a slot's sequence is its ids so far --------------
    @property
    def max_positions(self) -> int:
        return self.t_seq

    def _row_logits(self, row) -> np.ndarray:
        ids = self._slot_ids.get(row.slot, [])[: row.position] + [int(t) for t in row.tokens]
        self._slot_ids[row.slot] = ids
        return self.forward(ids)[row.position :]


class GPT2FullForwardFFICacheCuda(GPT2FullForwardFFICache):
    """The same engine on ggml's CUDA backend; raises if CUDA is unavailable."""

    DEVICE = "cuda"
    # ggml-cuda multiplies f32 by 4..16 columns on TF32 tensor cores (gpt2.tf32)
    PAD_PAST_TF32 = True
