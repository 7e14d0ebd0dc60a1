"""Every op of native/tinynn.h against numpy, on each device.

Each test builds one small graph from random data (fixed seeds), computes it
and compares with a numpy float64 oracle under a stated tolerance.

Shapes: ggml's ne lists the fastest axis first, so a numpy array of shape
(a, b, c) is a tensor with ne = [c, b, a]; ``Arg`` does that reversal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

import tinynn
from tests.devices import CUDA_GELU_TOL, assert_close, matmul_tol

# Tolerances; errors are measured as |got - want| / max(1, |want|) unless stated.
F32_TOL = 1e-5  # f32 ops (sums of a few dozen products included)
# ggml-cpu's GELU reads a table indexed by f16(x): x is rounded to 11 bits,
# so the error grows with |x| (3.9e-3 absolute near |x| = 10, 1e-3 only for
# |x| < 2): 1e-3 relative-ish holds over the whole range.
GELU_CPU_TOL = 1e-3
F16_MATMUL_TOL = 1e-3  # f16 weights; ggml-cpu also rounds the activations to f16
Q8_MATMUL_TOL = 2e-2  # q8_0 weights; ggml-cpu also quantizes the activations to q8_0
FLASH_TOL = 3e-3  # f16 K/V; ggml-cpu's flash attention rounds Q (and V sums) to f16


@dataclass
class Arg:
    """A graph input: numpy data, its ggml type and where it lives."""

    data: np.ndarray  # float32 / float16 / int32; for q8_0 the float32 source
    dtype: str
    persistent: bool = False

    @property
    def ne(self) -> list[int]:
        return list(reversed(self.data.shape))

    def buffer(self) -> np.ndarray:
        if self.dtype == "q8_0":
            return quantize(self.data, GGMLQuantizationType.Q8_0).reshape(-1)
        return self.data


def f32(a, persistent=False) -> Arg:
    return Arg(np.ascontiguousarray(a, np.float32), "f32", persistent)


def f16(a, persistent=False) -> Arg:
    return Arg(np.ascontiguousarray(a, np.float16), "f16", persistent)


def i32(a, persistent=False) -> Arg:
    return Arg(np.ascontiguousarray(a, np.int32), "i32", persistent)


def q8(a, persistent=True) -> Arg:
    return Arg(np.ascontiguousarray(a, np.float32), "q8_0", persistent)


def q8_values(a: np.ndarray) -> np.ndarray:
    """What a q8_0 tensor made from ``a`` holds, as float64."""
    q = quantize(np.ascontiguousarray(a, np.float32), GGMLQuantizationType.Q8_0)
    return dequantize(q, GGMLQuantizationType.Q8_0).astype(np.float64)


def run(device: str, args: list[Arg], build) -> list[np.ndarray]:
    """Declares ``args`` (persistent ones finalized and uploaded first),
    builds ``build(session, *tensors)`` (a tensor or a tuple; the last one is
    the graph's result, the others are added to it), realizes, uploads,
    computes once and returns every output downloaded."""
    with tinynn.Session(device) as s:
        tensors: list = [None] * len(args)
        for i, a in enumerate(args):
            if a.persistent:
                tensors[i] = s.input_typed_persistent(a.dtype, a.ne)
        if any(a.persistent for a in args):
            s.finalize_weights()
            for t, a in zip(tensors, args, strict=True):
                if a.persistent:
                    t.upload(a.buffer())
        for i, a in enumerate(args):
            if not a.persistent:
                tensors[i] = s.input_typed(a.dtype, a.ne)
        outs = build(s, *tensors)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for t in outs:
            s.set_output(t)
        for t in outs[:-1]:
            s.add_to_graph(t)
        s.realize(outs[-1])
        for t, a in zip(tensors, args, strict=True):
            if not a.persistent:
                t.upload(a.buffer())
        s.compute()
        return [t.download() for t in outs]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


# ---- shapes and matmul ----------------------------------------------------


def test_shape_convention(device):
    """RUBY_ENGINE.md 2.1: host W (in, out) is declared input_2d(out, in)
    (ne = [in, out]) holding W transposed; matmul(W_t, X_t) with X_t
    ne = [in, T] gives ne = [out, T], which read row-major is X @ W."""
    r = rng(1)
    n_in, n_out, T = 8, 6, 5
    W = r.standard_normal((n_in, n_out)).astype(np.float32)
    X = r.standard_normal((T, n_in)).astype(np.float32)
    with tinynn.Session(device) as s:
        w_t = s.input_2d_f32_persistent(n_out, n_in)
        assert w_t.ne == (n_in, n_out, 1, 1)
        s.finalize_weights()
        w_t.upload(np.ascontiguousarray(W.T))
        x_t = s.input_2d_f32(T, n_in)
        assert x_t.ne == (n_in, T, 1, 1)
        y = s.set_output(s.matmul(w_t, x_t))
        assert y.ne == (n_out, T, 1, 1)
        s.realize(y)
        x_t.upload(X)
        s.compute()
        got = y.download()
    assert_close(got, X.astype(np.float64) @ W, matmul_tol(device), f"{device} X@W")


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0"])
def test_matmul_weights(device, wtype):
    """a [K, M] weight (f32, f16 or q8_0) times b [K, N]: (N, M) = b @ a.T."""
    r = rng(2)
    K, M, N = 64, 24, 7
    a = r.standard_normal((M, K)).astype(np.float32)
    b = r.standard_normal((N, K)).astype(np.float32)
    if wtype == "f32":
        arg, a_vals, tol = f32(a, True), a.astype(np.float64), matmul_tol(device)
    elif wtype == "f16":
        arg, a_vals, tol = f16(a, True), a.astype(np.float16).astype(np.float64), F16_MATMUL_TOL
    else:
        arg, a_vals, tol = q8(a), q8_values(a), Q8_MATMUL_TOL
    (got,) = run(device, [arg, f32(b)], lambda s, w, x: s.matmul(w, x))
    want = b.astype(np.float64) @ a_vals.T
    # The error of a dot product grows with its terms: measure it against
    # the scale of the result, not of each element.
    scale = float(np.abs(want).max())
    assert_close(got / scale, want / scale, tol, f"{device} matmul {wtype} weights")


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0"])
def test_matmul_batched_over_heads(device, wtype):
    """a [K, M, H] times b [K, N, H]: head h gives b[h] @ a[h].T; and one
    a [K, M] shared by every head of b (broadcast over ne2)."""
    r = rng(3)
    K, M, N, H = 32, 5, 4, 3
    a = r.standard_normal((H, M, K)).astype(np.float32)
    b = r.standard_normal((H, N, K)).astype(np.float32)
    if wtype == "f32":
        arg, a_vals, tol = f32(a), a.astype(np.float64), F32_TOL
    elif wtype == "f16":
        arg, a_vals, tol = f16(a), a.astype(np.float16).astype(np.float64), F16_MATMUL_TOL
    else:
        arg, a_vals, tol = q8(a), q8_values(a.reshape(H * M, K)).reshape(H, M, K), Q8_MATMUL_TOL
    got, shared = run(
        device,
        [arg, f32(b)],
        lambda s, w, x: (
            (s.matmul(w, x), s.matmul(s.view_2d(w, K, M, w.nb[1], 0), x))
            if wtype != "q8_0"
            else (s.matmul(w, x), s.matmul(s.view_3d(w, K, M, 1, w.nb[1], w.nb[2], 0), x))
        ),
    )
    want = np.einsum("hnk,hmk->hnm", b.astype(np.float64), a_vals)
    want_shared = np.einsum("hnk,mk->hnm", b.astype(np.float64), a_vals[0])
    scale = float(np.abs(want).max())
    assert_close(got / scale, want / scale, tol, f"{device} batched matmul {wtype}")
    scale = float(np.abs(want_shared).max())
    assert_close(shared / scale, want_shared / scale, tol, f"{device} shared-weight matmul {wtype}")


# ---- elementwise ------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_broadcast(device, op):
    r = rng(4)
    fn = np.add if op == "add" else np.multiply
    T, d = 5, 8
    x = r.standard_normal((T, d)).astype(np.float32)  # ne = [d, T]
    bias = r.standard_normal(d).astype(np.float32)  # ne = [d]
    # The V-bias case: a [T, d_head]-shaped tensor (ne = [T, d_head]) plus a
    # bias with ne = [1, d_head] (numpy (d_head, 1)), repeated along ne0.
    v_t = r.standard_normal((d, T)).astype(np.float32)  # ne = [T, d]
    v_bias = r.standard_normal((d, 1)).astype(np.float32)  # ne = [1, d]
    cube = r.standard_normal((2, 3, 4)).astype(np.float32)  # ne = [4, 3, 2]
    cube_b = r.standard_normal((2, 1, 4)).astype(np.float32)  # ne = [4, 1, 2]
    tiled = r.standard_normal(8).astype(np.float32)  # ne = [8]
    tile_b = r.standard_normal(4).astype(np.float32)  # ne = [4]: repeated twice
    outs = run(
        device,
        [f32(x), f32(bias), f32(v_t), f32(v_bias), f32(cube), f32(cube_b), f32(tiled), f32(tile_b)],
        lambda s, a, b, c, e, f, g, h, k: tuple(
            getattr(s, op)(p, q) for p, q in ((a, b), (c, e), (f, g), (h, k), (a, a))
        ),
    )
    wants = [
        fn(x, bias),
        fn(v_t, v_bias),
        fn(cube, cube_b),
        fn(tiled, np.tile(tile_b, 2)),
        fn(x, x),
    ]
    names = ["bias [d]", "bias ne=[1,d_head]", "3d ne2 broadcast", "ne0 tiled", "same shape"]
    for got, want, name in zip(outs, wants, names, strict=True):
        assert_close(got, want.astype(np.float64), F32_TOL, f"{device} {op} {name}")


def test_scale(device):
    x = rng(5).standard_normal((4, 6)).astype(np.float32)
    (got,) = run(device, [f32(x)], lambda s, a: s.scale(a, 0.125))
    assert_close(got, x * 0.125, F32_TOL, f"{device} scale")


def test_gelu(device):
    """Tanh GELU: on the CPU through ggml's f16 table (see GELU_CPU_TOL), on
    CUDA computed in f32 (1e-5). Covers ggml's +-10 cut-offs."""
    x = np.concatenate([np.linspace(-12, 12, 241), rng(6).standard_normal(271) * 3])
    x = x.astype(np.float32).reshape(16, 32)
    (got,) = run(device, [f32(x)], lambda s, a: s.gelu(a))
    want = gelu_tanh(x.astype(np.float64))
    small = np.abs(x) < 2
    if device == "cpu":
        assert_close(got, want, GELU_CPU_TOL, "cpu gelu")
        assert_close(got[small], want[small], 1.1e-3, "cpu gelu |x| < 2", relative=False)
    else:
        assert_close(got, want, CUDA_GELU_TOL, f"{device} gelu")


def test_gelu_exact(device):
    """Tanh GELU in f32 on every backend (the header promises about 1e-7)."""
    x = np.concatenate([np.linspace(-12, 12, 241), rng(6).standard_normal(271) * 3])
    x = x.astype(np.float32).reshape(16, 32)
    (got,) = run(device, [f32(x)], lambda s, a: s.gelu_exact(a))
    tol = CUDA_GELU_TOL if device == "cuda" else 1e-6
    assert_close(got, gelu_tanh(x.astype(np.float64)), tol, f"{device} gelu_exact")


def test_layer_norm(device):
    """(x - mean) / sqrt(var + 1e-5), biased variance, along ne0; then
    * gamma + beta when given."""
    r = rng(7)
    x = (r.standard_normal((6, 48)) * 3 + 1).astype(np.float32)
    g = r.standard_normal(48).astype(np.float32)
    b = r.standard_normal(48).astype(np.float32)
    plain, affine, gamma_only = run(
        device,
        [f32(x), f32(g, True), f32(b, True)],
        lambda s, xx, gg, bb: (
            s.layer_norm(xx, None, None, 1e-5),
            s.layer_norm(xx, gg, bb, 1e-5),
            s.layer_norm(xx, gg, None, 1e-5),
        ),
    )
    x64 = x.astype(np.float64)
    norm = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert_close(plain, norm, F32_TOL, f"{device} layer_norm")
    assert_close(affine, norm * g + b, F32_TOL, f"{device} layer_norm gamma beta")
    assert_close(gamma_only, norm * g, F32_TOL, f"{device} layer_norm gamma only")


# ---- softmax and masks --------------------------------------------------------


def test_diag_mask_inf(device):
    """a[i, j] = -inf where i > j + n_past (i along ne0)."""
    n_kv, n_q, n_past = 6, 4, 2
    x = rng(8).standard_normal((n_q, n_kv)).astype(np.float32)  # ne = [n_kv, n_q]
    (got,) = run(device, [f32(x)], lambda s, a: s.diag_mask_inf(a, n_past))
    i = np.arange(n_kv)[None, :]
    j = np.arange(n_q)[:, None]
    masked = np.broadcast_to(i > j + n_past, x.shape)
    # ggml-cuda writes -FLT_MAX where the CPU writes -inf: both give 0 after softmax
    lowest = -np.inf if device == "cpu" else float(np.finfo(np.float32).min)
    got = np.asarray(got, np.float64).reshape(x.shape)
    assert np.all(got[masked] == lowest), f"{device}: masked entries {got[masked]}"
    assert_close(got[~masked], x[~masked].astype(np.float64), 0.0, f"{device} diag_mask_inf")


def test_softmax(device):
    x = (rng(9).standard_normal((5, 37)) * 4).astype(np.float32)
    (got,) = run(device, [f32(x)], lambda s, a: s.softmax(a))
    assert_close(got, softmax(x.astype(np.float64)), F32_TOL, f"{device} softmax")


@pytest.mark.parametrize("mask_type", ["f32", "f16"])
def test_soft_max_ext(device, mask_type):
    """softmax(a * scale + mask) with a mask of more rows than a (padding)
    repeated over heads (ne2)."""
    r = rng(10)
    n_kv, n_q, n_pad, H = 9, 4, 8, 3
    a = (r.standard_normal((H, n_q, n_kv)) * 3).astype(np.float32)
    mask = r.standard_normal((n_pad, n_kv)).astype(np.float32)
    mask[np.triu_indices(n_pad, 1, n_kv)] = -np.inf
    mask = mask.astype(np.float16).astype(np.float32)  # both kinds hold the same values
    arg = f32(mask) if mask_type == "f32" else f16(mask)
    scale = 0.3
    (got,) = run(device, [f32(a), arg], lambda s, x, m: s.soft_max_ext(x, m, scale))
    want = softmax(a.astype(np.float64) * scale + mask[:n_q].astype(np.float64))
    assert_close(got, want, F32_TOL, f"{device} soft_max_ext {mask_type} mask")
    (no_mask,) = run(device, [f32(a)], lambda s, x: s.soft_max_ext(x, None, scale))
    assert_close(no_mask, softmax(a.astype(np.float64) * scale), F32_TOL, "no mask")


# ---- gathers, joins, views and copies ------------------------------------------


@pytest.mark.parametrize("table_type", ["f32", "f16", "q8_0"])
def test_get_rows(device, table_type):
    r = rng(11)
    n_rows, n_embd = 10, 64
    table = r.standard_normal((n_rows, n_embd)).astype(np.float32)
    idx = np.array([3, 0, 9, 3, 7], np.int32)
    if table_type == "f32":
        arg, values = f32(table, True), table.astype(np.float64)
    elif table_type == "f16":
        arg, values = f16(table, True), table.astype(np.float16).astype(np.float64)
    else:
        arg, values = q8(table), q8_values(table)
    (got,) = run(device, [arg, i32(idx)], lambda s, t, i: s.get_rows(t, i))
    assert got.dtype == np.float32
    assert_close(got, values[idx], 1e-6, f"{device} get_rows {table_type}")


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_concat(device, dim):
    r = rng(12)
    shape_a, shape_b = [2, 3, 4], [2, 3, 4]
    axis = 2 - dim  # numpy axis of ggml's dim
    shape_b[axis] = 5
    a = r.standard_normal(shape_a).astype(np.float32)
    b = r.standard_normal(shape_b).astype(np.float32)
    (got,) = run(device, [f32(a), f32(b)], lambda s, x, y: s.concat(x, y, dim))
    assert_close(got, np.concatenate([a, b], axis), 0.0, f"{device} concat dim {dim}")


def test_views(device):
    """1d/2d/3d views (byte offsets and strides) made contiguous with cont."""
    x = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # ne = [6, 5, 4]
    flat = x.reshape(-1)
    row, plane = 6 * 4, 30 * 4  # nb1, nb2 in bytes
    v1, v2, v3, v1_raw = run(
        device,
        [f32(x)],
        lambda s, a: (
            s.cont(s.view_1d(a, 7, 11 * 4)),
            s.cont(s.view_2d(a, 3, 4, row, 2 * 4 + row)),
            s.cont(s.view_3d(a, 2, 3, 2, row, plane, 1 * 4 + plane)),
            s.scale(s.view_1d(a, 5, 3 * 4), 1.0),
        ),
    )
    assert_close(v1, flat[11:18], 0.0, f"{device} view_1d")
    assert_close(v2, x[0, 1:5, 2:5], 0.0, f"{device} view_2d")
    assert_close(v3, x[1:3, 0:3, 1:3], 0.0, f"{device} view_3d")
    assert_close(v1_raw, flat[3:8], 0.0, f"{device} view_1d read by an op")


def test_view_4d(device):
    x = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)  # ne = [6, 5, 4, 3]
    nb1, nb2, nb3 = 6 * 4, 30 * 4, 120 * 4
    (got,) = run(
        device,
        [f32(x)],
        lambda s, a: s.cont(s.view_4d(a, (2, 3, 2, 2), (nb1, nb2, nb3), 4 + nb1 + nb3)),
    )
    assert_close(got, x[1:3, 0:2, 1:4, 1:3], 0.0, f"{device} view_4d")


