"""Sequence slots of a model, and the one lock its device work runs under.

A loaded model holds weights that every caller and thread shares, and a fixed
number of cache slots (`n_slots`, a load parameter). Each sequence (one
`generate`, `stream`, `logits` call, or a batch of several) holds its own
slots for as long as it lives, so two sequences never see each other's
cache. Device work is serialized by `SlotPool.lock`: one step runs at a time,
whichever thread asks.

When no slot is free, a new sequence waits for one that another thread
holds (up to `timeout` seconds; None waits as long as it takes). When every
held slot belongs to the asking thread itself, nothing could ever free one
while it waits, so it raises `NoFreeSlotError` at once instead of hanging.
Closing the model wakes every waiter, which then raises `ValueError`.
"""

from __future__ import annotations

import threading
import time

DEFAULT_SLOTS = 4  # sequences alive at once when the caller does not say


class NoFreeSlotError(RuntimeError):
    """Every cache slot of the model is held by a live sequence."""


class SlotPool:
    """n slots numbered 0..n-1; a batch of k takes k adjacent ones."""

    def __init__(self, n_slots: int, owner: str = "model"):
        if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
            raise ValueError(f"n_slots must be an integer >= 1, got {n_slots!r}")
        self.n_slots = n_slots
        self.owner = owner
        self.lock = threading.RLock()  # device work: one step at a time
        self._free = threading.Condition(threading.Lock())
        self._holder: list[int | None] = [None] * n_slots  # thread id per slot
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the {self.owner} is closed")

    def acquire(self, count: int = 1, timeout: float | None = None) -> int:
        """Takes `count` adjacent free slots; returns the first one."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"a sequence needs at least 1 slot, got {count!r}")
        if count > self.n_slots:
            raise ValueError(
                f"{count} sequences at once, the {self.owner} has {self.n_slots} slots: "
                f"load it with n_slots={count} or more"
            )
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._free:
            while True:
                self.check_open()
                first = self._find_run(count)
                if first is not None:
                    for s in range(first, first + count):
                        self._holder[s] = me
                    return first
                held = [h for h in self._holder if h is not None]
                if all(h == me for h in held):
                    raise NoFreeSlotError(
                        f"all {self.n_slots} sequence slots of the {self.owner} are held by "
                        f"this thread's open sequences (streams not yet finished or closed), "
                        f"and {count} adjacent free ones are needed: finish or close one, or "
                        f"load the model with a larger n_slots"
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoFreeSlotError(
                        f"no free sequence slot of the {self.owner} within {timeout} s "
                        f"({self.n_slots} slots, all busy)"
                    )
                self._free.wait(left)

    def release(self, first: int, count: int) -> None:
        with self._free:
            for s in range(first, first + count):
                self._holder[s] = None
            self._free.notify_all()

    def close(self) -> None:
        """Marks the pool closed and wakes every waiter (they raise)."""
        with self._free:
            self.closed = True
            self._free.notify_all()

    @property
    def n_free(self) -> int:
        with self._free:
            return sum(h is None for h in self._holder)

    def _find_run(self, count: int) -> int | None:
        run = 0
        for s, h in enumerate(self._holder):
            run = run + 1 if h is None else 0
            if run == count:
                return s - count + 1
        return None
