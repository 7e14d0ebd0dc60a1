"""The port engines' ops (native/port_dot.c, port_rows.c): port_matmul,
port_norm, port_softmax.

What they promise: the same bits on every x86-64 CPU, whichever code computes
them (the CPU level of our kernels, AVX-512, AVX2 or scalar: each level this
CPU runs is forced through TINYNN_CPU_KERNELS and compared bit for bit), in
the order of ggml-cpu's AVX-512 build (compared with that build's own kernels
where this machine has them), and the right values (against numpy in float64,
within what f32 rounding allows).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

import tinynn
from tinynn import Session, TinyNNError

LEVELS = tinynn.CPU_KERNELS
# Lengths around the order's boundaries: 64-element rounds, groups of 16 and 8
# in the tail, the fused last k % 8; and model widths.
LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 71, 72, 127, 128, 129, 200, 768, 1031]
F32_EPS = 2.0**-24  # unit roundoff of float32
# ggml-cpu variants built with AVX-512 (GGML_CPU_ALL_VARIANTS): their f32 dot
# product, variance and softmax are the order the port ops follow.
AVX512_VARIANTS = ("skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4")


def runnable(level: str) -> bool:
    return level in tinynn.cpu_kernels_supported()


def require(level: str) -> None:
    if not runnable(level):
        pytest.skip(f"this CPU cannot run the {level} level")


def port_product(a: np.ndarray, b: np.ndarray, level: str = "auto", n_threads=None) -> np.ndarray:
    """a (M, k) and b (N, k) row-major -> (N, M): b @ a.T, by port_matmul
    built under TINYNN_CPU_KERNELS=level (the variable is read at the build)."""
    with Session("cpu", n_threads=n_threads) as s, pytest.MonkeyPatch.context() as env:
        env.setenv("TINYNN_CPU_KERNELS", level)
        ta, tb = s.input_2d_f32(*a.shape), s.input_2d_f32(*b.shape)
        y = s.set_output(s.port_matmul(ta, tb))
        s.realize(y)
        ta.upload(a)
        tb.upload(b)
        s.compute()
        return y.download()


def row_op(x: np.ndarray, op: str) -> np.ndarray:
    """port_norm (eps 1e-5) or port_softmax along each row of x."""
    with Session("cpu") as s:
        t = s.input_2d_f32(*x.shape)
        y = s.set_output(s.port_norm(t, 1e-5) if op == "norm" else s.port_softmax(t))
        s.realize(y)
        t.upload(x)
        s.compute()
        return y.download()


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    differ = got.view(np.uint32) != want.view(np.uint32)
    if differ.any():
        where = np.unravel_index(int(differ.argmax()), got.shape)
        pytest.fail(
            f"{what}: {int(differ.sum())} of {got.size} differ, first at {where}: "
            f"{got[where]!r} vs {want[where]!r}"
        )


def test_port_matmul_against_float64():
    """Each element within f32 summation's bound: k * u * sum |a_i b_i| (with
    margin 2), u the f32 unit roundoff; a loose 1e-6 relative check alone
    would hide a wrong order that is still accurate, so also: not all zero."""
    rng = np.random.default_rng(0)
    for k in LENGTHS:
        a = rng.standard_normal((19, k)).astype(np.float32)
        b = rng.standard_normal((5, k)).astype(np.float32)
        got = port_product(a, b).astype(np.float64)
        want = b.astype(np.float64) @ a.astype(np.float64).T
        bound = 2 * k * F32_EPS * (np.abs(b).astype(np.float64) @ np.abs(a).astype(np.float64).T)
        err = np.abs(got - want)
        worst = np.unravel_index(int((err - bound).argmax()), err.shape)
        assert (err <= bound + 1e-30).all(), (
            f"k={k}: |err| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
        )
        assert np.abs(got).max() > 0


@pytest.mark.parametrize("level", ["avx2", "avx512"])
def test_port_matmul_levels_give_the_scalar_bits(level):
    """Every level this CPU runs against the scalar code, bit for bit: lengths
    around every boundary, operands of mixed scale, zeros, negative zeros and
    subnormal products."""
    require(level)
    rng = np.random.default_rng(1)
    for k in LENGTHS:
        a = (rng.standard_normal((21, k)) * rng.choice([1e-20, 1e-3, 1.0, 1e3], (21, k))).astype(
            np.float32
        )
        b = rng.standard_normal((6, k)).astype(np.float32)
        a[0] = 0.0
        a[1] = -0.0
        b[2, ::3] = 1e-30  # subnormal products with the 1e-20 entries
        assert_same_bits(port_product(a, b, level), port_product(a, b, "scalar"), f"k={k} {level}")


def test_port_matmul_fuses_with_one_rounding_on_every_level():
    """A sum whose exact value lies just past a float midpoint: a fused
    multiply-add rounds it up; a multiply-add rounded twice (or in double,
    then to float) rounds it to even, down. k = 2 lies in the fused tail:
    (1 + 2^-12)^2 + 2^-60 = 1 + 2^-11 + 2^-24 + 2^-60 -> 1 + 2^-11 + 2^-23."""
    a = np.array([[2.0**-30, 1 + 2.0**-12]], np.float32)
    b = np.array([[2.0**-30, 1 + 2.0**-12]], np.float32)
    want = np.float32(1 + 2.0**-11 + 2.0**-23)
    for level in (v for v in LEVELS if runnable(v)):
        assert port_product(a, b, level)[0, 0] == want, level


def test_cpu_kernels_variable_is_checked_at_the_op(monkeypatch):
    """One variable for every kernel of ours: a name that is no level, or a level
    this CPU lacks, fails the op's build (packed product: test_cpu_product.py);
    "auto" and unset build it; scalar is always there."""
    assert tinynn.cpu_kernels_supported()[0] == "scalar"
    assert set(tinynn.cpu_kernels_supported()) <= set(LEVELS)
    with Session("cpu") as s:
        a, b = s.input_2d_f32(2, 4), s.input_2d_f32(3, 4)
        for fine in ("auto", "", *tinynn.cpu_kernels_supported()):
            monkeypatch.setenv("TINYNN_CPU_KERNELS", fine)
            s.port_matmul(a, b)
        monkeypatch.setenv("TINYNN_CPU_KERNELS", "sse9")
        with pytest.raises(TinyNNError, match="TINYNN_CPU_KERNELS=sse9: expected auto, scalar"):
            s.port_matmul(a, b)
        for missing in set(LEVELS) - set(tinynn.cpu_kernels_supported()):
            monkeypatch.setenv("TINYNN_CPU_KERNELS", missing)
            with pytest.raises(TinyNNError, match="this CPU cannot run it"):
                s.port_matmul(a, b)


def test_port_matmul_thread_count_changes_no_bit():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 96)).astype(np.float32)
    b = rng.standard_normal((40, 96)).astype(np.float32)
    assert_same_bits(port_product(a, b, n_threads=2), port_product(a, b, n_threads=1), "threads")


def test_port_matmul_reads_strided_rows():
    """a as a view whose rows are further apart than their length (the KV
    port's history of a cache), b as a view of some of its rows."""
    rng = np.random.default_rng(3)
    cache = rng.standard_normal((32, 16)).astype(np.float32)  # rows of 16 floats
    q = rng.standard_normal((4, 16)).astype(np.float32)
    with Session("cpu") as s:
        tc, tq = s.input_2d_f32(32, 16), s.input_2d_f32(4, 16)
        hist = s.view_2d(tc, 10, 5, 16 * 4, 2 * 4)  # 5 rows of 10 from column 2
        cols = s.view_2d(tq, 10, 3, 16 * 4, 2 * 4)
        y = s.set_output(s.port_matmul(hist, cols))
        s.realize(y)
        tc.upload(cache)
        tq.upload(q)
        s.compute()
        got = y.download()
    want = q[:3, 2:12].astype(np.float64) @ cache[:5, 2:12].astype(np.float64).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def ggml_avx512_module() -> Path | None:
    """An AVX-512 variant of ggml-cpu beside the loaded library, if this CPU
    runs AVX-512 (ggml then loads one of them: they score highest)."""
    if not runnable("avx512"):
        return None
    folder = Path(tinynn.library_path()).parent
    for name in AVX512_VARIANTS:
        if (folder / f"libggml-cpu-{name}.so").exists():
            return folder / f"libggml-cpu-{name}.so"
    return None


def test_port_matmul_is_ggml_avx512_dot_product():
    """The order itself: ggml-cpu's AVX-512 f32 dot product, called directly,
    against port_matmul on every length up to 140 and a few widths."""
    module = ggml_avx512_module()
    if module is None:
        pytest.skip("no AVX-512 ggml-cpu module here, or this CPU lacks AVX-512")
    vec_dot = ctypes.CDLL(str(module)).ggml_vec_dot_f32
    vec_dot.restype = None
    vec_dot.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    vec_dot.argtypes += [ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    rng = np.random.default_rng(4)
    for k in list(range(1, 141)) + [384, 768, 1031, 3072]:
        a = rng.standard_normal((7, k)).astype(np.float32)
        b = rng.standard_normal((3, k)).astype(np.float32)
        want = np.zeros((3, 7), np.float32)
        out = ctypes.c_float()
        for j in range(3):
            for i in range(7):
                vec_dot(k, ctypes.byref(out), 0, a[i].ctypes.data, 0, b[j].ctypes.data, 0, 1)
                want[j, i] = out.value
        for level in (v for v in LEVELS if runnable(v)):
            assert_same_bits(port_product(a, b, level), want, f"k={k} {level} vs ggml AVX-512")


def _rows(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((6, n)) * np.array([[0.1], [1.0], [3.0], [30.0], [1.0], [1.0]])
    x[4] += 1000.0  # large mean: the variance of what is left
    return x.astype(np.float32)


def test_port_norm_and_softmax_against_float64():
    """Normalization within 1e-5 relative to the row's scale; softmax within 1e-6
    absolute (values in [0, 1]) and rows summing to 1 within n * u."""
    rng = np.random.default_rng(5)
    for n in [1, 2, 8, 15, 16, 17, 64, 96, 100, 768]:
        x = _rows(rng, n)
        x64 = x.astype(np.float64)
        mean = x64.mean(1, keepdims=True)
        want = (x64 - mean) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
        got = row_op(x, "norm")
        # the large-mean row loses what f32 cannot hold of x - mean
        spread = np.sqrt(x64.var(1, keepdims=True) + 1e-5)
        tol = 1e-5 * np.maximum(1.0, np.abs(x64).max(1, keepdims=True) / spread)
        assert (np.abs(got - want) <= tol).all(), f"norm n={n}: {np.abs(got - want).max():.3g}"
        e = np.exp(x64 - x64.max(1, keepdims=True))
        got = row_op(x, "softmax").astype(np.float64)
        np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=0, atol=2 * n * F32_EPS + 1e-7)


def test_port_softmax_of_masked_rows():
    """-inf entries (the full-forward port's causal mask) give exact zeros, on
    both sides of 16 (the vector part and the tail)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    x[:, 5:] = -np.inf
    x[1, 20:] = -np.inf
    x[1, 5:20] = 0.5
    got = row_op(x, "softmax")
    assert (got[:, 20:] == 0).all() and (got[0, 5:] == 0).all()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)


def test_port_row_ops_are_ggml_avx512_ops():
    """Where ggml runs its AVX-512 variant, port_norm and port_softmax equal
    its ggml_norm and ggml_soft_max bit for bit (the order they follow)."""
    if ggml_avx512_module() is None:
        pytest.skip("no AVX-512 ggml-cpu module here, or this CPU lacks AVX-512")
    rng = np.random.default_rng(7)
    for n in list(range(1, 70)) + [96, 128, 200, 384, 768]:
        x = _rows(rng, n)
        with Session("cpu") as s:
            t = s.input_2d_f32(*x.shape)
            outs = [
                s.set_output(s.layer_norm(t, None, None, 1e-5)),
                s.set_output(s.port_norm(t, 1e-5)),
                s.set_output(s.softmax(s.diag_mask_inf(t, 0))),
                s.set_output(s.port_softmax(s.diag_mask_inf(t, 0))),
            ]
            for o in outs[:-1]:
                s.add_to_graph(o)
            s.realize(outs[-1])
            t.upload(x)
            s.compute()
            ggml_norm, norm, ggml_softmax, softmax = (o.download() for o in outs)
        assert_same_bits(norm, ggml_norm, f"norm n={n}")
        assert_same_bits(softmax, ggml_softmax, f"softmax n={n}")


def test_port_ops_refuse_what_they_cannot_take():
    with Session("cpu") as s:
        a, b = s.input_2d_f32(3, 4), s.input_2d_f32(2, 5)
        with pytest.raises(TinyNNError, match="do not fit"):
            s.port_matmul(a, b)
        with pytest.raises(TinyNNError, match="do not fit"):
            s.port_matmul(s.input_typed("f32", [4, 3, 2]), s.input_2d_f32(2, 4))
        with pytest.raises(TinyNNError, match="expected f32|is f16|f16"):
            s.port_matmul(s.input_typed("f16", [4, 3]), s.input_2d_f32(2, 4))
        with pytest.raises(TinyNNError, match="eps"):
            s.port_norm(a, -1.0)
        with pytest.raises(TinyNNError, match="2-D"):
            s.port_softmax(s.input_typed("f32", [4, 3, 2]))
        with pytest.raises(TinyNNError, match="adjacent"):
            s.port_norm(s.transpose(a))
