"""Continuous batching: one batch over all the model's slots, a step at a time.

A worker thread owns a `SequenceBatch` of max_batch members. Between steps it
admits queued requests into free members and drops cancelled ones (their
member is free at the next step), then runs one step plan for every member
(`step_members`): the admitted prompts' prefill rows beside the running
members' decode rows, each with its own sampling params and draws. A step
holds at most `max_step_tokens` tokens: every decode row (one token) goes in,
and prompt chunks fill what is left, the oldest admitted first, so a long
prompt is prefilled over several steps while the others keep decoding. Only
a prompt's last chunk chooses a token. So a request gives what
`model.complete()` gives alone, whoever shares its steps.

Each request reports through its `sink`, called on the worker thread with an
`Event` per token and a last one holding the `Completion` (or an error). The
queue is bounded: `submit` raises QueueFullError when it is full, and
SchedulerClosedError once the scheduler is stopping.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpt2.completion import Completion, TokenLogprob
from gpt2.engine.fast import prefill_bucket
from gpt2.generate import Member, step_members
from gpt2.params import GenerationParams
from gpt2.serve.metrics import ROWS_BUCKETS, TIME_BUCKETS_S, Histogram

log = logging.getLogger("gpt2.serve")

DEFAULT_STEP_TOKENS = 512  # tokens a step computes at most (decode rows and prompt chunks)


class QueueFullError(RuntimeError):
    """The request queue is full: try again later."""


class SchedulerClosedError(RuntimeError):
    """The scheduler is stopping or stopped."""


@dataclass
class Event:
    """What one request produced since its last event: text (maybe empty), new
    token ids and their log-probabilities; `done` on the last one (or `error`)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: Completion | None = None
    error: str | None = None
    # the prompt's tokens' (echo), on the first event after its prefill
    prompt_logprobs: list[TokenLogprob | None] | None = None


class Request:
    """One completion for the scheduler. `member` checks the prompt against the
    context when built (ValueError), before anything is queued. echo (None, or
    n alternatives): report the prompt tokens' log-probabilities too."""

    def __init__(
        self,
        model,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        sink,
        echo: int | None = None,
    ):
        eos = model.tokenizer.eos_id if model.tokenizer is not None else None
        self.member = Member(model.engine, model.tokenizer, prompt_ids, params, eos, echo)
        self.sink: Callable[[Event], None] = sink
        self.cancelled = False
        self.finished = False
        self.queued_at = time.monotonic()  # again when submitted
        self.last_token_at: float | None = None  # Stats.token
        self.admitted = 0  # the order it was admitted in (its prompt chunks' turn)
        self._reported = 0  # tokens already sent in events

    def cancel(self) -> None:
        """Ends the request at the next step boundary (from any thread)."""
        self.cancelled = True

    def _send(self, event: Event) -> None:
        try:
            self.sink(event)
        except Exception:  # noqa: BLE001 - a gone client must not stop the worker
            log.debug("a request's sink failed; cancelling it", exc_info=True)
            self.cancelled = True

    def _report(self, piece: str) -> None:
        cont = self.member.cont
        new_ids = cont.token_ids[self._reported :]
        new_lps = cont.logprobs[self._reported :] if cont.logprobs is not None else []
        self._reported = len(cont.token_ids)
        done = cont.result() if cont.done else None
        if done is not None:
            self.finished = True
        prompt_lps, self.member.prompt_logprobs = self.member.prompt_logprobs, None  # once
        self._send(Event(piece or "", new_ids, new_lps, done, prompt_logprobs=prompt_lps))

    def _fail(self, message: str) -> None:
        self.finished = True
        self._send(Event(error=message))


