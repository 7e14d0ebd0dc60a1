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
from gpt2.weights import GPT2Weights, to_f32
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
    """Folds and uploads the weights into the declared tensors, one layer at a time: each
    tensor is read from the model file when its turn comes (gpt2.weights), tensors the
    engine takes as they are stored go up in the file's own type, and the folded ones are
    computed in float64 for one layer (the head: a slice of rows) at a time."""
    put_stored(fw.wte, weights, "wte")
    _upload_head(fw, weights)
    put(fw.wpe, weights["wpe"][:n_rows], "wpe")
    layers = progress(enumerate(fw.layers), f"uploading to {device}", len(fw.layers))
    for i, layer in layers:
        p = f"h.{i}."
        w, b = _folded(weights, p + "ln_1", p + "attn.c_attn")
        put(layer.w_qkv, w.T, p + "attn.c_attn.weight (ln_1 folded in)")
        put(layer.b_qkv, b, p + "attn.c_attn.bias (ln_1 folded in)")
        put_stored(layer.w_o, weights, p + "attn.c_proj.weight", transposed=True)
        put(layer.b_o, weights[p + "attn.c_proj.bias"], p + "attn.c_proj.bias")
        w, b = _folded(weights, p + "ln_2", p + "mlp.c_fc")
        put(layer.w_fc, w.T, p + "mlp.c_fc.weight (ln_2 folded in)")
        put(layer.b_fc, b, p + "mlp.c_fc.bias (ln_2 folded in)")
        put_stored(layer.w_proj, weights, p + "mlp.c_proj.weight", transposed=True)
        put(layer.b_proj, weights[p + "mlp.c_proj.bias"], p + "mlp.c_proj.bias")


HEAD_ROWS = 4096  # vocabulary rows of the folded head computed at once (25 MB of f64 at d=768)


def _upload_head(fw: FastWeights, weights: GPT2Weights) -> None:
    """lm_head = wte with ln_f folded in (row j: gamma * wte[j]; bias j: beta . wte[j]),
    a slice of rows at a time: the same numbers as folding the whole matrix at once."""
    gamma, beta = weights["ln_f.weight"], weights["ln_f.bias"]
    stored = weights.stored("wte")
    if stored is None:
        kind, wte = "F32", weights["wte"]
    else:
        kind, wte = stored
    vocab, d = weights.config.vocab_size, weights.config.n_embd
    row_bytes = _row_bytes(fw.lm_head.dtype, d)
    bias = np.empty(vocab, np.float64)
    for r0 in range(0, vocab, HEAD_ROWS):
        rows = to_f32(kind, wte[r0 : r0 + HEAD_ROWS], (-1, d))
        w, b = fold_layer_norm(gamma, beta, rows.T, np.zeros(len(rows)))
        put(fw.lm_head, w.T, "wte (ln_f folded in, the output head)", offset=r0 * row_bytes)
        bias[r0 : r0 + len(rows)] = b
    put(fw.lm_bias, bias, "the output head's bias (ln_f folded in)")


def _row_bytes(dtype: str, n: int) -> int:
    if dtype == "q8_0":
        return n // Q8_0_BLOCK * (Q8_0_BLOCK + 2)  # 32 int8 values and an f16 scale per block
    return n * (2 if dtype == "f16" else 4)


_STORED_AS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


def put_stored(t: Tensor, weights: GPT2Weights, name: str, transposed: bool = False) -> None:
    """Uploads canonical tensor `name` (`transposed`: name.T). Where the file stores it in
    the tensor's own type it goes up as it is, bytes unchanged (the same numbers as
    converting it: f16 -> f32 -> f16 and q8_0 -> f32 -> q8_0 are exact); else `put`."""
    stored = weights.stored(name, transposed)
    if stored is not None and stored[0] == _STORED_AS[t.dtype]:
        t.upload(np.ascontiguousarray(stored[1]).reshape(-1) if t.dtype == "q8_0" else stored[1])
        return
    x = weights[name]
    put(t, x.T if transposed else x, name)


def put(t: Tensor, a: np.ndarray, name: str = "tensor", offset: int = 0) -> None:
    """Uploads host data converted to the tensor's type (q8_0 quantized here) at byte
    `offset`. ValueError naming `name` when a value does not fit the type (f16 past 65504,
    a q8_0 block scale past f16's range): it would be inf or NaN on the device."""
    a = np.ascontiguousarray(a)
    if t.dtype == "f32":
        t.upload(a.astype(np.float32), offset)
        return
    if t.dtype == "f16":
        with np.errstate(over="ignore"):  # checked just below
            out = a.astype(np.float16)
        ok = np.isfinite(out).all()
    else:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize

        with np.errstate(over="ignore"):
            out = quantize(a.astype(np.float32), GGMLQuantizationType.Q8_0).reshape(-1)
        ok = np.isfinite(out.reshape(-1, Q8_0_BLOCK + 2)[:, :2].copy().view(np.float16)).all()
    if not ok:
        raise ValueError(
            f"{name}: values up to {float(np.max(np.abs(a))):.3g} do not fit {t.dtype} "
            f"(f16's largest is 65504; q8_0's is 127 x that): load it with dtype='f32'"
        )
    t.upload(out, offset)
