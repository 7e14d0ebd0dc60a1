"""What a decode step's products cost in each of ggml-cpu's kernels.

    python scripts/cpu_product_kernels.py --models gpt2 embedded --dtypes f16 f32 q8_0

For each model and weight type: one graph of every layer's four products
(each weight read once, as a step reads it: a model larger than the caches
streams from memory) and one of the head, in four layouts: one column
("alone": vec_dot), one column beside a copy of itself ("pair": tinyBLAS where
it takes the weight), eight columns laid out [k, 1, 8] ("by_column 8": vec_dot
each) and eight together ("together 8": tinyBLAS). Best of --rounds (the
layouts interleaved round by round), ms a step. gpt2.engine.graph's module
doc says which layout a step uses and why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import gpt2
from gpt2.bench import SHAPES, WEIGHT_SCALE
from gpt2.engine import FastGPT2
from gpt2.random_weights import random_weights
from tinynn import Session, Tensor

F32_BYTES = 4
LAYOUTS = {"alone": 1, "pair": 1, "by_column 8": 8, "together 8": 8}  # layout: columns


def products_graph(root: Session, weights: list[Tensor], layout: str):
    """(session, input, output) of x W for every W, x [k, cols] of one input."""
    cols = LAYOUTS[layout]
    width = max(w.ne[0] for w in weights)
    s = root.fork()
    xs = s.input_2d_f32(cols, width)  # [width, cols]
    out = None
    for w in weights:
        n_in = w.ne[0]
        # [n_in, cols], contiguous: ggml-cpu's f32 tinyBLAS takes no strided x
        x = s.cont(s.view_2d(xs, n_in, cols, width * F32_BYTES, 0))
        if layout == "pair":
            y = s.matmul(w, s.concat(x, x, 1))  # [n_out, 2]
        elif layout == "by_column 8":
            y = s.matmul(w, s.reshape(x, n_in, 1, cols))  # [n_out, 1, cols]
        else:
            y = s.matmul(w, x)  # [n_out, cols]
        first = s.view_1d(y, 1, 0)  # every product is computed; one value each is kept
        out = first if out is None else s.concat(out, first, 0)
    s.set_output(out)
    s.realize(out)
    return s, xs, out


def time_graphs(graphs: dict, rounds: int, calls: int) -> dict[str, float]:
    """Best ms a compute of each graph; a round times every graph in turn, so that
    a burst of the machine's other load falls on all of them alike."""
    inputs = {}
    for layout, (s, xs, out) in graphs.items():
        data = np.random.default_rng(0).standard_normal((xs.ne[1], xs.ne[0]), dtype=np.float32)
        s.compute_io(xs, data, out)  # warm
        inputs[layout] = data
    best = dict.fromkeys(graphs, float("inf"))
    for _ in range(rounds):
        for layout, (s, xs, out) in graphs.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                s.compute_io(xs, inputs[layout], out)
            best[layout] = min(best[layout], (time.perf_counter() - t0) / calls * 1e3)
    return best


def open_engine(model: str, dtype: str, threads: int | None):
    """(engine, the object to close)."""
    if model == "embedded":
        m = gpt2.load(None, device="cpu", dtype=dtype, n_slots=1, n_threads=threads)
        return m.engine, m
    weights = random_weights(SHAPES[model], seed=0, scale=WEIGHT_SCALE)
    e = FastGPT2(weights, "cpu", dtype, n_slots=1, n_threads=threads)
    return e, e


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gpt2", "embedded"])
    p.add_argument("--dtypes", nargs="+", default=["f16", "f32", "q8_0"])
    p.add_argument("--threads", type=int, default=None, help="None: the library's choice")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5, help="computes timed a round")
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()
    results = []
    for model in args.models:
        for dtype in args.dtypes:
            engine, owner = open_engine(model, dtype, args.threads)
            with owner:
                roles = ("w_qkv", "w_o", "w_fc", "w_proj")
                layers = [getattr(lw, r) for lw in engine.weights.layers for r in roles]
                for part, weights in (("layers", layers), ("head", [engine.weights.wte])):
                    row = {"model": model, "dtype": dtype, "products": part}
                    row["threads"] = engine.root.n_threads
                    graphs = {}
                    try:
                        for layout in LAYOUTS:
                            graphs[layout] = products_graph(engine.root, weights, layout)
                        best = time_graphs(graphs, args.rounds, args.calls)
                    finally:
                        for s, _, _ in graphs.values():
                            s.close()
                    row.update({f"{layout} ms": round(ms, 3) for layout, ms in best.items()})
                    print(json.dumps(row), flush=True)
                    results.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
