"""Graph lifecycle: persistence across rebuilds, replays, several sessions,
forks, thread count, memory queries and large transfers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tinynn
from tests.devices import assert_close, matmul_tol

TOL = 1e-5  # f32, relative-ish (see assert_close)


def test_persistent_data_survives_reset_for_rebuild(device):
    w_host = np.random.default_rng(30).standard_normal((3, 4)).astype(np.float32)
    with tinynn.Session(device) as s:
        w = s.input_2d_f32_persistent(3, 4)  # ne = [4, 3]
        s.finalize_weights()
        w.upload(w_host)
        for step in range(3):
            s.reset_for_rebuild()
            x = s.input_2d_f32(2, 4)
            y = s.set_output(s.matmul(w, x))
            s.realize(y)
            x_host = np.full((2, 4), step + 1.0, np.float32)
            x.upload(x_host)
            s.compute()
            assert_close(y.download(), x_host @ w_host.T, TOL, f"{device} rebuild {step}")
        assert_close(w.download(), w_host, 0.0, f"{device} weights after rebuilds")


def test_one_graph_computed_50_times(device):
    """A realized graph is computed again with new inputs, no rebuild."""
    r = np.random.default_rng(31)
    w_host = r.standard_normal((5, 8)).astype(np.float32)
    with tinynn.Session(device) as s:
        w = s.input_2d_f32_persistent(5, 8)
        s.finalize_weights()
        w.upload(w_host)
        x = s.input_2d_f32(3, 8)
        ids = s.input_1d_i32(2)
        y = s.set_output(s.gelu(s.matmul(w, x)))
        rows = s.set_output(s.get_rows(w, ids))
        s.add_to_graph(rows)
        s.realize(y)
        n_nodes = s.n_nodes
        assert n_nodes > 0
        for step in range(50):
            x_host = r.standard_normal((3, 8)).astype(np.float32)
            ids_host = r.integers(0, 5, 2).astype(np.int32)
            x.upload(x_host)
            ids.upload(ids_host)
            s.compute()
            z = x_host.astype(np.float64) @ w_host.T
            want = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
            assert_close(y.download(), want, 1e-3, f"{device} step {step} (gelu)")
            assert_close(rows.download(), w_host[ids_host], 0.0, f"{device} step {step} rows")
        assert s.n_nodes == n_nodes


def test_realize_after_a_failed_one(device):
    """A failed realize adds nothing: the next one builds the same graph as a
    fresh session would, and it computes right."""

    def build(s):
        x = s.input_2d_f32(2, 8)
        y = s.set_output(s.scale(x, 3.0))
        s.realize(y)
        return x, y

    with tinynn.Session(device) as fresh:
        build(fresh)
        want_nodes = fresh.n_nodes
    with tinynn.Session(device) as s:
        with pytest.raises(tinynn.TinyNNError, match="no operation"):
            s.realize(s.input_2d_f32(5, 5))  # an input alone is no graph
        x, y = build(s)
        assert s.n_nodes == want_nodes
        x.upload(np.ones((2, 8), np.float32))
        s.compute()
        assert_close(y.download(), np.full((2, 8), 3.0), 0.0, f"{device} result")


def test_inputs_keep_their_values_across_computes(device):
    """An input uploaded once feeds every later compute, even when the graph's
    intermediate results outgrow it (the allocator must not reuse its memory)."""
    with tinynn.Session(device) as s:
        a = s.input_2d_f32(4, 64)
        b = s.input_2d_f32(4, 64)
        y = s.set_output(s.scale(s.gelu(s.add(a, b)), 2.0))
        s.realize(y)
        a.upload(np.ones((4, 64), np.float32))
        b.upload(np.full((4, 64), 2.0, np.float32))
        s.compute()
        first = y.download().copy()
        assert_close(a.download(), np.ones((4, 64)), 0.0, f"{device} a after compute")
        b.upload(np.full((4, 64), 2.0, np.float32))  # b again, a not
        s.compute()
        assert_close(y.download(), first, 0.0, f"{device} second compute")


def test_compute_io_matches_separate_calls(device):
    """compute_io (upload, compute, download with one wait) gives what the
    three calls give, step after step, into a new array or a given one."""
    r = np.random.default_rng(33)
    w_host = r.standard_normal((6, 8)).astype(np.float32)
    with tinynn.Session(device) as s:
        w = s.input_2d_f32_persistent(6, 8)
        s.finalize_weights()
        w.upload(w_host)
        ids = s.input_1d_i32(3)
        x = s.input_2d_f32(3, 8)
        rows = s.get_rows(w, ids)  # [3, 8]
        y = s.set_output(s.add(rows, x))
        best = s.set_output(s.argmax(y))  # [3]
        s.realize(best)
        x.upload(np.ones((3, 8), np.float32))
        into = np.empty(3, np.int32)
        for step in range(5):
            ids_host = r.integers(0, 6, 3).astype(np.int32)
            got = s.compute_io(ids, ids_host, best)
            ids.upload(ids_host)
            s.compute()
            want = best.download()
            assert got.dtype == np.int32 and got.shape == (3,)
            np.testing.assert_array_equal(got, want, f"{device} step {step}")
            np.testing.assert_array_equal(got, np.argmax(w_host[ids_host] + 1, axis=1))
            assert s.compute_io(ids, ids_host, best, into=into) is into
            np.testing.assert_array_equal(into, want)
        assert s.compute_io(ids, ids_host) is None  # upload and compute only
        assert_close(s.compute_io(out=y), w_host[ids_host] + 1, TOL, f"{device} no upload")


def test_compute_io_checks_before_copying(device):
    """A bad index or a bad output size fails before anything is uploaded or
    computed: the input keeps its last good value."""
    with tinynn.Session(device) as s:
        table = s.input_2d_f32_persistent(4, 2)
        s.finalize_weights()
        table.upload(np.arange(8, dtype=np.float32).reshape(4, 2))
        idx = s.input_1d_i32(2)
        y = s.set_output(s.get_rows(table, idx))
        s.realize(y)
        s.compute_io(idx, np.array([1, 2], np.int32), y)
        with pytest.raises(tinynn.TinyNNError, match="outside"):
            s.compute_io(idx, np.array([0, 9], np.int32), y)
        with pytest.raises(tinynn.TinyNNError, match="do not fit"):
            s.compute_io(idx, np.array([0, 3], np.int32), y, into=np.empty(5, np.float32))
        with pytest.raises(TypeError, match="into is"):
            s.compute_io(idx, np.array([0, 3], np.int32), y, into=np.empty(4, np.int32))
        with pytest.raises(ValueError, match="without an input"):
            s.compute_io(None, np.array([0, 3], np.int32))
        np.testing.assert_array_equal(idx.download(), [1, 2])
        assert_close(s.compute_io(out=y), [[2, 3], [4, 5]], 0.0, f"{device} after errors")


# 300 results kept (outputs) between 300 freed ones: ggml's allocator aborted
# needing a 257th free block; the shim keeps every result of such a graph.
FRAGMENTING = """
import numpy as np, tinynn
with tinynn.Session({device!r}) as s:
    x = s.input_2d_f32(1, 64)
    kept, freed = [], []
    for i in range(300):
        freed.append(s.scale(x, float(i)))
        s.add_to_graph(freed[-1])
        kept.append(s.set_output(s.scale(x, 2.0)))
        s.add_to_graph(kept[-1])
    total = freed[0]
    for t in freed[1:]:
        total = s.add(total, t)
    s.realize(total)
    x.upload(np.ones((1, 64), np.float32))
    s.compute()
    assert np.allclose(total.download(), 299 * 300 / 2)
    assert np.allclose(kept[123].download(), 2.0)
    print("ok")
