"""A bounded local load test of `gpt2 serve`: N streaming clients for T seconds.

    python scripts/load_test.py --clients 1,8,32,64 --seconds 20 --out bench/cpu_DATE_serve.json
    python scripts/load_test.py --url http://127.0.0.1:8000 --clients 32 --seconds 30

Without --url it starts `gpt2 serve` over --model (default: the embedded model)
on a free port of 127.0.0.1, its queue long enough for the most clients: in a
process of its own (--server process, the default: the clients' threads do not
share its interpreter) or in this one (--server thread: uvicorn in a thread).
Each client sends streamed /v1/completions one after another until the time
is up, each prompt of token ids of a length drawn log-uniform from
--min-prompt-tokens to --max-prompt-tokens (capped by the context less
max_tokens) by a generator seeded by --seed, the client count and the
client's number: a run sends the same prompts again. Per client count
it reports requests/s, tokens/s, time to first token (TTFT) and inter-token
latency (ITL, between consecutive streamed chunks of text) at p50/p99 as the
client measured them, errors, and what the server's /metrics counted over the
same time (its TTFT and ITL histograms' p50/p99, interpolated in their
buckets). Needs the server extra and httpx.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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

PROMPT_VOCAB = 256  # prompt ids are drawn below this: byte tokens, in every byte-level vocabulary
GPT2_CONTEXT = 1024  # the context assumed of a --url server, unless --context says otherwise


def prompt_lengths(rng: np.random.Generator, low: int, high: int):
    """Prompt lengths drawn log-uniform in low..high tokens (as many short as long ones
    per factor of length), endlessly."""
    while True:
        yield int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def one_request(
    client: httpx.Client, url: str, model: str, prompt: str | list[int], max_tokens: int
) -> dict:
    """One streamed completion: its time to first text, the gaps between its text
    chunks (seconds) and its usage."""
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
    ttft = last = None
    gaps: list[float] = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
    return {
        "ttft_s": ttft,
        "gaps_s": gaps,
        "latency_s": time.perf_counter() - t0,
        "prompt_tokens": usage["prompt_tokens"],
        "tokens": usage["completion_tokens"],
    }


def _pct(values, q: float, scale: float = 1e3) -> float | None:
    a = np.asarray(values, dtype=np.float64)
    return round(float(np.percentile(a, q)) * scale, 2) if a.size else None


def run_clients(url: str, model: str, n: int, args) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def client_loop(k: int) -> None:
        rng = np.random.default_rng([args.seed, n, k])
        lengths = prompt_lengths(rng, args.min_prompt_tokens, args.max_prompt_tokens)
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() < deadline:
                prompt = rng.integers(0, PROMPT_VOCAB, next(lengths)).tolist()
                try:
                    res = one_request(client, url, model, prompt, args.max_tokens)
                    with lock:
                        results.append(res)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(e))

    before = server_metrics(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = server_metrics(url)
    ttft = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    gaps = [g for r in results for g in r["gaps_s"]]
    lat = [r["latency_s"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    prompts = [r["prompt_tokens"] for r in results]
    return {
        "clients": n,
        "wall_s": round(wall, 2),
        "requests": len(results),
        "requests_per_s": round(len(results) / wall, 3),
        "prompt_tokens": sum(prompts),
        "prompt_tokens_p50": _pct(prompts, 50, 1),
        "prompt_tokens_max": max(prompts, default=None),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p99": _pct(ttft, 99),
        "itl_ms_p50": _pct(gaps, 50),
        "itl_ms_p99": _pct(gaps, 99),
        "latency_ms_p50": _pct(lat, 50),
        "latency_ms_p99": _pct(lat, 99),
        "errors": len(errors),
        "first_errors": errors[:3],
        "load_average_1m_after": round(os.getloadavg()[0], 2)
        if hasattr(os, "getloadavg")
        else None,
        "server": server_summary(before, after),
    }


def run_direct(model, n: int, args) -> dict:
    """The same clients' requests (prompts, max_tokens, sampling) on the server's
    scheduler in this process, with no HTTP: what the engine and the scheduler
    give alone, the ceiling of the server's tokens/s (--direct)."""
    from gpt2.params import GenerationParams
    from gpt2.serve.scheduler import Request, Scheduler

    deadline = time.perf_counter() + args.seconds
    done: list[int] = []
    lock = threading.Lock()
    finished = threading.Event()
    live = [n]
    with Scheduler(model, args.max_batch, max(4 * args.max_batch, n)) as scheduler:

        def client(k: int) -> None:
            rng = np.random.default_rng([args.seed, n, k])
            lengths = prompt_lengths(rng, args.min_prompt_tokens, args.max_prompt_tokens)
            params = GenerationParams(max_new_tokens=args.max_tokens, temperature=0.8, top_k=40)

            def next_request() -> None:
                if time.perf_counter() >= deadline:
                    with lock:
                        live[0] -= 1
                        if live[0] == 0:
                            finished.set()
                    return
                prompt = rng.integers(0, PROMPT_VOCAB, next(lengths)).tolist()
                scheduler.submit([Request(model, prompt, params, sink)])

            def sink(ev) -> None:  # on the scheduler's thread
                if ev.done is not None:
                    with lock:
                        done.append(ev.done.usage.completion_tokens)
                    next_request()

            next_request()

        steps_before = scheduler.stats.steps
        t0 = time.perf_counter()
        for k in range(n):
            client(k)
        finished.wait(args.seconds + 120)
        wall = time.perf_counter() - t0
        steps = scheduler.stats.steps - steps_before
    return {
        "clients": n,
        "wall_s": round(wall, 2),
        "requests": len(done),
        "tokens": sum(done),
        "tokens_per_s": round(sum(done) / wall, 1),
        "steps": steps,
        "load_average_1m_after": round(os.getloadavg()[0], 2)
        if hasattr(os, "getloadavg")
        else None,
    }