@dataclass
class Stats:
    """Counters, gauges and histograms for /metrics. The worker thread writes
    them; the event loop reads them (ints are read whole; each histogram has a
    lock, gpt2.serve.metrics)."""

    requests: collections.Counter = field(default_factory=collections.Counter)  # by outcome
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    rejected: int = 0
    active: int = 0  # members decoding now (the batch size)
    queued: int = 0
    prefill_tokens: int = 0  # prompt tokens of the requests that got their first token
    decode_tokens: int = 0  # tokens fed back as decode rows (a request's later tokens)
    ttft: Histogram = field(default_factory=lambda: Histogram(TIME_BUCKETS_S))  # queue -> first
    itl: Histogram = field(default_factory=lambda: Histogram(TIME_BUCKETS_S))  # token -> next
    occupancy: Histogram = field(default_factory=lambda: Histogram(ROWS_BUCKETS))  # per step

    def token(self, r: Request) -> None:
        """Times request r's token that is about to be reported: its first from
        its arrival in the queue, a later one from its previous token."""
        now = time.monotonic()
        if r.last_token_at is None:
            self.ttft.observe(now - r.queued_at)
            self.prefill_tokens += len(r.member.prompt_ids)
        else:
            self.itl.observe(now - r.last_token_at)
            self.decode_tokens += 1
        r.last_token_at = now


