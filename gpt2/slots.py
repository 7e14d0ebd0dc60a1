"""Sequence slots of a model, and the one lock its device work runs under.

A loaded model holds weights that every caller and thread shares, and a fixed
number of cache slots (`n_slots`, a load parameter). Each sequence (one
`generate`, `stream`, `logits` call, or a batch of several) holds its own
slots for as long as it lives, so two sequences never see each other's
cache. Device work is serialized by `SlotPool.lock`: one step runs at a time,
whichever thread asks.

Waiting. When `count` adjacent slots are not free, `acquire` waits for
another thread to free them, for at most `timeout` seconds:
`DEFAULT_SLOT_TIMEOUT` (60 s) when `timeout` is None, forever when it is
`float("inf")`; a negative or NaN timeout is a ValueError. When the time is up
it raises `NoFreeSlotError` ("no free sequence slot ... within N s").

No waiting that cannot end. The pool knows which thread holds each slot (the
thread that called `acquire`, even if it hands the sequence on) and which
threads are waiting in `acquire`. When no slot can ever be freed, because
every thread that holds one is itself waiting for a slot or has ended (a
thread that ended can never release), a waiter raises `NoFreeSlotError` at
once instead of hanging; so does a thread asking for more slots than its own
leave in the pool. Say four threads of a 4-slot model each hold an open
stream and call `logits()`: the fourth to ask raises. One raise is enough: of
the waiters, the newest one that holds slots raises (when none holds any,
because every holder has ended, each waiter raises), its caller typically
gives its slots back, and the others go on. Waiters re-check whenever a slot
is released and every 50 ms, so a holder thread that ends without releasing
is seen within that time. A holder blocked on anything other than this pool
(a queue, another model, a lock) is not seen as stuck: there the timeout is
the bound.

Dropped sequences. `acquire(..., owner=obj)` ties the slots to `obj` (the
sequence or batch that holds them) through a weak reference: when `obj` is
garbage-collected without `release`, its slots come back. Before a caller
waits or raises, the pool runs `gc.collect()` once (and once more before
raising after a wait), so that a stream abandoned in a reference cycle is
reclaimed; the fast path, a free slot at once, never collects.
`release(first, count, owner=obj)` frees only the slots `obj` still holds, so
a late release (say, from the owner's `__del__` after the pool reclaimed its
slots and handed them on) cannot free another sequence's slots: give `owner`
to both calls or to neither.

Closing the model wakes every waiter, which then raises `ValueError`.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import math
import numbers
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_SLOTS = 4  # sequences alive at once when the caller does not say

# How long acquire(timeout=None) waits for another thread to free a slot. A
# generation of a few hundred tokens takes seconds on a CPU, so 60 s covers
# waiting behind several of them, and it is below the minutes after which an
# HTTP client or a person gives up: a wait that no detection here can see the
# end of (a holder blocked on a queue, another model) becomes an error with a
# message instead of a silent hang.
DEFAULT_SLOT_TIMEOUT = 60.0

# How often a waiter re-checks on its own: a thread that ends, unlike a
# release, wakes nobody, so this bounds how late a waiter sees it.
_POLL_S = 0.05


class NoFreeSlotError(RuntimeError):
    """Every cache slot of the model is held by a live sequence."""


@dataclass(eq=False)
class _Lease:
    """One acquire's slots: the thread that took them and, if given, a weak
    reference to the object that holds them."""

    first: int
    count: int
    thread: threading.Thread
    ref: weakref.ref | None


@dataclass(eq=False)
class _Waiter:
    """A thread inside acquire, in order of arrival."""

    thread: threading.Thread
    count: int
    order: int


class SlotPool:
    """n slots numbered 0..n-1; a batch of k takes k adjacent ones.

    State lives under one Condition (`_free`) over an RLock. Releases, and
    owners collected by gc, go through `_pending`, a deque of (slot, lease)
    pairs, and a slot is freed only if that lease still holds it, so a late
    release never frees another sequence's slot. A finalizer or weakref
    callback can run inside gc on a thread that is in the middle of changing
    the state (`_depth` > 0): then it only appends to `_pending`, and the
    state is changed on the way out, never in the middle.
    """

    def __init__(self, n_slots: int, owner: str = "model"):  # owner: a name for messages
        if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
            raise ValueError(f"n_slots must be an integer >= 1, got {n_slots!r}")
        self.n_slots = n_slots
        self.owner = owner
        self.lock = threading.RLock()  # device work: one step at a time
        self._free = threading.Condition(threading.RLock())
        self._depth = 0  # critical sections of the thread holding _free
        self._leases: list[_Lease | None] = [None] * n_slots  # the holder of each slot
        self._pending: collections.deque[tuple[int, _Lease]] = collections.deque()
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the {self.owner} is closed")

    def acquire(
        self, count: int = 1, timeout: float | None = None, *, owner: object | None = None
    ) -> int:
        """Takes `count` adjacent free slots and returns the first one.

        Waits up to `timeout` seconds (None: DEFAULT_SLOT_TIMEOUT; inf: no
        bound) and raises NoFreeSlotError when the time is up or no slot can
        ever be freed (see the module docstring). With `owner`, the slots
        come back when that object is garbage-collected without release."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"a sequence needs at least 1 slot, got {count!r}")
        if count > self.n_slots:
            raise ValueError(
                f"{count} sequences at once, the {self.owner} has {self.n_slots} slots: "
                f"load it with n_slots={count} or more"
            )
        wait_s = _check_timeout(timeout)
        deadline = time.monotonic() + wait_s
        ref = None if owner is None else _weak(owner, self._owner_dropped)
        lease = _Lease(-1, count, threading.current_thread(), ref)
        waiter = _Waiter(lease.thread, count, -1)
        collects = 0  # gc.collect() runs: one before waiting, one more before raising
        fresh = False  # no wait since the last collect
        try:
            while True:
                with self._locked():
                    while True:
                        self.check_open()
                        if self._take(lease):
                            return lease.first
                        if waiter.order < 0:
                            waiter.order = next(self._arrivals)
                            self._waiters.append(waiter)
                        error = self._stuck_error(waiter) or self._timeout_error(
                            deadline, timeout, wait_s
                        )
                        if (error is None and collects == 0) or (
                            error is not None and not fresh and collects < 2
                        ):
                            break  # collect first, outside the lock
                        if error is not None:
                            raise NoFreeSlotError(error)
                        if self._pending:
                            continue  # released while we looked: look again
                        self._wait(min(deadline - time.monotonic(), _POLL_S))
                        fresh = False
                # abandoned sequences in reference cycles give their slots back
                # (their finalizers may release: never under our lock)
                gc.collect()
                collects += 1
                fresh = True
        finally:
            if waiter.order >= 0:
                with self._locked():
                    self._waiters.remove(waiter)
                    self._free.notify_all()  # what the others decide on changed

    def release(self, first: int, count: int, *, owner: object | None = None) -> None:
        """Gives back slots first..first+count-1. With `owner` (the one given
        to acquire), only the slots that object still holds are freed, so a
        late release cannot free slots that have since gone to another one."""
        with self._free:
            for s in range(max(first, 0), min(first + count, self.n_slots)):
                lease = self._leases[s]
                if lease is not None and (owner is None or _held_by(lease, owner)):
                    self._pending.append((s, lease))
            self._settle()

    def close(self) -> None:
        """Marks the pool closed and wakes every waiter (they raise)."""
        with self._free:
            self.closed = True
            self._free.notify_all()

    @property
    def n_free(self) -> int:
        with self._locked():
            if self._depth == 1:  # not from a finalizer in the middle of a change
                self._drain()
            return sum(lease is None for lease in self._leases)

    # -- under the lock -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._free:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._pending:  # released by a finalizer while we were busy
                    self._settle()

    def _wait(self, seconds: float) -> None:
        self._depth -= 1  # the lock is let go while waiting
        try:
            self._free.wait(max(seconds, 0.0))
        finally:
            self._depth += 1

    def _settle(self) -> None:
        """Frees the pending slots and wakes the waiters, unless this thread is
        in the middle of a change (a finalizer run by gc inside our own critical
        section): then the change's own drain frees them on its way."""
        if self._depth == 0:
            self._depth += 1
            try:
                self._drain()
                self._free.notify_all()
            finally:
                self._depth -= 1

    def _drain(self) -> None:
        while self._pending:
            s, lease = self._pending.popleft()
            if self._leases[s] is lease:
                self._leases[s] = None

    def _take(self, lease: _Lease) -> bool:
        self._drain()
        run = 0
        for s, held in enumerate(self._leases):
            run = run + 1 if held is None else 0
            if run == lease.count:
                lease.first = s - lease.count + 1
                for t in range(lease.first, s + 1):
                    self._leases[t] = lease
                return True
        return False

    def _fits(self, count: int) -> bool:
        run = 0
        for held in self._leases:
            run = run + 1 if held is None else 0
            if run == count:
                return True
        return False

    def _stuck_error(self, me: _Waiter) -> str | None:
        """Why `me` must raise now, or None: no slot can ever be freed and it
        is the waiter chosen to break the cycle (or it asks for more slots
        than its own leave)."""
        mine = sum(lease is not None and lease.thread is me.thread for lease in self._leases)
        if me.count > self.n_slots - mine:
            return (
                f"this thread asks for {me.count} slot(s) of the {self.owner} while its own "
                f"open sequences hold {mine} of its {self.n_slots}: finish or close one of "
                f"them (an open stream holds its slot), or load the model with n_slots="
                f"{mine + me.count} or more"
            )
        holders = {lease.thread for lease in self._leases if lease is not None}
        waiting = {w.thread for w in self._waiters}
        if not all(t in waiting or _ended(t) for t in holders):
            return None  # a holder is busy: it will release
        if any(self._fits(w.count) for w in self._waiters):
            return None  # a waiter is about to take free slots
        holding = [w for w in self._waiters if w.thread in holders]
        if holding and me is not max(holding, key=lambda w: w.order):
            return None  # the newest waiter that holds slots raises; the others wait
        return (
            f"no slot of the {self.owner} can ever be freed: {self._holders_text(me)}; every "
            f"holder is itself waiting for a slot or has ended, and {me.count} adjacent "
            f"free one(s) are needed. Close an open stream or sequence before starting "
            f"another call in the same thread, or load the model with a larger n_slots "
            f"({self.n_slots} now)"
        )

    def _timeout_error(self, deadline: float, timeout: float | None, wait_s: float) -> str | None:
        if time.monotonic() < deadline:
            return None
        bound = (
            "the default bound, DEFAULT_SLOT_TIMEOUT; pass timeout= to change it"
            if timeout is None
            else "the timeout given"
        )
        return (
            f"no free sequence slot of the {self.owner} within {wait_s:g} s ({bound}): "
            f"{self.n_slots} slots, all busy"
        )

    def _holders_text(self, me: _Waiter) -> str:
        by_thread: dict[threading.Thread, list[int]] = {}
        for s, lease in enumerate(self._leases):
            if lease is not None:
                by_thread.setdefault(lease.thread, []).append(s)
        parts = []
        for t, slots in by_thread.items():
            who = (
                "this thread"
                if t is me.thread
                else f"thread {t.name!r} ({'ended' if _ended(t) else 'waiting'})"
            )
            parts.append(f"slot(s) {', '.join(map(str, slots))} held by {who}")
        return "; ".join(parts)

    # -- from any thread, inside gc -------------------------------------------------
    def _owner_dropped(self, ref: weakref.ref) -> None:
        """Weakref callback: the owner of a lease was collected without release.
        Only reads the slot list and appends; frees under the lock if it can
        take it without waiting, else the next holder (or a poll) does."""
        for s, lease in enumerate(list(self._leases)):
            if lease is not None and lease.ref is ref:
                self._pending.append((s, lease))
        if self._free.acquire(blocking=False):
            try:
                self._settle()
            finally:
                self._free.release()


def _check_timeout(timeout: float | None) -> float:
    if timeout is None:
        return DEFAULT_SLOT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ValueError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (inf: no bound), got {timeout!r}")
    return float(timeout)


def _weak(owner: object, callback) -> weakref.ref:
    try:
        return weakref.ref(owner, callback)
    except TypeError:
        raise ValueError(
            f"owner must be an object a weak reference can point to, got {type(owner).__name__}"
        ) from None


def _held_by(lease: _Lease, owner: object) -> bool:
    """Whether `owner` holds the lease; a lease whose owner is already
    collected is anyone's to free (its owner's __del__ may be the caller)."""
    if lease.ref is None:
        return False
    held = lease.ref()
    return held is None or held is owner


def _ended(thread: threading.Thread) -> bool:
    try:
        return not thread.is_alive()
    except (AssertionError, RuntimeError):  # a thread not started by threading
        return False