"""


def test_graph_that_fragments_compute_memory(device):
    """Runs in a child process: the failure this guards against is an abort."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRAGMENTING.format(device=device))],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_ops_on_inputs_alone_run_on_the_session_device(device):
    """A graph that reads only compute inputs is one split on the session's
    backend (ggml's scheduler would otherwise run it on the CPU beside a GPU)."""
    with tinynn.Session(device) as s:
        x = s.input_2d_f32(4, 32)
        y = s.set_output(s.gelu(s.scale(x, 2.0)))
        assert s.n_splits == 0
        s.realize(y)
        assert s.n_splits == 1
        x.upload(np.ones((4, 32), np.float32))
        s.compute()
        gelu_2 = 2.0 * 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (2.0 + 0.044715 * 8.0)))
        assert_close(y.download(), np.full((4, 32), gelu_2), 1e-3, f"{device} gelu(2x)")


def _linear_session(device: str, w_host: np.ndarray) -> tuple[tinynn.Session, object, object]:
    s = tinynn.Session(device)
    w = s.input_2d_f32_persistent(*w_host.shape)
    s.finalize_weights()
    w.upload(w_host)
    x = s.input_2d_f32(2, w_host.shape[1])
    y = s.set_output(s.scale(s.matmul(w, x), 1.0))
    return s, x, y


