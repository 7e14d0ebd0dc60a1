"""Where the time of one decode step (or one prefill) goes, on random weights.

    python scripts/profile_decode.py --device cuda --shapes gpt2 gpt2-xl \
        --dtypes f16 q8_0 f32 [--prefill 1024] --json OUT.json

For each (shape, dtype): the decode graph's node and split counts; the host
time of the step's three phases (upload of the 12-byte input, compute, 4-byte
download), each timed alone over many steps, and of the step as the engine
runs it (Session.compute_io: one call, one wait) and through
FastGPT2.step_greedy (Python included); and, where torch is importable
and the device is CUDA, torch.profiler's view of the same steps: GPU kernel
time per step, kernels per step, the launches the host made (cudaGraphLaunch
means ggml-cuda replayed a CUDA graph) and the kernels that cost most.
With --prefill N the step is a prefill of N tokens (its graph, same measures).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np

from gpt2.bench import SHAPES, WEIGHT_SCALE
from gpt2.engine import FastGPT2
from gpt2.engine.graph import GraphShape, bucket
from gpt2.random_weights import random_weights

PROMPT = 16


def _phases(engine: FastGPT2, steps: int) -> tuple[dict, object]:
    """Median microseconds of each phase of a greedy decode step at batch 1."""
    with engine.sequence() as seq:
        token = seq.start_greedy(list(range(1, PROMPT + 1)))
    g = engine._decode_graph(GraphShape(0, 1, 1, 256, last_only=False))
    up, comp, down = [], [], []
    for i in range(steps):
        pos = PROMPT + i % (256 - PROMPT)
        ints = np.array([token, pos, pos], np.int32)
        t0 = time.perf_counter()
        g.ints.upload(ints)
        t1 = time.perf_counter()
        g.sess.compute()
        t2 = time.perf_counter()
        token = int(g.out_ids.download()[0])
        t3 = time.perf_counter()
        up.append(t1 - t0)
        comp.append(t2 - t1)
        down.append(t3 - t2)

    def us(xs: list[float]) -> float:
        return round(float(np.median(xs)) * 1e6, 1)

    total = [a + b + c for a, b, c in zip(up, comp, down, strict=True)]
    phases = {"upload_us": us(up), "compute_us": us(comp), "download_us": us(down)}
    phases["step_us"] = us(total)
    # the same step as the engine runs it: one call, one wait (Session.compute_io)
    fused = []
    for i in range(steps):
        pos = PROMPT + i % (256 - PROMPT)
        t0 = time.perf_counter()
        token = int(g.sess.compute_io(g.ints, np.array([token, pos, pos], np.int32), g.out_ids)[0])
        fused.append(time.perf_counter() - t0)
    phases["step_compute_io_us"] = us(fused)
    # and as a user's loop sees it: a sequence's step_greedy, Python included
    # (positions stay under 256, the graph's attention bucket)
    stepped = []
    with engine.sequence() as seq:
        token = seq.start_greedy(list(range(1, PROMPT + 1)))
        for _ in range(min(steps, 256 - PROMPT - 1)):
            t0 = time.perf_counter()
            token = seq.step_greedy(token)
            stepped.append(time.perf_counter() - t0)
    phases["engine_step_us"] = us(stepped)
    return phases, g


def _prefill_phases(engine: FastGPT2, n_tokens: int, steps: int) -> tuple[dict, object, np.ndarray]:
    """Median microseconds of a prefill of n_tokens (last token's logits only)."""
    prompt = [(i * 7) % engine.config.vocab_size for i in range(n_tokens)]
    with engine.sequence() as seq:
        seq.start_greedy(prompt)  # builds the graph
    n_q = engine._prefill_length(1, n_tokens)
    n_kv = bucket(n_q, engine.n_rows)
    g = engine._prefill_graph(GraphShape(None, 1, n_q, n_kv, last_only=True))
    # what start_greedy uploads (FastGPT2._prefill): tokens, positions, cache rows, last
    # row, the gathered rows (slot 0's)
    tokens = np.zeros(n_q, np.int32)
    tokens[:n_tokens] = prompt
    ints = np.concatenate([tokens, np.arange(n_q), np.arange(n_q), [n_tokens - 1], np.arange(n_kv)])
    ints = ints.astype(np.int32)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        g.sess.compute_io(g.ints, ints, g.out_ids)
        times.append(time.perf_counter() - t0)
    return {"step_us": round(float(np.median(times)) * 1e6, 1)}, g, ints


def _torch_profile(g, steps: int, ints: np.ndarray | None = None) -> dict:
    """Kernel time and launches per step as CUPTI saw them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if ints is None:
        ints = np.array([1, PROMPT, PROMPT], np.int32)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            g.sess.compute_io(g.ints, ints, g.out_ids)
        torch.cuda.synchronize()
    kernels: Counter = Counter()
    kernel_us: Counter = Counter()
    runtime_calls: Counter = Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] += 1
            kernel_us[e.name] += e.device_time_total if hasattr(e, "device_time_total") else 0
        elif e.name.startswith("cuda") or e.name.startswith("cu"):
            runtime_calls[e.name] += 1
    gpu_us = sum(kernel_us.values())
    top = [
        {"kernel": name[:90], "us_per_step": round(t / steps, 2), "per_step": kernels[name] / steps}
        for name, t in kernel_us.most_common(12)
    ]
    return {
        "gpu_kernel_us_per_step": round(gpu_us / steps, 1),
        "kernels_per_step": round(sum(kernels.values()) / steps, 1),
        "runtime_calls_per_step": {
            k: round(v / steps, 2) for k, v in runtime_calls.most_common(10)
        },
        "top_kernels": top,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", nargs="+", default=["gpt2"], choices=sorted(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=["f16"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--prefill", type=int, default=0, help="profile a prefill of N tokens")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for shape in args.shapes:
        weights = random_weights(SHAPES[shape], scale=WEIGHT_SCALE)
        for dtype in args.dtypes:
            with FastGPT2(weights, args.device, dtype) as engine:
                ints = None
                if args.prefill:
                    phases, g, ints = _prefill_phases(engine, args.prefill, args.steps // 10)
                else:
                    phases, g = _phases(engine, args.steps)
                what = f"prefill {args.prefill}" if args.prefill else "decode b1"
                row = {"shape": shape, "dtype": dtype, "workload": what, "nodes": g.sess.n_nodes}
                row.update(splits=g.sess.n_splits, **phases)
                if args.device == "cuda":
                    try:
                        row.update(_torch_profile(g, 10 if args.prefill else 50, ints))
                    except Exception as e:  # the phases above stand on their own
                        row["profile_error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
