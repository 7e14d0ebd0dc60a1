"""Load time and peak memory on the GPU (or the CPU): GPT-2-shaped GGUFs through
`gpt2.load`, and `gpt2 convert` of an HF f32 folder to f16 GGUF (issues 13 and 21).

    python scripts/bench_load_cuda.py --out bench/h200_DATE_load.json
        [--device cuda|cpu] [--shapes gpt2 gpt2-xl] [--dtypes f16 q8_0]
        [--ggufs DIR] [--paths FILE ...] [--convert-shape gpt2-xl|none]
        [--work /tmp/bench_load_cuda] [--repeats 3]

--ggufs: read {shape}_{dtype}.gguf from DIR (scripts/write_bench_ggufs.py's files: the
bench's weights, llama-bench's files) instead of writing them under --work (f16 only);
--paths: more model files, each a row of its own (the embedded gpt2/data/default.gguf).
Each row gives seconds and GB/s (the file's bytes over the load's seconds; 10^9 bytes).
The children import gpt2 and tinynn from the current folder first (`python -c`), then
PYTHONPATH: run from another checkout (with TINYNN_LIB naming its library) to time it;
each row names the gpt2 it imported.

The models are random (gpt2.random_weights at gpt2.bench's WEIGHT_SCALE; load speed does
not depend on the values), written once under --work by a child process, with a synthetic
byte-level BPE tokenizer of GPT-2's size (scripts/load_test.py's: 50,257 tokens) so that a load
reads the same kind of metadata as a real GPT-2 file does. The page cache is warmed (every
file read once) before each row.

Each load runs in a fresh child process that imports numpy, tinynn and gpt2, then opens
and closes a CUDA session (the CUDA start-up, timed apart; none on the CPU), then resets
its peak RSS (`/proc/self/clear_refs`; where that is refused the peak includes the start-up)
and takes its VmRSS as the baseline, then times `gpt2.load(path, device=...)` (dtype "auto":
the file's f16, checked) and, apart, one greedy token (the first forward builds the graph).
Peaks are the child's own VmHWM (MiB); "over baseline" is that peak less the baseline.
`gpt2 convert` runs through the CLI in a child of its own with the folder already written
and cached, so its peak is the conversion's alone. Each row is the fastest of --repeats
runs, with every run's seconds and the largest peak beside it. GB in the targets is 10^9
bytes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

GB_MIB = 1e9 / 2**20  # one GB (10^9 bytes) in MiB
# what every child reads of its own memory, and the prompt: gpt2 bench's load workload's
from gpt2.bench_load import PROMPT, STATUS, synthetic_tokenizer  # noqa: E402

LOAD_CHILD = (
    STATUS
    + r"""
import json, sys, time
device, path, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import numpy  # noqa: F401
import gpt2, tinynn
r = {"import_rss_mib": status("VmRSS"), "import_peak_mib": status("VmHWM"), "cuda_start_s": None}
r["gpt2_from"] = gpt2.__file__
if device == "cuda":
    t0 = time.perf_counter()
    tinynn.Session("cuda").close()
    r["cuda_start_s"] = time.perf_counter() - t0
    r["cuda_start_peak_mib"] = status("VmHWM")
r["peak_reset"] = reset_peak()
r["baseline_rss_mib"] = status("VmRSS")
t0 = time.perf_counter()
model = gpt2.load(path, device=device)
r["load_s"] = time.perf_counter() - t0
r["load_peak_rss_mib"] = status("VmHWM")
r["rss_after_load_mib"] = status("VmRSS")
r["dtype"] = model.engine.dtype
t0 = time.perf_counter()
r["token"] = model.generate(prompt, max_new_tokens=1)[0]
r["forward_s"] = time.perf_counter() - t0
r["peak_rss_after_forward_mib"] = status("VmHWM")
r["rss_after_forward_mib"] = status("VmRSS")
model.close()
print(json.dumps(r))
"""
)

CONVERT_CHILD = (
    STATUS
    + r"""
