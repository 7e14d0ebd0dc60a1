"""Load time and peak memory: a GPT-2-small-shaped HF f32 folder and its q8_0 GGUF, ours
against HF transformers' `from_pretrained` in the same run (issue 13's and 21's CPU targets).

    python scripts/bench_load.py --out bench/cpu_DATE_load.json [--work /tmp/bench_load]
        [--repeats 5] [--checkout before=/path/to/another/checkout]

Each load runs in a fresh child process (the page cache warm: every file is read once
before), then one forward of 3 tokens (HF maps the safetensors file: its weights become
resident only when a forward reads them, so its peak after the load alone is not what a
user's process holds); peak RSS is the child's VmHWM (its own image's high-water mark;
`ru_maxrss`, which Linux may carry over from before exec, is reported beside it), and its
baseline with the imports done (transformers' model class too: it imports its modules when
the class is first asked for, about 2 s that a timed `from_pretrained` would count). The
rows are interleaved: each of --repeats rounds runs every row once, in order, so that a
neighbour's load on the machine falls on all of them alike; a row gives every run, the
median and the fastest, and the peak over the baseline. The children import the gpt2 of
the current folder first (`python -c`); --checkout NAME=PATH adds rows whose children run
in PATH (another checkout's gpt2 and its library: before/after in one sitting); each row
names what it imported. The model is random (transformers' GPT2LMHeadModel, seed 0): load
speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

CHILD = r"""
import json, resource, sys, time
def hwm():  # this process image's own peak RSS (ru_maxrss may carry a parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
kind, path = sys.argv[1], sys.argv[2]
import numpy  # noqa: F401
if kind == "hf":  # the model class resolved here: transformers imports it lazily (~2 s)
    import torch, transformers
    hf_class = transformers.GPT2LMHeadModel
    where = transformers.__file__
else:
    import gpt2, tinynn
    where = f"{gpt2.__file__} with {tinynn.library_path()}"
base = hwm()
t0 = time.perf_counter()
if kind == "hf":
    model = hf_class.from_pretrained(path)
    dtype = str(next(model.parameters()).dtype)
else:
    model = gpt2.load(path, device="cpu")
    dtype = model.engine.dtype
seconds = time.perf_counter() - t0
peak_load = hwm()
if kind == "hf":  # one forward: a mapped file's pages become resident when read
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
else:
    model.engine.logits([1, 2, 3])
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_load, "baseline_rss_mb": base,
                  "peak_rss_mb_after_one_forward": hwm(),
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "dtype": dtype, "imported": where}))
"""


def run_child(kind: str, path: Path, cwd: Path | None = None) -> dict:
    """One fresh-process load (and its memory), from `cwd`'s gpt2 (None: this folder's)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> dict:
    """A row: every run's seconds, the median and fastest, memory at its largest."""
    seconds = sorted(r["seconds"] for r in runs)
    row = dict(runs[0])  # what it imported, its dtype
    row.pop("seconds")
    over = [r["peak_rss_mb"] - r["baseline_rss_mb"] for r in runs]
    over_fwd = [r["peak_rss_mb_after_one_forward"] - r["baseline_rss_mb"] for r in runs]
    row |= {
        "runs_seconds": [round(r["seconds"], 3) for r in runs],
        "median_s": round(statistics.median(seconds), 4),
        "min_s": round(seconds[0], 4),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_after_one_forward": max(r["peak_rss_mb_after_one_forward"] for r in runs),
        "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs),
        "peak_over_baseline_mb": round(max(over), 1),
        "peak_over_baseline_mb_after_one_forward": round(max(over_fwd), 1),
    }
    return row


def commit_of(checkout: Path) -> str:
    """The checkout's commit (and "+changes" where its files differ), or "?" outside git."""
    git = ["git", "-C", str(checkout)]
    out = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if out.returncode != 0:
        return "?"
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return out.stdout.strip() + ("+changes" if dirty else "")


def make_models(work: Path) -> tuple[Path, Path]:
    import torch
    import transformers

    from gpt2.convert import convert_hf_to_gguf

    folder, q8 = work / "gpt2_small_f32", work / "gpt2_small_q8_0.gguf"
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        model.save_pretrained(folder)
    if not q8.is_file():
        convert_hf_to_gguf(folder, q8, "q8_0")
    for f in (folder / "model.safetensors", q8):  # warm the page cache
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return folder, q8


def main() -> int:
    if sys.argv[1:2] == ["--make-models"]:
        print(*make_models(Path(sys.argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--work", default="/tmp/bench_load", help="where the models are written")
    ap.add_argument("--repeats", type=int, default=5, help="rounds (each runs every row)")
    ap.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also time the gpt2 of another checkout (its rows are suffixed _NAME)",
    )
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [sys.executable, __file__, "--make-models", str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    folder, q8 = (Path(p) for p in made.stdout.split())

    import numpy
    import torch
    import transformers

    import gpt2

    plan = {  # row -> (child kind, file, checkout)
        "hf_folder_f32_ours": ("ours", folder, None),
        "hf_folder_f32_transformers": ("hf", folder, None),
        "q8_0_gguf_ours_no_dtype": ("ours", q8, None),
    }
    for spec in a.checkout:
        name, _, path = spec.partition("=")
        plan[f"hf_folder_f32_ours_{name}"] = ("ours", folder, Path(path))
        plan[f"q8_0_gguf_ours_no_dtype_{name}"] = ("ours", q8, Path(path))
    runs: dict[str, list[dict]] = {row: [] for row in plan}
    for _ in range(a.repeats):
        for row, (kind, path, cwd) in plan.items():
            runs[row].append(run_child(kind, path, cwd))
    rows = {row: summary(r) for row, r in runs.items()}
    here = Path(__file__).resolve().parent.parent
    for row, (kind, _, cwd) in plan.items():  # what was timed, not where it lies here
        imported = f"transformers {transformers.__version__}"
        rows[row]["imported"] = commit_of(cwd or here) if kind == "ours" else imported
    ours, hf = rows["hf_folder_f32_ours"], rows["hf_folder_f32_transformers"]
    result = {
        "what": "load time (median and fastest of fresh-process runs in interleaved rounds, "
        "warm page cache) and peak RSS",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "versions": {
            "gpt2": gpt2.__version__,
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "model": "GPT-2 small shape (124M), random, HF folder f32 safetensors "
        f"({(folder / 'model.safetensors').stat().st_size:,} bytes); q8_0 GGUF "
        f"({q8.stat().st_size:,} bytes)",
        "rows": rows,
        "ratios": {
            "time_ours_over_hf_median": round(ours["median_s"] / hf["median_s"], 2),
            "time_ours_over_hf_min": round(ours["min_s"] / hf["min_s"], 2),
            "peak_over_baseline_after_one_forward_ours_over_hf": round(
                ours["peak_over_baseline_mb_after_one_forward"]
                / hf["peak_over_baseline_mb_after_one_forward"],
                2,
            ),
        },
        "targets": {
            "hf_f32_median_at_most_2x_hf": ours["median_s"] <= 2 * hf["median_s"],
            "hf_f32_peak_at_most_hf_after_one_forward": ours["peak_rss_mb_after_one_forward"]
            <= hf["peak_rss_mb_after_one_forward"],
            "hf_f32_peak_over_baseline_at_most_hf_after_one_forward": ours[
                "peak_over_baseline_mb_after_one_forward"
            ]
            <= hf["peak_over_baseline_mb_after_one_forward"],
            "q8_0_peak_under_400_mb": rows["q8_0_gguf_ours_no_dtype"]["peak_rss_mb"] < 400,
        },
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
