"""The step plan: what one engine call computes for every row of a batch.

A row is one sequence's part of a step, as llama.cpp's `llama_batch` lists
tokens with per-token flags: its cache slot, its tokens (a prompt, a chunk
of one, or the one token of a decode step), the position of its first
token, and what it wants back:

- a chosen token (`sampling`: greedy when the temperature is 0, else THE
  SAMPLING RULE of gpt2.sampling with the row's `uniform` draw), after the
  row's `penalty` where it has one (gpt2.params: repetition, frequency and
  presence penalties over its history; such a row brings its logits to the
  host, since the device samplers do not apply penalties), and before them
  its `bias` (OpenAI's logit_bias, added to the raw logits of some ids);
- with it, the chosen token's log-probability and its `logprobs` most likely
  alternatives (log_softmax of the raw logits: temperature 1, no filters);
- the last token's logits (`logits="last"`) or every token's (`"all"`).

Prefill and decode rows may share a step. `engine.step(plan)` returns a
`StepResult` with one entry a row. Token choice and log-probabilities run in
native code for the whole step (gpt2.engine.choice), never a Python call a
row; the rule is the one gpt2.sampling implements in numpy for the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from gpt2.sampling import SamplingParams

LOGITS = (None, "last", "all")
GREEDY = SamplingParams()


class RowPenalty(NamedTuple):
    """A choosing row's penalties and the history they read (tnn_penalize_rows):
    ids, the distinct tokens of its prompt and generated text (int32), and counts,
    how often each was generated (int32, 0: prompt only)."""

    params: tuple[float, float, float]  # repetition, frequency, presence
    ids: np.ndarray
    counts: np.ndarray


class RowBias(NamedTuple):
    """A choosing row's logit_bias: ids (int32, each once) and what is added to
    their logits (float32)."""

    ids: np.ndarray
    values: np.ndarray


class StepRow:
    """One sequence's part of a step (see the module docstring)."""

    __slots__ = (
        "slot",
        "tokens",
        "position",
        "sampling",
        "uniform",
        "logprobs",
        "logits",
        "penalty",
        "bias",
    )

    def __init__(
        self,
        slot: int,
        tokens: Sequence[int] | np.ndarray,
        position: int,
        sampling: SamplingParams | None = GREEDY,
        uniform: float = 0.0,
        logprobs: int | None = None,
        logits: str | None = None,
        penalty: RowPenalty | None = None,
        bias: RowBias | None = None,
    ):
        self.slot = slot
        self.tokens = tokens
        self.position = position
        self.sampling = sampling  # None: no token is chosen
        self.uniform = uniform
        self.logprobs = logprobs  # None: none; n >= 0: the chosen token's and n more
        self.logits = logits
        self.penalty = penalty  # None: the raw logits choose
        self.bias = bias  # None: no logit_bias

    @property
    def chooses(self) -> bool:
        return self.sampling is not None

    @property
    def needs_logits(self) -> bool:
        """Whether the host needs this row's logits (not only a device choice)."""
        return (
            self.logits is not None
            or self.logprobs is not None
            or self.penalty is not None
            or self.bias is not None
        )

    def __repr__(self) -> str:
        return (
            f"StepRow(slot={self.slot}, tokens={len(self.tokens)}, position={self.position}, "
            f"sampling={self.sampling}, logprobs={self.logprobs}, logits={self.logits}, "
            f"penalty={None if self.penalty is None else self.penalty.params}, "
            f"bias={None if self.bias is None else len(self.bias.ids)})"
        )


@dataclass
class StepPlan:
    """The rows of one step; each slot at most once."""

    rows: list[StepRow] = field(default_factory=list)

    def add(self, row: StepRow) -> int:
        """Adds a row; its index in the result."""
        self.rows.append(row)
        return len(self.rows) - 1

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class StepResult:
    """What a step gives back, one entry a row of its plan.

    tokens[i]: the chosen id (-1 where row i chose none). logprobs[i]: its
    log-probability (NaN where not asked); top_ids[i] / top_logprobs[i]: its
    alternatives, most likely first (ties: lower id first), as many as row i
    asked for. logits[i]: [vocab] ("last"), [T, vocab] ("all") or None.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    top_ids: list[np.ndarray | None]
    top_logprobs: list[np.ndarray | None]
    logits: list[np.ndarray | None]

    @classmethod
    def empty(cls, n: int) -> StepResult:
        return cls(
            tokens=np.full(n, -1, dtype=np.int32),
            logprobs=np.full(n, np.nan, dtype=np.float32),
            top_ids=[None] * n,
            top_logprobs=[None] * n,
            logits=[None] * n,
        )