def run_engine(model, n: int, args) -> dict:
    """n sequences decoded together by the engine (generate.complete_batch: 16-token
    prompts, max_tokens each, the clients' sampling), the best of 3: the engine's
    tokens/s at n sequences, without the clients' varied prompts (--direct)."""
    from gpt2.generate import Member, complete_batch
    from gpt2.params import GenerationParams

    rng = np.random.default_rng([args.seed, n])
    params = GenerationParams(max_new_tokens=args.max_tokens, temperature=0.8, top_k=40, seed=1)
    best = math.inf
    for _ in range(3):
        prompts = [rng.integers(0, PROMPT_VOCAB, 16).tolist() for _ in range(n)]
        members = [Member(model.engine, None, p, params) for p in prompts]
        t0 = time.perf_counter()
        done = complete_batch(model.engine, members)
        best = min(best, time.perf_counter() - t0)
    tokens = sum(len(c.token_ids) for c in done)
    return {"sequences": n, "tokens": tokens, "tokens_per_s": round(tokens / best, 1)}


def server_metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {series (with its labels): value}; {} where it has none."""
    try:
        r = httpx.get(url + "/metrics", timeout=10)
    except httpx.HTTPError:
        return {}
    if r.status_code != 200:
        return {}
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def _bucket_quantile(delta: dict[str, float], name: str, q: float) -> float | None:
    """Prometheus' histogram_quantile over the buckets' increase: linear within the
    bucket that holds the q-th observation (its upper bound where that is +Inf)."""
    buckets = []
    for series, v in delta.items():
        if series.startswith(name + '_bucket{le="'):
            buckets.append((float(series[len(name) + 12 : -2]), v))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def server_summary(before: dict[str, float], after: dict[str, float]) -> dict:
    """What the server counted between two /metrics reads: its counters' increase,
    and p50/p99 (ms) and means of its time-to-first-token and inter-token histograms."""
    if not after:
        return {}
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    out: dict = {
        k: delta.get(k)
        for k in (
            "gpt2_prefill_tokens_total",
            "gpt2_decode_tokens_total",
            "gpt2_completion_tokens_total",
            "gpt2_steps_total",
            "gpt2_rejected_total",
            'gpt2_graph_builds_total{kind="prefill"}',
            'gpt2_graph_builds_total{kind="decode"}',
        )
    }
    for short, name in (
        ("ttft", "gpt2_time_to_first_token_seconds"),
        ("itl", "gpt2_inter_token_latency_seconds"),
    ):
        count = delta.get(name + "_count")
        for q in (50, 99):
            v = _bucket_quantile(delta, name, q / 100)
            out[f"{short}_ms_p{q}"] = None if v is None else round(v * 1e3, 2)
        out[f"{short}_ms_mean"] = round(delta[name + "_sum"] / count * 1e3, 2) if count else None
    rows = delta.get("gpt2_batch_occupancy_count")
    out["batch_rows_mean"] = round(delta["gpt2_batch_occupancy_sum"] / rows, 2) if rows else None
    return out


def random_model_file(shape: str, dtype: str, work: Path) -> Path:
    """The bench's random weights of `shape` as a GGUF of `dtype`, with a synthetic
    tokenizer (the GPU machine has no GPT-2 vocabulary and no network)."""
    from gpt2.bench import SHAPES, WEIGHT_SCALE
    from gpt2.bench_load import synthetic_tokenizer
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
    # every client may wait in the queue: a 429 here would be the test's doing
    max_queue = max(4 * args.max_batch, *args.clients)
    app = create_app(model, "gpt2", max_batch=args.max_batch, max_queue=max_queue)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", (server, thread), model


def start_server_process(args) -> tuple[str, subprocess.Popen, int]:
    """`python -m gpt2 serve` in a process of its own; its URL, the process and
    the model's context."""
    from gpt2.resolve import resolve_model
    from gpt2.weights import load_model

    context = load_model(resolve_model(args.model)).config.n_positions  # the header only
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    max_queue = max(4 * args.max_batch, *args.clients)
    cmd = [
        sys.executable, "-m", "gpt2", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--device", args.device, "--dtype", args.dtype, "--max-batch", str(args.max_batch),
        "--max-queue", str(max_queue), "--model-name", "gpt2",
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"gpt2 serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
            )
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("gpt2 serve did not answer /health within 180 s")
        time.sleep(0.1)
    return url, proc, context