def test_two_sessions_interleaved(device):
    """Each session owns its scheduler: building, realizing and computing
    two sessions in turn leaves each one's results right (the Ruby shim
    shared one scheduler and the second session broke the first)."""
    r = np.random.default_rng(32)
    wa = r.standard_normal((4, 6)).astype(np.float32)
    wb = r.standard_normal((7, 3)).astype(np.float32)
    sa, xa, ya = _linear_session(device, wa)
    sb, xb, yb = _linear_session(device, wb)
    try:
        sa.realize(ya)
        sb.realize(yb)
        for step in range(4):
            xa_host = r.standard_normal((2, 6)).astype(np.float32)
            xb_host = r.standard_normal((2, 3)).astype(np.float32)
            xa.upload(xa_host)
            xb.upload(xb_host)
            sb.compute()
            sa.compute()
            assert_close(
                ya.download(), xa_host @ wa.T, matmul_tol(device), f"{device} session a step {step}"
            )
            assert_close(
                yb.download(), xb_host @ wb.T, matmul_tol(device), f"{device} session b step {step}"
            )
        # A rebuild of one session leaves the other's realized graph intact.
        sb.reset_for_rebuild()
        xb2 = sb.input_2d_f32(1, 3)
        sb.realize(sb.set_output(sb.scale(xb2, 3.0)))
        xa.upload(np.ones((2, 6), np.float32))
        sa.compute()
        assert_close(
            ya.download(), np.ones((2, 6)) @ wa.T, matmul_tol(device), f"{device} a after b rebuilt"
        )
    finally:
        sa.close()
        sb.close()


def test_fork_shares_weights_and_caches(device):
    """A fork reads the parent's weights; a cache write by one graph is seen
    by the other; the fork survives the parent's close."""
    r = np.random.default_rng(33)
    d, max_t = 8, 4
    w_host = r.standard_normal((d, d)).astype(np.float32)
    parent = tinynn.Session(device)
    w = parent.input_2d_f32_persistent(d, d)
    cache = parent.input_2d_f32_persistent(max_t, d)  # ne = [d, max_t]
    parent.finalize_weights()
    w.upload(w_host)
    child = parent.fork()
    try:
        assert child.backend_name == device
        assert child.weights_nbytes == parent.weights_nbytes > 0
        # Parent: write row 1 of the cache from an input.
        x = parent.input_2d_f32(1, d)
        parent.add_to_graph(parent.cpy(x, parent.view_2d(cache, d, 1, cache.nb[1], cache.nb[1])))
        parent.realize(parent.set_output(parent.scale(x, 1.0)))
        row = r.standard_normal((1, d)).astype(np.float32)
        x.upload(row)
        parent.compute()
        # Child: reads the parent's weights and the cache row just written.
        cached = child.view_2d(cache, d, 1, cache.nb[1], cache.nb[1])
        y = child.set_output(child.matmul(w, cached))
        # ... and writes row 2 itself.
        x2 = child.input_2d_f32(1, d)
        child.add_to_graph(child.cpy(x2, child.view_2d(cache, d, 1, cache.nb[1], 2 * cache.nb[1])))
        child.realize(y)
        row2 = r.standard_normal((1, d)).astype(np.float32)
        x2.upload(row2)
        child.compute()
        assert_close(y.download(), row @ w_host.T, TOL, f"{device} fork reads parent's cache")
        want = np.zeros((max_t, d), np.float32)
        want[1], want[2] = row[0], row2[0]
        assert_close(cache.download(), want, 0.0, f"{device} parent sees the fork's write")

        parent.close()
        with np.testing.assert_raises(ValueError):
            cache.download()  # through the closed parent object
        # The fork keeps the shared buffer alive; it reaches the cache
        # through a raw handle since the parent's Tensor objects refuse.
        cache_in_child = child._new(cache._handle, persistent=True)
        assert child.weights_nbytes > 0
        for step in range(3):
            row2 = r.standard_normal((1, d)).astype(np.float32)
            x2.upload(row2)
            child.compute()
            assert_close(y.download(), row @ w_host.T, TOL, f"{device} fork after close")
            want[2] = row2[0]
            assert_close(cache_in_child.download(), want, 0.0, f"{device} cache step {step}")
    finally:
        parent.close()
        child.close()