def test_cast(device):
    """f32 -> f16 -> f32 rounds to f16; f32 -> f32 is a copy."""
    x = (rng(24).standard_normal((3, 10)) * 100).astype(np.float32)
    half, back, same = run(
        device,
        [f32(x)],
        lambda s, a: (s.cast(a, "f16"), s.cast(s.cast(a, "f16"), "f32"), s.cast(a, "f32")),
    )
    assert half.dtype == np.float16 and back.dtype == np.float32
    assert_close(half, x.astype(np.float16), 0.0, f"{device} cast f32->f16")
    assert_close(back, x.astype(np.float16).astype(np.float32), 0.0, f"{device} f16->f32")
    assert_close(same, x, 0.0, f"{device} cast f32->f32")


def test_reshape(device):
    x = rng(13).standard_normal((4, 6)).astype(np.float32)  # ne = [6, 4]
    lib = tinynn._lib.load()

    def build(s, a):
        r2 = s._new(lib.tnn_reshape_2d(s._ptr(), a.handle, 8, 3))
        r3 = s._new(lib.tnn_reshape_3d(s._ptr(), a.handle, 2, 3, 4))
        r4 = s.reshape(a, 3, 2, 2, 2)
        assert (r2.ne, r3.ne, r4.ne) == ((8, 3, 1, 1), (2, 3, 4, 1), (3, 2, 2, 2))
        return tuple(s.scale(t, 1.0) for t in (r2, r3, r4))

    g2, g3, g4 = run(device, [f32(x)], build)
    assert_close(g2, x.reshape(3, 8), 0.0, f"{device} reshape_2d")
    assert_close(g3, x.reshape(4, 3, 2), 0.0, f"{device} reshape_3d")
    assert_close(g4, x.reshape(2, 2, 2, 3), 0.0, f"{device} reshape_4d")


