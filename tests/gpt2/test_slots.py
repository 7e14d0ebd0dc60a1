"""SlotPool alone, with threads: waits that end, waits that cannot end (they
raise), slots of dropped owners coming back, timeouts, close.

Every wait here is bounded: pool timeouts of a few seconds at most, joins with
a timeout, daemon threads; a regression fails a test, it never hangs the suite.
"""

from __future__ import annotations

import gc
import math
import threading
import time

import pytest

from gpt2 import slots
from gpt2.slots import NoFreeSlotError, SlotPool

PROMPT_S = 1.0  # "at once": a deadlock is seen within this (the pool polls every 50 ms)
LONG_S = 5.0  # a wait that should not run out in these tests


class Owner:
    """A sequence-like object the pool can hold a weak reference to."""


def _spawn(fn, *args) -> tuple[threading.Thread, dict]:
    """Runs fn(*args) on a daemon thread; out gets "value" or "error"."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def _join(*threads: threading.Thread, seconds: float = LONG_S) -> None:
    for t in threads:
        t.join(seconds)
        assert not t.is_alive(), f"{t.name} still running after {seconds} s"


def _until(cond, seconds: float = LONG_S) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, f"not true within {seconds} s"
        time.sleep(0.005)


def _n_waiting(pool: SlotPool) -> int:
    with pool._free:
        return len(pool._waiters)


def _each_holds_one_then_asks(n_slots: int, n_threads: int, count: int, order=None):
    """n_threads threads each hold one slot, then ask for `count` more at once;
    on NoFreeSlotError a thread gives its slot back (what a `with` block or a
    stream's close does). Returns (results, seconds from the barrier to the
    first raise)."""
    pool = SlotPool(n_slots)
    barrier = threading.Barrier(n_threads, timeout=LONG_S)
    raised_at: list[float] = []
    start = [0.0]
    order = order or (lambda i: None)

    def worker(i: int):
        order(i)
        held = pool.acquire(1, timeout=LONG_S)
        if barrier.wait() == 0:
            start[0] = time.monotonic()
        try:
            more = pool.acquire(count, timeout=LONG_S)
        except NoFreeSlotError as e:
            raised_at.append(time.monotonic())
            pool.release(held, 1)
            return e
        pool.release(more, count)
        pool.release(held, 1)
        return more

    runs = [_spawn(worker, i) for i in range(n_threads)]
    _join(*(t for t, _ in runs))
    assert not any("error" in out for _, out in runs), [out for _, out in runs]
    assert pool.n_free == n_slots
    first_raise = min(raised_at) - start[0] if raised_at else math.inf
    return [out["value"] for _, out in runs], first_raise


def test_four_threads_holding_a_stream_each_then_asking_for_logits():
    results, first_raise = _each_holds_one_then_asks(n_slots=4, n_threads=4, count=1)
    errors = [r for r in results if isinstance(r, NoFreeSlotError)]
    assert errors, f"no thread raised: {results}"
    assert first_raise < PROMPT_S, f"first raise after {first_raise:.2f} s"
    assert len(errors) < 4, "every thread raised: the others should go on once one gives back"
    message = str(errors[0])
    assert "waiting" in message and "n_slots" in message and "close" in message.lower(), message
    assert all(isinstance(r, int) for r in results if r not in errors), results


def test_two_threads_holding_one_of_two_slots_each_then_generating_with_two():
    results, first_raise = _each_holds_one_then_asks(n_slots=2, n_threads=2, count=2)
    # 2 more while holding 1 of 2 can never be: both raise at once, saying so
    assert all(isinstance(r, NoFreeSlotError) for r in results), results
    assert all("n_slots=3" in str(e) for e in results), results
    assert first_raise < PROMPT_S, f"first raise after {first_raise:.2f} s"


@pytest.mark.parametrize("first_to_ask", [0, 1])
def test_two_threads_holding_a_stream_each_then_generating_with_two_slots(first_to_ask):
    """3 slots: A holds slot 0, B slot 1, and each asks for 2 more. The newer
    waiter raises and gives its slot back. If that was B, A gets slots 1-2; if
    it was A, B's slot 1 splits the free 0 and 2, so B raises too."""
    pool = SlotPool(3)
    holds = [threading.Event(), threading.Event()]
    out: list = [None, None]

    def member(i: int) -> None:
        if i == 1:
            assert holds[0].wait(LONG_S)
        mine = pool.acquire(1)
        assert mine == i
        holds[i].set()
        assert holds[1 - i].wait(LONG_S)
        if i != first_to_ask:
            _until(lambda: _n_waiting(pool) == 1)  # the other asks first
        try:
            got = pool.acquire(2, timeout=LONG_S)
        except NoFreeSlotError as e:
            out[i] = (time.monotonic(), e)
            pool.release(mine, 1)
            return
        out[i] = (time.monotonic(), got)
        pool.release(got, 2)
        pool.release(mine, 1)

    runs = [_spawn(member, i) for i in (0, 1)]
    t0 = time.monotonic()
    _join(*(t for t, _ in runs))
    assert not any("error" in r for _, r in runs), [r for _, r in runs]
    newer = 1 - first_to_ask
    assert isinstance(out[newer][1], NoFreeSlotError), out
    assert "waiting" in str(out[newer][1]), out
    assert out[newer][0] - t0 < PROMPT_S
    if newer == 1:
        assert out[0][1] == 1, out  # A got slots 1-2
    else:
        assert isinstance(out[1][1], NoFreeSlotError), out
        assert "held by this thread;" in str(out[1][1]), out
    assert pool.n_free == 3