import json, sys, time
folder, out = sys.argv[1], sys.argv[2]
import numpy  # noqa: F401
from gpt2.cli import main
r = {"import_rss_mib": status("VmRSS"), "import_peak_mib": status("VmHWM")}
r["peak_reset"] = reset_peak()
r["baseline_rss_mib"] = status("VmRSS")
t0 = time.perf_counter()
code = main(["convert", folder, out, "--dtype", "f16"])
r["seconds"] = time.perf_counter() - t0
r["exit_code"] = code
r["peak_rss_mib"] = status("VmHWM")
r["rss_after_mib"] = status("VmRSS")
print(json.dumps(r))
"""
)


# -- the models (written by a child: the parent stays small) ---------------------------
def gguf_path(work: Path, shape: str) -> Path:
    return work / f"{shape}_f16.gguf"


def hf_folder(work: Path, shape: str) -> Path:
    return work / f"{shape}_hf_f32"


def write_hf_folder(weights, tokenizer, folder: Path) -> None:
    """config.json, model.safetensors (f32, HF's names), vocab.json and merges.txt, as
    GPT-2's own snapshot has them."""
    from safetensors.numpy import save_file

    from gpt2.names import LAYOUT_HF, from_canonical

    folder.mkdir(parents=True)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    config.update(weights.config.to_hf_dict())
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {from_canonical(n, LAYOUT_HF)[0]: t for n, t in weights.tensors.items()}
    save_file(state, str(folder / "model.safetensors"))
    vocab = {tokenizer.token(i): i for i in range(tokenizer.vocab_size)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = "".join(m + "\n" for m in tokenizer.merges())
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges)


def make_models(work: Path, shapes: list[str], convert_shape: str | None) -> None:
    """Each shape's f16 GGUF, and the convert shape's HF f32 folder; files already there
    are kept (each is written under a temporary name and renamed when complete)."""

    from gpt2.bench import SHAPES, WEIGHT_SCALE
    from gpt2.convert import write_gguf_llama_layout
    from gpt2.random_weights import random_weights

    for shape in dict.fromkeys([*shapes, *([convert_shape] if convert_shape else [])]):
        gguf_out, folder = gguf_path(work, shape), hf_folder(work, shape)
        need_gguf = shape in shapes and not gguf_out.is_file()
        need_folder = shape == convert_shape and not folder.is_dir()
        if not (need_gguf or need_folder):
            continue
        config = SHAPES[shape]
        weights = random_weights(config, scale=WEIGHT_SCALE)  # f32: 6.2 GB for gpt2-xl
        tokenizer = synthetic_tokenizer(config.vocab_size)
        if need_gguf:
            part = gguf_out.with_suffix(".part")
            write_gguf_llama_layout(weights, part, "f16", tokenizer)
            part.rename(gguf_out)
        if need_folder:
            part = folder.with_name(folder.name + ".part")
            shutil.rmtree(part, ignore_errors=True)
            write_hf_folder(weights, tokenizer, part)
            part.rename(folder)
        del weights


def warm(*paths: Path) -> None:
    """Read every file once, so the loads that follow read from the page cache."""
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass


# -- the runs --------------------------------------------------------------------------
def run_child(code: str, *args: str) -> dict:
    """One fresh process; its last stdout line is the JSON row, or the failure is the row."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        last = (out.stderr.strip().splitlines() or [""])[-1][:300]
        return {"error": f"exit {out.returncode}: {last}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict], key: str, peak: str) -> dict:
    """The fastest run, with every run's seconds and the largest peak of them all."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"], "runs": len(runs)}
    best = dict(min(ok, key=lambda r: r[key]))
    best[f"runs_{key}"] = [round(r[key], 3) for r in ok]
    best[f"{peak}_max"] = max(r[peak] for r in ok)
    best["peak_over_baseline_mib_max"] = max(r[peak] - r["baseline_rss_mib"] for r in ok)
    best["failed_runs"] = [r["error"] for r in runs if "error" in r]
    return best


def load_row(device: str, path: Path, repeats: int) -> dict:
    warm(path)
    runs = []
    for _ in range(repeats):
        runs.append(run_child(LOAD_CHILD, device, str(path), json.dumps(PROMPT)))
        print(f"  {path.name}: {runs[-1]}", file=sys.stderr, flush=True)
    row = best_of(runs, "load_s", "load_peak_rss_mib")
    row["file"] = path.name
    row["file_bytes"] = path.stat().st_size
    if "load_s" in row:
        row["gb_per_s"] = row["file_bytes"] / row["load_s"] / 1e9
    return row


def convert_row(folder: Path, out: Path, repeats: int) -> dict:
    warm(folder)
    runs = []
    for _ in range(repeats):
        out.unlink(missing_ok=True)
        runs.append(run_child(CONVERT_CHILD, str(folder), str(out)))
        print(f"  convert {folder.name}: {runs[-1]}", file=sys.stderr, flush=True)
    row = best_of(runs, "seconds", "peak_rss_mib")
    row["input_bytes"] = (folder / "model.safetensors").stat().st_size
    if out.is_file():
        row["output_bytes"] = out.stat().st_size
        out.unlink()
    return row


def targets(device: str, rows: dict) -> dict:
    """Issue 13's GPU targets, for the shapes measured (None where a row failed)."""

    def check(row: dict | None, test) -> bool | None:
        return None if row is None or "error" in row else bool(test(row))

    t = {}
    if "gpt2" in rows["load"]:
        t["gpt2_f16_load_at_most_0.5_s_after_cuda_up"] = check(
            rows["load"]["gpt2"], lambda r: r["load_s"] <= 0.5 and r["dtype"] == "f16"
        )
    if device == "cpu" and "gpt2_f16" in rows["load"]:  # issue 21
        t["cpu_gpt2_f16_gguf_at_most_0.25_s"] = check(
            rows["load"]["gpt2_f16"], lambda r: r["load_s"] <= 0.25 and r["dtype"] == "f16"
        )
    if "gpt2_q8_0" in rows["load"]:  # issue 21: the file's q8_0 blocks kept
        t["gpt2_q8_0_gguf_keeps_q8_0"] = check(
            rows["load"]["gpt2_q8_0"], lambda r: r["dtype"] == "q8_0"
        )
    if "gpt2-xl" in rows["load"]:
        t["gpt2-xl_f16_load_at_most_3_s_peak_at_most_1_gb_over_baseline"] = check(
            rows["load"]["gpt2-xl"],
            lambda r: (
                r["load_s"] <= 3
                and r["dtype"] == "f16"
                and r["peak_over_baseline_mib_max"] <= GB_MIB
            ),
        )
    if "gpt2-xl" in rows["convert"]:
        t["convert_gpt2-xl_peak_under_2_gb"] = check(
            rows["convert"]["gpt2-xl"], lambda r: r["peak_rss_mib_max"] < 2 * GB_MIB
        )
    if device != "cuda":
        t["note"] = f"measured on {device}: the load targets are for CUDA (H200)"
    return t


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "gpu": None}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        info["gpu"] = out.stdout.strip().splitlines() or None
    return info


