"""Per-layer weights of the ported engines, and what both port engines share.

A close port of the Ruby `GPT2BlockFFI`: per-head Q/K/V weights and biases
(declared so that `matmul(W, x)` is x·W), the output projection, the FFN and
the two LayerNorms, all F32 persistent tensors of one tinynn session.
Orientation (RUBY_ENGINE.md 3.2): a host weight W (in, out) is declared as
`input_2d(out, in)`, ne = [in, out], and uploaded transposed, so that
elem(ne0=i, ne1=o) = W[i][o]. V is computed transposed, so its bias is
ne = [1, d_head].

Every product of the ports goes through `port_matmul`, every LayerNorm through
`port_layer_norm` and every softmax through `port_softmax`. On the CPU these
are tinynn's port ops (native/port_dot.c, port_rows.c): each dot product, mean,
variance and exponential sum in an order the ports own, that of ggml-cpu's
AVX-512 build, with which the Ruby engine's dumps were made. ggml's own ops
reduce in another order in each of its CPU builds (8 lanes with AVX2, 4 with
SSE, tiled products with GGML_LLAMAFILE), so they reproduced the dumps only
where ggml loaded its AVX-512 variant; ours give the same bits on every x86-64
CPU (bench/NOTES.md, "The ports' reduction order"). On CUDA, ggml's ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.engine.base import Engine
from gpt2.engine.choice import choose_rows
from gpt2.engine.step import StepResult, StepRow
from gpt2.weights import GPT2Weights
from tinynn import Session, Tensor


def upload_transposed(t: Tensor, w: np.ndarray) -> None:
    """Uploads a host (in, out) weight into a tensor declared ne = [in, out]."""
    t.upload(np.ascontiguousarray(w.T, dtype=np.float32))


def upload_row_major(t: Tensor, a: np.ndarray) -> None:
    t.upload(np.ascontiguousarray(a, dtype=np.float32))


def port_matmul(sess: Session, a: Tensor, b: Tensor) -> Tensor:
    """matmul(a, b): a [k, M], b [k, N] -> [M, N]. On the CPU in the ports'
    own summation order (module doc); on CUDA, ggml's product."""
    if sess.device != "cpu":
        return sess.matmul(a, b)
    return sess.port_matmul(a, b)