def test_two_free_slots_that_are_not_adjacent_do_not_make_a_pair():
    # slots 0 and 2 held, 1 and 3 free: neither asker of 2 adjacent slots can
    # be served until one gives its slot back
    pool = SlotPool(4)
    barrier = threading.Barrier(2, timeout=LONG_S)
    a_holds = threading.Event()

    def ask_for_two(mine: int):
        barrier.wait()
        try:
            got = pool.acquire(2, timeout=LONG_S)
        except NoFreeSlotError as e:
            pool.release(mine, 1)
            return e
        pool.release(got, 2)
        pool.release(mine, 1)
        return got

    def a():
        mine = pool.acquire(1)
        a_holds.set()
        return mine, ask_for_two(mine)

    def b():
        assert a_holds.wait(LONG_S)
        pad = pool.acquire(1)  # slot 1, so that ours is 2
        mine = pool.acquire(1)
        pool.release(pad, 1)
        return mine, ask_for_two(mine)

    (ta, oa), (tb, ob) = _spawn(a), _spawn(b)
    _join(ta, tb)
    assert "error" not in oa and "error" not in ob, (oa, ob)
    assert (oa["value"][0], ob["value"][0]) == (0, 2)
    results = [oa["value"][1], ob["value"][1]]
    assert sum(isinstance(r, NoFreeSlotError) for r in results) == 1, results
    assert pool.n_free == 4


def test_a_thread_asking_for_more_than_its_own_slots_leave_raises_at_once():
    pool = SlotPool(2)
    pool.acquire(1)
    t0 = time.monotonic()
    with pytest.raises(NoFreeSlotError, match="n_slots=3"):
        pool.acquire(2, timeout=LONG_S)
    assert time.monotonic() - t0 < PROMPT_S


def test_waiting_ends_when_another_thread_releases():
    pool = SlotPool(1)
    first = pool.acquire(1)
    t, out = _spawn(pool.acquire, 1, LONG_S)
    _until(lambda: _n_waiting(pool) == 1)
    pool.release(first, 1)
    _join(t)
    assert out == {"value": 0}


def test_no_false_positive_a_busy_holder_is_waited_for():
    # the holder thread is busy (not in acquire): the waiter keeps waiting
    pool = SlotPool(1)
    held, go_on = threading.Event(), threading.Event()

    def holder() -> None:
        s = pool.acquire(1)
        held.set()
        go_on.wait(LONG_S)  # busy: a long step, not a wait for a slot
        pool.release(s, 1)

    th, _ = _spawn(holder)
    assert held.wait(LONG_S)
    tw, out = _spawn(pool.acquire, 1, LONG_S)
    _until(lambda: _n_waiting(pool) == 1)
    time.sleep(0.5)  # ten polls of the pool
    assert tw.is_alive() and out == {}, out
    go_on.set()
    _join(th, tw)
    assert out == {"value": 0}