@pytest.mark.parametrize("axes", [(0, 2, 1, 3), (1, 2, 0, 3), (2, 0, 3, 1)])
def test_permute_cont(device, axes):
    """Axis i of a becomes axis axes[i] of the result."""
    x = rng(14).standard_normal((5, 4, 3, 2)).astype(np.float32)  # ne = [2, 3, 4, 5]
    (got,) = run(device, [f32(x)], lambda s, a: s.cont(s.permute(a, *axes)))
    x_ne = x.transpose()  # indexed [i0, i1, i2, i3]
    want = np.transpose(x_ne, np.argsort(axes)).transpose()
    assert_close(got, want, 0.0, f"{device} permute{axes}")


def test_transpose_cont(device):
    x = rng(15).standard_normal((3, 7)).astype(np.float32)
    x3 = rng(16).standard_normal((2, 3, 7)).astype(np.float32)
    got, got3 = run(
        device,
        [f32(x), f32(x3)],
        lambda s, a, b: (s.cont(s.transpose(a)), s.cont(s.transpose(b))),
    )
    assert_close(got, x.T, 0.0, f"{device} transpose 2d")
    assert_close(got3, x3.transpose(0, 2, 1), 0.0, f"{device} transpose 3d")


def test_cpy(device):
    """cpy f32 -> f32 (into another shape of the same size) and f32 -> f16."""
    x = rng(17).standard_normal((4, 6)).astype(np.float32)
    same, half = run(
        device,
        [f32(x), f32(np.zeros((3, 8))), f16(np.zeros((4, 6)))],
        lambda s, a, b, c: (s.cpy(a, b), s.cpy(a, c)),
    )
    assert same.dtype == np.float32 and half.dtype == np.float16
    assert_close(same, x.reshape(3, 8), 0.0, f"{device} cpy f32->f32")
    assert_close(half, x.astype(np.float16), 0.0, f"{device} cpy f32->f16")