def test_fork_of_closed_parent_rebuilds(device):
    """After the parent is closed, the fork can still build new graphs on
    the shared weights."""
    w_host = np.arange(12, dtype=np.float32).reshape(3, 4)
    parent = tinynn.Session(device)
    w = parent.input_2d_f32_persistent(3, 4)
    parent.finalize_weights()
    w.upload(w_host)
    child = parent.fork()
    parent.close()
    try:
        # The parent's Tensor object refuses (its session is closed), so the
        # fork reaches the weights through a raw handle of the shared buffer.
        w_in_child = child._new(w._handle, persistent=True)
        for step in range(3):
            child.reset_for_rebuild()
            x = child.input_2d_f32(1, 4)
            y = child.set_output(child.matmul(w_in_child, x))
            child.realize(y)
            x.upload(np.full((1, 4), float(step), np.float32))
            child.compute()
            want = np.full((1, 4), float(step)) @ w_host.T  # ne = [3, 1]: shape (1, 3)
            assert_close(y.download(), want, TOL, f"{device} fork rebuild {step}")
    finally:
        child.close()


def test_n_threads():
    with tinynn.Session("cpu") as s:
        assert 1 <= s.n_threads <= 8
        s.n_threads = 3
        assert s.n_threads == 3
        with tinynn.Session("cpu", n_threads=1) as t:
            assert t.n_threads == 1
        # Still right with one thread.
        s.n_threads = 1
        x = s.input_2d_f32(2, 3)
        y = s.set_output(s.scale(x, 2.0))
        s.realize(y)
        x.upload(np.ones((2, 3), np.float32))
        s.compute()
        assert_close(y.download(), np.full((2, 3), 2.0), 0.0, "one thread")


def test_device_memory_and_names(device):
    with tinynn.Session(device) as s:
        free, total = s.device_memory()
        assert 0 < free <= total
        assert s.backend_name == device


def test_weights_nbytes():
    with tinynn.Session("cpu") as s:
        assert s.weights_nbytes == 0
        s.input_2d_f32_persistent(10, 16)  # 640 bytes
        s.input_typed_persistent("f16", [32, 4])  # 256 bytes
        s.input_typed_persistent("q8_0", [64, 2])  # 2 rows of 2 blocks of 34 bytes
        s.finalize_weights()
        need = 640 + 256 + 2 * 2 * 34
        # ggml aligns each tensor in the buffer; allow that padding.
        assert need <= s.weights_nbytes <= need + 3 * 256


def test_finalize_zero_fills(device):
    with tinynn.Session(device) as s:
        a = s.input_2d_f32_persistent(64, 32)
        b = s.input_typed_persistent("f16", [32, 16])
        c = s.input_typed_persistent("q8_0", [64, 4])
        s.finalize_weights()
        assert not a.download().any()
        assert not b.download().any()
        assert not c.download().any()


def test_large_download(device):
    """100 x 50257 floats (about 20 MB, past the Ruby shim's 16 MiB scratch)
    up and back, through a graph and through download_into."""
    T, V = 100, 50257
    x_host = np.random.default_rng(34).standard_normal((T, V)).astype(np.float32)
    with tinynn.Session(device) as s:
        x = s.input_2d_f32(T, V)
        y = s.set_output(s.scale(x, -1.0))
        s.realize(y)
        x.upload(x_host)
        s.compute()
        got = y.download()
        assert got.shape == (T, V)
        np.testing.assert_array_equal(got, -x_host)
        out = np.empty((T, V), np.float32)
        y.download_into(out)
        np.testing.assert_array_equal(out, -x_host)
        last = np.empty(V, np.float32)
        y.download_into(last, offset=(T - 1) * V * 4)
        np.testing.assert_array_equal(last, -x_host[-1])


def test_context_manager_and_close_idempotent():
    s = tinynn.Session("cpu")
    with s:
        assert not s.closed
    assert s.closed
    s.close()
    s.close()
