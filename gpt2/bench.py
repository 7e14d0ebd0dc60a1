"""`gpt2 bench`: our fast engine beside HF transformers, same shapes, same run.

Weights are random (timing only; the output says so). Workloads (SPEC.md):
decode at batch 1 after a 16-token prompt (128 new tokens), prefill of 128
and 1024 tokens, 32 sequences decoding together, the CPU decode, whole
generate() calls, and a fresh process loading the weights as a GGUF file
(load: gpt2.bench_load, seconds and GB/s, CUDA's start-up apart, llama.cpp's
whole process beside it with --llama-bench). Each of
our numbers is the median (and p90) over timed steps after warm-up; each HF
number comes from the same process, with torch's default attention. HF runs
twice for decode at batch 1: eager, and "compiled" (static KV cache, the
one-token step under `torch.compile`), the fastest path a torch user would pick.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import functools
import inspect
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from gpt2 import bench_load
from gpt2.config import GPT2Config
from gpt2.engine import WEIGHT_DTYPES, FastGPT2
from gpt2.engine.fast import DECODE_MODES
from gpt2.generate import generate_ids
from gpt2.random_weights import random_weights

SHAPES = {
    "gpt2": GPT2Config(n_layer=12, n_embd=768, n_head=12),
    "gpt2-xl": GPT2Config(n_layer=48, n_embd=1600, n_head=25),
}
WORKLOADS = ("decode", "prefill", "batch", "cpu", "generate", "load")
# what `gpt2 generate` samples with by default (gpt2/cli.py)
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95}
WEIGHT_SCALE = 0.02  # timing only: GPT-2's initializer_range, as HF's side is initialised


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "ms_mean": float(a.mean()),
        "ms_p50": float(np.percentile(a, 50)),
        "ms_p90": float(np.percentile(a, 90)),
    }


# A GPU may idle at lower clocks and a few warm-up steps are only milliseconds
# of work, so every timed loop (ours and HF's) first runs this long.
WARMUP_SECONDS = 0.5


def _warm_up(run_once, min_runs: int) -> None:
    """Calls run_once() at least min_runs times and for WARMUP_SECONDS."""
    t0 = time.perf_counter()
    runs = 0
    while runs < min_runs or time.perf_counter() - t0 < WARMUP_SECONDS:
        run_once()
        runs += 1


# -- ours ---------------------------------------------------------------------
def ours_decode(engine: FastGPT2, prompt_len: int, new_tokens: int, warmup: int = 8) -> dict:
    prompt = list(range(1, prompt_len + 1))

    def generate() -> None:  # builds and warms the decode graph
        with engine.sequence() as seq:
            token = seq.start_greedy(prompt)
            for _ in range(max(warmup, new_tokens)):
                token = seq.step_greedy(token)

    _warm_up(generate, 1)
    times = []
    with engine.sequence() as seq:
        token = seq.start_greedy(prompt)
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            token = seq.step_greedy(token)
            times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["tok_s"] = 1e3 / s["ms_mean"]
    s["decode_graph_builds"] = engine.decode_graph_builds
    return s


def ours_prefill(engine: FastGPT2, n_tokens: int, repeats: int = 10) -> dict:
    prompt = [(i * 7) % engine.config.vocab_size for i in range(n_tokens)]
    with engine.sequence() as seq:
        t0 = time.perf_counter()
        seq.start_greedy(prompt)  # builds the graph
        build_ms = (time.perf_counter() - t0) * 1e3
        _warm_up(lambda: seq.start_greedy(prompt), 2)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            seq.start_greedy(prompt)
            times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["first_call_ms"] = build_ms
    return s


def ours_batch(engine: FastGPT2, n_seq: int, prompt_len: int, new_tokens: int) -> dict:
    prompts = [[(b + i) % 1000 + 1 for i in range(prompt_len)] for b in range(n_seq)]

    def generate() -> None:
        with engine.batch(n_seq) as batch:
            tokens = batch.start_greedy(prompts)
            for _ in range(new_tokens):
                tokens = batch.step_greedy(tokens)

    _warm_up(generate, 1)
    times = []
    with engine.batch(n_seq) as batch:
        tokens = batch.start_greedy(prompts)
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            tokens = batch.step_greedy(tokens)
            times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["tok_s"] = n_seq * 1e3 / s["ms_mean"]
    return s


def ours_generate(engine: FastGPT2, prompt_len: int, new_tokens: int, **sampling) -> dict:
    """What a user's generate() feels: wall time a token of whole generations
    (prefill, decode steps, token choice, Python), greedy or sampled."""
    prompt = list(range(1, prompt_len + 1))

    def once() -> float:
        t0 = time.perf_counter()
        out = list(generate_ids(engine, prompt, new_tokens, seed=0, **sampling))
        return (time.perf_counter() - t0) * 1e3 / len(out)

    _warm_up(once, 1)
    s = _stats([once() for _ in range(5)])
    s["tok_s"] = 1e3 / s["ms_mean"]
    return s


# -- HF transformers -------------------------------------------------------------
def hf_model(config: GPT2Config, device: str, dtype: str):
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    hf_config = HFConfig(**config.to_hf_dict())
    torch.manual_seed(0)
    torch_dtype = {"f32": torch.float32, "f16": torch.float16}[dtype]
    model = GPT2LMHeadModel(hf_config).to(device=device, dtype=torch_dtype).eval()
    return model


def hf_decode(model, prompt_len: int, new_tokens: int, n_seq: int = 1, warmup: int = 4) -> dict:
    import torch

    device = next(model.parameters()).device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    ids = torch.arange(1, prompt_len + 1, device=device).repeat(n_seq, 1)
    times = []
    with torch.no_grad():
        t_start = time.perf_counter()
        for rep in range(2):
            out = model(input_ids=ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for step in range(new_tokens):
                warm = step >= warmup and time.perf_counter() - t_start >= WARMUP_SECONDS
                if rep == 0 and warm:
                    break
                sync()
                t0 = time.perf_counter()
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                nxt.cpu()
                times.append((time.perf_counter() - t0) * 1e3)
            if rep == 0:
                times.clear()
    s = _stats(times)
    s["tok_s"] = n_seq * 1e3 / s["ms_mean"]
    return s


def hf_prefill(model, n_tokens: int, repeats: int = 10) -> dict:
    import torch

    device = next(model.parameters()).device
    ids = torch.arange(n_tokens, device=device).unsqueeze(0) % model.config.vocab_size
    times = []

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        out.logits[:, -1].argmax(-1).cpu()
        return (time.perf_counter() - t0) * 1e3

    with torch.no_grad():
        _warm_up(once, 2)
        times = [once() for _ in range(repeats)]
    return _stats(times)


# -- HF transformers, compiled ----------------------------------------------------
class HFCompiledDecoder:
    """HF GPT-2 greedy decoding, gpt-fast style: a static KV cache allocated up front,
    the prompt prefilled eagerly, the one-token step under `torch.compile`.

    The step compiles on its first call (and records its CUDA graph on the next ones
    under "reduce-overhead"), so callers warm it up before timing. Batch 1.
    """

    def __init__(self, model, max_len: int, backend: str = "inductor"):
        import torch
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        forward_params = inspect.signature(model.forward).parameters
        # transformers 5.24 names the cache `cache` and tracks positions itself; earlier
        # versions call it `past_key_values`, and those that name `cache_position` need it.
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self._pass_cache_position = "cache_position" in forward_params
        # "reduce-overhead" (CUDA graphs) is an inductor mode; other backends take none.
        self.mode = "reduce-overhead" if backend == "inductor" else None
        torch._dynamo.reset()  # drop the previous model's graphs and CUDA graph pool
        self._compiled_step = torch.compile(
            self._forward_argmax, backend=backend, mode=self.mode, fullgraph=True
        )
        self._position = None

    def _forward_argmax(self, ids, positions):
        # ids [1, T], positions [T] -> next token [1, 1]
        kwargs = {self._cache_arg: self.cache}
        if self._pass_cache_position:
            kwargs["cache_position"] = positions
        out = self.model(input_ids=ids, position_ids=positions[None], use_cache=True, **kwargs)
        return out.logits[:, -1:].argmax(-1)

    def start(self, prompt: list[int]):
        """Empties the cache, prefills `prompt` eagerly (HF never compiles prefill);
        returns the greedy next token [1, 1]."""
        import torch

        self.cache.reset()
        ids = torch.tensor([prompt], device=self.device)
        with torch.no_grad():
            token = self._forward_argmax(ids, torch.arange(len(prompt), device=self.device))
        self._position = torch.tensor([len(prompt)], device=self.device)
        return token

    def step(self, token):
        """Feeds `token` [1, 1] at the next position, returns the greedy next token [1, 1]."""
        import torch

        with torch.no_grad():
            # clone: a CUDA graph's output is overwritten by its next replay
            nxt = self._compiled_step(token, self._position).clone()
        self._position += 1
        return nxt


def hf_compiled_decode(
    model, prompt_len: int, new_tokens: int, warmup: int = 8, backend: str = "inductor"
) -> dict:
    """Like `hf_decode` at batch 1, through `HFCompiledDecoder`; compiling is in the warm-up."""
    import torch

    decoder = HFCompiledDecoder(model, prompt_len + max(warmup, new_tokens), backend)

    def sync():
        if decoder.device.type == "cuda":
            torch.cuda.synchronize()

    prompt = list(range(1, prompt_len + 1))
    token = decoder.start(prompt)
    t0 = time.perf_counter()
    for _ in range(warmup):
        token = decoder.step(token)
    sync()
    warmup_ms = (time.perf_counter() - t0) * 1e3

    def generate() -> None:  # compiled by now: this warms the GPU's clocks
        token = decoder.start(prompt)
        for _ in range(new_tokens):
            token = decoder.step(token)
        sync()

    _warm_up(generate, 1)
    token = decoder.start(prompt)
    times = []
    for _ in range(new_tokens):
        sync()
        t0 = time.perf_counter()
        token = decoder.step(token)
        token.cpu()
        times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["tok_s"] = 1e3 / s["ms_mean"]
    s["warmup_ms"] = warmup_ms  # includes compiling
    s["backend"] = backend
    s["mode"] = decoder.mode
    return s


def hf_compiled_skip_reason(setting: str, device: str) -> str | None:
    """Why `--hf-compiled SETTING` does not run on DEVICE, or None when it runs."""
    if setting == "off":
        return "skipped: --hf-compiled off"
    if setting == "auto" and device != "cuda":
        return f"skipped: --hf-compiled auto is off on {device} (inductor compiles for minutes)"
    return None


def _hf_compiled_row(model, args: argparse.Namespace) -> dict:
    """The compiled HF decode's numbers, or why there are none: a failing compile
    must not lose the rest of the run."""
    reason = hf_compiled_skip_reason(args.hf_compiled, args.device)
    if reason:
        return {"hf_compiled": reason}
    try:
        return hf_compiled_decode(
            model, args.prompt_len, args.new_tokens, backend=args.hf_compile_backend
        )
    except Exception as exc:  # noqa: BLE001 - reported in the row, the bench goes on
        traceback.print_exc(file=sys.stderr)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"hf_compiled": f"failed: {type(exc).__name__}: {first_line}"}


# -- the run -------------------------------------------------------------------------
def ggml_version() -> str:
    """The ggml the loaded libtinynn runs, as its libggml-base says: "0.25.3
    (llama-cpp-python-0.3.36)" (the build stamps native/ggml.pin's package and
    version as ggml's commit); "unknown" where that library cannot be read."""
    import tinynn

    try:
        base = ctypes.CDLL(str(Path(tinynn.library_path()).parent / "libggml-base.so"))
        base.ggml_version.restype = base.ggml_commit.restype = ctypes.c_char_p
        return f"{base.ggml_version().decode()} ({base.ggml_commit().decode()})"
    except (OSError, AttributeError):
        return "unknown"