def versions() -> dict:
    import gpt2

    found = {"gpt2": gpt2.__version__, "python": platform.python_version()}
    for pkg in ("numpy", "gguf", "safetensors", "tokenizers", "torch"):
        try:
            found[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def main() -> int:
    from gpt2.bench import SHAPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gpt2", "gpt2-xl"])
    ap.add_argument(
        "--dtypes",
        nargs="+",
        choices=("f32", "f16", "q8_0"),
        default=["f16"],
        help="types of the shapes' GGUFs (other than f16: with --ggufs)",
    )
    ap.add_argument("--ggufs", type=Path, help="folder of {shape}_{dtype}.gguf to read")
    ap.add_argument("--paths", nargs="*", type=Path, default=[], help="more model files")
    ap.add_argument(
        "--convert-shape",
        choices=[*sorted(SHAPES), "none"],
        default="gpt2-xl",
        help="shape whose HF f32 folder `gpt2 convert` turns into f16 GGUF (none: skip)",
    )
    ap.add_argument("--work", default="/tmp/bench_load_cuda", help="where the models are written")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per row")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--make-models", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    convert_shape = None if a.convert_shape == "none" else a.convert_shape
    if a.ggufs is None and a.dtypes != ["f16"]:
        ap.error("--dtypes other than f16 need --ggufs (scripts/write_bench_ggufs.py's folder)")
    if a.make_models:
        make_models(work, [] if a.ggufs else a.shapes, convert_shape)
        return 0

    if convert_shape or a.ggufs is None:
        print(f"writing the models under {work}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--make-models"], check=True)
    rows: dict = {"load": {}, "convert": {}}
    for shape in a.shapes:
        if a.ggufs is None:
            rows["load"][shape] = load_row(a.device, gguf_path(work, shape), a.repeats)
            continue
        for dtype in a.dtypes:
            path = a.ggufs / f"{shape}_{dtype}.gguf"
            if not path.is_file():  # a GPU call whose writing step ran out of time, say
                print(f"{path}: not written, left out", file=sys.stderr, flush=True)
                continue
            rows["load"][f"{shape}_{dtype}"] = load_row(a.device, path, a.repeats)
    for path in a.paths:
        rows["load"][path.name] = load_row(a.device, path, a.repeats)
    if convert_shape:
        out = work / f"{convert_shape}_converted_f16.gguf"
        rows["convert"][convert_shape] = convert_row(hf_folder(work, convert_shape), out, a.repeats)
    result = {
        "what": "gpt2.load of GGUFs (fastest of fresh-process runs, warm page cache), "
        "CUDA start-up apart, and `gpt2 convert` HF f32 -> f16 GGUF; peak RSS as VmHWM",
        "date": datetime.date.today().isoformat(),
        "device": a.device,
        "machine": machine(),
        "versions": versions(),
        "model": "random weights (gpt2.random_weights, scale 0.02), synthetic 50,257-token "
        "byte-level BPE tokenizer",
        "rows": rows,
        "targets": targets(a.device, rows),
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
