"""Load time and peak memory: a GPT-2-small-shaped HF f32 folder and its q8_0 GGUF, ours
against HF transformers' `from_pretrained` in the same run (issue 13's CPU targets).

    python scripts/bench_load.py --out bench/cpu_DATE_load.json [--work /tmp/bench_load]

Each load runs in a fresh child process (the page cache warm: every file is read once
before), then one forward of 3 tokens (HF maps the safetensors file: its weights become
resident only when a forward reads them, so its peak after the load alone is not what a
user's process holds); peak RSS is the child's VmHWM (its own image's high-water mark;
`ru_maxrss`, which Linux may carry over from before exec, is reported beside it), and its
baseline with the imports done (transformers' model class too: it imports its modules when
the class is first asked for, about 2 s that a timed `from_pretrained` would count). The
children import the gpt2 of the current folder first (`python -c`): run from another
checkout, with PYTHONPATH naming it, to time that one; each row names what it imported.
The model is random (transformers' GPT2LMHeadModel, seed 0): load speed does not depend on
the values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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


def child(kind: str, path: Path, repeats: int) -> dict:
    """The fastest of `repeats` fresh-process loads (and its peak RSS)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
    best["runs_seconds"] = [round(r["seconds"], 3) for r in runs]
    return best


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
    ap.add_argument("--repeats", type=int, default=3)
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

    rows = {
        "hf_folder_f32_ours": child("ours", folder, a.repeats),
        "hf_folder_f32_transformers": child("hf", folder, a.repeats),
        "q8_0_gguf_ours_no_dtype": child("ours", q8, a.repeats),
    }
    ours, hf = rows["hf_folder_f32_ours"], rows["hf_folder_f32_transformers"]
    result = {
        "what": "load time (fastest of fresh-process runs, warm page cache) and peak RSS",
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
            "time_ours_over_hf": round(ours["seconds"] / hf["seconds"], 2),
            "peak_rss_ours_over_hf": round(ours["peak_rss_mb"] / hf["peak_rss_mb"], 2),
        },
        "targets": {
            "hf_f32_time_at_most_2x_hf": ours["seconds"] <= 2 * hf["seconds"],
            "hf_f32_peak_at_most_hf": ours["peak_rss_mb"] <= hf["peak_rss_mb"],
            "hf_f32_peak_at_most_hf_after_one_forward": ours["peak_rss_mb_after_one_forward"]
            <= hf["peak_rss_mb_after_one_forward"],
            "q8_0_peak_under_400_mb": rows["q8_0_gguf_ours_no_dtype"]["peak_rss_mb"] < 400,
        },
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
