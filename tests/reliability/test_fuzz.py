"""The fuzz families, each in a child process (see child.py and the fuzz_*.py modules).

Bounded in the default run (a few hundred cases, about 25 s in all); `make fuzz` sets
TINYNN_FUZZ_LONG=1 for the long run: more examples per child and several seeds. Each
test asserts the child's exit code is 0 (on failure it prints the reproducer) and prints
the child's SUMMARY line, which docs/RELIABILITY.md records.
"""

from __future__ import annotations

import json
import os

import pytest

from .child import LONG, examples, run_family

SEEDS = [int(s) for s in os.environ.get("TINYNN_FUZZ_SEEDS", "1,2,3,4" if LONG else "1").split(",")]
# (default, long) examples per child, and the long run's timeout per child in seconds
API = (150, 6_000)
GGUF = (200, 3_000)
HF = (150, 1_500)
ENGINES = (40, 1_000)
GRAPHS = (100, 2_000)
INTS = (300, 5_000)
TOKENIZERS = (150, 3_000)
TIMEOUT = 1800 if LONG else 120


def _report(summary: dict) -> None:
    print("FUZZ " + json.dumps(summary, sort_keys=True))


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_api(seed, tmp_path):
    s = run_family(
        "fuzz_api",
        ["--examples", str(examples(*API)), "--seed", str(seed)],
        tmp_path / "repro.txt",
        TIMEOUT,
    )
    assert s["examples"] > 0 and s["calls"] > s["examples"]
    _report(s)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_fuzz_model_files(kind, seed, tmp_path, tiny_model):
    """Mutated GGUF files (both layouts) or HF folders."""
    m = tiny_model
    if kind == "gguf":
        bases = ["--gguf-ruby", str(m.gguf_ruby), "--gguf-llama", str(m.gguf_llama)]
        n = examples(*GGUF)
    else:
        bases, n = ["--hf-dir", str(m.hf_dir)], examples(*HF)
    args = ["--kind", kind, "--examples", str(n), "--seed", str(seed), *bases]
    s = run_family("fuzz_files", args, tmp_path / "repro.txt", TIMEOUT)
    assert s["examples"] > 0
    _report(s)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_engines(seed, tmp_path, tiny_model):
    s = run_family(
        "fuzz_engines",
        [
            "--examples", str(examples(*ENGINES)),
            "--seed", str(seed),
            "--hf-dir", str(tiny_model.hf_dir),
        ],
        tmp_path / "repro.txt",
        TIMEOUT,
    )  # fmt: skip
    assert s["examples"] > 0 and s["nan_files"] > 0
    _report(s)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_graphs(seed, tmp_path):
    """Graphs that fragment ggml's compute allocator (it aborted past 256 free blocks)."""
    s = run_family(
        "fuzz_graphs",
        ["--examples", str(examples(*GRAPHS)), "--seed", str(seed)],
        tmp_path / "repro.txt",
        TIMEOUT,
    )
    assert s["examples"] > 0 and s["results"] > 100 * s["examples"]
    _report(s)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_integer_ranges(seed, tmp_path):
    """Integers at and past int32/int64, bools, floats: refused, never wrapped."""
    s = run_family(
        "fuzz_ints",
        ["--examples", str(examples(*INTS)), "--seed", str(seed)],
        tmp_path / "repro.txt",
        TIMEOUT,
    )
    assert s["examples"] > 0 and s.get("ValueError", 0) + s.get("TypeError", 0) > 0
    _report(s)


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_tokenizer_bombs(seed, tmp_path, tiny_model):
    """tokenizer.json files built from the shapes that aborted or hung `tokenizers`: each
    loads and encodes within the case's time and the child's memory, or is a ValueError
    naming the file."""
    s = run_family(
        "fuzz_tokenizers",
        [
            "--examples", str(examples(*TOKENIZERS)),
            "--seed", str(seed),
            "--hf-dir", str(tiny_model.hf_dir),
        ],
        tmp_path / "repro.txt",
        TIMEOUT,
    )  # fmt: skip
    o = s["outcomes"]
    assert o.get("refused at load", 0) > 0 and o.get("loaded and encoded", 0) > 0
    _report(s)