# ---- cache writes ----------------------------------------------------------------


def test_kv_write_with_cpy_into_view(device):
    """The Ruby engine's K write: cpy a new row into view_2d(K) at row p,
    add_to_graph, one graph per position; the persistent cache keeps them."""
    d, max_t = 8, 6
    rows = rng(18).standard_normal((4, d)).astype(np.float32)
    with tinynn.Session(device) as s:
        k = s.input_2d_f32_persistent(max_t, d)  # ne = [d, max_t]
        s.finalize_weights()
        for p in range(4):
            s.reset_for_rebuild()
            x = s.input_2d_f32(1, d)
            s.add_to_graph(s.cpy(x, s.view_2d(k, d, 1, k.nb[1], p * k.nb[1])))
            out = s.set_output(s.scale(x, 2.0))
            s.realize(out)
            x.upload(rows[p : p + 1])
            s.compute()
            want = rows[p : p + 1] * 2.0  # [1, d]: the input's shape
            assert_close(out.download(), want, F32_TOL, f"{device} result at p={p}")
        cache = k.download()
    want = np.zeros((max_t, d))
    want[:4] = rows
    assert_close(cache, want, 0.0, f"{device} K cache after cpy writes")


@pytest.mark.parametrize("cache_type", ["f32", "f16"])
def test_set_rows_runtime_index(device, cache_type):
    """One realized graph writes src into cache row idx (uploaded each step)."""
    d, max_t = 16, 7
    order = [4, 0, 6, 2]
    rows = rng(19).standard_normal((len(order), d)).astype(np.float32)
    with tinynn.Session(device) as s:
        cache = s.input_typed_persistent(cache_type, [d, max_t])
        s.finalize_weights()
        src = s.input_2d_f32(1, d)
        idx = s.input_1d_i32(1)
        s.add_to_graph(s.set_rows(cache, src, idx))
        out = s.set_output(s.scale(src, 1.0))
        s.realize(out)
        for step, p in enumerate(order):
            src.upload(rows[step : step + 1])
            idx.upload(np.array([p], np.int32))
            s.compute()
        got = cache.download()
    want = np.zeros((max_t, d), np.float32)
    want[order] = rows
    if cache_type == "f16":
        want = want.astype(np.float16)
    assert got.dtype == want.dtype
    assert_close(got, want, 0.0, f"{device} set_rows {cache_type} cache")