def port_layer_norm(sess: Session, x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """LayerNorm along ne0 of x [d, T], then * gamma + beta; the normalization
    in the ports' own order on the CPU (module doc)."""
    if sess.device != "cpu":
        return sess.layer_norm(x, gamma, beta, eps)
    return sess.add(sess.mul(sess.port_norm(x, eps), gamma), beta)


def port_softmax(sess: Session, x: Tensor) -> Tensor:
    """Softmax along ne0 of x [n, rows]; in the ports' own order on the CPU."""
    if sess.device != "cpu":
        return sess.softmax(x)
    return sess.port_softmax(x)


class GPT2BlockFFI:
    """The persistent tensors of one transformer block."""

    def __init__(self, sess: Session, d_model: int, d_ff: int, n_heads: int):
        d_head = d_model // n_heads
        self.t_ln1_gamma = sess.input_1d_f32_persistent(d_model)
        self.t_ln1_beta = sess.input_1d_f32_persistent(d_model)
        self.t_ln2_gamma = sess.input_1d_f32_persistent(d_model)
        self.t_ln2_beta = sess.input_1d_f32_persistent(d_model)
        self.t_w_q = [sess.input_2d_f32_persistent(d_head, d_model) for _ in range(n_heads)]
        self.t_w_k = [sess.input_2d_f32_persistent(d_head, d_model) for _ in range(n_heads)]
        self.t_w_v = [sess.input_2d_f32_persistent(d_head, d_model) for _ in range(n_heads)]
        self.t_b_q = [sess.input_1d_f32_persistent(d_head) for _ in range(n_heads)]
        self.t_b_k = [sess.input_1d_f32_persistent(d_head) for _ in range(n_heads)]
        # ne = [1, d_head]: v is produced as [T, d_head]
        self.t_b_v = [sess.input_2d_f32_persistent(d_head, 1) for _ in range(n_heads)]
        self.t_w_o = sess.input_2d_f32_persistent(d_model, d_model)
        self.t_b_o = sess.input_1d_f32_persistent(d_model)
        self.t_w_ff1 = sess.input_2d_f32_persistent(d_ff, d_model)
        self.t_b_ff1 = sess.input_1d_f32_persistent(d_ff)
        self.t_w_ff2 = sess.input_2d_f32_persistent(d_model, d_ff)
        self.t_b_ff2 = sess.input_1d_f32_persistent(d_model)
        self.n_heads = n_heads
        self.d_head = d_head

    def upload_from(self, weights: GPT2Weights, layer: int) -> None:
        """Uploads layer `layer` of canonical (HF Conv1D) weights, split per head."""
        p = f"h.{layer}."
        d, dh = weights.config.n_embd, self.d_head
        upload_row_major(self.t_ln1_gamma, weights[p + "ln_1.weight"])
        upload_row_major(self.t_ln1_beta, weights[p + "ln_1.bias"])
        upload_row_major(self.t_ln2_gamma, weights[p + "ln_2.weight"])
        upload_row_major(self.t_ln2_beta, weights[p + "ln_2.bias"])
        c_attn_w = weights[p + "attn.c_attn.weight"]  # [d, 3d]: q | k | v
        c_attn_b = weights[p + "attn.c_attn.bias"]  # [3d]
        for h in range(self.n_heads):
            cols = slice(h * dh, (h + 1) * dh)
            for which, (t_w, t_b) in enumerate(
                ((self.t_w_q, self.t_b_q), (self.t_w_k, self.t_b_k), (self.t_w_v, self.t_b_v))
            ):
                w = c_attn_w[:, which * d : (which + 1) * d][:, cols]  # [d, d_head]
                b = c_attn_b[which * d : (which + 1) * d][cols]  # [d_head]
                upload_transposed(t_w[h], w)
                upload_row_major(t_b[h], b)
        upload_transposed(self.t_w_o, weights[p + "attn.c_proj.weight"])
        upload_row_major(self.t_b_o, weights[p + "attn.c_proj.bias"])
        upload_transposed(self.t_w_ff1, weights[p + "mlp.c_fc.weight"])
        upload_row_major(self.t_b_ff1, weights[p + "mlp.c_fc.bias"])
        upload_transposed(self.t_w_ff2, weights[p + "mlp.c_proj.weight"])
        upload_row_major(self.t_b_ff2, weights[p + "mlp.c_proj.bias"])

    def build_ffn(self, sess: Session, x: Tensor, eps: float, gelu: str) -> Tensor:
        """x + FFN(LN2(x)); x is [d, T]. gelu: "exact" (f32) or "ggml" (the
        original's ggml_gelu, an f16 table on the CPU)."""
        h2 = port_layer_norm(sess, x, self.t_ln2_gamma, self.t_ln2_beta, eps)  # [d, T]
        u = sess.add(port_matmul(sess, self.t_w_ff1, h2), self.t_b_ff1)  # [d_ff, T]
        g = sess.gelu(u) if gelu == "ggml" else sess.gelu_exact(u)  # [d_ff, T]
        f = sess.add(port_matmul(sess, self.t_w_ff2, g), self.t_b_ff2)  # [d, T]
        return sess.add(x, f)  # [d, T]

    def build_out_proj(self, sess: Session, heads: Sequence[Tensor]) -> Tensor:
        """Concatenated heads through W_o + b_o: [d_head, T] each -> [d, T]."""
        acc = heads[0]
        for head in heads[1:]:
            acc = sess.concat(acc, head, 0)  # [.. + d_head, T]
        return sess.add(port_matmul(sess, self.t_w_o, acc), self.t_b_o)  # [d, T]


class PortEngine(Engine):
    """What the two port engines share: the session's lifetime, the check that
    weights fit the dimensions the engine was realized for, and greedy picks
    on the host (the original engines download logits)."""

    DEVICE = "cpu"
    d_model: int
    d_ff: int
    n_heads: int
    n_layers: int
    vocab_size: int

    def __init__(
        self, n_threads: int | None = None, gelu: str = "exact", n_slots: int | None = None
    ):
        self._init_context(n_slots, "engine")
        self.sess: Session | None = None
        self.gelu = check_gelu(gelu)
        self.n_threads = n_threads
        self.realized = False
        self.d_model = self.d_ff = self.n_heads = self.d_head = 0
        self.n_layers = self.vocab_size = 0

    @property
    def device(self) -> str:
        return self.DEVICE

    def check_weights(self, weights: GPT2Weights) -> None:
        self._require_realized()
        c = weights.config
        want = (self.d_model, self.d_ff, self.n_heads, self.n_layers, self.vocab_size)
        got = (c.n_embd, c.d_ff, c.n_head, c.n_layer, c.vocab_size)
        if want != got:
            raise ValueError(
                f"weights have (d_model, d_ff, n_heads, n_layers, vocab) = {got}, "
                f"the engine was realized for {want}"
            )

    def _require_realized(self) -> None:
        if not self.realized or self.sess is None or self.sess.closed:
            raise ValueError("engine is not realized (call realize_for) or is closed")

    def _row_logits(self, row: StepRow) -> np.ndarray:
        """Logits [T, vocab] of row.tokens fed from row.position in row.slot."""
        raise NotImplementedError

    def _run(self, rows: list[StepRow], tokens: np.ndarray) -> StepResult:
        """Each row through the original graph, in turn; the choices on the host
        (the original engines download logits), all rows in one native call."""
        result = StepResult.empty(len(rows))
        every = [self._row_logits(r) for r in rows]
        for i, r in enumerate(rows):
            if r.logits == "all":
                result.logits[i] = every[i]
            elif r.logits == "last":
                result.logits[i] = every[i][-1]
        choose_rows(result, rows, list(range(len(rows))), np.stack([x[-1] for x in every]))
        return result

    def _free_device(self) -> None:
        if self.sess is not None:
            self.sess.close()
        self.realized = False


GELU_KINDS = ("exact", "ggml")


def check_gelu(gelu: str) -> str:
    if gelu not in GELU_KINDS:
        raise ValueError(f"gelu must be one of {GELU_KINDS}, got {gelu!r}")
    return gelu