def stop_server_process(proc: subprocess.Popen) -> None:
    """SIGTERM (a drain), then a kill should it outlast 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tinynn-gpt2", "numpy", "fastapi", "uvicorn", "httpx", "starlette"):
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
    try:  # files changed since that commit (another's work in progress, say) ran too
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out["git_changed_files"] = sorted(line[3:] for line in status.splitlines())
    except (OSError, subprocess.CalledProcessError):
        out["git_changed_files"] = None
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
    p.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="without --url: gpt2 serve in a process of its own, or uvicorn in a thread here",
    )
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument(
        "--clients",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8, 32, 64],
        help="client counts, comma-separated (default 1,8,32,64)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="per client count")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--min-prompt-tokens", type=int, default=4)
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=1000,
        help="the longest prompt, less where the context minus --max-tokens is shorter",
    )
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help=f"the server's context (default: the model's here, {GPT2_CONTEXT} with --url)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the prompts' lengths and ids")
    p.add_argument(
        "--direct",
        action="store_true",
        help="also run the same requests on the scheduler in this process, no HTTP: "
        "the engine's and scheduler's tokens/s alone (the server's ceiling); and the "
        "engine's tokens/s decoding as many sequences as clients (up to --max-batch)",
    )
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)

    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    server = model = proc = None
    url = args.url
    if args.random:
        args.work.mkdir(parents=True, exist_ok=True)
        args.model = str(random_model_file(args.random, args.dtype, args.work))
    context = GPT2_CONTEXT
    if url is None and args.server == "process":
        url, proc, context = start_server_process(args)
    elif url is None:
        url, server, model = start_server(args)
        context = model.engine.max_positions
    context = args.context or context
    try:
        return _run(args, p, url, context, proc, load_before)
    finally:
        if proc is not None:
            stop_server_process(proc)
        if server is not None:
            server[0].should_exit = True
            server[1].join(30)
            model.close()


def _run(args, p, url: str, context: int, proc, load_before) -> int:
    args.max_prompt_tokens = min(args.max_prompt_tokens, context - args.max_tokens)
    if not 1 <= args.min_prompt_tokens <= args.max_prompt_tokens:
        p.error(
            f"prompts of {args.min_prompt_tokens}..{args.max_prompt_tokens} tokens: "
            f"the context ({context}) less --max-tokens leaves no room"
        )
    name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    one_request(httpx.Client(timeout=120), url, name, [1, 2, 3, 4], 4)  # warm-up
    metrics_before = server_metrics(url)
    rows = []
    for n in args.clients:
        row = run_clients(url, name, n, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    direct, engine = [], []
    if args.direct:
        import gpt2

        with gpt2.load(
            args.model, args.device, args.dtype, n_slots=args.max_batch, n_threads=args.threads
        ) as model:
            run_direct(model, 1, argparse.Namespace(**{**vars(args), "seconds": 2}))  # warm-up
            for n in args.clients:
                row = run_direct(model, n, args)
                print(json.dumps({"direct": row}), flush=True)
                direct.append(row)
            engine = [run_engine(model, n, args) for n in args.clients if n <= args.max_batch]
            print(json.dumps({"engine": engine}), flush=True)
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
            "process": "given" if args.url else ("own" if proc is not None else "the clients'"),
            "model": f"random {args.random} weights, synthetic vocabulary"
            if args.random
            else args.model or "embedded default",
            "device": args.device,
            "dtype": args.dtype,
            "threads": args.threads,
            "max_batch": args.max_batch,
        },
        "request": {
            "prompt": f"token ids below {PROMPT_VOCAB}, lengths log-uniform in "
            f"{args.min_prompt_tokens}..{args.max_prompt_tokens} (seed {args.seed})",
            "context": context,
            "max_tokens": args.max_tokens,
            "temperature": 0.8,
            "top_k": 40,
            "stream": True,
        },
        "seconds": args.seconds,
        "results": rows,
        "direct": direct,  # --direct: the same requests on the scheduler alone, no HTTP
        "engine": engine,  # --direct: n sequences of 16-token prompts decoded together
        "server_metrics_before": metrics_before,
        "server_metrics_after": server_metrics(url),
    }
    if len(rows) > 1 and rows[0]["tokens_per_s"]:
        report["speedup_last_vs_first"] = round(
            rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2
        )
    if len(direct) > 1 and direct[0]["tokens_per_s"]:
        report["direct_speedup_last_vs_first"] = round(
            direct[-1]["tokens_per_s"] / direct[0]["tokens_per_s"], 2
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