def test_cpy_into_strided_view(device):
    """ggml issue 1497: a contiguous [1, 4] (ne = [1, 4]) copied into
    view_2d(V, 1, 4, nb1 = 8 * 4, offset = p * 4) of an ne = [8, 4] buffer
    must land one value per row, in column p. ggml-cuda's tiled cpy kernel
    once wrote the 4 values contiguously at the offset instead: this test
    fails on a ggml that still has that bug."""
    n_pos, d_head, p = 8, 4, 3
    v_new = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)  # ne = [1, 4]
    with tinynn.Session(device) as s:
        v = s.input_2d_f32_persistent(d_head, n_pos)  # ne = [8, 4]
        s.finalize_weights()
        x = s.input_typed("f32", [1, d_head])
        s.add_to_graph(s.cpy(x, s.view_2d(v, 1, d_head, n_pos * 4, p * 4)))
        out = s.set_output(s.scale(x, 1.0))
        s.realize(out)
        x.upload(v_new)
        s.compute()
        got = v.download()
    want = np.zeros((d_head, n_pos), np.float32)
    want[:, p] = v_new[:, 0]
    assert_close(got, want, 0.0, f"{device} strided cpy (ggml #1497)")


# ---- attention -----------------------------------------------------------------


def attention_reference(q, k, v, mask, scale):
    """q (H, n_q, d), k and v (H, n_kv, d), mask (n_q, n_kv): (H, n_q, d)."""
    scores = np.einsum("hqd,hkd->hqk", q, k) * scale + mask
    return np.einsum("hqk,hkd->hqd", softmax(scores), v)


