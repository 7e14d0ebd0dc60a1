"""The engine protocol: what generation, the API, the CLI, bench and parity use.

An engine is a loaded model on one device: weights, read-only and shared by
every caller and thread, and a fixed number of cache slots. The state of one
generation lives in a sequence (its slot and position), never in the engine,
as llama.cpp splits `llama_model` from `llama_context`:

    with engine.sequence() as seq:               # takes a free slot
        token = seq.start_greedy(prompt_ids)      # prefill from position 0
        token = seq.step_greedy(token)            # one token at seq.position
    logits = engine.logits(ids)                   # [T, vocab], a slot of its own

A batch is several sequences decoded together, each at its own position
(`engine.batch(n)`). Every engine here implements this protocol through
`gpt2.sequence.SlotEngine`; `tests/gpt2/test_protocol.py` checks each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gpt2.config import GPT2Config
from gpt2.sampling import SamplingParams


@runtime_checkable
class EngineSequence(Protocol):
    """One generation: its cache slot and the next position to fill."""

    position: int

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Prefills from position 0; the logits [vocab] of the last token."""

    def start_greedy(self, prompt_ids: Sequence[int]) -> int:
        """Prefills from position 0; the argmax of the last token's logits."""

    def step(self, token_id: int) -> np.ndarray:
        """Feeds one token at `position`; its logits [vocab]."""

    def step_greedy(self, token_id: int) -> int:
        """Feeds one token at `position`; the argmax of its logits."""

    def step_sample(self, token_id: int, params: SamplingParams, uniform: float) -> int:
        """Feeds one token at `position`; the next one by the sampling rule
        (gpt2.sampling) with this uniform draw, on the engine's device if it can."""

    def close(self) -> None:
        """Gives the slot back; the sequence is unusable afterwards."""


@runtime_checkable
class EngineBatch(Protocol):
    """n sequences decoded together, each in its own slot at its own position."""

    n: int
    positions: list[int]

    def start_greedy(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Prefills every sequence (any lengths); the next greedy id of each."""

    def step_greedy(self, token_ids: Sequence[int | None]) -> list[int | None]:
        """One token for each sequence; None leaves a finished one where it is."""

    def close(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """A model on one device (see the module docstring)."""

    config: GPT2Config
    device: str

    @property
    def max_positions(self) -> int:
        """The positions a sequence may use (n_ctx)."""

    @property
    def n_slots(self) -> int:
        """How many sequences may be alive at once."""

    @property
    def closed(self) -> bool: ...

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] (float32) of every position of ids from position 0."""

    def sequence(self, timeout: float | None = None) -> EngineSequence:
        """A new sequence in a free slot (waits up to timeout for one; see gpt2.slots)."""

    def batch(self, n: int, timeout: float | None = None) -> EngineBatch:
        """n new sequences in n adjacent free slots."""

    def close(self) -> None:
        """Frees the device memory; waits for a step in flight on another thread."""