def test_a_holder_that_ended_without_release_makes_a_new_waiter_raise():
    pool = SlotPool(1)
    t, _ = _spawn(pool.acquire, 1)
    _join(t)
    t0 = time.monotonic()
    with pytest.raises(NoFreeSlotError, match="ended"):
        pool.acquire(1, timeout=LONG_S)
    assert time.monotonic() - t0 < PROMPT_S


def test_a_holder_that_ends_while_another_waits_makes_the_waiter_raise():
    pool = SlotPool(1)
    held, end = threading.Event(), threading.Event()

    def holder() -> None:
        pool.acquire(1)
        held.set()
        end.wait(LONG_S)  # then ends without releasing

    th, _ = _spawn(holder)
    assert held.wait(LONG_S)
    tw, out = _spawn(pool.acquire, 1, LONG_S)
    _until(lambda: _n_waiting(pool) == 1)
    t0 = time.monotonic()
    end.set()
    _join(th, tw)
    assert isinstance(out.get("error"), NoFreeSlotError), out
    assert "ended" in str(out["error"])
    assert time.monotonic() - t0 < PROMPT_S


def test_an_owner_dropped_with_its_ended_thread_gives_the_slot_back():
    pool = SlotPool(1)

    def holder() -> int:
        return pool.acquire(1, owner=Owner())  # the owner dies with this frame

    t, out = _spawn(holder)
    _join(t)
    assert out == {"value": 0}
    assert pool.acquire(1, timeout=0) == 0


def test_an_owner_dropped_while_another_waits_wakes_the_waiter():
    pool = SlotPool(1)
    owner = Owner()
    pool.acquire(1, owner=owner)
    tw, out = _spawn(pool.acquire, 1, LONG_S)
    _until(lambda: _n_waiting(pool) == 1)
    t0 = time.monotonic()
    del owner  # this thread holds the slot and is busy: only the drop frees it
    _join(tw)
    assert out == {"value": 0}
    assert time.monotonic() - t0 < PROMPT_S


def test_an_owner_dropped_in_a_reference_cycle_is_reclaimed_for_a_waiter():
    pool = SlotPool(1)
    was_enabled = gc.isenabled()
    gc.disable()  # only the pool's own gc.collect() may find the cycle
    try:
        owner = Owner()
        owner.me = owner  # a cycle: refcounting alone never frees it
        pool.acquire(1, owner=owner)
        del owner
        assert pool.n_free == 0  # not collected yet
        # the holder (this thread) is alive and busy, so the waiter would wait
        # its whole timeout, were it not for the collection before it waits
        tw, out = _spawn(pool.acquire, 1, LONG_S)
        _join(tw, seconds=PROMPT_S)
        assert out == {"value": 0}
    finally:
        if was_enabled:
            gc.enable()


def test_a_finalizer_releasing_after_the_pool_reclaimed_frees_nothing_else():
    """A sequence whose __del__ releases (gpt2.sequence does) and which the pool
    also reclaims through its weak reference: both run, in either order, and
    no slot is freed twice or taken from another holder."""
    pool = SlotPool(2)

    class Seq:
        def __init__(self) -> None:
            self.me = self  # a cycle: gc runs the weakref callback, then __del__
            self.first = pool.acquire(1, owner=self)

        def __del__(self) -> None:
            pool.release(self.first, 1, owner=self)

    Seq()
    gc.collect()
    assert pool.n_free == 2
    other = Owner()
    assert pool.acquire(1, owner=other) == 0
    pool.release(0, 1, owner=Owner())  # a release naming another owner frees nothing
    assert pool.n_free == 1
    pool.release(0, 1, owner=other)
    assert pool.n_free == 2
    pool.acquire(2)
    pool.release(0, 2)  # without owner: frees whatever holds the slots, as before
    assert pool.n_free == 2


def test_an_owner_dropped_while_the_pool_lock_is_held_never_blocks():
    pool = SlotPool(1)
    owner = Owner()
    pool.acquire(1, owner=owner)
    locked, unlock = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with pool._free:
            locked.set()
            unlock.wait(LONG_S)

    t, _ = _spawn(hold_the_lock)
    assert locked.wait(LONG_S)
    t0 = time.monotonic()
    del owner  # the weakref callback runs here, on this thread
    assert time.monotonic() - t0 < 0.5, "the weakref callback waited for the lock"
    unlock.set()
    _join(t)
    assert pool.n_free == 1


