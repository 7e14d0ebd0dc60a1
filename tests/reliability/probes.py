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


def address_space(n: int) -> None:
    """Address space (VmSize) that n sessions, each holding a realized graph, map."""
    from tinynn import Session

    def vm_size() -> int:
        with open("/proc/self/status") as fh:
            line = next(ln for ln in fh if ln.startswith("VmSize:"))
        return int(line.split()[1]) * 1024

    one_session()  # backends loaded
    before = vm_size()
    held = []
    for _ in range(n):
        s = Session("cpu", n_threads=1)
        x = s.input_2d_f32(2, 8)
        s.realize(s.set_output(s.scale(x, 2.0)))
        held.append(s)
    per_session = (vm_size() - before) // n
    for s in held:
        s.close()
    summary(probe="address-space", n=n, per_session=per_session)


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
    from gpt2.engine import FastGPT2, fast
    from gpt2.weights import GPT2Weights
    from tinynn import TinyNNError

    # 2^50+ bytes of f32 weights: d 2^16, 64 layers -> 12 * 2^32 * 64 * 4 B = 12 PiB
    config = GPT2Config(n_layer=64, n_embd=2**16, n_head=64, n_positions=64, vocab_size=1000)

    def attempt() -> str:
        # The engine refuses this before allocating (gpt2.engine.memory.check_fits,
        # tests/reliability/test_memory_bounds.py); here the native allocation
        # itself is what must fail cleanly, so the estimate is skipped.
        fast.check_fits = lambda *a, **k: 0
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


def cuda_memory(n: int) -> None:
    """Device memory while GPT-2-small-shaped f16 models are loaded, used and closed,
    against the level before the first one (the CUDA runtime's free/total)."""
    from gpt2.config import GPT2Config
    from gpt2.engine import FastGPT2
    from gpt2.random_weights import random_weights
    from tinynn import Session

    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    weights = random_weights(config)

    def once() -> int:
        engine = FastGPT2(weights, "cuda", "f16")
        try:
            with engine.sequence() as seq:
                token = seq.start_greedy([1, 2, 3, 4])
                for _ in range(4):
                    token = seq.step_greedy(token)
            return meter.device_memory()[0]
        finally:
            engine.close()

    meter = Session("cuda")  # holds the CUDA context, so the baseline includes it
    once()  # warm-up: cuBLAS handles and the runtime's own pools, made once per process
    base, total = meter.device_memory()
    in_use, after = [], []
    for _ in range(n):
        in_use.append(base - once())
        after.append(base - meter.device_memory()[0])
    meter.close()
    n_params = sum(t.size for t in weights.tensors.values())
    summary(probe="cuda-memory", n=n, total=total, base_free=base, in_use=in_use,
            residue=after, weights_f16=2 * n_params)  # fmt: skip


def doubles_a_small_input(s) -> bool:
    """Whether session s (reset or fresh) still realizes and computes y = 2 x."""
    x = s.input_2d_f32(2, 8)
    y = s.set_output(s.scale(x, 2.0))
    s.realize(y)
    x.upload(np.ones((2, 8), np.float32))
    s.compute()
    return bool(np.array_equal(y.download().reshape(2, 8), np.full((2, 8), 2, np.float32)))


def cuda_huge(n: int) -> None:
    """A GPT-2 larger than the GPU (206 GB of f32 weights): a clean error (check_fits'
    ValueError where the device reports its free memory, else the allocator's
    TinyNNError), and the device memory is back where it was."""
    from gpt2.config import GPT2Config
    from gpt2.engine import FastGPT2
    from gpt2.weights import GPT2Weights
    from tinynn import Session, TinyNNError

    config = GPT2Config(n_layer=64, n_embd=8192, n_head=64, n_positions=64, vocab_size=1000)
    meter = Session("cuda")
    base = meter.device_memory()[0]
    messages = []
    for _ in range(n):
        try:
            FastGPT2(GPT2Weights(config, {}), "cuda", "f32")
        except (TinyNNError, ValueError) as e:  # the allocator's refusal, or check_fits'
            messages.append(str(e))
        else:
            raise AssertionError("a 206 GB model was allocated on the GPU")
    residue = base - meter.device_memory()[0]
    with Session("cuda") as s:  # the device still works
        ok = doubles_a_small_input(s)
    meter.close()
    summary(probe="cuda-huge", n=n, message=messages[0], residue=residue, still_works=ok)


def cuda_huge_graph(n: int) -> None:
    """A graph whose compute memory is larger than the GPU (a 160 GB product; ggml
    crashed allocating it before tnn_realize reserved first on CUDA too): a clean
    TinyNNError from realize, nothing left allocated, and the same session realizes
    a small graph afterwards."""
    from tinynn import Session, TinyNNError

    meter = Session("cuda")
    base = meter.device_memory()[0]
    messages = []
    with Session("cuda") as s:
        for _ in range(n):
            a = s.input_2d_f32(200_000, 8)
            b = s.input_2d_f32(200_000, 8)
            try:
                s.realize(s.set_output(s.matmul(a, b)))  # [200000, 200000] f32
            except TinyNNError as e:
                messages.append(str(e))
            else:
                raise AssertionError("a 160 GB compute graph was allocated on the GPU")
            s.reset_for_rebuild()
        residue = base - meter.device_memory()[0]
        ok = doubles_a_small_input(s)
    meter.close()
    summary(probe="cuda-huge-graph", n=n, message=messages[0], residue=residue, still_works=ok)


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
    elif what == "address-space":
        address_space(int(sys.argv[2]))
    elif what == "models":
        models(int(sys.argv[2]), sys.argv[3])
    elif what == "huge":
        huge(int(sys.argv[2]))
    elif what == "cuda-memory":
        cuda_memory(int(sys.argv[2]))
    elif what == "cuda-huge":
        cuda_huge(int(sys.argv[2]))
    elif what == "cuda-huge-graph":
        cuda_huge_graph(int(sys.argv[2]))
    elif what == "shared-session":
        shared_session(4, int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown probe {what}")
