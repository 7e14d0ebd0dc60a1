"""The `gpt2` command (also `python -m gpt2`).

    gpt2 generate "Once upon a time"                # sampled (seed on stderr); --seed 1 repeats
    gpt2 generate "The Python" --temperature 0 --repetition-penalty 1   # greedy
    gpt2 logits --model model.gguf --ids "15496 11 616" --engine full --out ours.txt
    gpt2 parity compare --ours ours.txt --ref ref.txt --max-abs 1e-3
    gpt2 parity hf --model hf_folder --device cpu
    gpt2 convert hf_folder model.gguf --dtype f16
    gpt2 inspect model.gguf
    gpt2 bench ...

User errors (bad files, bad options, CUDA asked for and missing) print
`gpt2: error: <message>` on stderr and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from errno import EADDRINUSE
from pathlib import Path

import numpy as np

import gpt2
from gpt2.api import DEVICES, ENGINES, GPT2Model, make_engine, model_id, pick_device
from gpt2.engine import WEIGHT_DTYPES
from gpt2.engine.fast import DECODE_MODES
from gpt2.generate import StepTimings
from gpt2.params import GenerationParams
from gpt2.resolve import resolve_model
from gpt2.token_ids import check_token_ids
from gpt2.weights import load_model
from tinynn import TinyNNError, cuda_available, cuda_unavailable_reason

log = logging.getLogger("gpt2")

_Formatter = argparse.ArgumentDefaultsHelpFormatter

# `gpt2 generate`'s defaults: text worth reading from the first command. llama.cpp's and
# llama-cpp-python's sampling (temperature 0.8, top-k 40, top-p 0.95) with the repetition
# penalty they long used (1.1), a fresh seed each run (printed on stderr). The embedded
# model loops under greedy choice: over 7 prompts x 10 seeds, 100 new tokens, 6 of 7
# greedy continuations repeat a 6-token run 3 times, 14 of 70 sampled ones, 2 of 70
# sampled with the penalty (0 of 70 at 50 tokens). The library keeps greedy defaults
# (gpt2.params: deterministic, as HF's generate()); the CLI is where a person reads text.
GENERATE_DEFAULTS = GenerationParams(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1)


def choose_device(device: str) -> str:
    """ "cpu" or "cuda" for --device; asking for CUDA where it is missing is an error."""
    if device == "cuda" and not cuda_available():
        raise ValueError(f"--device cuda: {cuda_unavailable_reason()}")
    return pick_device(device)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------
# generate


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt:
        raise ValueError("the prompt is empty: give some text to continue")
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    device = choose_device(args.device)
    t0 = time.perf_counter()
    model = gpt2.load(
        args.model,
        device,
        args.dtype,
        engine=args.engine,
        n_threads=args.threads,
        decode=args.decode,
    )
    load_s = time.perf_counter() - t0
    seed = args.seed
    if seed is None and args.temperature > 0:
        seed = secrets.randbelow(2**31)  # a fresh seed, shown so that the text can be had again
        print(f"seed {seed} (--seed {seed} repeats this text)", file=sys.stderr, flush=True)
    with model:
        timed = StepTimings()
        pieces = model.stream(
            args.prompt,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=seed,
            stop=args.stop or (),
            repetition_penalty=args.repetition_penalty,
            frequency_penalty=args.frequency_penalty,
            presence_penalty=args.presence_penalty,
            timings=timed,
        )
        out = sys.stdout
        if args.stream:
            # The first piece is pulled before anything is printed, so a bad prompt or
            # option fails cleanly instead of after the prompt was echoed.
            first = next(pieces, "")
            out.write(args.prompt + first)
            out.flush()
            for piece in pieces:
                out.write(piece)
                out.flush()
            out.write("\n")
        else:
            out.write(args.prompt + "".join(pieces) + "\n")
        out.flush()
        if args.timing:
            n_prompt = len(model.tokenizer.encode(args.prompt))
            print(_timing_line(load_s, timed, n_prompt, model), file=sys.stderr)
    return 0


def _timing_line(load_s: float, timed: StepTimings, n_prompt: int, model: GPT2Model) -> str:
    parts = [f"device {model.device}, engine {model.engine_name}", f"load {load_s * 1e3:.1f} ms"]
    if timed.prefill_s is not None:
        parts.append(f"prefill {timed.prefill_s * 1e3:.2f} ms ({n_prompt} tokens)")
    if timed.step_s:
        total = sum(timed.step_s)
        n = len(timed.step_s)
        parts.append(
            f"decode {total / n * 1e3:.2f} ms/token over {n} steps ({n / total:.1f} tokens/s)"
        )
    return "timing: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------
# logits


def parse_ids(text: str) -> list[int]:
    """ "15496 11 616" or "15496,11,616" -> [15496, 11, 616]."""
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise ValueError("--ids is empty: give at least one token id")
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise ValueError(f"--ids must be integers separated by spaces, got {text!r}") from None


def cmd_logits(args: argparse.Namespace) -> int:
    if args.all_positions and not args.out:
        raise ValueError("--all-positions says what --out writes: give --out FILE.npy")
    loaded = load_model(resolve_model(args.model))
    if args.ids is not None:
        ids = parse_ids(args.ids)
    else:
        if loaded.tokenizer is None:
            raise ValueError(f"{loaded.path} has no tokenizer: give --ids instead of --text")
        ids = loaded.tokenizer.encode(args.text)
        if not ids:
            raise ValueError("--text gives no tokens: give some text")
    check_token_ids(ids, loaded.config.vocab_size)
    n_ctx = loaded.config.n_positions
    if len(ids) > n_ctx:
        raise ValueError(f"{len(ids)} tokens do not fit the model's context of {n_ctx}")

    if args.engine == "reference":
        from gpt2.reference import GPT2Reference

        device = "cpu"
        logits = GPT2Reference(loaded.weights).logits(ids)  # float64
    else:
        device = choose_device(args.device)
        with make_engine(
            loaded.weights,
            args.engine,
            device,
            args.dtype,
            n_ctx=len(ids),
            n_threads=args.threads,
            gelu=args.gelu,
        ) as engine:
            logits = engine.logits(ids)

    print(f"logits: shape {tuple(logits.shape)} ({logits.dtype}), engine {args.engine}, {device}")
    last = np.asarray(logits[-1], dtype=np.float64)
    top = np.argsort(-last, kind="stable")[:5]
    print(f"last position: argmax {int(top[0])} (logit {last[top[0]]:.6g})")
    print("top-5: " + ", ".join(f"{int(i)} ({last[i]:.6g})" for i in top))
    if loaded.tokenizer is not None:
        print("top-5 tokens: " + ", ".join(repr(loaded.tokenizer.decode([int(i)])) for i in top))
    if args.out:
        from gpt2.parity import write_dump

        out = Path(args.out)
        if args.all_positions:
            if out.suffix != ".npy":
                raise ValueError(
                    f"--all-positions writes a .npy array: name the file *.npy, not {out}"
                )
            with open(out, "wb") as fh:
                np.save(fh, logits)
            print(f"wrote {out}: all positions, shape {tuple(logits.shape)}")
        else:
            write_dump(out, logits[-1])
            print(f"wrote {out}: last position, {logits.shape[-1]} floats")
    return 0


# ---------------------------------------------------------------------------------------
# parity


def cmd_parity_compare(args: argparse.Namespace) -> int:
    from gpt2.parity import compare, format_report, read_dump

    try:
        ours, ref = read_dump(args.ours), read_dump(args.ref)
        report = compare(ours, ref, max_abs=args.max_abs, top_k=args.top_k)
    except ValueError as e:
        raise ValueError(f"cannot compare: {e}") from None
    print(format_report(report))
    return 0 if report.passed else 1


def cmd_parity_hf(args: argparse.Namespace) -> int:
    from gpt2.parity import format_hf_parity, hf_parity

    device = choose_device(args.device)
    result = hf_parity(
        resolve_model(args.model),
        device,
        n_prompts=args.prompts,
        length=args.length,
        max_abs=args.max_abs,
        n_threads=args.threads,
    )
    print(format_hf_parity(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if result.passed else 1


# ---------------------------------------------------------------------------------------
# convert, inspect, bench


def cmd_convert(args: argparse.Namespace) -> int:
    from gpt2.convert import convert_hf_to_gguf

    folder = resolve_model(args.hf_folder)
    if not folder.is_dir():
        raise ValueError(f"convert takes an HF folder (config.json + model.safetensors): {folder}")
    out = Path(args.out)
    t0 = time.perf_counter()
    types = convert_hf_to_gguf(folder, out, args.dtype)
    seconds = time.perf_counter() - t0
    counts = Counter(types.values())
    size = out.stat().st_size
    print(
        f"wrote {out}: {len(types)} tensors, {size:,} bytes ({size / 2**20:.2f} MiB), "
        f"{seconds:.1f} s"
    )
    print("tensor types: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from gpt2.inspect_model import describe, format_description

    d = describe(resolve_model(args.path))
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0


def run_bench(argv: list[str]) -> int:
    """`gpt2 bench ...`: gpt2.bench owns its options; imported only when asked for."""
    try:
        from gpt2 import bench
    except ImportError as e:
        raise ValueError(f"the bench command is not available ({e})") from None
    parser = argparse.ArgumentParser(
        prog="gpt2 bench", description="Benchmarks (see gpt2/bench.py).", formatter_class=_Formatter
    )
    bench.add_arguments(parser)
    return bench.run(bench.resolve_defaults(parser.parse_args(argv)))


# ---------------------------------------------------------------------------------------
# serve


def check_port_free(host: str, port: int) -> None:
    """Raises ValueError when host:port cannot be listened on (a server already there,
    a port below 1024 without the right): found before the model loads, not after."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        # as uvicorn binds: a port whose last connections are in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            hint = " (another server there? --port picks another)" if e.errno == EADDRINUSE else ""
            raise ValueError(f"cannot listen on {_url(host, port)}: {e.strerror}{hint}") from None


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_serve(args: argparse.Namespace) -> int:
    name = args.model_name or model_id(args.model)
    if args.ray:
        return _serve_on_ray(args, name)
    ray_only = {
        "--replicas": args.replicas,
        "--num-cpus": args.num_cpus,
        "--ray-address": args.ray_address,
    }
    given = [option for option, value in ray_only.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only with --ray")
    try:
        from gpt2.serve.app import serve
    except ImportError as e:
        raise ValueError(
            "gpt2 serve needs the server extra: pip install '.[server]' from the source "
            f"folder ({e})"
        ) from None
    device = choose_device(args.device)
    check_port_free(args.host, args.port)
    model = gpt2.load(
        args.model,
        device,
        args.dtype,
        n_ctx=args.n_ctx,
        n_slots=args.max_batch,  # a slot a request of the batch (echo included)
        n_threads=args.threads,
        decode=args.decode,
    )
    with model:
        dtype = getattr(model.engine, "dtype", "f32")
        print(
            f"gpt2 serve: model {name!r} ({model.loaded.path}, {dtype}) on {device}, "
            f"{_url(args.host, args.port)}/v1 (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        return serve(  # 0 after SIGTERM (drained), 130 after SIGINT
            model,
            args.host,
            args.port,
            model_name=name,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            max_request_bytes=args.max_request_bytes,
            max_step_tokens=args.max_step_tokens,
            shutdown_grace=args.shutdown_grace,
            log_level="info" if args.verbose else "warning",
        )


def _serve_on_ray(args: argparse.Namespace, name: str) -> int:
    from gpt2.serve import ray_deployment

    try:
        app = ray_deployment.build(
            args.model,
            replicas=args.replicas or 1,
            device=args.device,
            num_cpus=args.num_cpus or 1,
            model_name=name,
            dtype=args.dtype,
            n_ctx=args.n_ctx,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            threads=args.threads,
        )
    except ImportError as e:
        raise ValueError(str(e)) from None
    ray_deployment.run(app, host=args.host, port=args.port, address=args.ray_address)
    return 0


# ---------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2",
        description="GPT-2 family models on ggml (CPU and CUDA).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {gpt2.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "generate",
        help="continue a prompt",
        description="Print the prompt and its continuation.",
        formatter_class=_Formatter,
    )
    p.add_argument("prompt", metavar="PROMPT", help="text to continue")
    _model_device_dtype(p)
    _decode(p)
    # sampled text (GENERATE_DEFAULTS); the library's (gpt2.params) are greedy:
    # --temperature 0 --repetition-penalty 1 gives what model.generate() gives
    d = GENERATE_DEFAULTS
    p.add_argument(
        "--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens to generate at most"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help="sampling temperature; 0 = greedy (the most likely token every time)",
    )
    p.add_argument(
        "--top-k", type=int, default=d.top_k, help="keep the k most likely tokens; 0 = all"
    )
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling mass; 1 = all")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=d.repetition_penalty,
        help="divide the positive logits of prompt and generated tokens by this, multiply the "
        "negative ones; 1 = off",
    )
    p.add_argument(
        "--frequency-penalty",
        type=float,
        default=d.frequency_penalty,
        help="subtract this times each token's generated count, in [-2, 2]; 0 = off",
    )
    p.add_argument(
        "--presence-penalty",
        type=float,
        default=d.presence_penalty,
        help="subtract this from every token already generated, in [-2, 2]; 0 = off",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (same seed, same text); None = a fresh one, printed on stderr",
    )
    p.add_argument(
        "--stop",
        action="append",
        metavar="STRING",
        default=None,
        help="stop before this string (repeatable)",
    )
    p.add_argument("--engine", choices=ENGINES, default="fast", help="fast, or the Ruby ports")
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print pieces as they are produced",
    )
    p.add_argument(
        "--timing",
        action="store_true",
        help="print load time, prefill time, ms/token and tokens/s on stderr",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "logits",
        help="logits of a token sequence",
        description="Print a summary of the logits of a prompt; --out writes them.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--model", required=True, metavar="PATH_OR_ID", help="GGUF file, HF folder or hub id"
    )
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--ids", help='token ids, e.g. "15496 11 616"')
    given.add_argument("--text", help="text, encoded with the model's tokenizer")
    p.add_argument(
        "--engine",
        choices=(*ENGINES, "reference"),
        default="fast",
        help="reference = the numpy float64 model",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the engine runs")
    p.add_argument(
        "--dtype", choices=WEIGHT_DTYPES, default="f32", help="weight type (fast engine)"
    )
    p.add_argument(
        "--gelu",
        choices=("exact", "ggml"),
        default="exact",
        help="ports only: ggml = the Ruby engine's graph (ggml_gelu, an f16 table on the CPU)",
    )
    _threads(p)
    p.add_argument(
        "--out", metavar="FILE", help="write the last position's logits (Ruby dump format)"
    )
    p.add_argument(
        "--all-positions",
        action="store_true",
        help="with --out: write all positions as a .npy array [T, vocab]",
    )
    p.set_defaults(func=cmd_logits)

    p = sub.add_parser(
        "parity",
        help="compare logits",
        description="Logit parity tools.",
        formatter_class=_Formatter,
    )
    psub = p.add_subparsers(dest="parity_command", metavar="WHAT", required=True)
    c = psub.add_parser(
        "compare",
        help="compare two dumps",
        description="Compare two logits dumps (one line of floats, or .npy). Exit 0 on pass, "
        "1 on fail, 2 when a file cannot be read or the shapes differ.",
        formatter_class=_Formatter,
    )
    # required: no default to show
    for option, what in (("--ours", "our logits dump"), ("--ref", "the reference's")):
        c.add_argument(option, required=True, metavar="FILE", default=argparse.SUPPRESS, help=what)
    c.add_argument(
        "--max-abs",
        type=float,
        default=None,
        help="largest allowed |ours - ref|; None = no bound, argmax and top-k decide",
    )
    c.add_argument("--top-k", type=int, default=5, help="top-k sets that must agree")
    c.set_defaults(func=cmd_parity_compare)
    h = psub.add_parser(
        "hf",
        help="every engine against HF transformers",
        description="Run HF transformers (f32 and f64, CPU), the numpy reference and every "
        "engine on the same random prompts; print one table. Exit 0 only if all rows pass.",
        formatter_class=_Formatter,
    )
    h.add_argument("--model", required=True, metavar="HF_FOLDER", help="HF folder or hub id")
    h.add_argument("--device", choices=DEVICES, default="auto", help="where our engines run")
    _threads(h)
    h.add_argument("--prompts", type=_positive_int, default=3, help="number of random prompts")
    h.add_argument(
        "--length", type=_positive_int, default=16, help="tokens per prompt (at most the context)"
    )
    h.add_argument("--max-abs", type=float, default=1e-2, help="largest allowed |ours - hf_f64|")
    h.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    h.set_defaults(func=cmd_parity_hf)

    p = sub.add_parser(
        "convert",
        help="HF folder -> GGUF",
        description="Convert an HF GPT-2 folder to a GGUF file (llama.cpp's GPT-2 layout).",
        formatter_class=_Formatter,
    )
    p.add_argument("hf_folder", metavar="HF_FOLDER", help="HF folder or hub id")
    p.add_argument("out", metavar="OUT.gguf")
    p.add_argument("--dtype", choices=WEIGHT_DTYPES, default="f32", help="type of the 2-D weights")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "inspect",
        help="describe a model file",
        description="Architecture, layout, parameters, tensor types and tokenizer of a model.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "path",
        metavar="FILE_OR_FOLDER",
        nargs="?",
        default=None,
        help="GGUF file, HF folder or hub id; None = the embedded model",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible completions server",
        description="Serve /v1/completions (streamed or not), /v1/models, /health and "
        "/metrics, with continuous batching (needs the server extra).",
        formatter_class=_Formatter,
    )
    _model_device_dtype(p)
    _decode(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_positive_int, default=8000, help="port to listen on")
    p.add_argument(
        "--max-batch", type=_positive_int, default=8, help="sequences decoded together at most"
    )
    p.add_argument(
        "--max-queue", type=_positive_int, default=64, help="waiting requests before 429"
    )
    p.add_argument("--n-ctx", type=_positive_int, default=None, help="positions a sequence may use")
    p.add_argument("--model-name", default=None, help="the id /v1/models shows")
    p.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        default=8 << 20,
        metavar="N",
        help="a larger request body is answered 413, unread",
    )
    p.add_argument(
        "--max-step-tokens",
        type=_positive_int,
        default=512,
        metavar="N",
        help="tokens one step computes at most: every decode row, then chunks of the "
        "admitted prompts (oldest first); at least --max-batch + 2",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, requests still running after this are cut; "
        "exit 0 after SIGTERM, 130 after SIGINT",
    )
    ray = p.add_argument_group(
        "Ray Serve", "scale out: copies of this server behind Ray's HTTP proxy (the ray extra)"
    )
    ray.add_argument(
        "--ray", action="store_true", help="serve on Ray Serve; --device cuda: one GPU per replica"
    )
    ray.add_argument(
        "--replicas",
        type=_positive_int,
        default=None,
        help="servers, each loading the model; None = 1",
    )
    ray.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="CPUs Ray reserves for a replica (on the CPU also its threads); None = 1",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help='a running Ray cluster ("auto", "ray://head:10001"); None = start one here',
    )
    p.set_defaults(func=cmd_serve)

    # Parsed by gpt2.bench itself (see run_bench); listed here for --help.
    sub.add_parser("bench", help="benchmarks (gpt2 bench --help)", add_help=False)
    return parser


def _model_device_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_ID",
        help="GGUF file, HF folder or hub id; None = the embedded model",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = CUDA when usable")
    p.add_argument("--dtype", choices=("auto", *WEIGHT_DTYPES), default="auto", help="weight type")
    _threads(p)


def _decode(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default="auto",
        help="auto: our fused CUDA kernels where they run, ggml's graphs elsewhere; "
        "fused: ours or an error; graphs: ggml's",
    )


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads for ggml; None = the library's choice",
    )


def _bench_argv(argv: list[str]) -> list[str] | None:
    """The arguments after `bench` when it is the command, else None."""
    for i, a in enumerate(argv):
        if a in ("-v", "--verbose"):
            continue
        return argv[i + 1 :] if a == "bench" else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        bench_argv = _bench_argv(argv)
        args = parser.parse_args(
            argv if bench_argv is None else argv[: len(argv) - len(bench_argv)]
        )
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(name)s: %(levelname)s: %(message)s",
        )
        if bench_argv is not None:
            return run_bench(bench_argv)
        return args.func(args)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gpt2 generate ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        return 1
    except (ValueError, OSError, TinyNNError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
