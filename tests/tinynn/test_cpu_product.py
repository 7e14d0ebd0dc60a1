"""Our CPU product over packed weights (native/cpu_product.c) against numpy, and its promise:
each element summed in one order whatever the column count, the thread count and the
kernel set (AVX-512, AVX2, scalar; each forced through TINYNN_CPU_KERNELS where this CPU
runs it, so a CPU without AVX-512 still tests the others).

Tolerance against the float64 reference: each of 16 lanes sums k/16 fused products, then a
tree of 4 additions, so |got - want| <= (k/16 + 4) u sum_k |w_k x_k| with u = 2^-24 (f32
rounding); the tests allow twice that.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinynn
from tinynn import TinyNNError

U = 2.0**-24
KERNELS = tinynn.cpu_kernels_supported()


def kernel_params() -> list:
    return [
        pytest.param(k, marks=pytest.mark.skipif(k not in KERNELS, reason=f"this CPU has no {k}"))
        for k in tinynn.CPU_KERNELS
    ]


@pytest.fixture(params=kernel_params())
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TINYNN_CPU_KERNELS", request.param)
    return request.param


def random_weights(dtype: str, n: int, k: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((n, k))
    return w.astype(np.float16 if dtype == "f16" else np.float32)


def packed_products(w: np.ndarray, xs: np.ndarray, counts, threads: int = 2) -> list[np.ndarray]:
    """x W for the first N rows of xs, N in counts, each in its own graph."""
    n, k = w.shape
    dtype = "f16" if w.dtype == np.float16 else "f32"
    out = []
    with tinynn.Session("cpu", n_threads=threads) as s:
        wt = s.input_typed_persistent(dtype, (k, n))
        s.finalize_weights()
        wt.upload(w)
        s.pack_rows(wt)
        for cols in counts:
            with s.fork() as f:
                x = f.input_2d_f32(cols, k)
                y = f.set_output(f.packed_matmul(wt, x))
                f.realize(y)
                out.append(f.compute_io(x, xs[:cols], y))  # [cols, n]
    return out


@pytest.mark.parametrize("dtype", ["f16", "f32"])
@pytest.mark.parametrize("shape", [(2304 + 5, 768), (8, 16), (3, 48), (768, 3072)])
def test_matches_numpy(kernels: str, dtype: str, shape: tuple[int, int]) -> None:
    n, k = shape
    w = random_weights(dtype, n, k)
    xs = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    (got,) = packed_products(w, xs, [5])
    terms = xs.astype(np.float64)[:, None, :] * w.astype(np.float64)[None, :, :]  # [5, n, k]
    want = terms.sum(-1)
    bound = 2 * (k / 16 + 4) * U * np.abs(terms).sum(-1)
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (
        f"{kernels} {dtype}: |err| {err[worst]:.3g} > {bound[worst]:.3g} at {worst}"
    )


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_one_order_whatever_the_columns(kernels: str, dtype: str) -> None:
    """Column j of a product of N columns has the bits it has alone, for N = 1 .. 8 and 19."""
    w = random_weights(dtype, 2 * 8 + 3, 96, seed=2)  # a tail tile of 3 rows
    xs = np.random.default_rng(3).standard_normal((19, 96)).astype(np.float32)
    counts = [*range(1, 9), 19]
    outs = packed_products(w, xs, counts)
    alone = [packed_products(w, xs[j : j + 1], [1])[0][0] for j in range(8)]
    for cols, got in zip(counts, outs, strict=True):
        for j in range(min(cols, 8)):
            diff = np.flatnonzero(got[j] != alone[j])
            assert diff.size == 0, f"{kernels}: column {j} of {cols} differs at rows {diff[:5]}"


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_same_bits_on_every_kernel_set_and_thread_count(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = random_weights(dtype, 8 * 5 + 1, 64, seed=4)
    xs = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    results = {}
    for kernels in KERNELS:
        monkeypatch.setenv("TINYNN_CPU_KERNELS", kernels)
        for threads in (1, 2, 3):
            (results[kernels, threads],) = packed_products(w, xs, [3], threads)
    first = next(iter(results.values()))
    for key, got in results.items():
        assert np.array_equal(got, first), f"{key} differs from {next(iter(results))}"


@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_packed_rows_and_download(kernels: str, dtype: str) -> None:
    w = random_weights(dtype, 8 * 3 + 2, 32, seed=6)
    rows = np.array([0, 25, 7, 8, 24], np.int32)
    with tinynn.Session("cpu") as s:
        wt = s.input_typed_persistent(dtype, (32, 26))
        s.finalize_weights()
        wt.upload(w)
        s.pack_rows(wt)
        assert np.array_equal(wt.download(), w)  # unpacked on the way out
        with s.fork() as f:
            idx = f.input_1d_i32(len(rows))
            got = f.set_output(f.packed_get_rows(wt, idx))
            f.realize(got)
            assert np.array_equal(f.compute_io(idx, rows, got), w[rows].astype(np.float32))
            with pytest.raises(TinyNNError, match="outside|bound|range"):
                idx.upload(np.array([0, 26, 0, 0, 0], np.int32))


@pytest.mark.parametrize("threads", [1, 4])
def test_a_large_tensor_packed_by_threads(threads: int) -> None:
    """A matrix of many tiles (16 MB: packed by up to `threads` threads, each a run of
    whole tiles, the last tile partial) reads back every row from the packed layout."""
    k, n = 512, 8 * 1024 + 3
    w = random_weights("f32", n, k, seed=8)
    with tinynn.Session("cpu", n_threads=threads) as s:
        wt = s.input_typed_persistent("f32", (k, n))
        s.finalize_weights()
        wt.upload(w)
        s.pack_rows(wt)
        with s.fork() as f:
            idx = f.input_1d_i32(n)
            got = f.set_output(f.packed_get_rows(wt, idx))
            f.realize(got)
            assert np.array_equal(f.compute_io(idx, np.arange(n, dtype=np.int32), got), w)
        assert np.array_equal(wt.download(), w)


def test_what_a_packed_tensor_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    with tinynn.Session("cpu") as s:
        w = s.input_typed_persistent("f16", (32, 8))
        q = s.input_typed_persistent("q8_0", (32, 8))
        odd = s.input_typed_persistent("f32", (24, 8))
        plain = s.input_typed_persistent("f32", (32, 8))
        with pytest.raises(TinyNNError, match="finalize"):
            s.pack_rows(w)
        s.finalize_weights()
        with pytest.raises(TinyNNError, match="f32 or f16"):
            s.pack_rows(q)
        with pytest.raises(TinyNNError, match="multiple of 16"):
            s.pack_rows(odd)
        s.pack_rows(w)
        with pytest.raises(TinyNNError, match="packed by tnn_pack_rows"):  # twice
            s.pack_rows(w)
        with pytest.raises(TinyNNError, match="packed by tnn_pack_rows"):
            w.upload(np.zeros((8, 32), np.float16))
        with pytest.raises(TinyNNError, match="whole tensor"):
            w.download_into(np.empty(16, np.float16), 64)
        with pytest.raises(TinyNNError, match="packed by tnn_pack_rows"):
            s.packed_matmul(plain, s.input_2d_f32(1, 32))  # not packed
        x = s.input_2d_f32(2, 32)
        with pytest.raises(TinyNNError, match="packed by tnn_pack_rows"):
            s.matmul(w, x)
        with pytest.raises(TinyNNError, match="packed by tnn_pack_rows"):
            s.view_1d(w, 16, 0)
        with pytest.raises(TinyNNError, match="do not fit"):
            s.packed_matmul(w, s.input_2d_f32(2, 16))
        monkeypatch.setenv("TINYNN_CPU_KERNELS", "sse1")
        with pytest.raises(TinyNNError, match="expected auto, scalar"):
            s.packed_matmul(w, x)
        monkeypatch.delenv("TINYNN_CPU_KERNELS")
        with s.fork():
            with pytest.raises(TinyNNError, match="forks"):
                s.pack_rows(plain)
