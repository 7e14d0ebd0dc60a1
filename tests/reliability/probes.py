"""Measurements run in a fresh child process, so other tests' memory does not blur them.

``python -m tests.reliability.probes sessions N`` / ``models N HF_DIR`` / ``huge`` /
``shared-session`` prints one ``SUMMARY {json}`` line (see child.py).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time

import numpy as np

from .child import summary

PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL("libc.so.6")


def rss() -> int:
    """Resident set size in bytes (/proc/self/statm, second field), after a collection."""
    gc.collect()
    _libc.malloc_trim(0)  # hand freed heap back, so fragmentation is not counted
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def one_session() -> None:
    """A session with weights and a realized, computed graph, then closed."""
    from tinynn import Session

    with Session("cpu", n_threads=1) as s:
        w = s.input_2d_f32_persistent(16, 16)
        s.finalize_weights()
        w.upload(np.eye(16, dtype=np.float32))
        x = s.input_2d_f32(4, 16)
        y = s.set_output(s.matmul(w, x))
        s.realize(y)
        x.upload(np.ones((4, 16), np.float32))
        s.compute()
        assert np.array_equal(y.download().reshape(4, 16), np.ones((4, 16), np.float32))


def sessions(n: int) -> None:
    for _ in range(100):  # warm-up: backend loaded, allocator pools filled
        one_session()
    before = rss()
    t0 = time.perf_counter()
    for _ in range(n):
        one_session()
    summary(probe="sessions", n=n, rss_before=before, growth=rss() - before,
            seconds=round(time.perf_counter() - t0, 2))  # fmt: skip


def models(n: int, path: str) -> None:
    import gpt2

    def once() -> None:
        with gpt2.load(path, device="cpu", n_threads=1) as m:
            m.logits([1, 2, 3])

    for _ in range(10):
        once()
    before = rss()
    t0 = time.perf_counter()
    marks = []
    for i in range(n):
        once()
        if (i + 1) % (n // 4) == 0:
            marks.append(rss() - before)
    # the leak measure: growth over the second half (the first half may still settle
    # glibc's heap: freed large blocks raise its mmap threshold once)
    summary(
        probe="models",
        n=n,
        rss_before=before,
        growth=marks[-1],
        marks=marks,
        second_half=marks[-1] - marks[1],
        seconds=round(time.perf_counter() - t0, 2),
    )


def huge(n: int) -> None:
    """A GPT-2 far larger than memory: FastGPT2's weight allocation must fail cleanly."""
    from gpt2.config import GPT2Config
    from gpt2.engine import FastGPT2
    from gpt2.weights import GPT2Weights
    from tinynn import TinyNNError

    # 2^50+ bytes of f32 weights: d 2^16, 64 layers -> 12 * 2^32 * 64 * 4 B = 12 PiB
    config = GPT2Config(n_layer=64, n_embd=2**16, n_head=64, n_positions=64, vocab_size=1000)

    def attempt() -> str:
        try:
            FastGPT2(GPT2Weights(config, {}), "cpu", "f32", n_threads=1)
        except TinyNNError as e:
            return str(e)
        raise AssertionError("a 12 PiB model was allocated")

    one_session()
    attempt()  # warm-up: the engine's modules and the CPU backend are loaded once
    before = rss()
    messages = []
    for _ in range(n):
        messages.append(attempt())
    one_session()  # the library still works
    summary(probe="huge", growth=rss() - before, message=messages[0], n=len(messages))


def shared_session(n_threads: int, rounds: int) -> None:
    """One session shared by threads that take a lock around each compute+download:
    the documented way to share (the shim itself is not thread-safe)."""
    from tinynn import Session

    s = Session("cpu", n_threads=1)
    x = s.input_2d_f32(2, 8)
    y = s.set_output(s.scale(x, 2.0))
    s.realize(y)
    lock = threading.Lock()
    errors: list[str] = []

    def work(k: int) -> None:
        for r in range(rounds):
            data = np.full((2, 8), k * 1000 + r, np.float32)
            with lock:
                x.upload(data)
                s.compute()
                out = y.download().reshape(2, 8)
            if not np.array_equal(out, 2 * data):
                errors.append(f"thread {k} round {r}: got {out[0, 0]}, want {2 * data[0, 0]}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.close()
    summary(probe="shared-session", threads=n_threads, rounds=rounds, errors=errors[:3])


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "sessions":
        sessions(int(sys.argv[2]))
    elif what == "models":
        models(int(sys.argv[2]), sys.argv[3])
    elif what == "huge":
        huge(int(sys.argv[2]))
    elif what == "shared-session":
        shared_session(4, int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown probe {what}")
