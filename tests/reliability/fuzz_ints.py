"""Fuzz family "integer ranges": every integer argument of tinynn, at and past the C types.

Run as a child (tests/reliability/test_fuzz.py does it):
``python -m tests.reliability.fuzz_ints --repro FILE --examples N --seed S``.

ctypes converts a Python int modulo 2**bits, so an offset of 2**64+4 used to write at
byte 4, and a float id 1.9 read row 1. Each example calls one int-taking method of
Session or Tensor with values drawn around the int32/int64 edges (and bools, floats,
numpy scalars, id lists). Allowed outcomes: success, TypeError, ValueError or
TinyNNError; afterwards the persistent tensor must hold exactly what was uploaded
(a wrapped offset would have written into it) and the thread count must be 1..512.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from hypothesis import given, seed
from hypothesis import strategies as st

from tinynn import Session, TinyNNError

from .child import Repro, fuzz_settings, summary

EDGES = [2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 4, 2**70]


def ints():
    edge = st.sampled_from(EDGES + [-e for e in EDGES])
    near = st.integers(-3, 3).flatmap(lambda d: edge.map(lambda e: e + d))
    odd = st.one_of(
        st.booleans(),
        st.floats(allow_nan=True),
        st.integers(-(2**64), 2**64),
        st.sampled_from([np.int32(3), np.int64(2**40), np.uint64(2**64 - 1), 1.0, 1.9]),
    )
    return st.one_of(st.integers(-8, 64), near, odd)


METHODS = [
    "upload_offset", "download_offset", "concat", "view_1d", "view_2d", "view_3d",
    "view_4d", "reshape", "permute", "top_k", "diag_mask_inf", "n_threads",
    "input_2d", "input_typed", "ids",
]  # fmt: skip


def call(s: Session, w, ids, method: str, v: list) -> None:
    a, b, c, d = v[0], v[1], v[2], v[3]
    if method == "upload_offset":
        w.upload(np.full(1, 7.0, np.float32), offset=a)
    elif method == "download_offset":
        w.download_into(np.empty(1, np.float32), a)
    elif method == "concat":
        s.concat(w, w, a)
    elif method == "view_1d":
        s.view_1d(w, a, b)
    elif method == "view_2d":
        s.view_2d(w, a, b, c, d)
    elif method == "view_3d":
        s.view_3d(w, a, b, c, d, a, b)
    elif method == "view_4d":
        s.view_4d(w, (a, b, c, d), (a, b, c), d)
    elif method == "reshape":
        s.reshape(w, a, b)
    elif method == "permute":
        s.permute(w, a, b, c, d)
    elif method == "top_k":
        s.top_k(w, a)
    elif method == "diag_mask_inf":
        s.diag_mask_inf(w, a)
    elif method == "n_threads":
        s.n_threads = a
    elif method == "input_2d":
        s.input_2d_f32(a, b)
    elif method == "input_typed":
        s.input_typed("f32", (a, b))
    else:
        ids.upload([a, b])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repro", required=True)
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    repro = Repro(a.repro)
    outcomes: Counter = Counter()
    started = time.perf_counter()
    want = np.arange(8, dtype=np.float32).reshape(2, 4)

    @fuzz_settings(a.examples)
    @seed(a.seed)
    @given(st.sampled_from(METHODS), st.lists(ints(), min_size=4, max_size=4))
    def run(method, values) -> None:
        repro.write(f"seed {a.seed}\nmethod {method}\nvalues {values!r}\n")
        with Session("cpu", n_threads=1) as s:
            w = s.input_typed_persistent("f32", (4, 2))
            s.finalize_weights()
            w.upload(want)
            ids = s.input_1d_i32(2)
            expected = want.copy()
            try:
                call(s, w, ids, method, values)
                outcomes["ok"] += 1
                if method == "upload_offset":  # 7.0 at byte offset values[0], nowhere else
                    b = expected.view(np.uint8).reshape(-1)
                    b[values[0] : values[0] + 4] = np.frombuffer(np.float32(7).tobytes(), np.uint8)
            except (TypeError, ValueError, TinyNNError) as e:
                outcomes[type(e).__name__] += 1
            got = w.download()
            assert got.tobytes() == expected.tobytes(), f"{method} wrote where it should not"
            assert 1 <= s.n_threads <= 512
        outcomes["examples"] += 1

    run()
    summary(family="ints", seed=a.seed, seconds=round(time.perf_counter() - started, 1), **outcomes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
