"""Fuzz family "api": random sequences of raw libtinynn calls must never crash.

Run as a child (tests/reliability/test_fuzz.py does it):
``python -m tests.reliability.fuzz_api --repro FILE --examples N --seed S``.

Each hypothesis example is a list of steps; a step names a C function and carries a few
raw choices from which the interpreter below picks the arguments: live sessions, freed
ones, forks, NULL and foreign pointers (small ints, addresses of Python objects, a tensor
pointer plus 8), tensors of this session, of another, of a freed one or of a graph that was
reset, and integers from small shapes to INT64_MIN/MAX, NaN and inf for doubles. The
functions are called through the ctypes table of ``tinynn._lib`` with raw ints, so none of
the Python layer's guards apply. A call either succeeds or raises TinyNNError; anything
else fails the example, and a crash kills the child (the parent then prints the trace of
the example, written call by call to the reproducer file before each call).

After every example all its sessions are freed in the example's order, then a fresh
session computes a small graph (matmul, add, layer norm, softmax, get_rows) and a canary
session made at start-up recomputes its graph: both must match numpy, which shows that
nothing the example did corrupted the library's state or another session.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import time
from collections import Counter

import numpy as np
from hypothesis import given, seed
from hypothesis import strategies as st

import tinynn
from tinynn import TinyNNError
from tinynn._lib import FUNCTIONS
from tinynn.dtypes import SAMPLING_DTYPE
from tinynn.file_reads import FILE_RANGE_DTYPE

from .child import fuzz_settings, summary

LIB = tinynn._lib.load()

# Left out: the log callback (a Python callable, not data) and the calls that take no
# argument and cannot fail (they are called in every sanity check anyway).
# tnn_sample_rows reads and writes host buffers through raw pointers whose sizes the
# caller states: fuzzed handles there would be fuzzing ctypes, not the shim; its own
# error cases are tests/tinynn/test_sampler.py's.
SKIP = {
    "tnn_set_log_callback",
    "tnn_abi_version",
    "tnn_last_error",
    "tnn_sample_rows",
    "tnn_penalize_rows",
}
NAMES = sorted(n for n in FUNCTIONS if n not in SKIP)
# The calls that move a session through its states appear more often.
WEIGHTED = NAMES + [
    "tnn_input_2d_f32",
    "tnn_input_typed",
    "tnn_input_typed_persistent",
    "tnn_input_1d_i32",
    "tnn_finalize_weights",
    "tnn_realize",
    "tnn_realize",
    "tnn_compute",
    "tnn_compute",
    "tnn_matmul",
    "tnn_add",
    "tnn_get_rows",
    "tnn_set_rows",
    "tnn_upload_f32",
    "tnn_upload_i32",
    "tnn_download_f32",
    "tnn_set_output",
    "tnn_reset_for_rebuild",
    "tnn_session_new",
    "@graph",
    "@graph",
    "@graph",
]

SMALL = [1, 2, 4, 32, 2, 4, 32, 1, 8, 64, 3, 128]
ODD = [0, -1, 7, 31, 33, 5, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63)]
INT32 = [0, 1, 2, 3, 4, -1, 26, 8, 1000, 2**31 - 1, -(2**31), 5]
DOUBLES = [1.0, 0.5, -1.0, 0.0, 1e-5, 2.0, math.nan, math.inf, -math.inf, 1e308, -1e-300]
NAMES_ARG = [b"t", b"", b"x" * 200, None, b"\xff\xfe"]
MAX_LIVE = 6
MAX_BUFFER = 64 << 20  # data buffers are real memory of at least nbytes, up to this

_keep = [bytearray(64), object()]  # foreign addresses that point at real memory
FOREIGN = [
    1,
    8,
    0xDEADBEEF,
    2**64 - 1,
    2**63,
    id(_keep[1]),
    ctypes.addressof((ctypes.c_char * 64).from_buffer(_keep[0])),
]


class World:
    """Handles of one example: sessions (live and freed), tensors, and the trace."""

    def __init__(self, trace_fd: int):
        self.live: list[int] = []
        self.dead: list[int] = []
        self.tensors: list[int] = []
        self.recent: list[int] = []  # tensors made since the last session change
        self.trace_fd = trace_fd
        self.outcomes: Counter = Counter()

    def session(self, c: int) -> int:
        if self.live and c % 5:
            return self.live[-1 - (c // 5) % min(2, len(self.live))]
        pool = self.live + self.dead + [0] + FOREIGN
        return pool[c % len(pool)]

    def tensor(self, c: int) -> int:
        if self.recent and c % 6:
            return self.recent[-1 - (c // 6) % min(4, len(self.recent))]
        pool = self.tensors + [0] + FOREIGN + [t + 8 for t in self.tensors[:2]]
        return pool[c % len(pool)]

    def trace(self, text: str) -> None:
        os.write(self.trace_fd, (text + "\n").encode())


def wrap64(v: int) -> int:
    """v as the int64 C sees (ctypes would wrap it silently anyway)."""
    return (v + 2**63) % 2**64 - 2**63


def i64(c: int) -> int:
    return SMALL[(c >> 3) % len(SMALL)] if c % 8 < 7 else ODD[(c >> 3) % len(ODD)]


def tensor_nbytes(sess: int, t: int) -> int | None:
    ne = (ctypes.c_int64 * 4)()
    nb = (ctypes.c_int64 * 4)()
    try:
        LIB.tnn_tensor_info(sess, t, ne, nb, None)
    except TinyNNError:
        return None
    return int(nb[3] * ne[3])


def tensor_rows(sess: int, t: int) -> int | None:
    """ne[1] of t, or None where t is not a tensor of sess."""
    ne = (ctypes.c_int64 * 4)()
    try:
        LIB.tnn_tensor_info(sess, t, ne, None, None)
    except TinyNNError:
        return None
    return int(ne[1])


def raw(w: World, name: str, *args):
    """One traced call; the result, or None when it raised TinyNNError."""
    w.trace(f"{name}{args!r}")
    try:
        result = getattr(LIB, name)(*args)
    except TinyNNError:
        w.outcomes["error"] += 1
        return None
    w.outcomes["ok"] += 1
    w.outcomes["ok:" + name] += 1
    if FUNCTIONS[name][2] == "handle" and result:
        w.tensors.append(result)
        w.recent.append(result)
    return result


UNARY = ["tnn_scale", "tnn_gelu", "tnn_gelu_exact", "tnn_softmax", "tnn_cont", "tnn_argmax"]


def graph(w: World, choices: list[int]) -> None:
    """A well-formed graph on the current session (which may be in any state): input,
    optional matmul with a recent tensor, a unary op, output, realize, then upload and
    compute, or both and the download as one tnn_compute_io."""
    if not w.live:
        return
    s = w.live[-1]
    rows, cols = SMALL[choices[0] % len(SMALL)], SMALL[choices[1] % len(SMALL)]
    w.trace(f"@graph rows={rows} cols={cols}")
    x = y = raw(w, "tnn_input_2d_f32", s, rows, cols)
    if x is None:
        return
    if choices[2] % 2 and len(w.recent) > 1:
        y = raw(w, "tnn_matmul", s, w.recent[-2 - choices[3] % (len(w.recent) - 1)], x) or x
    op = UNARY[choices[4] % len(UNARY)]
    extra = (DOUBLES[choices[5] % 6],) if op == "tnn_scale" else ()
    y = raw(w, op, s, y, *extra)
    if y is None or raw(w, "tnn_set_output", s, y) is None or raw(w, "tnn_realize", s, y) is None:
        return
    data = np.linspace(-1, 1, rows * cols, dtype=np.float32)
    if choices[6] % 2:  # the same step as one call
        n_out = tensor_nbytes(s, y) or 0
        out = np.empty(max(n_out, 1), np.uint8)
        raw(w, "tnn_compute_io", s, x, data.ctypes.data, data.nbytes, y, out.ctypes.data, n_out)
        return
    raw(w, "tnn_upload_f32", s, x, data.ctypes.data, data.nbytes, 0)
    raw(w, "tnn_compute", s)


def tensor_buffer(w, sess, it, keep: list) -> list:
    """(tensor, data, nbytes) of a compute_io-like call: a tensor or NULL, a real buffer
    of at least nbytes or NULL (kept alive in keep), nbytes exact or drawn."""
    c_t, c_n, c_d = next(it), next(it), next(it)
    t = w.tensor(c_t) if c_t % 5 else None
    exact = tensor_nbytes(sess, t) if t and c_n % 3 == 0 else None
    nbytes = exact if exact is not None else wrap64(i64(c_n) * (4 if c_n % 2 else 1))
    data = None
    if 0 <= nbytes <= MAX_BUFFER and c_d % 8:
        keep.append(np.zeros(max(nbytes, 1), np.uint8))
        data = keep[-1].ctypes.data
    return [t, data, nbytes]


def call(w: World, name: str, choices: list[int]) -> None:
    if name == "@graph":
        return graph(w, choices)
    argtypes = FUNCTIONS[name][0]
    args: list = []
    it = iter(choices)
    if name in ("tnn_session_new",):
        if len(w.live) >= MAX_LIVE:
            return
        args = [0 if next(it) % 6 else 1]
    elif name.startswith(("tnn_upload_", "tnn_download_")):
        sess, t = w.session(next(it)), w.tensor(next(it))
        c_n, c_off = next(it), next(it)
        exact = tensor_nbytes(sess, t) if c_n % 3 == 0 else None
        nbytes = exact if exact is not None else wrap64(i64(c_n) * (4 if c_n % 2 else 1))
        offset = 0 if c_off % 3 else i64(c_off)
        if 0 <= nbytes <= MAX_BUFFER and next(it) % 8:
            # zeros are valid indices for any int32 tensor that feeds get_rows/set_rows
            buf = np.zeros(max(nbytes, 1), np.uint8)
            if name.startswith("tnn_upload_f") and c_off % 2:
                buf[:] = np.frombuffer(np.float32(0.25).tobytes() * (buf.size // 4 + 1), np.uint8)[
                    : buf.size
                ]
            data = buf.ctypes.data
        else:
            data, buf = None, None
        args = [sess, t, data, nbytes, offset]
    elif name == "tnn_compute_io":
        # (in, in_data, in_nbytes), (out, out_data, out_nbytes): data are real buffers
        # of at least nbytes, or NULL, as for uploads and downloads; a tensor may be NULL
        sess, keep = w.session(next(it)), []
        args = [sess]
        for _ in range(2):
            args += tensor_buffer(w, sess, it, keep)
    elif name == "tnn_compute_io_sample":
        # in as for tnn_compute_io; logits a tensor (or NULL); the records and the ids
        # real buffers of at least their nbytes, or NULL: records greedy (valid), or all
        # zero (top_p 0: refused), so that on a GPU the call also gets through
        sess, keep = w.session(next(it)), []
        t, data, nbytes = tensor_buffer(w, sess, it, keep)
        c_l = next(it)
        logits = w.tensor(c_l) if c_l % 5 else None
        rows = tensor_rows(sess, logits) if logits else None
        args = [sess, t, data, nbytes, logits]
        for size in (SAMPLING_DTYPE.itemsize, 4):  # the records, then the ids
            c_n, c_d = next(it), next(it)
            exact = rows * size if rows is not None and c_n % 3 else None
            nbytes = exact if exact is not None else wrap64(i64(c_n) * size)
            data = None
            if 0 <= nbytes <= MAX_BUFFER and c_d % 8:
                keep.append(np.zeros(max(nbytes, 1) // size + 1, SAMPLING_DTYPE))
                keep[-1]["top_p"] = 1.0 if c_d % 3 else 0.0
                data = keep[-1].ctypes.data
            args += [data, nbytes]
    elif name == "tnn_read_file_ranges":
        # up to 2 records of tensors as w.tensor draws them (NULL, foreign, freed, another
        # session's), offsets and sizes as for uploads, the file's layout (as stored, rows
        # to transpose: a few or a drawn int; the file's type: t's, f32, f16, bf16, q8_0 or
        # a drawn int; the layout mostly t's rows, at times packed rows or unknown); the
        # count and byte size agreeing or not; the settings from one choice's bits: the
        # trace file's descriptor or a drawn int, 1-3 threads, staging small, staged or not
        # (on the CPU each path runs), or drawn ints, out-pointers real or NULL
        sess, c_n, c_b = w.session(next(it)), next(it), next(it)
        n = c_n % 3
        records = np.zeros(max(n, 1), FILE_RANGE_DTYPE)
        for i in range(n):
            t, c_fo, c_nb, c_off = w.tensor(next(it)), next(it), next(it), next(it)
            exact = tensor_nbytes(sess, t) if c_nb % 3 == 0 else None
            nbytes = exact if exact is not None else wrap64(i64(c_nb) * (4 if c_nb % 2 else 1))
            offset = 0 if c_off % 3 else i64(c_off)
            c_rows, c_type = c_off >> 4, c_fo >> 4  # 12 choices a step: their high bits
            rows = (0, 1, 2, 3, 7)[c_rows % 5] if c_rows % 7 else i64(c_rows)
            file_type = (-1, 0, 1, 30, 8)[c_type % 5] if c_type % 7 else INT32[c_type % len(INT32)]
            layout = 0 if c_rows % 11 else (1, 1, 7)[c_type % 3]
            records[i] = (
                t or 0,
                0 if c_fo % 3 else i64(c_fo),
                nbytes,
                offset,
                rows,
                file_type,
                layout,
            )
        w.trace(f"  records {records.tolist()!r}")
        c = next(it)
        fd, threads, staging, n_staging, flags, ptrs = ((c >> k) & 7 for k in range(0, 18, 3))
        out = [ctypes.c_int64(), ctypes.c_int64()]
        args = [sess, w.trace_fd if fd % 4 else INT32[c_b % len(INT32)]]
        args += [records.ctypes.data if c_b % 7 else None, n]
        args += [n * FILE_RANGE_DTYPE.itemsize if c_b % 5 else wrap64(i64(c_b))]
        args += [1 + threads % 3 if threads < 6 else INT32[c_n % len(INT32)]]
        args += [4096 if staging < 6 else i64(c_b), 1 + n_staging % 3 if n_staging < 6 else 0]
        args += [flags % 2 if flags < 6 else INT32[c_b % len(INT32)]]
        args += [ctypes.addressof(o) if ptrs < 7 else None for o in out]
    elif name == "tnn_move_to_huge_pages":
        # tensors: a real array (or NULL) whose handles may be anything, as a data
        # buffer is real memory whose bytes may be anything; n_tensors its length or odd
        sess, c_n = w.session(next(it)), next(it)
        handles = (ctypes.c_void_p * 4)(*(w.tensor(next(it)) for _ in range(4)))
        n = c_n % 5 if c_n % 7 else INT32[c_n % len(INT32)]
        if 4 < n <= 16384:  # TNN_MAX_PERSISTENT_TENSORS: larger counts are refused unread
            n = 4  # the array's length: a longer count would read past it, as for any buffer
        args = [sess, ctypes.addressof(handles) if c_n % 6 else None, n]
    elif name == "tnn_tensor_info":
        bufs = [(ctypes.c_int64 * 4)(), (ctypes.c_int64 * 4)(), ctypes.c_int()]
        c = next(it)
        args = [w.session(next(it)), w.tensor(next(it))] + [
            ctypes.addressof(b) if c >> i & 1 else None for i, b in enumerate(bufs)
        ]
    elif name == "tnn_device_memory":
        bufs = [ctypes.c_int64(), ctypes.c_int64()]
        c = next(it)
        args = [w.session(next(it))] + [
            ctypes.addressof(b) if c >> i & 1 else None for i, b in enumerate(bufs)
        ]
    else:
        first_void = True
        for a in argtypes:
            c = next(it)
            if a is ctypes.c_void_p:
                args.append(w.session(c) if first_void else w.tensor(c))
                first_void = False
            elif a is ctypes.c_int64:
                args.append(i64(c))
            elif a is ctypes.c_int:
                if name == "tnn_concat" or name == "tnn_permute":
                    args.append(c % 5 if c % 7 else INT32[c % len(INT32)])
                elif name.endswith("_typed") or name.endswith("_persistent") or name == "tnn_cast":
                    args.append([0, 1, 8, 26][c % 4] if c % 7 else INT32[c % len(INT32)])
                else:
                    args.append(INT32[c % len(INT32)])
            elif a is ctypes.c_double:
                args.append(DOUBLES[c % len(DOUBLES)])
            elif a is ctypes.c_char_p:
                args.append(NAMES_ARG[c % len(NAMES_ARG)])
            else:
                raise AssertionError(f"no argument maker for {a} in {name}")
    w.trace(f"{name}{tuple(args)!r}")
    try:
        result = getattr(LIB, name)(*args)
    except TinyNNError:
        w.outcomes["error"] += 1
        return
    w.outcomes["ok"] += 1
    w.outcomes["ok:" + name] += 1
    if name in ("tnn_session_new", "tnn_session_fork"):
        w.live.append(result)
        w.recent = []
    elif name == "tnn_session_free":
        if args[0] in w.live:
            w.live.remove(args[0])
            w.dead.append(args[0])
    elif name == "tnn_reset_for_rebuild":
        w.recent = []
    elif FUNCTIONS[name][2] == "handle" and name != "tnn_null_ptr" and result:
        w.tensors.append(result)
        w.recent.append(result)


def setup(w: World, kind: int) -> None:
    """Starting state: 0 nothing, 1 a session, 2 a session with finalized weights, 3 + fork."""
    if kind == 0:
        return
    s = LIB.tnn_session_new(0)
    w.live.append(s)
    if kind >= 2:
        for shape in ((4, 8), (8, 1)):
            t = LIB.tnn_input_2d_f32_persistent(s, *shape)
            w.tensors.append(t)
            w.recent.append(t)
        LIB.tnn_finalize_weights(s)
    if kind >= 3:
        w.live.append(LIB.tnn_session_fork(s))
    w.trace(f"setup kind={kind}")


def check_sane(rng: np.random.Generator) -> None:
    """A fresh session still computes right: softmax(layer_norm(W x + b)), get_rows."""
    s = LIB.tnn_session_new(0)
    try:
        LIB.tnn_set_n_threads(s, 1)
        W = LIB.tnn_input_2d_f32_persistent(s, 5, 3)  # ne [3, 5]
        b = LIB.tnn_input_1d_f32_persistent(s, 5)
        LIB.tnn_finalize_weights(s)
        w_host = rng.standard_normal((5, 3)).astype(np.float32)
        b_host = rng.standard_normal(5).astype(np.float32)
        LIB.tnn_upload_f32(s, W, w_host.ctypes.data, w_host.nbytes, 0)
        LIB.tnn_upload_f32(s, b, b_host.ctypes.data, b_host.nbytes, 0)
        x = LIB.tnn_input_2d_f32(s, 2, 3)  # ne [3, 2]
        idx = LIB.tnn_input_1d_i32(s, 2)
        y = LIB.tnn_add(s, LIB.tnn_matmul(s, W, x), b)  # [5, 2]
        y = LIB.tnn_softmax(s, LIB.tnn_layer_norm(s, y, None, None, 1e-5))
        rows = LIB.tnn_get_rows(s, W, idx)  # [3, 2]
        LIB.tnn_set_output(s, y)
        LIB.tnn_set_output(s, rows)
        LIB.tnn_add_to_graph(s, rows)
        LIB.tnn_realize(s, y)
        x_host = rng.standard_normal((2, 3)).astype(np.float32)
        i_host = np.array([4, 1], np.int32)
        LIB.tnn_upload_f32(s, x, x_host.ctypes.data, x_host.nbytes, 0)
        LIB.tnn_upload_i32(s, idx, i_host.ctypes.data, i_host.nbytes, 0)
        LIB.tnn_compute(s)
        out = np.empty((2, 5), np.float32)
        got_rows = np.empty((2, 3), np.float32)
        LIB.tnn_download_f32(s, y, out.ctypes.data, out.nbytes, 0)
        LIB.tnn_download_f32(s, rows, got_rows.ctypes.data, got_rows.nbytes, 0)
    finally:
        LIB.tnn_session_free(s)
    z = x_host.astype(np.float64) @ w_host.T + b_host
    z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    err = float(np.max(np.abs(out - want)))
    assert err < 1e-4, f"sanity graph after the example: max-abs error {err}"
    assert np.array_equal(got_rows, w_host[[4, 1]]), "sanity get_rows after the example"


class Canary:
    """A session that lives through the whole run; its result must never change."""

    def __init__(self):
        self.s = LIB.tnn_session_new(0)
        LIB.tnn_set_n_threads(self.s, 1)
        self.x = LIB.tnn_input_2d_f32(self.s, 3, 4)
        self.y = LIB.tnn_scale(self.s, LIB.tnn_gelu_exact(self.s, self.x), 3.0)
        LIB.tnn_set_output(self.s, self.y)
        LIB.tnn_realize(self.s, self.y)
        self.x_host = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
        self.want = self.run()

    def run(self) -> np.ndarray:
        x = self.x_host
        LIB.tnn_upload_f32(self.s, self.x, x.ctypes.data, x.nbytes, 0)
        LIB.tnn_compute(self.s)
        out = np.empty((3, 4), np.float32)
        LIB.tnn_download_f32(self.s, self.y, out.ctypes.data, out.nbytes, 0)
        return out

    def check(self) -> None:
        got = self.run()
        assert np.array_equal(got, self.want), "the canary session's result changed"


STEP = st.tuples(
    st.sampled_from(WEIGHTED), st.lists(st.integers(0, 2**16), min_size=12, max_size=12)
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repro", required=True)
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=40)
    a = ap.parse_args()
    fd = os.open(a.repro, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    totals: Counter = Counter()
    canary = Canary()
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()

    @fuzz_settings(a.examples)
    @seed(a.seed)
    @given(st.integers(0, 3), st.lists(STEP, min_size=a.max_steps // 4, max_size=a.max_steps))
    def example(kind: int, steps: list) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        w = World(fd)
        w.trace(f"# api fuzz, seed {a.seed}: example {totals['examples']}")
        try:
            setup(w, kind)
            for name, choices in steps:
                call(w, name, choices)
        finally:
            for s in w.live:
                w.trace(f"tnn_session_free({s})")
                LIB.tnn_session_free(s)
        w.trace("check_sane / canary")
        check_sane(rng)
        canary.check()
        totals["examples"] += 1
        totals["calls"] += w.outcomes["ok"] + w.outcomes["error"]
        totals.update(w.outcomes)

    example()
    summary(
        family="api",
        seed=a.seed,
        examples=totals["examples"],
        calls=totals["calls"],
        ok=totals["ok"],
        errors=totals["error"],
        seconds=round(time.perf_counter() - t0, 1),
        deep={
            k[3:]: v
            for k, v in sorted(totals.items())
            if k.startswith("ok:tnn_")
            and k[7:] in ("realize", "compute", "compute_io", "finalize_weights", "session_fork")
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
