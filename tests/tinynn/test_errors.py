"""The error contract: every misuse in misuse_cases.py raises, and none of
them takes the process down.

The list runs first in a child process, where an abort costs nothing but a
report: exit code 0 means every case raised as expected; a negative code is
a signal (ggml's GGML_ASSERT calls abort()), i.e. the contract is broken.
A case that crashed the child is not run again in-process, so one broken
case fails alone instead of killing the whole pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinynn import misuse_cases

ROOT = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "tests.tinynn.misuse_cases"]


def _child_env() -> dict[str, str]:
    # ggml's abort handler would otherwise attach gdb to print a backtrace.
    return {**os.environ, "GGML_NO_BACKTRACE": "1"}


def _run_child(skip: list[str]) -> subprocess.CompletedProcess:
    args = CHILD + [a for name in skip for a in ("--skip", name)]
    return subprocess.run(
        args, cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=300
    )


def _parse(stdout: str) -> tuple[dict[str, str], str | None]:
    """Status of each finished case ("OK", "SKIP ...", "FAIL ..."), and the
    case that was running when the child stopped (None if it finished)."""
    status, running = {}, None
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        name = rest.split(":", 1)[0]
        if word == "START":
            running = name
        elif word in ("OK", "SKIP", "FAIL"):
            status[name] = line
            running = None
        elif word == "DONE":
            running = None
    return status, running


@pytest.fixture(scope="module")
def child_report() -> dict:
    """Runs the misuse list in child processes: the first run as is, then,
    after each crash, again without the cases that crashed."""
    first = _run_child([])
    crashed: dict[str, int] = {}
    status, running = _parse(first.stdout)
    proc = first
    while running is not None and proc.returncode != 0 and len(crashed) < 20:
        crashed[running] = proc.returncode
        proc = _run_child(list(crashed))
        more, running = _parse(proc.stdout)
        status.update(more)
    return {"first": first, "status": status, "crashed": crashed}


def test_misuse_list_in_a_child_process(child_report):
    first = child_report["first"]
    assert first.returncode == 0, (
        f"python -m tests.tinynn.misuse_cases exited with {first.returncode}"
        + (" (killed by a signal: the no-abort contract is broken)" if first.returncode < 0 else "")
        + f"\ncases that crashed the child: {child_report['crashed']}"
        + f"\n--- stdout ---\n{first.stdout}\n--- stderr ---\n{first.stderr}"
    )


def test_there_are_enough_cases():
    assert len(misuse_cases.CASES) >= 20
    names = [c.name for c in misuse_cases.CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", misuse_cases.CASES, ids=lambda c: c.name)
def test_misuse(case, child_report):
    code = child_report["crashed"].get(case.name)
    if code is not None:
        pytest.fail(
            f"{case.name} killed the child process (exit code {code}); "
            "not run in-process. Expected "
            f"{case.raises.__name__} mentioning {case.phrase!r}."
        )
    try:
        why = misuse_cases.check(case)
    except misuse_cases.CaseSkipped as exc:
        pytest.skip(str(exc))
    assert why is None, f"{case.name}: {why}"


def test_error_carries_the_status_code():
    import tinynn

    with tinynn.Session() as s:
        with pytest.raises(tinynn.TinyNNError) as info:
            s.compute()
    assert info.value.code == -2  # TNN_ESTATE
    assert "tnn_compute" in str(info.value)


def test_last_error_names_the_function_and_values():
    import tinynn

    with tinynn.Session() as s:
        a, b = s.input_2d_f32(3, 4), s.input_2d_f32(2, 5)
        with pytest.raises(tinynn.TinyNNError) as info:
            s.matmul(a, b)
    message = str(info.value)
    assert message.startswith("tnn_matmul:")
    assert "[4, 3, 1, 1]" in message and "[5, 2, 1, 1]" in message


def test_session_lives_on_after_errors():
    """A failed call leaves the session usable."""
    import numpy as np

    import tinynn

    with tinynn.Session() as s:
        x = s.input_2d_f32(2, 3)
        with pytest.raises(tinynn.TinyNNError):
            s.matmul(x, s.input_2d_f32(2, 5))
        y = s.set_output(s.scale(x, 2.0))
        s.realize(y)
        with pytest.raises(tinynn.TinyNNError):
            x.upload(np.ones(7, np.float32))
        x.upload(np.ones((2, 3), np.float32))
        s.compute()
        assert (y.download() == 2.0).all()


def test_tinynn_lib_is_the_only_library_tried(tmp_path):
    """A library named by TINYNN_LIB is loaded or reported, never replaced by
    another one silently (the ASan run depends on it)."""
    missing = tmp_path / "libtinynn_missing.so"
    env = dict(os.environ, TINYNN_LIB=str(missing), PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", "import tinynn; tinynn.Session()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert f"{missing} (missing)" in run.stderr
    assert "Tried:\n  " + f"{missing} (missing)\nBuild" in run.stderr