def causal_mask(n_q: int, n_kv: int) -> np.ndarray:
    """Query j (the last n_q positions of n_kv) sees keys up to its position."""
    past = n_kv - n_q
    m = np.zeros((n_q, n_kv), np.float32)
    m[np.arange(n_kv)[None, :] > np.arange(n_q)[:, None] + past] = -np.inf
    return m


def test_attention_soft_max_ext(device):
    """scores = matmul(k, q) [n_kv, n_q, H]; soft_max_ext with a causal f32
    mask and 1/sqrt(d); out = matmul(cont(transpose(v)), probs) [d, n_q, H]."""
    r = rng(20)
    H, T, d = 3, 6, 16
    q, k, v = (r.standard_normal((H, T, d)).astype(np.float32) for _ in range(3))
    mask = causal_mask(T, T)
    scale = 1.0 / np.sqrt(d)

    def build(s, qq, kk, vv, mm):
        probs = s.soft_max_ext(s.matmul(kk, qq), mm, scale)  # [T_kv, T_q, H]
        v_t = s.cont(s.transpose(vv))  # [T_kv, d, H]
        return s.matmul(v_t, probs)  # [d, T_q, H]

    (got,) = run(device, [f32(q), f32(k), f32(v), f32(mask)], build)
    want = attention_reference(q, k, v, mask, scale)
    assert_close(got, want, F32_TOL, f"{device} attention via soft_max_ext")


