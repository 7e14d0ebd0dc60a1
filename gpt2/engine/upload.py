"""The fast engine's weights: declared in the root session, folded and uploaded.

LayerNorm gamma and beta are folded into the matmul that follows each norm
(W' = diag(gamma) W, b' = b + beta W), so a norm is one node; the final one is
folded into a separate unembedding matrix and bias. Q, K and V are one fused
matrix per layer.

Uploading streams: every 2-D weight goes from the file to the backend a slice of rows at a
time (`Rows`, gpt2.weights), in the file's own type where the engine takes that type, so no
copy of the model, in any type, is ever held. A few threads read and convert slices (pread
and numpy's casts release the GIL) while the main thread uploads them in order; slices in
flight are bounded (`WORKERS`, `SLICE_VALUES`). Folding keeps the arithmetic of
`fold_layer_norm` exactly (the same products in float64, the same casts, the bias's product
as the same BLAS call on an array of the same layout), so the logits are bit-identical to
folding whole tensors.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gpt2.config import GPT2Config
from gpt2.progress import progress
from gpt2.weights import GPT2Weights, Rows, to_f32
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


WORKERS = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
SLICE_VALUES = 1 << 20  # values in one slice of rows (8 MB as float64); 2 x WORKERS in flight
HEAD_ROWS = 4096  # vocabulary rows whose folded head bias is one product (25 MB of f64 at d=768)
_STORED_AS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


def upload_weights(fw: FastWeights, weights: GPT2Weights, n_rows: int, device: str) -> None:
    """Folds and uploads the weights into the declared tensors, streaming (see the module's
    docstring): wte is read once, for the embedding and the folded head; the layers follow,
    one after another."""
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="upload") as pool:
        try:
            for step in _in_order(pool, _steps(fw, weights, n_rows, device), 2 * WORKERS):
                step()
        finally:
            pool.shutdown(cancel_futures=True)


# A step: a job for a worker thread (read and convert one slice), and what the main thread
# does with its result (upload it, in order; the last slice of a folded tensor: its bias).
Step = tuple[Callable[[], object], Callable[[object], None]]


def _in_order(pool: ThreadPoolExecutor, steps: Iterable[Step], depth: int) -> Iterator[Callable]:
    """Runs the steps' jobs on `pool`, at most `depth` at once, and yields, in order, each
    step's second part bound to its job's result."""
    pending: deque[tuple[Future, Callable[[object], None]]] = deque()
    for job, then in steps:
        pending.append((pool.submit(job), then))
        if len(pending) >= depth:
            future, then = pending.popleft()
            yield _bind(then, future.result())
    while pending:
        future, then = pending.popleft()
        yield _bind(then, future.result())


def _bind(then: Callable[[object], None], result: object) -> Callable[[], None]:
    return lambda: then(result)


def _steps(fw: FastWeights, weights: GPT2Weights, n_rows: int, device: str) -> Iterator[Step]:
    yield from _embedding_and_head(fw, weights)
    yield (lambda: _engine_type("f32", weights["wpe"][:n_rows], "wpe")), fw.wpe.upload
    layers = progress(enumerate(fw.layers), f"uploading to {device}", len(fw.layers))
    for i, layer in layers:
        p = f"h.{i}."
        yield from _folded(weights, layer.w_qkv, layer.b_qkv, p + "ln_1", p + "attn.c_attn")
        yield from _stream(
            layer.w_o, weights.rows(p + "attn.c_proj.weight", True), p + "attn.c_proj.weight"
        )
        yield _small(layer.b_o, weights, p + "attn.c_proj.bias")
        yield from _folded(weights, layer.w_fc, layer.b_fc, p + "ln_2", p + "mlp.c_fc")
        yield from _stream(
            layer.w_proj, weights.rows(p + "mlp.c_proj.weight", True), p + "mlp.c_proj.weight"
        )
        yield _small(layer.b_proj, weights, p + "mlp.c_proj.bias")


def _small(t: Tensor, weights: GPT2Weights, name: str) -> Step:
    """A 1-D tensor, read and converted whole."""
    return (lambda: _engine_type(t.dtype, weights[name], name)), t.upload


def _slices(n: int, width: int, start: int = 0) -> Iterator[tuple[int, int]]:
    step = max(1, SLICE_VALUES // max(width, 1))
    for r0 in range(start, start + n, step):
        yield r0, min(r0 + step, start + n)


def _stream(t: Tensor, rows: Rows, name: str) -> Iterator[Step]:
    """Tensor t ([rows, width] in numpy terms) from `rows`, as they are where they are stored
    in t's type (bytes unchanged: the same numbers as converting them, f16 -> f32 -> f16
    and q8_0 -> f32 -> q8_0 being exact), else converted from float32 as `put` does."""
    row_bytes = t.nbytes // rows.shape[0]
    for r0, r1 in _slices(*rows.shape):
        yield (
            (lambda r0=r0, r1=r1: _unfolded(t.dtype, rows, rows.read(r0, r1), name)),
            _upload_at(t, r0 * row_bytes),
        )


def _unfolded(dtype: str, rows: Rows, data: np.ndarray, name: str) -> np.ndarray:
    """Rows `data` (as rows.read gives them) in engine type `dtype`."""
    if rows.kind == _STORED_AS[dtype]:
        return np.ascontiguousarray(data).reshape(-1) if dtype == "q8_0" else data
    return _engine_type(dtype, to_f32(rows.kind, data, (len(data), rows.shape[1])), name)


def _upload_at(t: Tensor, offset: int) -> Callable[[np.ndarray], None]:
    return lambda data: t.upload(data, offset)


def _exact_in_f64(rows: Rows, data: np.ndarray) -> np.ndarray:
    """Rows `data` (as rows.read gives them) in a type whose values are the float32 values
    `GPT2Weights[...]` gives, and which float64 holds exactly: f16 and f32 as they are (f16
    -> f32 -> f64 and f16 -> f64 agree), other kinds through float32."""
    if rows.kind in ("F16", "F32"):
        return data
    return to_f32(rows.kind, data, (len(data), rows.shape[1]))


def _folded(weights: GPT2Weights, w: Tensor, b: Tensor, norm: str, linear: str) -> Iterator[Step]:
    """The LayerNorm `norm` folded into the linear layer `linear` (its weight [in, out]) as
    fold_layer_norm does, a slice of output rows at a time: each worker scales its rows
    and writes them, unscaled, into the [in, out] float64 matrix whose product with beta
    (one call, as fold_layer_norm makes it) gives the bias after the last slice."""
    gamma = weights[norm + ".weight"].astype(np.float64)
    beta = weights[norm + ".bias"].astype(np.float64)
    rows = weights.rows(linear + ".weight", transposed=True)  # [out, in]
    n_out, n_in = rows.shape
    w64 = np.empty((n_in, n_out))  # W, for the bias: fold_layer_norm's layout (C, [in, out])
    name = linear + ".weight (" + norm.rsplit(".", 1)[-1] + " folded in)"
    row_bytes = w.nbytes // n_out

    def job(r0: int, r1: int) -> np.ndarray:
        x = _exact_in_f64(rows, rows.read(r0, r1))
        w64[:, r0:r1] = x.T  # widened to float64 as it is written
        return _engine_type(w.dtype, np.multiply(x, gamma, dtype=np.float64), name)

    for r0, r1 in _slices(n_out, n_in):
        yield (lambda r0=r0, r1=r1: job(r0, r1)), _upload_at(w, r0 * row_bytes)

    def bias(_: object) -> None:
        b64 = weights[linear + ".bias"].astype(np.float64) + beta @ w64
        put(b, b64, linear + ".bias (" + norm.rsplit(".", 1)[-1] + " folded in)")

    yield (lambda: None), bias


def _embedding_and_head(fw: FastWeights, weights: GPT2Weights) -> Iterator[Step]:
    """wte, read once a slice at a time, into the embedding and into the head: lm_head =
    wte with ln_f folded in (row j: gamma * wte[j]; bias j: beta . wte[j]), its bias one
    product per HEAD_ROWS rows, as fold_layer_norm gives it for those rows."""
    gamma = weights["ln_f.weight"].astype(np.float64)
    beta = weights["ln_f.bias"].astype(np.float64)
    rows = weights.rows("wte")
    vocab, d = rows.shape
    wte_row, head_row = fw.wte.nbytes // vocab, fw.lm_head.nbytes // vocab
    bias = np.empty(vocab, np.float64)
    head_name = "wte (ln_f folded in, the output head)"
    for g0 in range(0, vocab, HEAD_ROWS):
        g1 = min(g0 + HEAD_ROWS, vocab)
        w64 = np.empty((g1 - g0, d))  # its rows' float64 values; the product takes w64.T

        def job(r0: int, r1: int, g0: int = g0, w64: np.ndarray = w64):
            data = rows.read(r0, r1)
            x64 = w64[r0 - g0 : r1 - g0]
            x64[...] = _exact_in_f64(rows, data)
            embedding = _unfolded(fw.wte.dtype, rows, data, "wte")
            return embedding, _engine_type(fw.lm_head.dtype, x64 * gamma, head_name)

        def upload(result, r0: int) -> None:
            fw.wte.upload(result[0], r0 * wte_row)
            fw.lm_head.upload(result[1], r0 * head_row)

        for r0, r1 in _slices(g1 - g0, d, g0):
            yield (
                (lambda r0=r0, r1=r1, job=job: job(r0, r1)),
                (lambda res, r0=r0, upload=upload: upload(res, r0)),
            )

        def group_bias(_: object, g0: int = g0, g1: int = g1, w64: np.ndarray = w64) -> None:
            bias[g0:g1] = np.zeros(g1 - g0) + beta @ w64.T

        yield (lambda: None), group_bias
    yield (lambda: None), lambda _: put(fw.lm_bias, bias, "the output head's bias (ln_f folded in)")


def put(t: Tensor, a: np.ndarray, name: str = "tensor", offset: int = 0) -> None:
    """Uploads host data converted to the tensor's type (`_engine_type`) at byte `offset`."""
    t.upload(_engine_type(t.dtype, a, name), offset)


def _engine_type(dtype: str, a: np.ndarray, name: str) -> np.ndarray:
    """Host data (float32 or float64) in an engine type: f32, f16 or q8_0 blocks (quantized
    from float32). ValueError naming `name` when a value does not fit the type (f16 past
    65504, a q8_0 block scale past f16's range): it would be inf or NaN on the device."""
    a = np.ascontiguousarray(a)
    if dtype == "f32":
        return a.astype(np.float32)
    if dtype == "f16":
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
            f"{name}: values up to {float(np.max(np.abs(a))):.3g} do not fit {dtype} "
            f"(f16's largest is 65504; q8_0's is 127 x that): load it with dtype='f32'"
        )
    return out
