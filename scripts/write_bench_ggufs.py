"""Write the bench's random GPT-2 weights as GGUF files, for llama.cpp's llama-bench.

The weights are `gpt2 bench`'s own (gpt2/bench.py: SHAPES, random_weights with
WEIGHT_SCALE and its default seed), written in llama.cpp's GPT-2 layout by our
converter, with the synthetic byte-pair vocabulary of scripts/load_test.py (llama.cpp
needs a tokenizer in the file; the GPU machine has no GPT-2 vocabulary). One file per
shape and type: DIR/{shape}_{dtype}.gguf; a file already there is kept.

    python scripts/write_bench_ggufs.py --shapes gpt2 gpt2-xl --dtypes f16 q8_0 --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from gpt2.bench import SHAPES, WEIGHT_SCALE  # noqa: E402
from gpt2.bench_load import synthetic_tokenizer  # noqa: E402
from gpt2.convert import write_gguf_llama_layout  # noqa: E402
from gpt2.random_weights import random_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gpt2", "gpt2-xl"])
    p.add_argument("--dtypes", nargs="+", choices=["f32", "f16", "q8_0"], default=["f16", "q8_0"])
    p.add_argument("--out", type=Path, required=True, help="folder for the .gguf files")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for shape in args.shapes:
        paths = {dtype: args.out / f"{shape}_{dtype}.gguf" for dtype in args.dtypes}
        todo = [dtype for dtype, path in paths.items() if not path.is_file()]
        if not todo:
            continue
        config = SHAPES[shape]
        weights = random_weights(config, scale=WEIGHT_SCALE)  # as `gpt2 bench` draws them
        tokenizer = synthetic_tokenizer(config.vocab_size)
        for dtype in todo:
            t0 = time.perf_counter()
            write_gguf_llama_layout(weights, paths[dtype], dtype, tokenizer)
            mb = paths[dtype].stat().st_size / 1e6
            took = time.perf_counter() - t0
            print(f"write_bench_ggufs: {paths[dtype]} {mb:.0f} MB in {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
