"""Logit parity: the Ruby project's dump format and its metrics, made pass/fail.

Dump format: one line of space-separated floats (the last position's logits), written with
`repr` so every float64 round-trips exactly. `.npy` files are read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def read_dump(path: str | Path) -> np.ndarray:
    """Read a logits dump (text line of floats, or .npy) as float64."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    if p.suffix == ".npy":
        try:
            return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - numpy raises several types
            raise ValueError(f"{p}: cannot read .npy file: {e}") from None
    text = p.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{p}: expected one line of floats, found {len(lines)} non-empty lines")
    try:
        values = np.array([float(tok) for tok in lines[0].split()], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{p}: not a list of floats ({e})") from None
    if values.size == 0:
        raise ValueError(f"{p}: empty dump")
    return values


def write_dump(path: str | Path, logits_row: np.ndarray) -> None:
    """Write one row of logits as one line of `repr` floats (exact round trip)."""
    row = np.asarray(logits_row, dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"write_dump takes one row of logits, got shape {row.shape}")
    Path(path).write_text(" ".join(repr(float(v)) for v in row) + "\n", encoding="utf-8")


@dataclass
class ParityReport:
    """Metrics of `ours` against `ref`; for 2-D inputs, those of the worst row."""

    shape: tuple[int, ...]
    row: int | None  # 2-D: row whose argmax/top-k are shown (first failing, else worst)
    max_abs: float  # over all elements
    max_abs_row: int | None  # 2-D: row of the largest difference; None for 1-D
    max_abs_index: int  # column of the largest difference
    ours_at_max: float
    ref_at_max: float
    mean_abs: float  # over all elements
    argmax_ours: int
    argmax_ref: int
    argmax_equal: bool  # for 2-D: on every row
    top_k: int
    top_ours: list[int]  # descending
    top_ref: list[int]
    overlap: int  # |top_ours & top_ref|; for 2-D the smallest over rows
    threshold: float | None
    passed: bool
    rows_failed: list[int]  # 2-D: rows where argmax or top-k disagree or max-abs exceeds


def compare(
    ours: np.ndarray, ref: np.ndarray, max_abs: float | None = None, top_k: int = 5
) -> ParityReport:
    """Compare logits; passed = max-abs <= max_abs (if given), argmax equal, top-k k/k."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: ours {a.shape}, ref {b.shape}")
    if a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"expected a non-empty 1-D or 2-D array of logits, got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        which = "ours" if not np.isfinite(a).all() else "ref"
        raise ValueError(f"non-finite values in {which}")
    k = min(top_k, a.shape[-1])
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    diff = np.abs(a2 - b2)  # [rows, V]
    row_max = diff.max(axis=1)
    arg_a, arg_b = a2.argmax(axis=1), b2.argmax(axis=1)
    tops_a = [_top(r, k) for r in a2]
    tops_b = [_top(r, k) for r in b2]
    overlaps = [len(set(x) & set(y)) for x, y in zip(tops_a, tops_b, strict=True)]
    bad = [
        i
        for i in range(a2.shape[0])
        if arg_a[i] != arg_b[i] or overlaps[i] < k or (max_abs is not None and row_max[i] > max_abs)
    ]
    # the row to show: the first failing one, else the one with the largest max-abs
    r = bad[0] if bad else int(row_max.argmax())
    mr, mc = np.unravel_index(int(diff.argmax()), diff.shape)
    return ParityReport(
        shape=a.shape,
        row=None if a.ndim == 1 else r,
        max_abs=float(diff[mr, mc]),
        max_abs_row=None if a.ndim == 1 else int(mr),
        max_abs_index=int(mc),
        ours_at_max=float(a2[mr, mc]),
        ref_at_max=float(b2[mr, mc]),
        mean_abs=float(diff.mean()),
        argmax_ours=int(arg_a[r]),
        argmax_ref=int(arg_b[r]),
        argmax_equal=bool((arg_a == arg_b).all()),
        top_k=k,
        top_ours=tops_a[r],
        top_ref=tops_b[r],
        overlap=min(overlaps),
        threshold=max_abs,
        passed=not bad,
        rows_failed=bad,
    )


def format_report(report: ParityReport) -> str:
    """Human-readable lines, in the order of the Ruby `parity.py compare`."""
    rp = report
    where = f"[{rp.max_abs_index}]"
    lines = [f"shape: {rp.shape}"]
    if rp.row is not None:
        where = f"[{rp.max_abs_row}, {rp.max_abs_index}]"
        lines.append(
            f"rows failed: {len(rp.rows_failed)}/{rp.shape[0]}; argmax/top-k below: row {rp.row}"
        )
    lines += [
        f"max-abs diff: {rp.max_abs:.6e} at {where} ours={rp.ours_at_max!r} ref={rp.ref_at_max!r}",
        f"mean-abs diff: {rp.mean_abs:.6e}",
        (
            f"argmax: ours={rp.argmax_ours} ref={rp.argmax_ref} "
            f"{'match' if rp.argmax_equal else 'MISMATCH'}"
        ),
        f"top-{rp.top_k} ours: {rp.top_ours}",
        f"top-{rp.top_k} ref:  {rp.top_ref}",
        f"top-{rp.top_k} overlap: {rp.overlap}/{rp.top_k}",
    ]
    limit = "none" if rp.threshold is None else f"{rp.threshold:g}"
    lines.append(f"result: {'PASS' if rp.passed else 'FAIL'} (max-abs threshold: {limit})")
    return "\n".join(lines)


def _top(row: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, descending (stable for ties)."""
    return [int(i) for i in np.argsort(-row, kind="stable")[:k]]
