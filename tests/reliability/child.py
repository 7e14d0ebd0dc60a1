"""Runs a fuzz family in a child process, so a crash is a test failure, not a dead pytest.

The child is ``python -m tests.reliability.<module> ...`` under an address-space limit
(RLIMIT_AS: an absurd allocation fails instead of eating the machine) and a wall-clock
timeout (a hang is reported, not waited for). Before each case the child writes its
reproducer (seed, example, mutated file) to ``--repro``; when the child dies, the parent
prints that file, so the failing case can be replayed.

Every family ends with one line ``SUMMARY {json}`` (case counts, outcomes, seconds); the
parent asserts exit code 0 and returns the parsed summary.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_pythonpath() -> str:
    """The checkout first, then whatever path the parent was given."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


LONG = os.environ.get("TINYNN_FUZZ_LONG") == "1"
MEM_LIMIT = 6 << 30  # bytes of address space a fuzz child may map


def fuzz_settings(max_examples: int):
    """hypothesis settings of every fuzz family: no deadline (slow cases are the
    point), no database (a seed reproduces a run), no health checks, and the
    blob that replays a failing example."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def examples(bounded: int, long: int) -> int:
    """Examples per family: small in the default run, many under `make fuzz`."""
    return int(os.environ.get("TINYNN_FUZZ_EXAMPLES", long if LONG else bounded))


def _limit(mem: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_family(
    module: str,
    args: list[str],
    repro: Path,
    timeout: float,
    mem: int = MEM_LIMIT,
) -> dict:
    """Runs the family; fails (with its reproducer) unless the child exits 0."""
    cmd = [sys.executable, "-m", f"tests.reliability.{module}", "--repro", str(repro), *args]
    env = dict(os.environ, PYTHONPATH=child_pythonpath(), PYTHONFAULTHANDLER="1")
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit(mem),
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"{module} hung (no exit after {timeout:.0f} s)\n{_repro_text(repro)}\n"
            f"--- stdout tail ---\n{_tail(e.stdout)}\n--- stderr tail ---\n{_tail(e.stderr)}"
        ) from None
    if proc.returncode != 0:
        how = (
            f"killed by {signal.Signals(-proc.returncode).name}"
            if proc.returncode < 0
            else f"exit code {proc.returncode}"
        )
        raise AssertionError(
            f"{module} failed ({how}): {' '.join(cmd)}\n{_repro_text(repro)}\n"
            f"--- stdout tail ---\n{_tail(proc.stdout)}\n--- stderr tail ---\n{_tail(proc.stderr)}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")]
    assert lines, f"{module} printed no SUMMARY line:\n{_tail(proc.stdout)}"
    return json.loads(lines[-1].removeprefix("SUMMARY "))


def _tail(text, n: int = 4000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-n:]


def _repro_text(repro: Path) -> str:
    if not repro.exists():
        return "(no reproducer written)"
    return f"--- reproducer ({repro}) ---\n{_tail(repro.read_text(errors='replace'), 6000)}"


class Repro:
    """The child's side: the reproducer file, rewritten before each case."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, text: str) -> None:
        # one write + flush, so a crash right after leaves the case on disk
        with open(self.path, "w") as fh:
            fh.write(text)
            fh.flush()


def summary(**fields) -> None:
    print("SUMMARY " + json.dumps(fields, sort_keys=True), flush=True)
