"""Next-token selection and stop strings: small pure functions over numpy.

Token choice follows THE SAMPLING RULE of native/cuda/sampling.h, the same rule
the device applies, here in float64: temperature <= 0 is an explicit argmax
(lowest id on ties); otherwise weights w = exp((l - max l) / temperature), 0
below 2^-40; top-k keeps the logits >= the k-th largest (ties all kept); top-p
keeps, among those, the logits >= the largest t whose kept mass at or above t
reaches top_p of theirs; then one uniform u draws the first kept id (ascending)
whose running weight exceeds u * sum. Parameters are float32 values, as the
device sees them. The native sampler (native/sampler.c, `tinynn.sample_rows`) applies
the same rule to a batch of rows in C, with the same choice for the same uniform.

Every random choice takes an explicit `np.random.Generator` (one `rng.random()`
a sampled token, none for greedy), so a seed reproduces a run. Filters return
a new float64 array in which removed tokens are `-inf`; they never modify their
input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SamplingParams",
    "StopChecker",
    "StopMatch",
    "apply_temperature",
    "choose",
    "draw_uniform",
    "draw_uniforms",
    "find_stop",
    "greedy",
    "kept_tokens",
    "sample",
    "top_k_filter",
    "top_p_filter",
]

# Weights below this count as 0 (the device's fixed point resolution; rule 2).
_W_MIN = 2.0**-40
_LOG_W_MIN = math.log(_W_MIN)
# The largest float32 below 1: a uniform that rounds up to 1 is clamped here.
_U_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def _f32(value: float) -> float:
    return float(np.float32(value))


@dataclass(frozen=True)
class SamplingParams:
    """One generation's sampling parameters, validated once.

    temperature 0 is greedy. top_k 0 and top_p 1 are off. temperature and top_p are
    stored as the float32 values the device uses (tnn_sampling_params), so the host and
    the device apply the rule to the same numbers.
    """

    temperature: float = 0.0  # >= 0; 0: argmax
    top_k: int = 0  # >= 0; 0: off
    top_p: float = 1.0  # in (0, 1]; 1: off

    def __post_init__(self) -> None:
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
            raise ValueError(f"temperature must be a number >= 0, got {t!r}")
        if not math.isfinite(t) or t < 0.0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {k!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
        if not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        object.__setattr__(self, "temperature", _f32(t))
        object.__setattr__(self, "top_k", int(k))
        object.__setattr__(self, "top_p", min(_f32(p), 1.0))

    @property
    def greedy(self) -> bool:
        """True when the token is the argmax (no draw)."""
        return self.temperature <= 0.0


def draw_uniform(rng: np.random.Generator) -> float:
    """One `rng.random()`, as the float32 in [0, 1) that the device gets (rule 0)."""
    return min(_f32(rng.random()), _U_MAX)


def draw_uniforms(rng: np.random.Generator, n: int) -> list[float]:
    """n draws at once: the same floats as n calls of draw_uniform(rng), in order
    (`rng.random(n)` is the stream of n `rng.random()` calls), for one numpy call
    where a generation loop needs a draw a token."""
    block = rng.random(n).astype(np.float32)  # round to nearest, as np.float32(x)
    return np.minimum(block, np.float32(_U_MAX)).tolist()


def _diagnose(arr: np.ndarray) -> None:
    """Raise the ValueError that explains why a logits vector has no finite maximum."""
    if np.isnan(arr).any():
        raise ValueError(f"logits contain NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    if np.isposinf(arr).any():
        # softmax of +inf is inf - inf = NaN; -inf (a masked token) is fine.
        raise ValueError(f"logits contain +inf at index {int(np.flatnonzero(np.isposinf(arr))[0])}")
    raise ValueError("every logit is -inf: no token can be chosen")


def _logits_and_argmax(logits: np.ndarray) -> tuple[np.ndarray, int]:
    """The logits as a 1-D numeric array (not copied) and the index of their maximum.

    One pass: argmax finds a NaN or +inf, and the all -inf row, through its value.
    """
    arr = np.asarray(logits)
    if arr.ndim != 1:
        raise ValueError(f"logits must be 1-D (vocab,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("logits must not be empty")
    if not np.issubdtype(arr.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"logits must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    i = int(np.argmax(arr))
    if not math.isfinite(float(arr[i])):
        _diagnose(arr)
    return arr, i


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """Validate a 1-D, non-empty, NaN-free logits vector and return it as float64."""
    return _logits_and_argmax(logits)[0].astype(np.float64, copy=False)


def _kth_largest(x: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """The k-th largest value of x (1 <= k <= x.size; ties counted as a sorted list
    would) and the ascending ids of the entries >= it.

    A strided sample first bounds the value from below, so only the few entries above
    the bound are partitioned; the whole vector only where the bound fails.
    """
    n = x.size
    stride = n // 2048
    if stride >= 4 and k * 8 <= n:
        sample_ = x[::stride]
        j = min(sample_.size, 2 * (-(-k // stride)) + 8)
        bound = np.partition(sample_, sample_.size - j)[sample_.size - j]
        ids = np.flatnonzero(x >= bound)
        if ids.size >= k:
            vals = x[ids]
            tau = vals[np.argpartition(vals, ids.size - k)[ids.size - k]]
            return float(tau), ids[vals >= tau]
    tau = float(np.partition(x, n - k)[n - k])
    return tau, np.flatnonzero(x >= tau)


def _weights(vals: np.ndarray, m: float, temperature: float) -> np.ndarray:
    """float64 exp((vals - m) / temperature), 0 below 2^-40 (rule 2)."""
    w = np.exp((vals.astype(np.float64) - m) / temperature)
    w[w < _W_MIN] = 0.0
    return w


def _top_p_threshold(vals: np.ndarray, w: np.ndarray, top_p: float) -> float:
    """The largest t with sum(w[vals >= t]) >= top_p * sum(w) (rule 4).

    Only entries of weight >= (1 - top_p) * W / (2 n) can matter: the others together
    weigh less than (1 - top_p) * W, so the set above them already reaches top_p. Those
    are bucketed by value (a monotone map, so a bucket is a value range and ties share
    one), the mass summed per bucket, and only the bucket where the sum crosses sorted.
    """
    total = float(w.sum())
    target = top_p * total
    big = np.flatnonzero(w >= 0.5 * (1.0 - top_p) * total / w.size)
    v, wb = vals[big].astype(np.float64), w[big]
    top = float(v.max())
    span = top - float(v.min())
    n_buckets = max(1, min(1024, v.size // 16))
    # a span so small (subnormal) that n_buckets / span overflows has one bucket
    if span > 0.0 and n_buckets > 1 and math.isfinite(n_buckets / span):
        bucket = np.minimum(((top - v) * (n_buckets / span)).astype(np.int64), n_buckets - 1)
        cum = np.cumsum(np.bincount(bucket, weights=wb, minlength=n_buckets))
        j = min(int(np.searchsorted(cum, target, side="left")), n_buckets - 1)
        above = float(cum[j - 1]) if j > 0 else 0.0
        inside = np.flatnonzero(bucket == j)
        if inside.size:  # empty only if rounding pushed j past the last bucket
            v, wb = v[inside], wb[inside]
        else:
            above = 0.0
    else:
        above = 0.0
    order = np.argsort(-v, kind="stable")
    cum_in = above + np.cumsum(wb[order])
    i = min(int(np.searchsorted(cum_in, target, side="left")), order.size - 1)
    return float(v[order[i]])


_DRAW_BLOCK = 256


def _draw(w: np.ndarray, u: float) -> int:
    """The first index whose running sum of w exceeds u * sum(w) (the last if rounding
    leaves none), by block sums first, so only one block is summed in order."""
    n = w.size
    if n <= 4 * _DRAW_BLOCK:
        cum = np.cumsum(w)
        return min(int(np.searchsorted(cum, u * float(cum[-1]), side="right")), n - 1)
    n_blocks = -(-n // _DRAW_BLOCK)
    padded = np.zeros(n_blocks * _DRAW_BLOCK)
    padded[:n] = w
    block_cum = np.cumsum(padded.reshape(n_blocks, _DRAW_BLOCK).sum(axis=1))
    x = u * float(block_cum[-1])
    b = min(int(np.searchsorted(block_cum, x, side="right")), n_blocks - 1)
    start = b * _DRAW_BLOCK
    rest = x - (float(block_cum[b - 1]) if b > 0 else 0.0)
    cum = np.cumsum(w[start : start + _DRAW_BLOCK])
    i = int(np.searchsorted(cum, rest, side="right"))
    if i < cum.size:
        return start + i
    return int(np.flatnonzero(w[: start + _DRAW_BLOCK])[-1])  # rounding: the last one


def _float32_floor(bound: float) -> np.float32:
    """The largest float32 <= bound (-inf below float32's range)."""
    if bound < -3.4e38:
        return np.float32(-np.inf)
    low = np.float32(bound)
    return np.nextafter(low, np.float32(-np.inf)) if float(low) > bound else low


def _kept(x: np.ndarray, i_max: int, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    m = float(x[i_max])
    t = params.temperature
    if 0 < params.top_k < x.size:
        # The top-k survivors, less those whose weight cannot reach 2^-40 (a float32
        # bound rounded down, so no id of weight >= 2^-40 is lost).
        _, ids = _kth_largest(x, params.top_k)
        ids = ids[x[ids] >= _float32_floor(m + t * _LOG_W_MIN * (1.0 + 1e-6))]
        vals = x[ids]
    else:
        ids, vals = None, x
    w = _weights(vals, m, t)
    keep = w > 0.0
    if params.top_p < 1.0:
        keep &= vals >= _top_p_threshold(vals, w, params.top_p)
    if ids is None and keep.all():
        return np.arange(x.size), w
    kept = np.flatnonzero(keep)
    return (kept if ids is None else ids[kept]), w[kept]


def kept_tokens(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The ids THE SAMPLING RULE keeps for a draw (ascending, weight > 0) and their
    float64 weights; for greedy params, the argmax alone with weight 1."""
    x, i_max = _logits_and_argmax(logits)
    if params.greedy:
        return np.array([i_max]), np.ones(1)
    return _kept(x, i_max, params)


def choose(logits: np.ndarray, params: SamplingParams, u: float) -> int:
    """The token THE SAMPLING RULE picks from `logits` with the uniform `u` in [0, 1).

    Pure: the draw is given, so the host and the device can be compared on the same u.
    """
    x, i_max = _logits_and_argmax(logits)
    if params.greedy:
        return i_max
    ids, w = _kept(x, i_max, params)
    return int(ids[_draw(w, u)])


def greedy(logits: np.ndarray) -> int:
    """The index of the largest logit (the first one on ties, like numpy's argmax)."""
    return _logits_and_argmax(logits)[1]


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by `temperature` (> 0). Temperature 0 is greedy; see `sample`."""
    arr = _check_logits(logits)
    if not np.isfinite(temperature) or temperature <= 0.0:
        raise ValueError(f"temperature must be a finite number > 0 here, got {temperature}")
    return arr / temperature


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the logits >= the k-th largest (rule 3), set the rest to -inf; k = 0 (or
    k >= vocab) keeps all. Ties at the k-th value are all kept, so more than k tokens
    may survive."""
    arr = _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"top_k must be an int, got {k!r}")
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {k}")
    if k == 0 or k >= arr.size:
        return arr.copy()
    tau, _ = _kth_largest(arr, int(k))
    return np.where(arr >= tau, arr, -np.inf)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the logits >= the largest t whose softmax mass at or above t reaches `p`
    (rule 4 at temperature 1); the rest become -inf. The most likely token and its ties
    are always kept; p = 1 keeps every token."""
    arr = _check_logits(logits)
    if not (0.0 < p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return arr.copy()
    w = _weights(arr, float(arr.max()), 1.0)
    return np.where(arr >= _top_p_threshold(arr, w, p), arr, -np.inf)


def sample(
    logits: np.ndarray,
    params: SamplingParams | np.random.Generator,
    rng: np.random.Generator | float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    *,
    temperature: float | None = None,
) -> int:
    """Pick the next token id: `sample(logits, params, rng)`.

    Greedy params return the argmax without touching rng; otherwise one
    `draw_uniform(rng)` and `choose`. The older form `sample(logits, rng, temperature,
    top_k, top_p)` still works (it validates its parameters at every call).
    """
    if isinstance(params, SamplingParams):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    elif isinstance(params, np.random.Generator):
        t = temperature if temperature is not None else rng if rng is not None else 0.0
        rng, params = params, SamplingParams(t, top_k, top_p)  # type: ignore[arg-type]
    else:
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(params).__name__}")
    if params.greedy:
        return greedy(logits)
    return choose(logits, params, draw_uniform(rng))


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
    return _find_stop(text, _validate_stops(stops))


def _find_stop(text: str, stops: tuple[str, ...]) -> StopMatch:
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
        # a stop string, or a proper prefix of one held back, starts with one of these:
        # a piece that holds none of them, after nothing held, is shown whole
        firsts = {s[0] for s in self.stops}
        self._first = next(iter(firsts)) if len(firsts) == 1 else None
        self._firsts = frozenset(firsts)
        self._emitted: list[str] = []  # text handed out, in pieces
        self._held = ""  # text fed and not handed out: a stop string's possible start
        self._rest = ""  # after a stop: the text from the stop string on
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add `piece`; return the new text that can be streamed now (maybe empty).
        Only the held-back tail and the new piece are scanned: everything handed
        out was checked already, so a step's work does not grow with the text."""
        if self.stopped:
            self._rest += piece
            return ""
        if not self._held and (
            self._first not in piece if self._first is not None else self._firsts.isdisjoint(piece)
        ):
            if piece:
                self._emitted.append(piece)
            return piece
        text = self._held + piece
        match = _find_stop(text, self.stops)
        if match.cut is not None:
            self.stopped = True
            end = match.cut
            self._rest = text[end:]
        else:
            end = len(text) - match.holdback
        out = text[:end]
        self._held = "" if self.stopped else text[end:]
        if out:
            self._emitted.append(out)
        return out

    def flush(self) -> str:
        """At the end of generation: the held-back text, which turned out not to stop."""
        if self.stopped:
            return ""
        out, self._held = self._held, ""
        if out:
            self._emitted.append(out)
        return out

    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._emitted) + self._held + self._rest

    @property
    def final_text(self) -> str:
        """The whole text, cut at the stop string if one occurred."""
        return "".join(self._emitted) if self.stopped else self.text
