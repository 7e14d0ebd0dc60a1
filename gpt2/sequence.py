"""Sequences and batches over any engine's cache slots (gpt2.protocol).

An engine derives from `SlotEngine` and implements three slot-level calls,
each run under the pool's lock with validated arguments:

- `_prefill_slots(first, prompts, greedy)`: prompts[i] from position 0 into
  slot first+i; the greedy ids [n] or the last-token logits [n, vocab].
- `_step_slots(first, tokens, positions, active, greedy)`: one token of each
  sequence at its position; inactive ones are finished and their results are
  not read (an engine may compute them anyway, in their own slot).
- `_logits_slot(slot, ids)`: logits [T, vocab] of ids from position 0.

And `_sample_slots(first, tokens, positions, active, params, uniforms)`, one
step that chooses each next token by the sampling rule with params[i] and
uniforms[i]: on the host from the step's logits unless the engine overrides it.

Positions live here, in the sequence, never in the engine. A batch's members
may start together (`start`) or one at a time while the others keep their
positions (`start_member`: continuous batching, gpt2.serve.scheduler); a
member given None in a step is idle (finished or not yet started).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt2.sampling import SamplingParams, choose
from gpt2.slots import DEFAULT_SLOTS, SlotPool
from gpt2.token_ids import check_token_ids


class SlotEngine:
    """The protocol's public half, shared by every engine (see module doc)."""

    device: str
    vocab_size: int
    pool: SlotPool

    def _init_slots(self, n_slots: int | None, what: str) -> None:
        self.pool = SlotPool(DEFAULT_SLOTS if n_slots is None else n_slots, what)

    # -- what each engine implements ------------------------------------------------
    @property
    def max_positions(self) -> int:
        raise NotImplementedError

    def _prefill_slots(self, first: int, prompts: list[np.ndarray], greedy: bool) -> np.ndarray:
        raise NotImplementedError

    def _step_slots(
        self,
        first: int,
        tokens: np.ndarray,
        positions: np.ndarray,
        active: np.ndarray,
        greedy: bool,
    ) -> np.ndarray:
        raise NotImplementedError

    def _logits_slot(self, slot: int, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _sample_slots(
        self,
        first: int,
        tokens: np.ndarray,
        positions: np.ndarray,
        active: np.ndarray,
        params: list[SamplingParams],
        uniforms: np.ndarray,
    ) -> np.ndarray:
        """One step choosing each next token by the sampling rule with its own
        params and draw: here on the host, from the step's logits; an engine that
        can choose on its device overrides this."""
        logits = self._step_slots(first, tokens, positions, active, greedy=False)
        ids = np.zeros(len(tokens), dtype=np.int32)
        for i in np.flatnonzero(active):
            ids[i] = choose(logits[i], params[i], float(uniforms[i]))
        return ids

    def _free_device(self) -> None:
        """Frees the native sessions (called once, under the lock)."""
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------
    @property
    def n_slots(self) -> int:
        return self.pool.n_slots

    @property
    def closed(self) -> bool:
        return self.pool.closed

    def check_prompt(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = check_token_ids(token_ids, self.vocab_size)
        if len(ids) > self.max_positions:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, the context holds {self.max_positions}"
            )
        return ids

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] (float32) of every position, in a slot of their own."""
        ids = self.check_prompt(token_ids)
        slot = self.pool.acquire(1)
        try:
            with self.pool.lock:
                self.pool.check_open()
                return self._logits_slot(slot, ids)
        finally:
            self.pool.release(slot, 1)

    def sequence(self, timeout: float | None = None) -> SingleSequence:
        return SingleSequence(SequenceBatch(self, 1, timeout))

    def batch(self, n: int, timeout: float | None = None) -> SequenceBatch:
        return SequenceBatch(self, n, timeout)

    def close(self) -> None:
        """Waits for a step in flight, then frees the device; later calls raise."""
        self.pool.close()
        with self.pool.lock:
            if not getattr(self, "_device_freed", False):
                self._device_freed = True
                self._free_device()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SequenceBatch:
    """n sequences in n adjacent slots, each at its own position."""

    def __init__(self, engine: SlotEngine, n: int, timeout: float | None = None):
        self.engine = engine
        self.first = engine.pool.acquire(n, timeout)
        self.n = n
        self.positions = [0] * n  # the next position of each sequence
        self._started = False
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise ValueError("the sequence is closed")

    def start(self, prompts: Sequence[Sequence[int]], greedy: bool = False) -> np.ndarray:
        """Prefills sequence i with prompts[i] from position 0: the greedy ids [n]
        or the last tokens' logits [n, vocab]. Starting again restarts."""
        self._check()
        if len(prompts) != self.n:
            raise ValueError(f"this batch holds {self.n} sequences, got {len(prompts)} prompts")
        ids = [self.engine.check_prompt(p) for p in prompts]
        with self.engine.pool.lock:
            self.engine.pool.check_open()
            out = self.engine._prefill_slots(self.first, ids, greedy)
        self.positions = [len(i) for i in ids]
        self._started = True
        return out

    def start_member(self, i: int, prompt: Sequence[int], greedy: bool = False) -> np.ndarray:
        """Prefills member i alone with prompt from position 0 (its slot only; the
        other members keep their positions): the greedy id (an int) or the last
        token's logits [vocab]. Between steps, this is how a new sequence joins a
        running batch."""
        self._check()
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n:
            raise ValueError(f"member must be an int in 0..{self.n - 1}, got {i!r}")
        ids = self.engine.check_prompt(prompt)
        with self.engine.pool.lock:
            self.engine.pool.check_open()
            out = self.engine._prefill_slots(self.first + i, [ids], greedy)
        self.positions[i] = len(ids)
        self._started = True
        return int(out[0]) if greedy else out[0]

    def step(self, token_ids: Sequence[int | None], greedy: bool = False) -> np.ndarray:
        """One token for each sequence at its position (None: a finished one, left
        where it is); the greedy ids [n] or logits [n, vocab] (rows of finished
        sequences are not meaningful)."""
        return self._advance(
            token_ids,
            lambda first, tokens, positions, active: self.engine._step_slots(
                first, tokens, positions, active, greedy
            ),
        )

    def step_sample(
        self,
        token_ids: Sequence[int | None],
        params: SamplingParams | Sequence[SamplingParams | None],
        uniforms: Sequence[float],
    ) -> list[int | None]:
        """One token for each sequence, each next one chosen by the sampling rule
        (gpt2.sampling) with its params (one for all, or one a member; None for
        an idle one) and its uniform draw; on the device where the engine can."""
        if len(uniforms) != self.n:
            raise ValueError(f"expected {self.n} uniform draws, got {len(uniforms)}")
        if isinstance(params, SamplingParams):
            per_member = [params] * self.n
        else:
            per_member = list(params)
            if len(per_member) != self.n:
                raise ValueError(f"expected {self.n} sampling params, got {len(per_member)}")
            for t, p in zip(token_ids, per_member, strict=False):
                if t is not None and not isinstance(p, SamplingParams):
                    raise ValueError(f"an active member needs SamplingParams, got {p!r}")
        greedy = SamplingParams()
        per_member = [greedy if p is None else p for p in per_member]
        draws = np.asarray(uniforms, dtype=np.float64)
        out = self._advance(
            token_ids,
            lambda first, tokens, positions, active: self.engine._sample_slots(
                first, tokens, positions, active, per_member[: len(tokens)], draws[: len(tokens)]
            ),
        )
        return [None if t is None else int(o) for t, o in zip(token_ids, out, strict=True)]

    def _advance(self, token_ids: Sequence[int | None], run) -> np.ndarray:
        """Checks the step, runs it under the device lock, moves positions on."""
        self._check()
        if not self._started:
            raise ValueError("no sequence started: call start() first")
        if len(token_ids) != self.n:
            raise ValueError(f"expected {self.n} token ids, got {len(token_ids)}")
        active = np.array([t is not None for t in token_ids])
        if not active.any():
            raise ValueError("every sequence of the batch is finished")
        live = [t for t in token_ids if t is not None]
        tokens = np.zeros(self.n, dtype=np.int32)
        tokens[active] = check_token_ids(live, self.engine.vocab_size)
        limit = self.engine.max_positions
        for i in np.flatnonzero(active):
            if self.positions[i] >= limit:
                raise ValueError(
                    f"position {self.positions[i]} is past the context ({limit}) of sequence {i}"
                )
        # an idle member recomputes its last position, in its own slot; idle
        # members after the last active one are left out of the step
        positions = np.array([min(p, limit - 1) for p in self.positions], dtype=np.int32)
        m = int(np.flatnonzero(active)[-1]) + 1
        with self.engine.pool.lock:
            self.engine.pool.check_open()
            part = run(self.first, tokens[:m], positions[:m], active[:m])
        for i in np.flatnonzero(active):
            self.positions[i] += 1
        if m == self.n:
            return part
        out = np.zeros((self.n, *part.shape[1:]), dtype=part.dtype)
        out[:m] = part
        return out

    def start_greedy(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        return [int(t) for t in self.start(prompts, greedy=True)]

    def step_greedy(self, token_ids: Sequence[int | None]) -> list[int | None]:
        out = self.step(token_ids, greedy=True)
        return [None if t is None else int(o) for t, o in zip(token_ids, out, strict=True)]

    def close(self) -> None:
        if self._open:
            self._open = False
            self.engine.pool.release(self.first, self.n)

    def __enter__(self) -> SequenceBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # a stream abandoned without close() gives its slot back when collected
        if getattr(self, "_open", False):
            self.close()


class SingleSequence:
    """One sequence: the scalar face of a batch of one."""

    def __init__(self, batch: SequenceBatch):
        self._batch = batch

    @property
    def position(self) -> int:
        return self._batch.positions[0]

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        return self._batch.start([prompt_ids])[0]

    def start_greedy(self, prompt_ids: Sequence[int]) -> int:
        return int(self._batch.start([prompt_ids], greedy=True)[0])

    def step(self, token_id: int) -> np.ndarray:
        return self._batch.step([token_id])[0]

    def step_greedy(self, token_id: int) -> int:
        return int(self._batch.step([token_id], greedy=True)[0])

    def step_sample(self, token_id: int, params: SamplingParams, uniform: float) -> int:
        return int(self._batch.step_sample([token_id], params, [uniform])[0])

    def close(self) -> None:
        self._batch.close()

    def __enter__(self) -> SingleSequence:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
