"""The fast engine's graph: n_seq sequences of n_q tokens over a run of slots.

- x = wte[tokens] + wpe[positions]; a LayerNorm is ggml_norm, then its gain
  (ggml_mul) and bias (ggml_add), the file's own tensors (gpt2.engine.upload).
  The output head is wte itself (tied) after ln_f: no bias.
- One QKV product per layer; K | V of a position are adjacent in its output,
  so one set_rows at runtime row indices writes both into the cache.
- Attention is one flash_attn_ext over the cache with a mask row per query
  (get_rows from the causal table by position), except with
  `exact_attention`: softmax(K^T Q) V as separate f32 nodes (ggml-cuda's
  flash attention reads K and V as f16).
- Inputs are one int32 vector: tokens | positions | cache rows (| last rows)
  (| gathered rows), so a step uploads nothing else. Outputs: the logits and
  their argmax.

Each graph is built once in its own forked session, then recomputed with new
inputs, which lets ggml-cuda replay it as a CUDA graph. A decode graph attends
over a run of adjacent slots fixed when it is built (`first_slot`). A prefill
graph (`first_slot` None) gathers the n_kv cache rows of each of its sequences
by runtime index (get_rows, cast back to the cache's type: the same values), so
one graph serves any slots: prefill graphs are keyed by their sizes alone.

Batch invariance on the CPU: a sequence's logits do not depend on the other
rows of its graph (how many, which slots, their positions). ggml-cpu picks
its kernels by shape, and they sum in different orders, so the graph gives
each kind of row one kernel whatever the batch. A graph of one token a
sequence is a decode step; one of two or more tokens a sequence, a prefill.
So the engine must give a row the same kind of graph whatever shares its
step (a one-token row sent to a prefill graph beside longer rows, past
position 0, gets other bits than in a decode graph).
- Products. Weights packed for our own CPU product (f32 and f16 with n_in a
  multiple of 16: gpt2.engine.upload.pack_for_cpu, native/cpu_product.c) sum
  each element in one order whatever the column count: every graph, decode
  or prefill, uses it (`_linear`; the embedding reads packed wte rows with
  packed_get_rows). The rest (q8_0 weights, other shapes) go through ggml.
  With GGML_LLAMAFILE (native/CMakeLists.txt), ggml-cpu multiplies
  two or more columns in tinyBLAS (llamafile_sgemm) where it takes the weight
  (f32 and f16: k a multiple of the vector width, rows a multiple of 4; q8_0:
  any), each element summed in one order whatever the column count and tile
  shape. One column it declines (n < 2), and ggml runs vec_dot: for f32 and
  f16 another order, for q8_0 on x86 (AVX2, AVX-512) the same. Where one
  column alone would get other bits than among others (`_alone_as_among`
  asks ggml once a weight), a decode step lays its activations out
  [k, 1, N] (`_linear`): tinyBLAS sees one column N times and declines, so
  every batch size runs vec_dot, as one sequence always did. (A lone column
  given a copy of itself would take tinyBLAS too, with the bits it gets in
  any batch, but its two columns cost a lone step more than vec_dot's one:
  bench/NOTES.md, eighth session.) A prefill's products have two or more
  columns: tinyBLAS. The unembedding, whose rows vary with the batch in
  every graph, follows the same rule everywhere.
- Attention. ggml-cpu's flash attention runs a query-by-query kernel below
  64 queries a sequence (GGML_FA_TILE_Q), a tiled one from 64, and, for one
  query of one sequence over 512 cache rows or more, splits the cache across
  threads. A decode step stays on the first: a lone sequence gets a second
  query with every cache row masked, which costs nothing. A prefill repeats
  its queries to 64, so all its rows take the tiled kernel. Both skip masked
  cache rows: the cache bucket (set by the batch's longest position) changes
  nothing. (A one-token prompt at position 0 gets the same bits from both:
  it attends to itself only.)
Norms, GELU and the adds work row by row. tests/gpt2/test_batch_invariance.py
checks all of it bit for bit. On CUDA the graph is as written; ggml-cuda also
picks kernels by batch size and is not made invariant here.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from gpt2.config import GPT2Config
from gpt2.engine.kv_cache import F32_BYTES, I32_BYTES, KVCache
from gpt2.engine.upload import FastWeights
from tinynn import Session, Tensor

# ggml-cpu's flash attention takes its tiled kernel for a node of at least this
# many queries a sequence (GGML_FA_TILE_Q, ggml-cpu/common.h)
CPU_FA_TILE = 64

# root session -> {weight handle: whether a column of x W gets the same bits alone
# as among others} (_alone_as_among)
_ALONE_AS_AMONG: weakref.WeakKeyDictionary[Session, dict[int, bool]] = weakref.WeakKeyDictionary()


@dataclass
class Graph:
    """One built and realized graph in its own forked session."""

    sess: Session
    ints: Tensor  # i32 [3N (+n_seq)]: tokens | positions | cache rows (| last rows)
    out_ids: Tensor  # i32 [rows]: argmax of each logits row
    logits: Tensor  # f32 [V, rows]


@dataclass(frozen=True)
class GraphShape:
    # the sequences sit in slots first_slot .. first_slot+n_seq-1; None: in any
    # slots, their cache rows gathered by runtime index (prefill graphs)
    first_slot: int | None
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
    # batch invariance on the CPU (module doc)
    cpu = root.device == "cpu"
    decode = cpu and n_q == 1
    lw = w.layers[0]  # every layer's weights have layer 0's types and shapes
    by_column = {  # a decode step's ggml products that run a column at a time
        role: decode and _by_column(root, getattr(lw, role))
        for role in ("w_qkv", "w_o", "w_fc", "w_proj")
    }
    # a second, masked query (a cache of one row has no masked key: nothing to split there)
    masked_query = decode and n_seq == 1 and not exact_attention and cache.n_rows > 1
    padded = cpu and n_q > 1 and not exact_attention  # queries repeated to CPU_FA_TILE
    n_fa = max(n_q, CPU_FA_TILE) if padded else n_q + masked_query  # queries in attention
    gathered = shape.first_slot is None
    n_last = n_seq if shape.last_only else 0
    s = root.fork()
    try:
        ints = s.input_typed("i32", (3 * n + n_last + (n_seq * n_kv if gathered else 0),))
        tokens = s.view_1d(ints, n, 0)
        positions = s.view_1d(ints, n, n * I32_BYTES)
        rows = s.view_1d(ints, n, 2 * n * I32_BYTES)
        embed = s.packed_get_rows if w.wte.packed else s.get_rows
        x = s.add(embed(w.wte, tokens), s.get_rows(w.wpe, positions))  # [d, N]
        mask = s.get_rows(cache.mask_table, positions)  # [n_rows, N]
        row = cache.n_rows * F32_BYTES
        # [n_kv, n_q, 1, B]: broadcast over heads
        mask = s.view_4d(mask, (n_kv, n_q, 1, n_seq), (row, n_q * row, n_q * row), 0)
        if masked_query:  # the table's row 0 from its second key on: -inf (where n_kv
            # is n_rows, its last key is row 1's first, 0: one cache row read, finite)
            none = s.view_4d(cache.mask_table, (n_kv, 1, 1, 1), (row, row, row), F32_BYTES)
            mask = s.concat(mask, none, 1)  # [n_kv, 2, 1, 1]
        mask = _repeat_queries(s, mask, n_fa)  # [n_kv, n_fa, 1, B]
        # soft_max_ext takes the f32 mask; flash attention wants f16
        mask = s.cont(mask) if exact_attention else s.cast(mask, "f16")
        scale = 1.0 / math.sqrt(dh)
        kv_size = cache.element_bytes
        if gathered:  # each sequence's n_kv rows, one after another
            kv_rows = s.view_1d(ints, n_seq * n_kv, (3 * n + n_last) * I32_BYTES)
            kv_strides = (2 * d * kv_size, dh * kv_size, n_kv * 2 * d * kv_size)
            kv_offset = 0
        else:
            kv_strides = (2 * d * kv_size, dh * kv_size, cache.slot_bytes)
            kv_offset = shape.first_slot * cache.slot_bytes
        for layer, kv_cache in zip(w.layers, cache.layers, strict=True):
            h = s.layer_norm(x, layer.ln_1_g, layer.ln_1_b, c.layer_norm_epsilon)  # [d, N]
            qkv = _linear(s, layer.w_qkv, layer.b_qkv, h, by_column["w_qkv"])  # [3d, N]
            q = s.view_4d(
                qkv,
                (dh, n_q, nh, n_seq),
                (3 * d * F32_BYTES, dh * F32_BYTES, n_q * 3 * d * F32_BYTES),
                0,
            )  # [dh, n_q, nh, B]
            # K | V are adjacent in each qkv row: one cache write for both
            kv_new = s.view_2d(qkv, 2 * d, n, 3 * d * F32_BYTES, d * F32_BYTES)  # [2d, N]
            kv_all = s.set_rows(kv_cache, kv_new, rows)  # the cache, written
            if gathered:  # get_rows gives f32: cast back to the cache's type
                kv_all = s.get_rows(kv_all, kv_rows)  # [2d, n_kv B]
                if cache.dtype != "f32":
                    kv_all = s.cast(kv_all, cache.dtype)
            kv_shape = (dh, n_kv, nh, n_seq)
            k = s.view_4d(kv_all, kv_shape, kv_strides, kv_offset)  # [dh, n_kv, nh, B]
            v = s.view_4d(kv_all, kv_shape, kv_strides, kv_offset + d * kv_size)
            if exact_attention:
                kq = s.soft_max_ext(s.matmul(k, q), mask, scale)  # [n_kv, n_q, nh, B]
                v_t = s.cont(s.permute(v, 1, 0, 2, 3))  # [n_kv, dh, nh, B]
                attn = s.matmul(v_t, kq)  # [dh, n_q, nh, B]
                if n_q > 1:  # with one query both orders are the same memory
                    attn = s.cont(s.permute(attn, 0, 2, 1, 3))  # [dh, nh, n_q, B]
            else:
                q = _repeat_queries(s, q, n_fa)  # [dh, n_fa, nh, B]
                attn = s.flash_attn_ext(q, k, v, mask, scale)  # [dh, nh, n_fa, B]
                if n_fa > n_q:  # the rows of the added queries are dropped
                    attn = s.cont(
                        s.view_4d(
                            attn,
                            (dh, nh, n_q, n_seq),
                            (dh * F32_BYTES, d * F32_BYTES, n_fa * d * F32_BYTES),
                            0,
                        )
                    )  # [dh, nh, n_q, B]
            attn = s.reshape(attn, d, n)  # [d, N]
            x = s.add(x, _linear(s, layer.w_o, layer.b_o, attn, by_column["w_o"]))
            h = s.layer_norm(x, layer.ln_2_g, layer.ln_2_b, c.layer_norm_epsilon)  # [d, N]
            u = s.gelu_exact(_linear(s, layer.w_fc, layer.b_fc, h, by_column["w_fc"]))  # [d_ff, N]
            x = s.add(x, _linear(s, layer.w_proj, layer.b_proj, u, by_column["w_proj"]))  # [d, N]
        if shape.last_only:  # only the last real token of each sequence needs logits
            x = s.get_rows(x, s.view_1d(ints, n_seq, 3 * n * I32_BYTES))  # [d, n_seq]
        x = s.layer_norm(x, w.ln_f_g, w.ln_f_b, c.layer_norm_epsilon)  # [d, rows]
        lm_by_column = cpu and _by_column(root, w.wte)
        logits = _linear(s, w.wte, None, x, lm_by_column)  # [V, rows]: the tied head
        s.set_output(logits)
        out_ids = s.set_output(s.argmax(logits))  # [rows]
        s.realize(out_ids)
    except BaseException:
        s.close()
        raise
    return Graph(s, ints, out_ids, logits)


def _linear(s: Session, w: Tensor, b: Tensor | None, x: Tensor, by_column: bool) -> Tensor:
    """x W + b (b None: x W), [n_out, cols] from x [n_in, cols]. A packed w: our product
    (one order whatever cols). by_column: x is laid out [n_in, 1, cols], so ggml-cpu runs
    each column alone (vec_dot), never several together (tinyBLAS): the same sum for a
    column whatever cols."""
    if w.packed:
        y = s.packed_matmul(w, x)  # [n_out, cols]
    elif not by_column:
        y = s.matmul(w, x)  # [n_out, cols]
    else:
        n_in, cols = x.ne[0], x.ne[1]
        y = s.reshape(s.matmul(w, s.reshape(x, n_in, 1, cols)), w.ne[1], cols)  # [n_out, cols]
    return y if b is None else s.add(y, b)


def _by_column(root: Session, w: Tensor) -> bool:
    """Whether a decode step must lay x out a column at a time for w (module doc)."""
    return not w.packed and not _alone_as_among(root, w)


def _alone_as_among(root: Session, w: Tensor) -> bool:
    """Whether ggml, as built and on this CPU, gives a column of x W the same
    bits alone as among others: asked once a weight, with a random column
    alone and twice (tinyBLAS sums in another order than vec_dot or it does
    not: one column shows it)."""
    known = _ALONE_AS_AMONG.setdefault(root, {})
    if w.handle not in known:
        n_in = w.ne[0]
        x = np.random.default_rng(0).standard_normal(n_in, dtype=np.float32)
        with root.fork() as s:
            xs = s.input_2d_f32(2, n_in)  # [n_in, 2]: x twice
            alone = s.matmul(w, s.view_2d(xs, n_in, 1, n_in * F32_BYTES, 0))  # [n_out, 1]
            y = s.concat(alone, s.matmul(w, xs), 1)  # [n_out, 3]
            s.set_output(y)
            s.realize(y)
            out = s.compute_io(xs, np.stack([x, x]), y)  # [3, n_out]
        known[w.handle] = bool(np.array_equal(out[0], out[1]))
    return known[w.handle]


def _repeat_queries(s: Session, t: Tensor, n: int) -> Tensor:
    """t [a, q, b, c] with its q axis repeated (whole copies, then the first rows
    of one more) to n: [a, n, b, c]. t itself where q == n."""
    a, have, b, c = t.ne
    if have == n:
        return t
    reps = have
    while reps < n:
        t = s.concat(t, t, 1)  # contiguous [a, 2 reps, b, c]
        reps *= 2
    nb1 = a * t.nb[0]
    return s.view_4d(t, (a, n, b, c), (nb1, reps * nb1, b * reps * nb1), 0)


def bucket(n: int, limit: int) -> int:
    """Attention length for n positions: a power of two from 256, at most limit."""
    b = 256
    while b < n:
        b *= 2
    return min(b, limit)
