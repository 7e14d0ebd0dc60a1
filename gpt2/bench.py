"""`gpt2 bench`: our fast engine beside HF transformers, same shapes, same run.

Weights are random (timing only; the output says so). Workloads (SPEC.md):
decode at batch 1 after a 16-token prompt (128 new tokens), prefill of 128
and 1024 tokens, 32 sequences decoding together, and the CPU decode. Each of
our numbers is the median (and p90) over timed steps after warm-up; each HF
number comes from the same process, with torch's default attention.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np

from gpt2.config import GPT2Config
from gpt2.engine import FastGPT2
from gpt2.weights import GPT2Weights, expected_shapes

SHAPES = {
    "gpt2": GPT2Config(n_layer=12, n_embd=768, n_head=12),
    "gpt2-xl": GPT2Config(n_layer=48, n_embd=1600, n_head=25),
}
WORKLOADS = ("decode", "prefill", "batch", "cpu")


def random_weights(config: GPT2Config, seed: int = 0) -> GPT2Weights:
    """GPT-2-shaped weights: N(0, 0.02) matrices, unit LayerNorms, zero biases."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            tensors[name] = np.ones(shape, np.float32)
        elif len(shape) == 1:
            tensors[name] = np.zeros(shape, np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= 0.02
            tensors[name] = a
    return GPT2Weights(config, tensors)


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "ms_mean": float(a.mean()),
        "ms_p50": float(np.percentile(a, 50)),
        "ms_p90": float(np.percentile(a, 90)),
    }


# -- ours ---------------------------------------------------------------------
def ours_decode(engine: FastGPT2, prompt_len: int, new_tokens: int, warmup: int = 8) -> dict:
    prompt = list(range(1, prompt_len + 1))
    token = engine.start_greedy(prompt)
    for _ in range(warmup):  # builds and warms the decode graph, then restart
        token = engine.step_greedy(token)
    token = engine.start_greedy(prompt)
    times = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        token = engine.step_greedy(token)
        times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["tok_s"] = 1e3 / s["ms_mean"]
    s["decode_graph_builds"] = engine.decode_graph_builds
    return s


def ours_prefill(engine: FastGPT2, n_tokens: int, repeats: int = 10) -> dict:
    prompt = [(i * 7) % engine.config.vocab_size for i in range(n_tokens)]
    t0 = time.perf_counter()
    engine.start_greedy(prompt)  # builds the graph
    build_ms = (time.perf_counter() - t0) * 1e3
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.start_greedy(prompt)
        times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["first_call_ms"] = build_ms
    return s


def ours_batch(engine: FastGPT2, n_seq: int, prompt_len: int, new_tokens: int) -> dict:
    prompts = [[(b + i) % 1000 + 1 for i in range(prompt_len)] for b in range(n_seq)]
    tokens = engine.start_batch(prompts)
    for _ in range(4):
        tokens = engine.step_batch_greedy(tokens)
    tokens = engine.start_batch(prompts)
    times = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        tokens = engine.step_batch_greedy(tokens)
        times.append((time.perf_counter() - t0) * 1e3)
    s = _stats(times)
    s["tok_s"] = n_seq * 1e3 / s["ms_mean"]
    return s


# -- HF transformers -------------------------------------------------------------
def hf_model(config: GPT2Config, device: str, dtype: str):
    import torch
    from transformers import GPT2Config as HFConfig
    from transformers import GPT2LMHeadModel

    hf_config = HFConfig(
        n_layer=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        n_positions=config.n_positions,
        vocab_size=config.vocab_size,
    )
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
        for rep in range(2):
            out = model(input_ids=ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            steps = warmup if rep == 0 else new_tokens
            for _ in range(steps):
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
    with torch.no_grad():
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            out.logits[:, -1].argmax(-1).cpu()
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times)


