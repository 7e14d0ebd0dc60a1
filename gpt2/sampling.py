"""Next-token selection and stop strings: small pure functions over numpy.

Every random choice takes an explicit `np.random.Generator`, so a seed reproduces a run.
Filters return a new float64 array in which removed tokens are `-inf`; they never modify
their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "StopChecker",
    "StopMatch",
    "apply_temperature",
    "find_stop",
    "greedy",
    "sample",
    "top_k_filter",
    "top_p_filter",
]


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """Validate a 1-D, non-empty, NaN-free logits vector and return it as float64."""
    arr = np.asarray(logits)
    if arr.ndim != 1:
        raise ValueError(f"logits must be 1-D (vocab,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("logits must not be empty")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"logits must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"logits contain NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    if np.isposinf(arr).any():
        # softmax of +inf is inf - inf = NaN; -inf (a masked token) is fine.
        raise ValueError(f"logits contain +inf at index {int(np.flatnonzero(np.isposinf(arr))[0])}")
    if np.isneginf(arr).all():
        raise ValueError("every logit is -inf: no token can be chosen")
    return arr


def greedy(logits: np.ndarray) -> int:
    """The index of the largest logit (the first one on ties, like numpy's argmax)."""
    return int(np.argmax(_check_logits(logits)))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by `temperature` (> 0). Temperature 0 is greedy; see `sample`."""
    arr = _check_logits(logits)
    if not np.isfinite(temperature) or temperature <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0 here, got {temperature}")
    return arr / temperature


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the `k` largest logits, set the rest to -inf; k = 0 (or k >= vocab) keeps all.

    Ties at the k-th value are broken by index (lower index kept), so exactly
    min(k, vocab) tokens survive.
    """
    arr = _check_logits(logits).copy()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"top_k must be an int, got {k!r}")
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {k}")
    if k == 0 or k >= arr.size:
        return arr
    # A stable sort on -logits puts the lower index first among equal values.
    order = np.argsort(-arr, kind="stable")
    arr[order[k:]] = -np.inf
    return arr


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability sum reaches `p`.

    At least one token (the most likely) is always kept; p = 1 keeps every token.
    """
    arr = _check_logits(logits).copy()
    if not (0.0 < p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return arr
    order = np.argsort(-arr, kind="stable")
    cumulative = np.cumsum(_softmax(arr)[order])
    # Number of tokens needed to reach p; the small slack keeps a set whose sum equals p
    # up to rounding from being extended by one more token.
    n_keep = int(np.searchsorted(cumulative, p - 1e-12, side="left")) + 1
    n_keep = min(max(n_keep, 1), arr.size)
    arr[order[n_keep:]] = -np.inf
    return arr


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> int:
    """Pick the next token id.

    temperature 0 is an explicit argmax (top_k/top_p are then irrelevant and rng is not
    used). Otherwise: temperature, then top-k, then top-p, then one draw from `rng`.
    """
    arr = _check_logits(logits)
    if not np.isfinite(temperature) or temperature < 0.0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
    if not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if temperature == 0.0:
        return int(np.argmax(arr))
    filtered = top_p_filter(top_k_filter(apply_temperature(arr, temperature), top_k), top_p)
    probs = _softmax(filtered)
    # Inverse-CDF draw: one uniform number per token, so a seed gives the same sequence on
    # every platform (Generator.choice's algorithm is not documented as stable).
    u = rng.random()
    index = int(np.searchsorted(np.cumsum(probs), u * probs.sum(), side="right"))
    index = min(index, arr.size - 1)
    # Guard against landing on a zero-probability token through rounding at the edges.
    if probs[index] == 0.0:
        index = int(np.flatnonzero(probs)[-1])
    return index


@dataclass(frozen=True)
class StopMatch:
    """Where to cut the text, and how many trailing characters to hold back.

    `cut` is the index of the earliest stop string's start (the text to emit is
    `text[:cut]`), or None when no stop string occurs. `holdback` is the number of trailing
    characters that are a proper prefix of some stop string and so must not be streamed
    yet; it is 0 when `cut` is set.
    """

    cut: int | None
    holdback: int


def _validate_stops(stops: Sequence[str]) -> tuple[str, ...]:
    if isinstance(stops, str):
        raise TypeError("stop strings must be a list of strings, not one string")
    result = tuple(stops)
    for s in result:
        if not isinstance(s, str) or not s:
            raise ValueError(f"every stop string must be a non-empty str, got {s!r}")
    return result


def find_stop(text: str, stops: Sequence[str]) -> StopMatch:
    """Find the earliest stop string in `text` and the streaming holdback.

    The holdback is the longest suffix of `text` that is a proper prefix of a stop string:
    those characters might become a stop string once more text arrives.
    """
    stops = _validate_stops(stops)
    cut: int | None = None
    for s in stops:
        at = text.find(s)
        if at != -1 and (cut is None or at < cut):
            cut = at
    if cut is not None:
        return StopMatch(cut=cut, holdback=0)
    holdback = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), holdback, -1):
            if text.endswith(s[:n]):
                holdback = n
                break
    return StopMatch(cut=None, holdback=holdback)


class StopChecker:
    """Streaming helper: feed decoded pieces, get back the text that is safe to emit.

    >>> sc = StopChecker(["\\n\\n"])
    >>> sc.feed("Hello\\n"), sc.feed("\\nWorld"), sc.stopped
    ('Hello', '', True)
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = _validate_stops(stops)
        self.text = ""  # everything fed so far
        self.emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add `piece`; return the new text that can be streamed now (maybe empty)."""
        if self.stopped:
            return ""
        # Only the tail that could hold a new match needs scanning: a match cannot start
        # before the held-back region, since everything emitted was checked already.
        self.text += piece
        match = find_stop(self.text[self.emitted :], self.stops)
        if match.cut is not None:
            self.stopped = True
            end = self.emitted + match.cut
        else:
            end = len(self.text) - match.holdback
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

    def flush(self) -> str:
        """At the end of generation: the held-back text, which turned out not to stop."""
        if self.stopped:
            return ""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    @property
    def final_text(self) -> str:
        """The whole text, cut at the stop string if one occurred."""
        return self.text[: self.emitted] if self.stopped else self.text
