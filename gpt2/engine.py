"""The fast engine: GPT-2 as few ggml nodes as we can make it, built once.

What makes it fast (bench/NOTES.md has the measurements):
- LayerNorm gamma and beta are folded into the matmul that follows each norm
  (W' = diag(gamma) W, b' = b + beta W), so a norm is one node; the final one
  is folded into a separate unembedding matrix and bias.
- One fused QKV matmul per layer; Q, K and V are views of its output.
- K and V of a position go together into one row of the layer's f16 cache
  (one set_rows at runtime row indices: K | V are adjacent in the QKV output),
  and attention is one flash_attn_ext over the cache with a mask; the mask is a
  row of a persistent causal table picked by position (get_rows), so nothing
  but one small int32 vector is uploaded per step.
- Except for f32 weights on CUDA, which compute in f32 throughout: ggml-cuda's
  flash attention reads K and V as f16, so attention there is softmax(K^T Q) V
  as separate nodes over f32 caches (`exact_attention`), and prefills of 4..16
  tokens are padded off ggml-cuda's TF32 kernel (`pad_prefill`, gpt2.tf32).
- Each graph (prefill of T tokens; decode of B sequences over a context
  bucket) is built once in its own forked session and then recomputed with
  new inputs, which lets ggml-cuda replay it as a CUDA graph.
- Greedy picks happen on the device: a step downloads B int32 ids.

Cache layout: per layer one tensor of ne = [2 n_embd, n_rows * B] (row = K | V
of one position of one sequence, heads side by side), read by attention
through views ne = [d_head, n_kv, n_head, B]. n_rows is n_ctx, or 17 where
n_ctx is shorter and a short prompt must be padded to 17 (pad_prefill).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpt2.ffi_blocks import check_ids
from gpt2.progress import progress
from gpt2.tf32 import STRICT_F32_COLUMNS, TF32_COLUMNS
from gpt2.weights import GPT2Weights
from tinynn import Session, Tensor

F32, F16 = 4, 2  # bytes
WEIGHT_DTYPES = ("f32", "f16", "q8_0")
MAX_PREFILL_GRAPHS = 4  # prefill graphs kept, by token count (least recently used go)


@dataclass
class _Layer:
    w_qkv: Tensor  # [d, 3d]
    b_qkv: Tensor  # [3d]
    w_o: Tensor  # [d, d]
    b_o: Tensor  # [d]
    w_fc: Tensor  # [d, d_ff]
    b_fc: Tensor  # [d_ff]
    w_proj: Tensor  # [d_ff, d]
    b_proj: Tensor  # [d]
    kv_cache: Tensor  # kv_dtype [2d, n_ctx * B]: row p holds K | V of position p


@dataclass
class _Graph:
    """One built and realized graph in its own forked session."""

    sess: Session
    ints: Tensor  # i32 [3N (+B)]: tokens | positions | cache rows (| last rows)
    out_ids: Tensor  # i32 [rows]: argmax of each logits row
    logits: Tensor  # f32 [V, rows]: kept for sampling and logits()


def fold_layer_norm(
    gamma: np.ndarray, beta: np.ndarray, w: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(diag(gamma) W, b + beta W) in float64: norm(x)*g + beta then x W + b,
    as norm(x) W' + b'. w is (in, out)."""
    w64 = w.astype(np.float64)
    return gamma.astype(np.float64)[:, None] * w64, b.astype(np.float64) + beta.astype(
        np.float64
    ) @ w64


def _folded(weights: GPT2Weights, norm: str, linear: str) -> tuple[np.ndarray, np.ndarray]:
    """The LayerNorm named `norm` folded into the linear layer named `linear`."""
    return fold_layer_norm(
        weights[norm + ".weight"],
        weights[norm + ".bias"],
        weights[linear + ".weight"],
        weights[linear + ".bias"],
    )