def test_a_release_inside_the_pools_own_critical_section_is_deferred_not_deadlocked():
    # what a finalizer run by gc in the middle of acquire() does
    pool = SlotPool(2)
    pool.acquire(2)
    with pool._locked():
        pool.release(0, 2)
        assert pool._leases[0] is not None  # not changed in the middle
    assert pool.n_free == 2


def test_a_wait_times_out():
    pool = SlotPool(1)
    held, go_on = threading.Event(), threading.Event()

    def holder() -> None:
        s = pool.acquire(1)
        held.set()
        go_on.wait(LONG_S)
        pool.release(s, 1)

    th, _ = _spawn(holder)
    try:
        assert held.wait(LONG_S)
        t0 = time.monotonic()
        with pytest.raises(NoFreeSlotError, match="within 0.2 s"):
            pool.acquire(1, timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < PROMPT_S
        with pytest.raises(NoFreeSlotError, match="within 0 s"):
            pool.acquire(1, timeout=0)
    finally:
        go_on.set()
        _join(th)


def test_no_timeout_means_the_default_bound(monkeypatch):
    monkeypatch.setattr(slots, "DEFAULT_SLOT_TIMEOUT", 0.2)
    pool = SlotPool(1)
    go_on = threading.Event()
    held = threading.Event()

    def holder() -> None:
        s = pool.acquire(1)
        held.set()
        go_on.wait(LONG_S)
        pool.release(s, 1)

    th, _ = _spawn(holder)
    try:
        assert held.wait(LONG_S)
        with pytest.raises(NoFreeSlotError, match="within 0.2 s .*DEFAULT_SLOT_TIMEOUT"):
            pool.acquire(1)
    finally:
        go_on.set()
        _join(th)
    assert slots.DEFAULT_SLOT_TIMEOUT == 0.2  # read at each call, not frozen at import


def test_an_infinite_timeout_waits_past_the_default(monkeypatch):
    monkeypatch.setattr(slots, "DEFAULT_SLOT_TIMEOUT", 0.05)
    pool = SlotPool(1)
    first = pool.acquire(1)
    tw, out = _spawn(pool.acquire, 1, math.inf)
    time.sleep(0.3)  # six default bounds
    assert tw.is_alive() and out == {}, out
    pool.release(first, 1)
    _join(tw)
    assert out == {"value": 0}


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan, "1", True])
def test_a_bad_timeout_is_a_value_error(timeout):
    pool = SlotPool(1)
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire(1, timeout=timeout)
    assert pool.n_free == 1


def test_close_wakes_waiters_with_value_error():
    pool = SlotPool(1)
    pool.acquire(1)
    runs = [_spawn(pool.acquire, 1, LONG_S) for _ in range(2)]
    _until(lambda: _n_waiting(pool) == 2)
    pool.close()
    _join(*(t for t, _ in runs), seconds=PROMPT_S)
    for _, out in runs:
        assert isinstance(out.get("error"), ValueError), out
        assert "closed" in str(out["error"])


def test_many_threads_never_share_a_slot():
    pool = SlotPool(4)
    in_use = [0] * 4
    guard = threading.Lock()
    bad: list[str] = []

    def worker(i: int) -> None:
        for k in range(200):
            count = 1 + (i + k) % 2
            owner = Owner() if k % 3 else None  # alive until released
            first = pool.acquire(count, timeout=LONG_S, owner=owner)
            with guard:
                for s in range(first, first + count):
                    in_use[s] += 1
                    if in_use[s] != 1:
                        bad.append(f"slot {s} held twice")
            with guard:
                for s in range(first, first + count):
                    in_use[s] -= 1
            pool.release(first, count, owner=owner)

    runs = [_spawn(worker, i) for i in range(8)]
    _join(*(t for t, _ in runs), seconds=30)
    assert not bad, bad[:5]
    assert not any("error" in out for _, out in runs), [out for _, out in runs]
    assert pool.n_free == 4
