"""The fast engine's graph: n_seq sequences of n_q tokens over a run of slots.

- x = wte[tokens] + wpe[positions]; a norm is one node (its affine part is
  folded into the next product, gpt2.engine.upload).
- One QKV product per layer; K | V of a position are adjacent in its output,
  so one set_rows at runtime row indices writes both into the cache.
- Attention is one flash_attn_ext over the cache with a mask row per query
  (get_rows from the causal table by position), except with
  `exact_attention`: softmax(K^T Q) V as separate f32 nodes (ggml-cuda's
  flash attention reads K and V as f16).
- Inputs are one int32 vector: tokens | positions | cache rows (| last rows),
  so a step uploads nothing else. Outputs: the logits and their argmax.

Each graph is built once in its own forked session, then recomputed with new
inputs, which lets ggml-cuda replay it as a CUDA graph. The slots a graph
attends over are fixed when it is built (`first_slot`); rows are runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt2.config import GPT2Config
from gpt2.engine.kv_cache import F32_BYTES, I32_BYTES, KVCache
from gpt2.engine.upload import FastWeights
from tinynn import Session, Tensor


@dataclass
class Graph:
    """One built and realized graph in its own forked session."""

    sess: Session
    ints: Tensor  # i32 [3N (+n_seq)]: tokens | positions | cache rows (| last rows)
    out_ids: Tensor  # i32 [rows]: argmax of each logits row
    logits: Tensor  # f32 [V, rows]


@dataclass(frozen=True)
class GraphShape:
    first_slot: int  # the sequences sit in slots first_slot .. first_slot+n_seq-1
    n_seq: int
    n_q: int  # new tokens per sequence
    n_kv: int  # cache rows each query attends over (a bucket)
    last_only: bool  # logits of one token per sequence, picked by a runtime index


def build_graph(
    root: Session,
    c: GPT2Config,
    w: FastWeights,
    cache: KVCache,
    shape: GraphShape,
    exact_attention: bool,
) -> Graph:
    d, dh, nh = c.n_embd, c.d_head, c.n_head
    n_seq, n_q, n_kv = shape.n_seq, shape.n_q, shape.n_kv
    n = n_seq * n_q
    s = root.fork()
    try:
        ints = s.input_typed("i32", (3 * n + (n_seq if shape.last_only else 0),))
        tokens = s.view_1d(ints, n, 0)
        positions = s.view_1d(ints, n, n * I32_BYTES)
        rows = s.view_1d(ints, n, 2 * n * I32_BYTES)
        x = s.add(s.get_rows(w.wte, tokens), s.get_rows(w.wpe, positions))  # [d, N]
        mask = s.get_rows(cache.mask_table, positions)  # [n_rows, N]
        mask = s.view_2d(mask, n_kv, n, cache.n_rows * F32_BYTES, 0)  # [n_kv, N]
        # soft_max_ext takes the f32 mask; flash attention wants f16
        mask = s.cont(mask) if exact_attention else s.cast(mask, "f16")
        mask = s.reshape(mask, n_kv, n_q, 1, n_seq)  # broadcast over heads
        scale = 1.0 / math.sqrt(dh)
        kv_size = cache.element_bytes
        kv_offset = shape.first_slot * cache.slot_bytes
        for layer, kv_cache in zip(w.layers, cache.layers, strict=True):
            h = s.layer_norm(x, None, None, c.layer_norm_epsilon)  # [d, N]
            qkv = s.add(s.matmul(layer.w_qkv, h), layer.b_qkv)  # [3d, N]
            q = s.view_4d(
                qkv,
                (dh, n_q, nh, n_seq),
                (3 * d * F32_BYTES, dh * F32_BYTES, n_q * 3 * d * F32_BYTES),
                0,
            )  # [dh, n_q, nh, B]
            # K | V are adjacent in each qkv row: one cache write for both
            kv_new = s.view_2d(qkv, 2 * d, n, 3 * d * F32_BYTES, d * F32_BYTES)  # [2d, N]
            kv_all = s.set_rows(kv_cache, kv_new, rows)  # the cache, written
            kv_shape = (dh, n_kv, nh, n_seq)
            kv_strides = (2 * d * kv_size, dh * kv_size, cache.slot_bytes)
            k = s.view_4d(kv_all, kv_shape, kv_strides, kv_offset)  # [dh, n_kv, nh, B]
            v = s.view_4d(kv_all, kv_shape, kv_strides, kv_offset + d * kv_size)
            if exact_attention:
                kq = s.soft_max_ext(s.matmul(k, q), mask, scale)  # [n_kv, n_q, nh, B]
                v_t = s.cont(s.permute(v, 1, 0, 2, 3))  # [n_kv, dh, nh, B]
                attn = s.matmul(v_t, kq)  # [dh, n_q, nh, B]
                if n_q > 1:  # with one query both orders are the same memory
                    attn = s.cont(s.permute(attn, 0, 2, 1, 3))  # [dh, nh, n_q, B]
            else:
                attn = s.flash_attn_ext(q, k, v, mask, scale)  # [dh, nh, n_q, B]
            attn = s.reshape(attn, d, n)  # [d, N]
            x = s.add(x, s.add(s.matmul(layer.w_o, attn), layer.b_o))
            h = s.layer_norm(x, None, None, c.layer_norm_epsilon)
            u = s.gelu_exact(s.add(s.matmul(layer.w_fc, h), layer.b_fc))  # [d_ff, N]
            x = s.add(x, s.add(s.matmul(layer.w_proj, u), layer.b_proj))  # [d, N]
        if shape.last_only:  # only the last real token of each sequence needs logits
            x = s.get_rows(x, s.view_1d(ints, n_seq, 3 * n * I32_BYTES))  # [d, n_seq]
        x = s.layer_norm(x, None, None, c.layer_norm_epsilon)
        logits = s.add(s.matmul(w.lm_head, x), w.lm_bias)  # [V, rows]
        s.set_output(logits)
        out_ids = s.set_output(s.argmax(logits))  # [rows]
        s.realize(out_ids)
    except BaseException:
        s.close()
        raise
    return Graph(s, ints, out_ids, logits)


def bucket(n: int, limit: int) -> int:
    """Attention length for n positions: a power of two from 256, at most limit."""
    b = 256
    while b < n:
        b *= 2
    return min(b, limit)