# -- the run -------------------------------------------------------------------------
def environment(device: str) -> dict:
    import importlib.metadata as md

    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.node() and platform.machine(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "ggml": "0.20.2 (libggml-python 0.20.2.post1 sdist)",
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gpt2", "gpt2-xl"])
    p.add_argument(
        "--dtypes", nargs="+", choices=("f32", "f16", "q8_0"), default=["f32", "f16", "q8_0"]
    )
    p.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, default=["decode", "prefill", "batch"]
    )
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prefill", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    rows: list[dict] = []
    env = environment(args.device)

    def add(row: dict) -> None:
        rows.append(row)
        print(_format_row(row), flush=True)

    hf_device = args.device
    for shape in args.shapes:
        config = SHAPES[shape]
        weights = random_weights(config)
        for dtype in args.dtypes:
            wl = set(args.workloads)
            batch = args.batch if "batch" in wl else 1
            engine = FastGPT2(
                weights, args.device, dtype, n_ctx=1024, max_batch=batch, n_threads=args.threads
            )
            try:
                if wl & {"decode", "cpu"}:
                    add(
                        {
                            "shape": shape,
                            "dtype": dtype,
                            "workload": "decode b1",
                            "engine": "ours",
                            **ours_decode(engine, args.prompt_len, args.new_tokens),
                        }
                    )
                if "prefill" in wl:
                    for n in args.prefill:
                        add(
                            {
                                "shape": shape,
                                "dtype": dtype,
                                "workload": f"prefill {n}",
                                "engine": "ours",
                                **ours_prefill(engine, n),
                            }
                        )
                if "batch" in wl:
                    add(
                        {
                            "shape": shape,
                            "dtype": dtype,
                            "workload": f"decode b{batch}",
                            "engine": "ours",
                            **ours_batch(engine, batch, args.prompt_len, min(args.new_tokens, 64)),
                        }
                    )
            finally:
                engine.close()
            if args.no_hf or dtype == "q8_0":
                continue
            try:
                model = hf_model(config, hf_device, dtype)
            except Exception as exc:  # noqa: BLE001 - HF is optional in a run
                print(f"HF transformers unavailable: {exc}")
                continue
            if wl & {"decode", "cpu"}:
                add(
                    {
                        "shape": shape,
                        "dtype": dtype,
                        "workload": "decode b1",
                        "engine": "hf",
                        **hf_decode(model, args.prompt_len, args.new_tokens),
                    }
                )
            if "prefill" in wl:
                for n in args.prefill:
                    add(
                        {
                            "shape": shape,
                            "dtype": dtype,
                            "workload": f"prefill {n}",
                            "engine": "hf",
                            **hf_prefill(model, n),
                        }
                    )
            if "batch" in wl:
                add(
                    {
                        "shape": shape,
                        "dtype": dtype,
                        "workload": f"decode b{batch}",
                        "engine": "hf",
                        **hf_decode(model, args.prompt_len, min(args.new_tokens, 64), n_seq=batch),
                    }
                )
            del model
    _add_ratios(rows)
    print()
    print(format_table(rows, env))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    return 0


def _add_ratios(rows: list[dict]) -> None:
    hf = {(r["shape"], r["dtype"], r["workload"]): r for r in rows if r["engine"] == "hf"}
    for r in rows:
        if r["engine"] != "ours":
            continue
        ref = hf.get((r["shape"], r["dtype"], r["workload"])) or hf.get(
            (r["shape"], "f32", r["workload"])
        )
        if ref:
            r["speedup_vs_hf"] = ref["ms_mean"] / r["ms_mean"]


def _format_row(r: dict) -> str:
    tok = f"{r['tok_s']:9.1f} tok/s" if "tok_s" in r else " " * 15
    return (
        f"{r['shape']:8} {r['dtype']:5} {r['workload']:13} {r['engine']:5} "
        f"{r['ms_mean']:9.3f} ms  p50 {r['ms_p50']:8.3f}  p90 {r['ms_p90']:8.3f}  {tok}"
    )


def format_table(rows: list[dict], env: dict) -> str:
    lines = [
        "| shape | dtype | workload | engine | ms mean | ms p50 | ms p90 | tok/s | vs HF |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tok = f"{r['tok_s']:.1f}" if "tok_s" in r else ""
        ratio = f"{r['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in r else ""
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['workload']} | {r['engine']} | "
            f"{r['ms_mean']:.3f} | {r['ms_p50']:.3f} | {r['ms_p90']:.3f} | {tok} | {ratio} |"
        )
    head = ", ".join(f"{k}: {v}" for k, v in env.items())
    return head + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpt2 bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
