"""tnn_compute_io_sample (native/device_sampler.c, native/cuda/sample_logits.cu):
a step of a ggml graph, then token choice on the device over its logits.

Oracle: ``gpt2.sampling.choose`` on the logits the device sampled (downloaded after
the call: an output keeps them), with the same float32 uniforms. Sampled rows agree
in at least 98% of cases (the device sums weights in fixed point, the host in
float64: a draw within ~1e-6 of a boundary may differ; the fused decode test allows
the same); greedy rows equal the argmax exactly.

Every argument is checked before anything runs, so the error cases run on the CPU as
well (a CPU session is refused only once its arguments are right): each raises
TinyNNError (C) or ValueError (the wrapper), and the step's input and logits are
left as they were.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinynn
from gpt2.sampling import SamplingParams, choose, draw_uniform
from tests.devices import cuda_required, use_device
from tinynn import SAMPLING_DTYPE, TinyNNError

D = 16  # the contracted axis of the test's "LM head"
# (temperature, top_k, top_p): top-k with top-p, top-p alone, top-k alone, greedy,
# plain temperature, top-k 1, a small top-p, a tiny temperature, top-k past the vocab
SETTINGS = [
    (0.8, 40, 0.95),
    (1.3, 0, 0.9),
    (0.7, 5, 1.0),
    (0.0, 0, 1.0),
    (1.0, 0, 1.0),
    (0.5, 1, 1.0),
    (2.0, 0, 0.5),
    (1e-3, 0, 1.0),
    (0.9, 100_000, 1.0),
]
# one field of one record out of range: the error names the row and the field
BAD_RECORDS = [
    ("temperature", -1.0),
    ("temperature", np.nan),
    ("temperature", np.inf),
    ("top_k", -1),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", np.nan),
    ("uniform", 1.0),
    ("uniform", -0.25),
    ("uniform", np.nan),
]


def _weights(s: tinynn.Session, vocab: int, seed: int = 0) -> tinynn.Tensor:
    """A persistent f32 [vocab, D] (ne = [D, vocab]) of random values."""
    w = s.input_2d_f32_persistent(vocab, D)
    s.finalize_weights()
    w.upload(np.random.default_rng(seed).standard_normal((vocab, D)).astype(np.float32))
    return w


def _graph(s: tinynn.Session, w: tinynn.Tensor, rows: int) -> tuple[tinynn.Tensor, tinynn.Tensor]:
    """Builds and realizes logits = x w^T: (x, input [rows, D]; logits, output
    f32 ne = [vocab, rows])."""
    x = s.input_2d_f32(rows, D)  # ne = [D, rows]
    logits = s.set_output(s.matmul(w, x))  # ne = [vocab, rows]
    s.realize(logits)
    return x, logits


def _x(rows: int, rng: np.random.Generator) -> np.ndarray:
    # logits of standard deviation ~2: many tokens with weight, top-k and top-p matter
    return (0.5 * rng.standard_normal((rows, D))).astype(np.float32)


def _records(rows: int, rng: np.random.Generator, offset: int = 0) -> np.ndarray:
    """One record a row, cycling through SETTINGS, each with a fresh uniform."""
    return np.array(
        [SETTINGS[(i + offset) % len(SETTINGS)] + (draw_uniform(rng),) for i in range(rows)],
        dtype=SAMPLING_DTYPE,
    )


def _device_session() -> tinynn.Session:
    """A CUDA session that samples on the device; skips without one (fails under
    TINYNN_REQUIRE_CUDA=1, whose build has our kernels)."""
    use_device("cuda")
    s = tinynn.Session("cuda")
    reason = s.device_sampling_unavailable_reason()
    if reason is not None:
        s.close()
        if cuda_required():
            pytest.fail(f"TINYNN_REQUIRE_CUDA=1 but the device sampler cannot run: {reason}")
        pytest.skip(f"the device sampler cannot run: {reason}")
    return s


# ---- the CPU (CI): refused cleanly, after the arguments -------------------------------


def test_a_cpu_session_is_refused_with_the_reason_and_nothing_runs():
    rng = np.random.default_rng(1)
    with tinynn.Session("cpu") as s:
        w = _weights(s, 100)
        x, logits = _graph(s, w, 3)
        assert s.can_sample_on_device is False
        reason = s.device_sampling_unavailable_reason()
        assert reason and "CUDA" in reason and "tnn_sample_rows" in reason, reason
        x0 = _x(3, rng)
        want = s.compute_io(x, x0, logits)
        with pytest.raises(TinyNNError, match="CUDA session|without our CUDA kernels"):
            s.compute_io_sample(x, _x(3, rng), logits, _records(3, rng))
        # neither uploaded nor computed: the refusal comes before the step
        np.testing.assert_array_equal(x.download(), x0)
        np.testing.assert_array_equal(logits.download(), want)
        # and the session goes on
        np.testing.assert_array_equal(s.compute_io(x, x0, logits), want)


def test_null_and_stale_handles_are_refused():
    lib = tinynn._lib.load()
    out = np.zeros(2, np.int32)
    ids = out.ctypes.data  # out stays alive: the pointer is valid through every call
    recs = np.zeros(2, SAMPLING_DTYPE)
    with pytest.raises(TinyNNError, match="session is NULL"):
        lib.tnn_compute_io_sample(None, None, None, 0, None, recs.ctypes.data, 32, ids, 8)
    with pytest.raises(TinyNNError, match="session is NULL"):
        lib.tnn_can_sample_on_device(None)
    s = tinynn.Session("cpu")
    w = _weights(s, 10)
    x, logits = _graph(s, w, 2)
    with pytest.raises(TinyNNError, match="logits is NULL"):
        lib.tnn_compute_io_sample(s._ptr(), None, None, 0, None, recs.ctypes.data, 32, ids, 8)
    with pytest.raises(TinyNNError, match="sampling: 32 bytes at .*expected 32"):
        lib.tnn_compute_io_sample(s._ptr(), None, None, 0, logits.handle, None, 32, ids, 8)
    with pytest.raises(TinyNNError, match="out_ids: 8 bytes at .*expected 8"):
        lib.tnn_compute_io_sample(
            s._ptr(), None, None, 0, logits.handle, recs.ctypes.data, 32, None, 8
        )
    s.reset_for_rebuild()
    with pytest.raises(ValueError, match="reset_for_rebuild"):
        s.compute_io_sample(None, None, logits, recs)
    s.close()
    with pytest.raises(ValueError, match="session is closed"):
        s.compute_io_sample(None, None, logits, recs)
    with pytest.raises(ValueError, match="session is closed"):
        _ = s.can_sample_on_device


def test_bad_records_are_refused_by_row_before_the_step(device):
    """On either device: the error names the row and field; nothing was uploaded
    or computed; the session goes on (and, where it can, samples the good records)."""
    rng = np.random.default_rng(2)
    with tinynn.Session(device) as s:
        w = _weights(s, 1000)
        x, logits = _graph(s, w, 4)
        x0 = _x(4, rng)
        want = s.compute_io(x, x0, logits)
        good = _records(4, rng)
        for field, value in BAD_RECORDS:
            bad = good.copy()
            bad[field][2] = value
            with pytest.raises(TinyNNError, match=rf"row 2: {field} "):
                s.compute_io_sample(x, _x(4, rng), logits, bad)
            np.testing.assert_array_equal(x.download(), x0, err_msg=f"{field}={value}")
            np.testing.assert_array_equal(logits.download(), want, err_msg=f"{field}={value}")
        if s.can_sample_on_device:
            ids = s.compute_io_sample(x, x0, logits, good)
            assert ids.dtype == np.int32 and ids.shape == (4,)
            assert ((ids >= 0) & (ids < 1000)).all(), ids


def test_bad_sizes_and_tensors_are_refused(device):
    rng = np.random.default_rng(3)
    rows, vocab = 4, 50
    with tinynn.Session(device) as s, tinynn.Session(device) as other:
        w = _weights(s, vocab)
        x = s.input_2d_f32(rows, D)
        h = s.matmul(w, x)  # [vocab, rows], not an output: its memory may be reused
        logits = s.set_output(s.scale(h, 1.0))  # [vocab, rows]
        ids = s.set_output(s.argmax(logits))  # i32 [rows]
        half = s.view_2d(logits, vocab // 2, rows, logits.nb[1], 0)  # rows not contiguous
        three_d = s.reshape(logits, vocab, rows // 2, 2)  # [vocab, rows/2, 2]
        for t in (ids, half, three_d):
            s.add_to_graph(t)
        unrealized = (x, _x(rows, rng), logits, _records(rows, rng))
        with pytest.raises(TinyNNError, match="not realized"):
            s.compute_io_sample(*unrealized)
        s.realize(logits)
        x0 = _x(rows, rng)
        want = s.compute_io(x, x0, logits)
        recs = _records(rows, rng)
        ow = _weights(other, vocab)
        _, other_logits = _graph(other, ow, rows)
        cases = [
            ((x, x0, logits, recs[:-1]), TinyNNError, "sampling: 48 bytes .*expected 64"),
            ((x, x0, logits, np.concatenate([recs, recs[:1]])), TinyNNError, "expected 64"),
            ((x, np.concatenate([x0, x0[:1]]), logits, recs), TinyNNError, "do not fit"),
            ((x, x0, ids, recs), TinyNNError, "contiguous f32"),
            ((x, x0, half, recs), TinyNNError, "contiguous f32"),
            ((x, x0, three_d, recs), TinyNNError, "contiguous f32"),
            ((x, x0, h, recs), TinyNNError, "output of the realized graph"),
            ((x, x0, w, recs), TinyNNError, "output of the realized graph"),
            ((x, x0, other_logits, recs), TinyNNError, "not a live tensor of this session"),
            ((x, x0, logits, recs.view(np.float32)), ValueError, "SAMPLING_DTYPE"),
            ((x, x0, logits, recs.reshape(2, 2)), ValueError, "1-D"),
            ((None, x0, logits, recs), ValueError, "without an input tensor"),
        ]
        for args, error, pattern in cases:
            with pytest.raises(error, match=pattern):
                s.compute_io_sample(*args)
        with pytest.raises(TinyNNError, match="out_ids: 12 bytes"):
            s.compute_io_sample(x, x0, logits, recs, into=np.zeros(rows - 1, np.int32))
        with pytest.raises(ValueError, match="int32"):
            s.compute_io_sample(x, x0, logits, recs, into=np.zeros(rows, np.int64))
        np.testing.assert_array_equal(x.download(), x0)
        np.testing.assert_array_equal(logits.download(), want)


# ---- CUDA: the device's choice is the host rule's --------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("vocab", [50257, 70000], ids=["fast-kernel", "reference-kernel"])
def test_device_choice_follows_the_host_rule(vocab):
    """Rows of up to 65536 logits take the cluster kernel, longer ones the reference
    kernel. Rows 4, then 32 (the buffers grow), then 9 (they serve fewer)."""
    rng = np.random.default_rng(4)
    with _device_session() as s:
        w = _weights(s, vocab)
        checked = same = 0
        mismatches = []
        for rows in (4, 32, 9):
            s.reset_for_rebuild()
            x, logits = _graph(s, w, rows)
            into = np.full(rows, -1, np.int32)
            for step in range(3):
                records = _records(rows, rng, offset=step)
                ids = s.compute_io_sample(x, _x(rows, rng), logits, records, into=into)
                assert ids is into and ids.shape == (rows,)
                host = logits.download()  # [rows, vocab]: what the device sampled
                for i in range(rows):
                    t, k, p, u = (records[f][i] for f in SAMPLING_DTYPE.names)
                    if t == 0.0:  # greedy: exactly the argmax (lowest id on ties)
                        assert int(ids[i]) == int(np.argmax(host[i])), (rows, step, i)
                    want = choose(host[i], SamplingParams(float(t), int(k), float(p)), float(u))
                    checked += 1
                    if int(ids[i]) == want:
                        same += 1
                    else:
                        mismatches.append((rows, step, i, (t, k, p, u), int(ids[i]), want))
        print(f"[device sampler] vocab {vocab}: {same} of {checked} equal; {mismatches[:5]}")
        assert same >= 0.98 * checked, f"{same} of {checked} equal (>= 98%): {mismatches[:10]}"


@pytest.mark.cuda
def test_the_same_step_and_draws_give_the_same_ids():
    """A seed reproduces a run: the device's sums are exact integers."""
    rng = np.random.default_rng(5)
    with _device_session() as s:
        w = _weights(s, 50257)
        x, logits = _graph(s, w, 32)
        x0, records = _x(32, rng), _records(32, rng)
        first = s.compute_io_sample(x, x0, logits, records)
        for _ in range(3):
            np.testing.assert_array_equal(s.compute_io_sample(x, x0, logits, records), first)
        # with no input to upload, the graph runs on what x holds
        np.testing.assert_array_equal(s.compute_io_sample(None, None, logits, records), first)


@pytest.mark.cuda
def test_sessions_and_forks_sample_apart_and_free_their_samplers():
    """Each session (a fork too) has its own sampler; closing one leaves the
    others working, and closing all of them frees everything (no crash at exit)."""
    rng = np.random.default_rng(6)
    with _device_session() as root:
        w = _weights(root, 1000)
        fork = root.fork()
        x, logits = _graph(root, w, 3)
        fx, flogits = _graph(fork, w, 5)
        x0, fx0 = _x(3, rng), _x(5, rng)
        r3, r5 = _records(3, rng), _records(5, rng)
        a = root.compute_io_sample(x, x0, logits, r3)
        b = fork.compute_io_sample(fx, fx0, flogits, r5)
        fork.close()
        np.testing.assert_array_equal(root.compute_io_sample(x, x0, logits, r3), a)
        assert b.shape == (5,)