class Scheduler:
    """Runs requests on one model with continuous batching (see module doc)."""

    def __init__(
        self,
        model,
        max_batch: int | None = None,
        max_queue: int = 64,
        *,
        max_step_tokens: int = DEFAULT_STEP_TOKENS,
    ):
        self.model = model
        self.max_batch = max_batch or model.engine.n_slots
        if not 1 <= self.max_batch <= model.engine.n_slots:
            raise ValueError(
                f"max_batch must be in 1..{model.engine.n_slots} (the model's slots), "
                f"got {self.max_batch}"
            )
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        # the oldest prompt always has room for a chunk (_prompt_chunk: 3 tokens at
        # least) beside the others' decode rows
        if max_step_tokens < self.max_batch + 2:
            raise ValueError(
                f"max_step_tokens must be >= max_batch + 2 ({self.max_batch + 2}), "
                f"got {max_step_tokens}"
            )
        self.max_step_tokens = max_step_tokens
        self._admissions = itertools.count()
        self.stats = Stats()
        self._queue: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- life -------------------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._run, name="gpt2-scheduler", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fails what is queued or running, frees the batch, ends the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests -----------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> None:
        """Queues requests, all or none (QueueFullError, SchedulerClosedError)."""
        with self._cond:
            if not self.alive:
                raise SchedulerClosedError("the server is shutting down")
            if len(self._queue) + len(requests) > self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(
                    f"the queue is full ({len(self._queue)} of {self.max_queue} waiting)"
                )
            now = time.monotonic()
            for r in requests:
                r.queued_at = now  # time to first token counts from here
            self._queue.extend(requests)
            self.stats.queued = len(self._queue)
            self._cond.notify_all()

    def complete(self, prompt_ids: Sequence[int], params: GenerationParams) -> Completion:
        """Runs one request to its end from the calling thread (tests, scripts)."""
        done = threading.Event()
        last: list[Event] = []

        def sink(ev: Event) -> None:
            if ev.done is not None or ev.error is not None:
                last.append(ev)
                done.set()

        self.submit([Request(self.model, prompt_ids, params, sink)])
        done.wait()
        if last[0].error is not None:
            raise RuntimeError(last[0].error)
        return last[0].done

    # -- the worker ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            batch = self.model.engine.batch(self.max_batch)
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        members: list[Request | None] = [None] * self.max_batch
        try:
            with batch:
                while self._loop_once(batch, members):
                    pass
        except BaseException as e:  # noqa: BLE001 - the model closed under us, say
            log.exception("the scheduler stopped")
            self._error = e
        finally:
            with self._cond:
                self._stopping = True
                left = [r for r in members if r is not None] + list(self._queue)
                self._queue.clear()
                self.stats.queued = 0
            for r in left:
                if not r.finished:
                    self.stats.requests["error"] += 1
                    r._fail("the server is shutting down")
            self.stats.active = 0

    def _loop_once(self, batch, members: list[Request | None]) -> bool:
        """Admit, drop the cancelled, one step. False when stopping."""
        with self._cond:
            while not self._stopping and not self._queue and not any(members):
                self._cond.wait()
            if self._stopping:
                return False
            admitted: list[tuple[int, Request]] = []
            for i in range(self.max_batch):
                if members[i] is None and self._queue:
                    admitted.append((i, self._queue.popleft()))
            self.stats.queued = len(self._queue)
        for i, r in enumerate(members):
            if r is not None and r.cancelled:
                self._end(members, i, "cancelled")
        for i, r in admitted:
            if r.cancelled:
                self.stats.requests["cancelled"] += 1
                continue
            self.stats.prompt_tokens += len(r.member.prompt_ids)
            if not r.member.going:  # max_tokens 0 (no echo): finished before any step
                self.stats.requests[r.member.cont.finish_reason] += 1
                r._report("")
                continue
            r.admitted = next(self._admissions)
            members[i] = r  # prefilled from the step below on, beside the running ones
        active = [r.member if r is not None else None for r in members]
        self.stats.active = sum(m is not None and m.going for m in active)
        if self.stats.active:
            try:
                pieces = step_members(batch, active, self._budgets(members))
            except Exception as e:  # noqa: BLE001 - fail the step's requests, keep serving
                self.model.engine.pool.check_open()  # a closed model ends the worker
                log.exception("a step failed")
                for i, r in enumerate(members):
                    if r is not None:
                        self._end(members, i, "error", f"step failed: {e}")
                return True
            self.stats.steps += 1
            self.stats.occupancy.observe(self.stats.active)
            for i, piece in enumerate(pieces):
                if piece is not None:
                    self._after_token(members, i, piece)
                elif members[i] is not None and members[i].member.started:  # an echo's prefill
                    self._after_prefill_only(members, i)
        self.stats.active = sum(r is not None for r in members)
        return True

    def _budgets(self, members: list[Request | None]) -> list[int]:
        """Each member's prompt chunk this step: decode rows count one token each
        and always go in; prompt chunks take what is left of max_step_tokens, the
        oldest admitted first (0: a prompt waits for the next step). A chunk whose
        prefill bucket (gpt2.engine.fast.prefill_bucket: the tokens the engine
        computes for it) is not the oldest chunk's waits for a step of its own
        size: the engine prefills adjacent slots in one graph, every row padded to
        the longest's bucket (a 5-token chunk beside a 150-token one computes 256)."""
        going = [(i, r) for i, r in enumerate(members) if r is not None and r.member.going]
        left = self.max_step_tokens - sum(r.member.started for _, r in going)
        budgets = [0] * len(members)
        prompts = sorted((p for p in going if not p[1].member.started), key=lambda p: p[1].admitted)
        size = None  # the bucket of this step's chunks: the oldest one's
        for i, r in prompts:
            n = _prompt_chunk(r.member.prompt_left, left)
            if n == 0:
                continue
            if size is None:
                size = prefill_bucket(n)
            elif prefill_bucket(n) != size:
                continue
            budgets[i] = n
            left -= n
        return budgets

    def _after_token(self, members: list[Request | None], i: int, piece: str) -> None:
        r = members[i]
        self.stats.completion_tokens += 1
        self.stats.token(r)
        r._report(piece)
        if r.member.cont.done:
            self.stats.requests[r.member.cont.finish_reason] += 1
            members[i] = None

    def _after_prefill_only(self, members: list[Request | None], i: int) -> None:
        """Member i, a request of max_tokens 0 with echo, has its prompt's
        log-probabilities: it ends without a token."""
        r = members[i]
        self.stats.prefill_tokens += len(r.member.prompt_ids)
        self.stats.requests[r.member.cont.finish_reason] += 1
        r._report("")
        members[i] = None

    def _end(self, members, i: int, outcome: str, error: str | None = None) -> None:
        r = members[i]
        members[i] = None
        self.stats.requests[outcome] += 1
        if error is not None:
            r._fail(error)
        else:
            r.finished = True


def _prompt_chunk(prompt_left: int, budget: int) -> int:
    """The next chunk of a prompt with prompt_left tokens to go under budget: never
    a chunk of one token, nor one that leaves one (0: it waits), unless the prompt
    is one token. A one-token row runs as a decode step, whose kernels sum in
    another order than a prefill's: on the CPU a prompt cut so gets other bits
    than whole (gpt2.engine.graph: batch invariance); cut in chunks of two or
    more it gets the same."""
    n = min(prompt_left, budget)
    if n < prompt_left and prompt_left - n == 1:
        n -= 1
    return 0 if n == 1 and prompt_left > 1 else n