class FastGPT2:
    """GPT-2 on one device with f32, f16 or q8_0 weights.

    ``n_ctx`` bounds positions (default: the model's context); ``max_batch``
    is how many sequences ``start_batch`` and ``step_batch_greedy`` run together.
    ``exact_attention`` (softmax(K^T Q) V in f32 over f32 caches instead of
    flash attention) and ``pad_prefill`` (prefills of 4..16 tokens computed
    as 17) default to on for f32 weights on CUDA and off elsewhere; True or
    False forces them, on any device.
    """

    def __init__(
        self,
        weights: GPT2Weights,
        device: str = "cpu",
        dtype: str = "f32",
        *,
        n_ctx: int | None = None,
        max_batch: int = 1,
        n_threads: int | None = None,
        exact_attention: bool | None = None,
        pad_prefill: bool | None = None,
    ):
        if dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
        c = self.config = weights.config
        self.n_ctx = n_ctx or c.n_positions
        if not 0 < self.n_ctx <= c.n_positions:
            raise ValueError(f"n_ctx={self.n_ctx} must be in 1..{c.n_positions}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device, self.dtype, self.max_batch = device, dtype, max_batch
        cuda_f32 = device == "cuda" and dtype == "f32"
        self.exact_attention = cuda_f32 if exact_attention is None else exact_attention
        self.pad_prefill = cuda_f32 if pad_prefill is None else pad_prefill
        # cache (and position, mask) rows per sequence: room for a padded prefill
        # even when n_ctx, the user's bound on positions, is shorter
        padded = min(max(self.n_ctx, STRICT_F32_COLUMNS), c.n_positions)
        self.n_rows = padded if self.pad_prefill else self.n_ctx
        # ggml-cuda's flash attention reads f16 K/V (it would convert f32 every
        # step); on the CPU an f32 model keeps an f32 cache, for parity, and so
        # does exact attention.
        cpu_f32 = device == "cpu" and dtype == "f32"
        self.kv_dtype = "f32" if cpu_f32 or self.exact_attention else "f16"
        self.root = Session(device, n_threads=n_threads)
        try:
            self._declare(dtype)
            self.root.finalize_weights()  # zeroed: empty caches
            self._upload(weights, dtype)
            self._mask_table_upload()
        except BaseException:
            self.root.close()
            raise
        # by (sequences, tokens computed per sequence, all logits)
        self._prefill_graphs: OrderedDict[tuple[int, int, bool], _Graph] = OrderedDict()
        self._decode: dict[tuple[int, int], _Graph] = {}
        self._positions: list[int] = []  # next position of each sequence
        self.decode_graph_builds = 0

    # -- weights ------------------------------------------------------------------
    def _weight(self, dtype: str, n_in: int, n_out: int) -> Tensor:
        if dtype == "q8_0" and n_in % 32:
            dtype = "f16"  # q8_0 blocks are 32 wide along the input axis
        return self.root.input_typed_persistent(dtype, (n_in, n_out))

    def _declare(self, dtype: str) -> None:
        c, s = self.config, self.root
        d, rows = c.n_embd, self.n_rows * self.max_batch
        self.wte = self._weight(dtype, d, c.vocab_size)  # [d, V] for get_rows
        self.lm_head = self._weight(dtype, d, c.vocab_size)  # [d, V], ln_f folded in
        self.lm_bias = s.input_typed_persistent("f32", (c.vocab_size,))
        self.wpe = s.input_typed_persistent("f32", (d, self.n_rows))  # [d, n_rows]
        # Row p: 0 for keys 0..p, -inf after (the causal mask of a query at p).
        self.mask_table = s.input_typed_persistent("f32", (self.n_rows, self.n_rows))
        self.layers = [
            _Layer(
                w_qkv=self._weight(dtype, d, 3 * d),
                b_qkv=s.input_typed_persistent("f32", (3 * d,)),
                w_o=self._weight(dtype, d, d),
                b_o=s.input_typed_persistent("f32", (d,)),
                w_fc=self._weight(dtype, d, c.d_ff),
                b_fc=s.input_typed_persistent("f32", (c.d_ff,)),
                w_proj=self._weight(dtype, c.d_ff, d),
                b_proj=s.input_typed_persistent("f32", (d,)),
                kv_cache=s.input_typed_persistent(self.kv_dtype, (2 * d, rows)),
            )
            for _ in range(c.n_layer)
        ]

    def _upload(self, weights: GPT2Weights, dtype: str) -> None:
        c = self.config
        _put(self.wte, weights["wte"])
        w_head, b_head = fold_layer_norm(
            weights["ln_f.weight"], weights["ln_f.bias"], weights["wte"].T, np.zeros(c.vocab_size)
        )
        _put(self.lm_head, w_head.T)
        _put(self.lm_bias, b_head)
        _put(self.wpe, weights["wpe"][: self.n_rows])
        layers = progress(enumerate(self.layers), f"uploading to {self.device}", len(self.layers))
        for i, layer in layers:
            p = f"h.{i}."
            w, b = _folded(weights, p + "ln_1", p + "attn.c_attn")
            _put(layer.w_qkv, w.T)
            _put(layer.b_qkv, b)
            _put(layer.w_o, weights[p + "attn.c_proj.weight"].T)
            _put(layer.b_o, weights[p + "attn.c_proj.bias"])
            w, b = _folded(weights, p + "ln_2", p + "mlp.c_fc")
            _put(layer.w_fc, w.T)
            _put(layer.b_fc, b)
            _put(layer.w_proj, weights[p + "mlp.c_proj.weight"].T)
            _put(layer.b_proj, weights[p + "mlp.c_proj.bias"])

    def _mask_table_upload(self) -> None:
        n = self.n_rows
        table = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
        self.mask_table.upload(table)

    # -- graphs -------------------------------------------------------------------
    def _build(self, n_seq: int, n_q: int, n_kv: int, last_only: bool) -> _Graph:
        """A graph for n_seq sequences of n_q new tokens each, attending over
        the first n_kv cache rows of each sequence. last_only: logits of one
        token per sequence, picked by a runtime index (the real last token of
        a padded prompt)."""
        c, d, dh, nh = self.config, self.config.n_embd, self.config.d_head, self.config.n_head
        n = n_seq * n_q
        s = self.root.fork()
        try:
            ints = s.input_typed("i32", (3 * n + (n_seq if last_only else 0),))
            tokens = s.view_1d(ints, n, 0)
            positions = s.view_1d(ints, n, n * 4)
            rows = s.view_1d(ints, n, 2 * n * 4)
            x = s.add(s.get_rows(self.wte, tokens), s.get_rows(self.wpe, positions))  # [d, N]
            mask = s.get_rows(self.mask_table, positions)  # [n_rows, N]
            mask = s.view_2d(mask, n_kv, n, self.n_rows * F32, 0)  # [n_kv, N]
            # soft_max_ext takes the f32 mask; flash attention wants f16
            mask = s.cont(mask) if self.exact_attention else s.cast(mask, "f16")
            mask = s.reshape(mask, n_kv, n_q, 1, n_seq)  # broadcast over heads
            scale = 1.0 / math.sqrt(dh)
            kv_size = F32 if self.kv_dtype == "f32" else F16
            seq_stride = self.n_rows * 2 * d * kv_size
            for layer in self.layers:
                h = s.layer_norm(x, None, None, c.layer_norm_epsilon)  # [d, N]
                qkv = s.add(s.matmul(layer.w_qkv, h), layer.b_qkv)  # [3d, N]
                q = s.view_4d(
                    qkv, (dh, n_q, nh, n_seq), (3 * d * F32, dh * F32, n_q * 3 * d * F32), 0
                )
                # K | V are adjacent in each qkv row: one cache write for both
                kv_new = s.view_2d(qkv, 2 * d, n, 3 * d * F32, d * F32)  # [2d, N]
                kv_all = s.set_rows(layer.kv_cache, kv_new, rows)  # the cache, written
                kv_shape = (dh, n_kv, nh, n_seq)
                kv_strides = (2 * d * kv_size, dh * kv_size, seq_stride)
                k = s.view_4d(kv_all, kv_shape, kv_strides, 0)  # [dh, n_kv, nh, B]
                v = s.view_4d(kv_all, kv_shape, kv_strides, d * kv_size)
                if self.exact_attention:
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
            if last_only:  # only the last real token of each sequence needs logits
                x = s.get_rows(x, s.view_1d(ints, n_seq, 3 * n * 4))  # [d, n_seq]
            x = s.layer_norm(x, None, None, c.layer_norm_epsilon)
            logits = s.add(s.matmul(self.lm_head, x), self.lm_bias)  # [V, rows]
            s.set_output(logits)
            out_ids = s.set_output(s.argmax(logits))  # [rows]
            s.realize(out_ids)
        except BaseException:
            s.close()
            raise
        return _Graph(s, ints, out_ids, logits)

    def _run(self, g: _Graph, ints: list[np.ndarray], logits: bool) -> np.ndarray:
        """Uploads tokens, positions, cache rows (and last rows), computes, and
        returns the greedy ids, or the logits rows [rows, vocab]: one native
        call, one wait for the device."""
        data = np.concatenate(ints).astype(np.int32)
        if not logits:
            return g.sess.compute_io(g.ints, data, g.out_ids)
        return g.sess.compute_io(g.ints, data, g.logits).reshape(-1, self.config.vocab_size)

    def _prefill_graph(self, n_seq: int, n_q: int, all_logits: bool) -> _Graph:
        key = (n_seq, n_q, all_logits)
        g = self._prefill_graphs.pop(key, None)
        if g is None:
            g = self._build(n_seq, n_q, _bucket(n_q, self.n_rows), last_only=not all_logits)
            while len(self._prefill_graphs) >= MAX_PREFILL_GRAPHS:
                self._prefill_graphs.popitem(last=False)[1].sess.close()
        self._prefill_graphs[key] = g
        return g

    def _decode_graph(self, n_seq: int, n_kv: int) -> _Graph:
        key = (n_seq, n_kv)
        if key not in self._decode:
            self._decode[key] = self._build(n_seq, 1, n_kv, last_only=False)
            self.decode_graph_builds += 1
        return self._decode[key]

    # -- public -------------------------------------------------------------------
    @property
    def max_positions(self) -> int:
        return self.n_ctx

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] of every position of one sequence from position 0."""
        rows = self._prefill([token_ids], all_logits=True, logits=True)
        return rows[: len(token_ids)]  # without the padding

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prefill one sequence; logits [vocab] of its last token."""
        return self._prefill([prompt_ids], logits=True)[0]

    def start_greedy(self, prompt_ids: Sequence[int]) -> int:
        return int(self._prefill([prompt_ids])[0])

    def _prefill(
        self, prompts: Sequence[Sequence[int]], all_logits: bool = False, logits: bool = False
    ) -> np.ndarray:
        """Runs the prompts from position 0 in one graph, sequence i into cache
        slot i. Shorter prompts are padded to the longest (all_logits: one
        prompt only). Returns the greedy ids, or the logits rows (logits)."""
        if not 1 <= len(prompts) <= self.max_batch:
            raise ValueError(
                f"{len(prompts)} sequences, this model holds 1..{self.max_batch} (max_batch)"
            )
        ids = [self._check_prompt(p) for p in prompts]
        lengths = np.array([len(i) for i in ids])
        n_seq = len(ids)
        n_q = self._prefill_length(n_seq, int(lengths.max()))
        g = self._prefill_graph(n_seq, n_q, all_logits)
        # Padding: id 0 at positions t..n_q-1, written to those cache rows of its
        # own sequence. Real queries never attend past themselves, and decode at
        # position p overwrites row p before any query reads it.
        tokens = np.zeros((n_seq, n_q), dtype=np.int32)
        for i, seq in enumerate(ids):
            tokens[i, : len(seq)] = seq
        positions = np.tile(np.arange(n_q), n_seq)
        rows = np.repeat(np.arange(n_seq) * self.n_rows, n_q) + positions
        ints = [tokens.reshape(-1), positions, rows]
        if not all_logits:
            ints.append(np.arange(n_seq) * n_q + lengths - 1)  # the real last tokens
        out = self._run(g, ints, logits)
        self._positions = lengths.tolist()
        return out

    def _prefill_length(self, n_seq: int, t: int) -> int:
        """Tokens per sequence that a prefill of n_seq prompts of t computes:
        t, or 17 where its products would have 4..16 columns (TF32_COLUMNS)
        and pad_prefill is on. A model whose whole context is shorter than 17
        has no room: t (TF32)."""
        padded = STRICT_F32_COLUMNS
        tf32 = t in TF32_COLUMNS or n_seq * t in TF32_COLUMNS  # attention, weights
        return padded if self.pad_prefill and tf32 and padded <= self.n_rows else t

    def step(self, token_id: int) -> np.ndarray:
        return self._step([token_id], logits=True)[0]

    def step_greedy(self, token_id: int) -> int:
        return int(self._step([token_id])[0])

    def start_batch(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Prefills several sequences together (any lengths); their greedy next
        ids. Decode then runs them together, each at its own position."""
        return [int(t) for t in self._prefill(prompts)]

    def step_batch_greedy(self, token_ids: Sequence[int]) -> list[int]:
        """One decode step of every sequence started by start_batch."""
        return [int(t) for t in self._step(token_ids)]

    def _step(self, token_ids: Sequence[int], logits: bool = False) -> np.ndarray:
        """One decode step of every started sequence: their greedy ids, or
        their logits rows (logits)."""
        n_seq = len(self._positions)
        if n_seq == 0:
            raise ValueError("no sequence started: call start() first")
        if len(token_ids) != n_seq:
            raise ValueError(f"expected {n_seq} token ids, got {len(token_ids)}")
        ids = check_ids(token_ids, self.config.vocab_size)
        pos = np.asarray(self._positions, dtype=np.int32)
        if int(pos.max()) >= self.n_ctx:
            raise ValueError(f"position {int(pos.max())} is past the context ({self.n_ctx})")
        g = self._decode_graph(n_seq, _bucket(int(pos.max()) + 1, self.n_ctx))
        out = self._run(g, [ids, pos, np.arange(n_seq) * self.n_rows + pos], logits)
        self._positions = [p + 1 for p in self._positions]
        return out

    def _check_prompt(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = check_ids(token_ids, self.config.vocab_size)
        if len(ids) > self.n_ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens, the context holds {self.n_ctx}")
        return ids

    def close(self) -> None:
        for g in list(self._prefill_graphs.values()) + list(self._decode.values()):
            g.sess.close()
        self._prefill_graphs.clear()
        self._decode.clear()
        self.root.close()

    def __enter__(self) -> FastGPT2:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bucket(n: int, limit: int) -> int:
    """Attention length for n positions: a power of two from 256, at most limit."""
    b = 256
    while b < n:
        b *= 2
    return min(b, limit)


def _put(t: Tensor, a: np.ndarray) -> None:
    """Uploads host data converted to the tensor's type (q8_0 quantized here)."""
    a = np.ascontiguousarray(a)
    if t.dtype == "f32":
        t.upload(a.astype(np.float32))
    elif t.dtype == "f16":
        t.upload(a.astype(np.float16))
    else:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize

        t.upload(quantize(a.astype(np.float32), GGMLQuantizationType.Q8_0).reshape(-1))
