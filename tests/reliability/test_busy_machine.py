"""A log handler that calls back into tinynn, and a busy neighbour (issue 15, items 14, 15).

- ggml logged (loading its CPU backend) while the shim held its backend lock, and a
  handler on ``tinynn.ggml`` that made a Session waited for that lock forever;
- ggml's CPU threads spin at every op's barrier, so one busy process beside a decode
  on the 2-core machine made it 17-100x slower with the default thread count.

Both run in child processes: the first with a timeout (a hang is the failure), the
second so that its busy neighbours are ours to stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .child import ROOT, child_pythonpath

LOG_REENTRY = """
import logging
import tinynn

seen = []

class Reenter(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
        with tinynn.Session("cpu", n_threads=1) as s:  # back into the shim, from its log
            assert s.backend_name == "cpu"

log = logging.getLogger("tinynn.ggml")
log.setLevel(logging.DEBUG)
log.addHandler(Reenter())
with tinynn.Session("cpu", n_threads=1) as s:
    x = s.input_2d_f32(1, 4)
    s.realize(s.set_output(s.scale(x, 2.0)))
print("LINES", len(seen))
"""


def _child(code: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=child_pythonpath())
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_a_log_handler_may_call_back_into_tinynn():
    try:
        proc = _child(LOG_REENTRY, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("deadlock: the log handler waited for the shim lock") from None
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = int(proc.stdout.split("LINES")[-1])
    assert lines > 0, "ggml logged nothing while loading its backend: the test tests nothing"


BUSY = """
import json, os, signal, subprocess, sys, time
import gpt2

def decode_seconds(model):
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        model.generate([464, 1136], max_new_tokens=24, temperature=0)
        best = min(best, time.perf_counter() - t0)
    return best

with gpt2.load(device="cpu") as model:  # the default thread count
    model.generate([464], max_new_tokens=4, temperature=0)
    quiet = decode_seconds(model)
    n = max(1, (os.cpu_count() or 2) - 1)
    spin = "while True: pass"
    neighbours = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(n)]
    try:
        time.sleep(0.5)
        busy = decode_seconds(model)
    finally:
        for p in neighbours:
            p.send_signal(signal.SIGKILL)
            p.wait()
print("RESULT " + json.dumps({"quiet": quiet, "busy": busy, "neighbours": n}))
"""


def test_one_busy_neighbour_costs_little():
    proc = _child(BUSY, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.split("RESULT ")[-1])
    # measured on the 2-core machine: 1.0-1.6x (bench/cpu_2026-12-07_busy_neighbour.json);
    # it was 17x. The bound leaves room for a machine loaded by more than our neighbours.
    assert r["busy"] < 4 * r["quiet"], r
    print("BUSY " + json.dumps(r))