@pytest.mark.parametrize("d", [32, 64])
def test_flash_attn_ext(device, d):
    """q f32 [d, n_q, h], k and v f16 [d, n_kv, h], mask f16 [n_kv, n_q]:
    result [d, h, n_q] (heads before positions). Head size 64 is GPT-2's;
    ggml-cuda has no kernel for 32, so on CUDA that one runs on the CPU."""
    r = rng(21)
    H, n_q, n_kv = 4, 3, 10
    q = r.standard_normal((H, n_q, d)).astype(np.float32)
    k = r.standard_normal((H, n_kv, d)).astype(np.float16)
    v = r.standard_normal((H, n_kv, d)).astype(np.float16)
    mask = causal_mask(n_q, n_kv)
    scale = 1.0 / np.sqrt(d)
    (got,) = run(
        device,
        [f32(q), f16(k), f16(v), f16(mask)],
        lambda s, qq, kk, vv, mm: s.flash_attn_ext(qq, kk, vv, mm, scale),
    )
    assert got.shape == (n_q, H, d)
    want = attention_reference(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask, scale
    )
    assert_close(got, want.transpose(1, 0, 2), FLASH_TOL, f"{device} flash_attn_ext")


# ---- selection -------------------------------------------------------------------


def test_argmax(device):
    x = rng(22).standard_normal((6, 50)).astype(np.float32)
    (got,) = run(device, [f32(x)], lambda s, a: s.argmax(a))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.argmax(-1), err_msg=f"{device} argmax")


def test_top_k(device):
    x = rng(23).permutation(6 * 40).reshape(6, 40).astype(np.float32)  # distinct values
    k = 5
    (got,) = run(device, [f32(x)], lambda s, a: s.top_k(a, k))
    assert got.shape == (6, k) and got.dtype == np.int32
    for row in range(6):
        want = set(np.argsort(-x[row])[:k].tolist())
        assert set(got[row].tolist()) == want, f"{device} top_k row {row}: {got[row]} vs {want}"
