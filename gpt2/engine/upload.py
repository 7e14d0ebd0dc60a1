"""The fast engine's weights: declared in the root session, folded and uploaded.

LayerNorm gamma and beta are folded into the matmul that follows each norm
(W' = diag(gamma) W, b' = b + beta W), so a norm is one node; the final one is
folded into a separate unembedding matrix and bias. Q, K and V are one fused
matrix per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt2.config import GPT2Config
from gpt2.progress import progress
from gpt2.weights import GPT2Weights
from tinynn import Session, Tensor

WEIGHT_DTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 quantizes 32 values along the input axis together


@dataclass
class LayerWeights:
    w_qkv: Tensor  # [d, 3d], ln_1 folded in
    b_qkv: Tensor  # [3d]
    w_o: Tensor  # [d, d]
    b_o: Tensor  # [d]
    w_fc: Tensor  # [d, d_ff], ln_2 folded in
    b_fc: Tensor  # [d_ff]
    w_proj: Tensor  # [d_ff, d]
    b_proj: Tensor  # [d]


@dataclass
class FastWeights:
    wte: Tensor  # [d, V], read by get_rows
    lm_head: Tensor  # [d, V], ln_f folded in
    lm_bias: Tensor  # [V]
    wpe: Tensor  # [d, n_rows]
    layers: list[LayerWeights]


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


def declare_weights(s: Session, c: GPT2Config, dtype: str, n_rows: int) -> FastWeights:
    """The persistent weight tensors (before finalize_weights)."""

    def matrix(n_in: int, n_out: int) -> Tensor:
        kind = "f16" if dtype == "q8_0" and n_in % Q8_0_BLOCK else dtype
        return s.input_typed_persistent(kind, (n_in, n_out))

    def vector(n: int) -> Tensor:
        return s.input_typed_persistent("f32", (n,))

    d = c.n_embd
    return FastWeights(
        wte=matrix(d, c.vocab_size),
        lm_head=matrix(d, c.vocab_size),
        lm_bias=vector(c.vocab_size),
        wpe=s.input_typed_persistent("f32", (d, n_rows)),
        layers=[
            LayerWeights(
                w_qkv=matrix(d, 3 * d),
                b_qkv=vector(3 * d),
                w_o=matrix(d, d),
                b_o=vector(d),
                w_fc=matrix(d, c.d_ff),
                b_fc=vector(c.d_ff),
                w_proj=matrix(c.d_ff, d),
                b_proj=vector(d),
            )
            for _ in range(c.n_layer)
        ],
    )


def upload_weights(fw: FastWeights, weights: GPT2Weights, n_rows: int, device: str) -> None:
    """Folds and uploads canonical weights into the declared tensors."""
    c = weights.config
    put(fw.wte, weights["wte"])
    w_head, b_head = fold_layer_norm(
        weights["ln_f.weight"], weights["ln_f.bias"], weights["wte"].T, np.zeros(c.vocab_size)
    )
    put(fw.lm_head, w_head.T)
    put(fw.lm_bias, b_head)
    put(fw.wpe, weights["wpe"][:n_rows])
    layers = progress(enumerate(fw.layers), f"uploading to {device}", len(fw.layers))
    for i, layer in layers:
        p = f"h.{i}."
        w, b = _folded(weights, p + "ln_1", p + "attn.c_attn")
        put(layer.w_qkv, w.T)
        put(layer.b_qkv, b)
        put(layer.w_o, weights[p + "attn.c_proj.weight"].T)
        put(layer.b_o, weights[p + "attn.c_proj.bias"])
        w, b = _folded(weights, p + "ln_2", p + "mlp.c_fc")
        put(layer.w_fc, w.T)
        put(layer.b_fc, b)
        put(layer.w_proj, weights[p + "mlp.c_proj.weight"].T)
        put(layer.b_proj, weights[p + "mlp.c_proj.bias"])


def put(t: Tensor, a: np.ndarray) -> None:
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