def environment(device: str) -> dict:
    import importlib.metadata as md

    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.node() and platform.machine(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "ggml": ggml_version(),
        "weights": "random (timing only)",
    }
    for pkg in ("numpy", "torch", "transformers"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if device == "cuda":
        try:
            import torch

            env["gpu"] = torch.cuda.get_device_name(0)
        except Exception as exc:  # noqa: BLE001 - informational only
            env["gpu"] = f"unknown ({exc})"
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# What runs when --shapes, --dtypes or --workloads is not given: on CUDA the README's GPU
# table (both shapes, every type); on the CPU its CPU row, GPT-2 small decoding one
# sequence in f32 and q8_0 beside HF's f32 (25 s on 2 cores, 2026-12-07; gpt2-xl in f32
# would take minutes a workload there).
DEVICE_DEFAULTS = {
    "cuda": {
        "shapes": ["gpt2", "gpt2-xl"],
        "dtypes": list(WEIGHT_DTYPES),
        "workloads": ["decode", "prefill", "batch"],
    },
    "cpu": {"shapes": ["gpt2"], "dtypes": ["f32", "q8_0"], "workloads": ["decode"]},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where our engine (and HF) runs; auto: CUDA when usable (default: %(default)s)",
    )
    for name, choices, what in (
        ("shapes", sorted(SHAPES), "model shapes (random weights)"),
        ("dtypes", WEIGHT_DTYPES, "weight types"),
        ("workloads", WORKLOADS, "what to time (cpu: the same as decode)"),
    ):
        cuda, cpu = (" ".join(DEVICE_DEFAULTS[d][name]) for d in ("cuda", "cpu"))
        p.add_argument(
            f"--{name}",
            nargs="+",
            choices=choices,
            default="auto",
            help=f"{what} (default: %(default)s = the device's: CUDA {cuda}; CPU {cpu})",
        )
    p.add_argument(
        "--new-tokens",
        type=int,
        default=128,
        help="tokens decoded after the prompt; batch: at most 64 (default: %(default)s)",
    )
    p.add_argument(
        "--prompt-len", type=int, default=16, help="prompt tokens (default: %(default)s)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=32,
        help="sequences of the batch workload (default: %(default)s)",
    )
    p.add_argument(
        "--prefill",
        type=int,
        nargs="+",
        default=[128, 1024],
        help="prompt lengths of the prefill workload (default: %(default)s)",
    )
    p.add_argument(
        "--no-hf", action="store_true", help="skip HF transformers (default: %(default)s)"
    )
    p.add_argument(
        "--hf-compiled",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time HF's compiled decode (static cache + torch.compile); auto: on CUDA "
        "only (default: %(default)s)",
    )
    p.add_argument(
        "--hf-compile-backend",
        default="inductor",
        help="torch.compile backend for --hf-compiled (eager: no compiler, for tests) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads; None = the library's choice (default: %(default)s)",
    )
    p.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default="auto",
        help="auto: our fused CUDA kernels where they run (ggml's graphs beside them, for "
        "comparison); fused: only ours; graphs: only ggml's (default: %(default)s)",
    )
    p.add_argument(
        "--load-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gpt2_bench_load",
        help="load: where the GGUF files are written once and kept (default: %(default)s)",
    )
    p.add_argument(
        "--load-repeats",
        type=int,
        default=3,
        help="load: fresh processes a file, the fastest reported (default: %(default)s)",
    )
    p.add_argument(
        "--load-idle-s",
        type=float,
        default=0.0,
        help="load: seconds the machine idles before each fresh process (a load after a "
        "pause: on a VM whose free memory goes back to the host, fresh huge pages cost "
        "more then); 0 = back to back (default: %(default)s)",
    )
    p.add_argument(
        "--llama-bench",
        type=Path,
        default=None,
        help="load: llama.cpp's llama-bench, timed as a whole process on the same files "
        "(default: %(default)s = not run)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the results here; None = no file (default: %(default)s)",
    )


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """--device auto becomes cuda or cpu (gpt2.api.pick_device: CUDA when usable);
    --shapes, --dtypes, --workloads left at auto take that device's DEVICE_DEFAULTS."""
    from gpt2.api import pick_device

    args.device = pick_device(args.device)
    for name, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, name) == "auto":
            setattr(args, name, list(value))
    return args


