"""A bounded local load test of `gpt2 serve`: N streaming clients for T seconds.

    python scripts/load_test.py --clients 1,8 --seconds 20 --out bench/cpu_DATE_serve.json
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 32 --seconds 30

Without --url it starts the server in this process (uvicorn in a thread, on a
free port of 127.0.0.1) over --model (default: the embedded model). Each client
sends streamed /v1/completions one after another until the time is up; per
client count it reports requests/s, tokens/s, p50/p99 time to first token and
latency, and errors. Needs the server extra and httpx.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

PROMPTS = ["The Python", "Once upon a time", "def main():", "The list of", "In the year"]


def one_request(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "top_k": 40,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - t0
    return {"ttft_s": ttft, "latency_s": time.perf_counter() - t0, "tokens": tokens}


def run_clients(url: str, model: str, n: int, seconds: float, max_tokens: int) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = k
            while time.perf_counter() < deadline:
                try:
                    res = one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                    with lock:
                        results.append(res)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(e))
                i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = np.array([r["ttft_s"] for r in results if r["ttft_s"] is not None]) * 1e3
    lat = np.array([r["latency_s"] for r in results]) * 1e3
    tokens = sum(r["tokens"] for r in results)

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 2) if a.size else None

    return {
        "clients": n,
        "wall_s": round(wall, 2),
        "requests": len(results),
        "requests_per_s": round(len(results) / wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_ms_p50": pct(ttft, 50),
        "ttft_ms_p99": pct(ttft, 99),
        "latency_ms_p50": pct(lat, 50),
        "latency_ms_p99": pct(lat, 99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def synthetic_tokenizer(vocab_size: int):
    """A byte-level BPE of `vocab_size` tokens (256 bytes, then byte pairs, then
    <|endoftext|>): any id a random model draws decodes to text, so streamed
    chunks carry text as with a real vocabulary."""
    from tokenizers import AddedToken, models, pre_tokenizers

    from gpt2.tokenizer import EOS_TOKEN, Tokenizer, _byte_level

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    for a in alphabet:
        for b in alphabet:
            if len(vocab) == vocab_size - 1:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    hf = _byte_level(models.BPE(vocab, merges))
    hf.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    return Tokenizer(hf, "synthetic")


def random_model_file(shape: str, dtype: str, work: Path) -> Path:
    """The bench's random weights of `shape` as a GGUF of `dtype`, with a synthetic
    tokenizer (the GPU machine has no GPT-2 vocabulary and no network)."""
    from gpt2.bench import SHAPES, WEIGHT_SCALE
    from gpt2.convert import write_gguf_llama_layout
    from gpt2.random_weights import random_weights

    path = work / f"random_{shape}_{dtype}.gguf"
    if not path.is_file():
        config = SHAPES[shape]
        weights = random_weights(config, scale=WEIGHT_SCALE)
        write_gguf_llama_layout(weights, path, dtype, synthetic_tokenizer(config.vocab_size))
    return path


def start_server(args) -> tuple[str, object, object]:
    import uvicorn

    import gpt2
    from gpt2.serve.app import create_app

    model = gpt2.load(
        args.model,
        args.device,
        args.dtype,
        n_slots=args.max_batch + 1,
        n_threads=args.threads,
    )
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app = create_app(model, "gpt2", max_batch=args.max_batch, max_queue=4 * args.max_batch)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, model


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tinynn-gpt2", "numpy", "fastapi", "uvicorn", "httpx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    out["git_commit"] = commit
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server; default: start one here")
    p.add_argument("--model", default=None, help="model for the server started here")
    p.add_argument(
        "--random",
        default=None,
        metavar="SHAPE",
        help="serve the bench's random weights of this shape (gpt2, gpt2-xl) in --dtype "
        "with a synthetic vocabulary, instead of --model",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/load_test"), help="for --random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="per client count")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)

    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    server = model = None
    url = args.url
    if args.random:
        args.work.mkdir(parents=True, exist_ok=True)
        args.model = str(random_model_file(args.random, args.dtype, args.work))
    if url is None:
        url, server, model = start_server(args)
    name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    one_request(httpx.Client(timeout=120), url, name, PROMPTS[0], 4)  # warm-up
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        row = run_clients(url, name, n, args.seconds, args.max_tokens)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "what": "gpt2 serve load test: N streaming clients for T seconds (scripts/load_test.py)",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": load_before,  # other work on the machine
        },
        "versions": _versions(),
        "server": {
            "url_given": args.url is not None,
            "model": f"random {args.random} weights, synthetic vocabulary"
            if args.random
            else args.model or "embedded default",
            "device": args.device,
            "dtype": args.dtype,
            "threads": args.threads,
            "max_batch": args.max_batch,
        },
        "request": {
            "max_tokens": args.max_tokens,
            "temperature": 0.8,
            "top_k": 40,
            "stream": True,
        },
        "seconds": args.seconds,
        "results": rows,
    }
    if len(rows) > 1 and rows[0]["tokens_per_s"]:
        report["speedup_last_vs_first"] = round(
            rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if server is not None:
        server.should_exit = True
        time.sleep(0.5)
        model.close()
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
