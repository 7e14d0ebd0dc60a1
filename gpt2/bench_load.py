"""`gpt2 bench --workloads load`: a fresh process loading a model file (SPEC.md workload 6).

For each shape and dtype, the bench's random weights are written once as a GGUF in llama.cpp's
GPT-2 layout, with a synthetic byte-level tokenizer of the shape's vocabulary (a real GPT-2
file's header holds 50,257 tokens and their merges: reading them is part of a load), under
--load-dir (kept: a later run reuses it). The file is read once (the page cache warm), then
--load-repeats fresh processes (back to back, or each after --load-idle-s seconds of sleep)
each import gpt2, open and close a CUDA session (CUDA's start-up, timed apart; none on the
CPU), take their resident memory as the baseline (the peak reset to it where Linux allows),
and time `gpt2.load(path, device=...)` (dtype auto: the
file's type) and, apart, one greedy token. A row: the fastest load (seconds and GB/s, the
file's bytes over those seconds, GB = 10^9 bytes), every run's seconds, CUDA's start-up and
the peak resident memory over the baseline. With --llama-bench PATH, llama.cpp's whole
process on the same file in the same call (`llama-bench -m FILE -p 16 -n 0 -r 1`, all layers
on the GPU on CUDA: its CUDA start, its load and a 16-token prompt), wall seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gpt2.weights import GPT2Weights

PROMPT = [464, 2068, 7586]  # token ids (modulo the vocabulary size)

# What a fresh child reads of its own memory: /proc/self/status, kB -> MiB.
STATUS = r"""
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
def reset_peak():  # VmHWM := VmRSS (Linux 4.0+); False where it is refused
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
"""

# One fresh process: a load and one token, its memory read as STATUS does (MiB).
CHILD = (
    STATUS
    + r"""
import json, sys, time
device, path, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import numpy  # noqa: F401
import gpt2, tinynn
r = {"cuda_start_s": None}
if device == "cuda":
    t0 = time.perf_counter()
    tinynn.Session("cuda").close()
    r["cuda_start_s"] = time.perf_counter() - t0
r["peak_reset"] = reset_peak()
r["baseline_rss_mib"] = status("VmRSS")
t0 = time.perf_counter()
model = gpt2.load(path, device=device)
r["load_s"] = time.perf_counter() - t0
r["peak_rss_mib"] = status("VmHWM")
r["dtype"] = model.engine.dtype
t0 = time.perf_counter()
model.generate([t % model.engine.vocab_size for t in prompt], max_new_tokens=1)
r["first_token_s"] = time.perf_counter() - t0
model.close()
print(json.dumps(r))
"""
)


def synthetic_tokenizer(vocab_size: int):
    """A byte-level BPE of exactly `vocab_size` ids: the 256 byte symbols, merges of byte
    pairs in order, then <|endoftext|> (what a GPT-2 file's header holds, in size)."""
    from tokenizers import AddedToken, models, pre_tokenizers

    from gpt2.tokenizer import EOS_TOKEN, Tokenizer, _byte_level

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = []
    pairs = ((a, b) for a in symbols for b in symbols)
    while len(vocab) < vocab_size - 1:
        a, b = next(pairs)
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    hf = _byte_level(models.BPE(vocab, merges))
    hf.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    return Tokenizer(hf, "synthetic")


def model_file(weights: GPT2Weights, shape: str, dtype: str, folder: Path) -> Path:
    """folder/{shape}_{dtype}.gguf, written (under a temporary name, then renamed) unless
    it is there."""
    from gpt2.convert import write_gguf_llama_layout

    path = folder / f"{shape}_{dtype}.gguf"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        tokenizer = synthetic_tokenizer(weights.config.vocab_size)
        write_gguf_llama_layout(weights, part, dtype, tokenizer)
        part.rename(path)
    return path


def warm(path: Path) -> None:
    """Reads the file once, so that the loads timed after it read from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _child(device: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, device, str(path), json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [""])[-1][:300]
        return {"error": f"exit {out.returncode}: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(device: str, path: Path, repeats: int, idle_s: float = 0.0) -> dict:
    """The fastest of `repeats` fresh-process loads of `path`, as a bench row's stats; with
    `idle_s`, each after that many seconds of sleep."""
    warm(path)
    runs = []
    for _ in range(repeats):
        time.sleep(idle_s)
        runs.append(_child(device, path))
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    best = min(ok, key=lambda r: r["load_s"])
    n_bytes = path.stat().st_size
    ms = sorted(1e3 * r["load_s"] for r in ok)
    return {
        "ms_mean": sum(ms) / len(ms),
        "ms_p50": ms[len(ms) // 2],
        "ms_p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "load_s": best["load_s"],
        "runs_load_s": [round(r["load_s"], 4) for r in ok],
        "gb_s": n_bytes / best["load_s"] / 1e9,
        "file_bytes": n_bytes,
        "file_dtype": best["dtype"],
        "cuda_start_s": best["cuda_start_s"],
        "first_token_s": best["first_token_s"],
        "peak_over_baseline_mib": max(r["peak_rss_mib"] - r["baseline_rss_mib"] for r in ok),
        "peak_reset": best["peak_reset"],
        "failed_runs": [r["error"] for r in runs if "error" in r],
        "idle_s_before_each": idle_s,
    }


def llama_cpp(llama_bench: Path, device: str, path: Path, repeats: int) -> dict:
    """llama.cpp's whole process on `path` (its CUDA start, load, a 16-token prompt): the
    fastest of `repeats` wall times, as a bench row's stats."""
    cmd = [str(llama_bench), "-m", str(path), "-p", "16", "-n", "0", "-r", "1"]
    cmd += ["-ngl", "99" if device == "cuda" else "0"]
    warm(path)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [""])[-1][:300]
            return {"error": f"{llama_bench.name} exit {out.returncode}: {last}"}
        seconds.append(time.perf_counter() - t0)
    ms = sorted(1e3 * s for s in seconds)
    n_bytes = path.stat().st_size
    return {
        "ms_mean": sum(ms) / len(ms),
        "ms_p50": ms[len(ms) // 2],
        "ms_p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "whole_process_s": min(seconds),
        "gb_s": n_bytes / min(seconds) / 1e9,
        "file_bytes": n_bytes,
        "command": " ".join(cmd[:1] + ["-m", path.name] + cmd[3:]),
    }