def run(args: argparse.Namespace) -> int:
    rows: list[dict] = []
    env = environment(args.device)
    decode_tokens, batch_tokens = args.new_tokens, min(args.new_tokens, 64)

    def record(shape: str, dtype: str, engine: str, workload: str, stats: dict) -> None:
        row = {"shape": shape, "dtype": dtype, "workload": workload, "engine": engine}
        rows.append({**row, **stats})
        print(_format_row(rows[-1]), flush=True)

    for shape in args.shapes:
        config = SHAPES[shape]
        weights = random_weights(config, scale=WEIGHT_SCALE)
        for dtype in args.dtypes:
            add = functools.partial(record, shape, dtype)
            wl = set(args.workloads)
            decode = bool(wl & {"decode", "cpu"})
            batch = args.batch if "batch" in wl else 1

            # each engine sized as a user would for its workload: one sequence, or the batch
            engine = functools.partial(
                FastGPT2,
                weights,
                args.device,
                dtype,
                n_ctx=1024,
                n_threads=args.threads,
                decode=args.decode,
            )

            if decode or "prefill" in wl or "generate" in wl:
                with engine(n_slots=1) as one:
                    if decode:
                        add("ours", "decode b1", ours_decode(one, args.prompt_len, decode_tokens))
                    for n in args.prefill if "prefill" in wl else ():
                        add("ours", f"prefill {n}", ours_prefill(one, n))
                    if "generate" in wl:
                        n_new = decode_tokens
                        add("ours", "generate greedy", ours_generate(one, args.prompt_len, n_new))
                        stats = ours_generate(one, args.prompt_len, n_new, **DEFAULT_SAMPLING)
                        add("ours", "generate sampled", stats)
                    fused = one.decoder is not None
                if decode and fused:  # the same decode through ggml's graphs, for comparison
                    with engine(n_slots=1, decode="graphs") as graphs:
                        stats = ours_decode(graphs, args.prompt_len, decode_tokens)
                        add("ours-ggml", "decode b1", stats)
            if "batch" in wl:
                with engine(n_slots=batch) as many:
                    stats = ours_batch(many, batch, args.prompt_len, batch_tokens)
                    add("ours", f"decode b{batch}", stats)
            if "load" in wl:
                path = bench_load.model_file(weights, shape, dtype, args.load_dir)
                stats = bench_load.ours(args.device, path, args.load_repeats, args.load_idle_s)
                add("ours", "load", stats)
                if args.llama_bench is not None:
                    stats = bench_load.llama_cpp(
                        args.llama_bench, args.device, path, args.load_repeats
                    )
                    add("llama.cpp", "load", stats)
            if args.no_hf or dtype == "q8_0" or not (decode or wl & {"prefill", "batch"}):
                continue
            try:
                model = hf_model(config, args.device, dtype)
            except Exception as exc:  # noqa: BLE001 - HF is optional in a run
                print(f"HF transformers unavailable: {exc}")
                continue
            if decode:
                add("hf", "decode b1", hf_decode(model, args.prompt_len, decode_tokens))
            for n in args.prefill if "prefill" in wl else ():
                add("hf", f"prefill {n}", hf_prefill(model, n))
            if "batch" in wl:
                stats = hf_decode(model, args.prompt_len, batch_tokens, n_seq=batch)
                add("hf", f"decode b{batch}", stats)
            if decode:  # last: a crashing compile has the eager rows already
                add("hf-compiled", "decode b1", _hf_compiled_row(model, args))
            del model
    _add_ratios(rows)
    print()
    print(format_table(rows, env))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    return 0


