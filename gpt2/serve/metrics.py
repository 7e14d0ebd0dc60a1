"""Prometheus histograms for /metrics, and the text lines that expose them.

The scheduler's thread observes, the event loop renders: each histogram holds
a lock, so that a rendered snapshot's buckets, sum and count agree.

    h = Histogram(TIME_BUCKETS_S)
    h.observe(0.012)
    lines = histogram_lines("gpt2_time_to_first_token_seconds", "Queue to first token.", h)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

# 1 ms .. 10 s: a token of a small model on a GPU to a long queue on a busy CPU
TIME_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# sequences in one step: powers of two up to the largest batch we build
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive, as Prometheus'
    `le`), their sum and count; safe to observe and snapshot from two threads."""

    def __init__(self, bounds: Sequence[float]):
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be increasing and not empty, got {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last: past every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float, int]:
        """Cumulative counts per bound (the last is +Inf, equal to the count), the
        sum and the count, taken together."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total, running


def _le(bound: float) -> str:
    return f"{bound:g}"


def histogram_lines(name: str, what: str, hist: Histogram) -> list[str]:
    """`name`'s HELP, TYPE and its _bucket (cumulative, +Inf last), _sum and
    _count series."""
    cumulative, total, count = hist.snapshot()
    lines = [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
    for bound, c in zip((*map(_le, hist.bounds), "+Inf"), cumulative, strict=True):
        lines.append(f'{name}_bucket{{le="{bound}"}} {c}')
    lines += [f"{name}_sum {total!r}", f"{name}_count {count}"]
    return lines
