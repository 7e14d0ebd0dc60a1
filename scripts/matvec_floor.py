"""What the weight products of one decode token cost without ggml: the same
matrix-vector products (f16 weights, batch 1) issued by torch (cuBLAS) and
replayed as one CUDA graph, to set beside ggml's measured matvec time
(bench/NOTES.md: 367 us for gpt2 f16, 2276 us for gpt2-xl).

    python scripts/matvec_floor.py [--device cuda] [--json OUT.json]

Prints, per shape: microseconds per token for all its products, the weight
bytes they read and the bandwidth that makes. On the CPU (no CUDA graphs) it
only times the loop, as a check that the script runs.
"""

from __future__ import annotations

import argparse
import json
import time

from gpt2.bench import SHAPES
from gpt2.config import GPT2Config


def token_products(c: GPT2Config) -> list[tuple[int, int]]:
    """(rows, cols) of each weight a token multiplies: QKV, O, FC, proj per
    layer, then the unembedding."""
    d = c.n_embd
    per_layer = [(3 * d, d), (d, d), (c.d_ff, d), (d, c.d_ff)]
    return per_layer * c.n_layer + [(c.vocab_size, d)]


def measure(shape: str, device: str, replays: int) -> dict:
    import torch

    dims = token_products(SHAPES[shape])
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = [
        (torch.randn(r, c, generator=gen) * 0.02).to(device=device, dtype=torch.float16)
        for r, c in dims
    ]
    inputs = {
        c: torch.randn(c, generator=gen).to(device=device, dtype=torch.float16)
        for c in {c for _, c in dims}
    }
    outs = [torch.empty(r, device=device, dtype=torch.float16) for r, _ in dims]

    def token() -> None:
        for w, out in zip(weights, outs, strict=True):
            torch.mv(w, inputs[w.shape[1]], out=out)

    nbytes = sum(w.numel() * w.element_size() for w in weights)
    if device != "cuda":
        t0 = time.perf_counter()
        token()
        us = (time.perf_counter() - t0) * 1e6
        return {"shape": shape, "device": device, "products": len(dims), "us_per_token": us}
    token()  # cuBLAS handles and workspaces before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        token()
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) * 1e3 / replays
    return {
        "shape": shape,
        "device": device,
        "products": len(dims),
        "weight_mb": round(nbytes / 1e6, 1),
        "us_per_token": round(us, 1),
        "tb_per_s": round(nbytes / (us * 1e-6) / 1e12, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=sorted(SHAPES))
    p.add_argument("--replays", type=int, default=200)
    p.add_argument("--json")
    args = p.parse_args()
    rows = [measure(s, args.device, args.replays) for s in args.shapes]
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