def _add_ratios(rows: list[dict]) -> None:
    for engine, field in (("hf", "speedup_vs_hf"), ("hf-compiled", "speedup_vs_hf_compiled")):
        refs = {(r["shape"], r["dtype"], r["workload"]): r for r in rows if r["engine"] == engine}
        for r in rows:
            if r["engine"] != "ours":
                continue
            # HF has no q8_0: those rows compare with HF's f32. A dtype whose compiled
            # run failed keeps its (timeless) row here, so it gets no ratio, not f32's.
            ref = refs.get((r["shape"], r["dtype"], r["workload"])) or refs.get(
                (r["shape"], "f32", r["workload"])
            )
            if ref and "ms_mean" in ref:
                r[field] = ref["ms_mean"] / r["ms_mean"]


def _format_row(r: dict) -> str:
    head = f"{r['shape']:8} {r['dtype']:5} {r['workload']:13} {r['engine']:11} "
    if "ms_mean" not in r:  # a compiled HF run that was skipped or failed, a failed load
        return head + r.get("hf_compiled", r.get("error", "no result"))
    tok = f"{r['tok_s']:9.1f} tok/s" if "tok_s" in r else " " * 15
    if "gb_s" in r:  # a load: the file's bytes over the fastest run's seconds
        tok = f"{r['gb_s']:9.3f} GB/s "
    return head + f"{r['ms_mean']:9.3f} ms  p50 {r['ms_p50']:8.3f}  p90 {r['ms_p90']:8.3f}  {tok}"


def format_table(rows: list[dict], env: dict) -> str:
    lines = [
        "| shape | dtype | workload | engine | ms mean | ms p50 | ms p90 | tok/s | vs HF "
        "| vs HF compiled |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['shape']} | {r['dtype']} | {r['workload']} | {r['engine']} | "
        if "ms_mean" not in r:
            lines.append(head + f"{r.get('hf_compiled', r.get('error', ''))} | | | | | |")
            continue
        tok = f"{r['tok_s']:.1f}" if "tok_s" in r else ""
        if "gb_s" in r:
            tok = f"{r['gb_s']:.3f} GB/s"
        ratio = f"{r['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in r else ""
        compiled_ratio = (
            f"{r['speedup_vs_hf_compiled']:.2f}x" if "speedup_vs_hf_compiled" in r else ""
        )
        lines.append(
            head + f"{r['ms_mean']:.3f} | {r['ms_p50']:.3f} | {r['ms_p90']:.3f} | {tok} | "
            f"{ratio} | {compiled_ratio} |"
        )
    head = ", ".join(f"{k}: {v}" for k, v in env.items())
    return head + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt2 bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(resolve_defaults(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
