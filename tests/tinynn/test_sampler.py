"""tnn_sample_rows (native/sampler.c) against the numpy rule it implements.

Oracles: ``gpt2.sampling.choose`` for the chosen id (the same float32 uniform; ids
equal exactly), ``gpt2.completion.token_logprob`` for log-probabilities (within 1e-5,
or 1e-6 relative: the native values are float32), and a full stable sort of
log_softmax for the top-n ids (token_logprob's argpartition breaks ties at the n-th
value in no defined order). Every error case raises TinyNNError (C) or ValueError (the
wrapper), names the row at fault, and leaves the library working.
"""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest

import tinynn
from gpt2.completion import _log_softmax, token_logprob
from gpt2.sampling import SamplingParams, choose
from tinynn import SAMPLING_DTYPE, TinyNNError, sample_rows
from tinynn._lib import load
from tinynn.sampler import MAX_TOP

GPT2_VOCAB = 50257
U_MAX = float(np.nextafter(np.float32(1.0), np.float32(0.0)))  # the largest uniform
# (temperature, top_k, top_p): greedy, temperature only, top-k (heap and selection
# paths), top-p, both
SETTINGS = [
    (0.0, 0, 1.0),
    (0.0, 40, 0.9),
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (2.5, 0, 1.0),
    (1e-3, 0, 1.0),
    (1.0, 1, 1.0),
    (1.0, 40, 1.0),
    (0.8, 2000, 1.0),
    (1.0, 0, 0.95),
    (0.9, 0, 0.5),
    (1.3, 0, 0.01),
    (0.8, 40, 0.95),
    (1.0, 3, 0.3),
    (1.0, 5000, 0.9),
]
# uniforms near 0 and near 1, as the float32 values the native call gets
UNIFORMS = [float(np.float32(u)) for u in (0.0, 1e-7, 0.5, U_MAX, 1.0 - 1e-6)]


def no_text(ids: list[int]) -> str:
    return ""


def records(rows: list[tuple[float, int, float, float]]) -> np.ndarray:
    """SAMPLING_DTYPE records of (temperature, top_k, top_p, uniform)."""
    return np.array(rows, dtype=SAMPLING_DTYPE)


def logits_rows(rng: np.random.Generator, n: int, vocab: int, kind: str) -> np.ndarray:
    """n float32 rows of one kind: normal at several scales, ties, -inf entries, GPT-2-like."""
    if kind.startswith("normal"):
        scale = float(kind[6:])
        x = rng.standard_normal((n, vocab)) * scale
    elif kind == "ties":  # few distinct values: ties at every threshold
        x = rng.integers(-4, 3, (n, vocab)).astype(np.float64)
    elif kind == "neginf":  # a masked vocabulary, at least one finite logit a row
        x = rng.standard_normal((n, vocab)) * 2
        x[rng.random((n, vocab)) < 0.6] = -np.inf
        x[np.arange(n), rng.integers(0, vocab, n)] = rng.standard_normal(n)
    elif kind == "gpt2":  # a long tail and a few standouts, as a model's logits
        x = rng.standard_normal((n, vocab)) * 3 - 80
        for r in range(n):
            x[r, rng.integers(0, vocab, 8)] += rng.uniform(5, 25, 8)
    elif kind == "signed_zeros":
        x = rng.choice([-0.0, 0.0, -1.0], (n, vocab))
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


def check_rows(logits: np.ndarray, params: list[tuple[float, int, float]], uniforms) -> None:
    """Native ids against choose() on each row."""
    recs = []
    uniforms = [float(np.float32(u)) for u in uniforms]  # what the native call sees
    for (t, k, p), u in zip(params, uniforms, strict=True):
        sp = SamplingParams(t, k, p)
        recs.append((sp.temperature, sp.top_k, sp.top_p, u))
    got = sample_rows(logits, records(recs)).ids
    for r, ((t, k, p), u) in enumerate(zip(params, uniforms, strict=True)):
        want = choose(logits[r], SamplingParams(t, k, p), u)
        assert got[r] == want, (
            f"row {r}: native chose {got[r]}, choose() {want} for temperature {t}, top_k {k}, "
            f"top_p {p}, u {u}, vocab {logits.shape[1]}"
        )


@pytest.mark.parametrize("vocab", [1, 2, 3, 17, 300, 5000])
@pytest.mark.parametrize(
    "kind", ["normal1", "normal0.01", "normal20", "normal1e30", "ties", "neginf"]
)
def test_choice_matches_choose_small_vocab(vocab, kind):
    rng = np.random.default_rng(vocab * 31 + len(kind))
    settings = SETTINGS + [(1.0, vocab - 1, 1.0), (1.0, vocab, 0.9), (0.5, vocab + 7, 0.8)]
    params = [s for s in settings for _ in range(3)]
    uniforms = [float(np.float32(rng.random())) for _ in params]
    uniforms[: len(UNIFORMS)] = UNIFORMS
    rng.shuffle(uniforms)
    logits = logits_rows(rng, len(params), vocab, kind)
    check_rows(logits, params, uniforms)


@pytest.mark.parametrize("kind", ["normal1", "normal4", "gpt2", "ties", "neginf", "signed_zeros"])
def test_choice_matches_choose_gpt2_vocab(kind):
    rng = np.random.default_rng(len(kind))
    settings = SETTINGS + [(1.0, GPT2_VOCAB - 1, 0.99), (0.6, 1024, 1.0), (0.6, 1025, 0.9)]
    params = [s for s in settings for _ in range(2)]
    uniforms = [float(np.float32(rng.random())) for _ in params]
    uniforms[: len(UNIFORMS)] = UNIFORMS
    logits = logits_rows(rng, len(params), GPT2_VOCAB, kind)
    check_rows(logits, params, uniforms)


def test_every_uniform_walks_the_kept_tokens_in_order():
    """On one row, uniforms from 0 to just below 1 pick the kept ids in ascending order,
    each the one choose() picks: the running sum is walked in id order."""
    rng = np.random.default_rng(7)
    logits = logits_rows(rng, 1, 1000, "normal1")
    uniforms = [float(np.float32(u)) for u in np.linspace(0.0, U_MAX, 200)] + [U_MAX]
    params = [(1.0, 50, 0.9)] * len(uniforms)
    check_rows(np.repeat(logits, len(uniforms), axis=0), params, uniforms)
    ids = sample_rows(
        np.repeat(logits, len(uniforms), axis=0),
        records([(1.0, 50, 0.9, u) for u in uniforms]),
    ).ids
    assert np.all(np.diff(ids) >= 0)


def test_greedy_without_params_is_argmax_lowest_id():
    rng = np.random.default_rng(3)
    logits = logits_rows(rng, 40, 777, "ties")
    logits[5] = -0.0
    logits[5, 9] = 0.0  # -0 and +0 tie: id 0
    ids = sample_rows(logits).ids
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=1))
    assert ids.dtype == np.int32 and ids[5] == 0


def top_by_rule(lp: np.ndarray, n_top: int) -> np.ndarray:
    """The n_top largest of lp, ties to the lower id, by a full stable sort. (token_logprob
    picks among ties at the n-th value with argpartition, in no defined order.)"""
    return np.lexsort((np.arange(lp.size), -lp))[:n_top]


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """float32 values against float64 ones: within 1e-5, or 1e-6 relative; -inf alike."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    both_inf = np.isneginf(got) & np.isneginf(want)
    got, want = np.where(both_inf, 0.0, got), np.where(both_inf, 0.0, want)
    with np.errstate(invalid="ignore"):  # one -inf and one finite: inf, not a warning
        diff = np.nan_to_num(np.abs(got - want), nan=np.inf)
    tol = np.maximum(1e-5, 1e-6 * np.abs(want))
    worst = int(np.argmax(diff - tol)) if diff.size else 0
    assert diff.size == 0 or diff[worst] <= tol[worst], (
        f"{what}: largest difference {diff[worst]} at {worst} "
        f"(got {got[worst]}, want {want[worst]})"
    )


@pytest.mark.parametrize("vocab", [1, 5, 1000, GPT2_VOCAB])
@pytest.mark.parametrize("n_top", [0, 1, 5, 20])
def test_logprobs_match_token_logprob(vocab, n_top):
    n_top = min(n_top, vocab)
    rng = np.random.default_rng(vocab + n_top)
    kinds = ["normal1", "ties", "neginf", "gpt2"]
    logits = np.concatenate([logits_rows(rng, 3, vocab, k) for k in kinds])
    n = len(logits)
    recs = [(0.0 if r % 2 else 0.9, 40, 0.95, float(np.float32(rng.random()))) for r in range(n)]
    got = sample_rows(logits, records(recs), n_top=n_top, want_logprobs=True)
    assert got.top_ids.shape == got.top_logprobs.shape == (n, n_top)
    for r in range(n):
        want = token_logprob(logits[r], int(got.ids[r]), n_top, no_text)
        assert_close(got.logprobs[r : r + 1], [want.logprob], f"row {r} logprob")
        assert_close(got.top_logprobs[r], [lp for _, _, lp in want.top], f"row {r} top")
        want_ids = top_by_rule(_log_softmax(logits[r]), n_top)
        assert list(got.top_ids[r]) == list(want_ids), (
            f"row {r}: top {got.top_ids[r]} != {want_ids}"
        )


def test_no_rows_and_outputs_left_out():
    got = sample_rows(np.zeros((0, 10), np.float32), records([]), n_top=3, want_logprobs=True)
    assert got.ids.shape == (0,) and got.logprobs.shape == (0,) and got.top_ids.shape == (0, 3)
    got = sample_rows(np.ones((2, 4), np.float32))
    assert got.logprobs is None and got.top_ids.shape == (2, 0)


# ---- errors ---------------------------------------------------------------------------


def bad_row(logits: np.ndarray, row: int, index: int, value: float) -> np.ndarray:
    out = logits.copy()
    out[row, index] = value
    return out


@pytest.mark.parametrize(
    ("value", "words"),
    [(math.nan, "logit 11 is NaN"), (math.inf, "logit 11 is +inf")],
)
@pytest.mark.parametrize("sampled", [False, True])
def test_nan_and_posinf_name_row_and_index(value, words, sampled):
    logits = bad_row(np.zeros((4, 30), np.float32), 2, 11, value)
    logits[2, 20] = value  # a later one is not the one named
    params = records([(1.0 if sampled else 0.0, 0, 1.0, 0.5)] * 4)
    with pytest.raises(TinyNNError, match=re.escape(f"row 2: {words}")):
        sample_rows(logits, params)


def test_nan_is_named_before_an_earlier_posinf():
    logits = bad_row(bad_row(np.zeros((1, 30), np.float32), 0, 3, math.inf), 0, 9, math.nan)
    with pytest.raises(TinyNNError, match="row 0: logit 9 is NaN"):
        sample_rows(logits)


def test_all_neginf_row():
    logits = np.zeros((3, 8), np.float32)
    logits[1] = -np.inf
    with pytest.raises(TinyNNError, match="row 1: every logit is -inf"):
        sample_rows(logits, records([(0.9, 0, 1.0, 0.1)] * 3))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("temperature", math.nan, "temperature nan"),
        ("temperature", -0.5, "temperature -0.5"),
        ("temperature", math.inf, "temperature inf"),
        ("top_k", -1, "top_k -1"),
        ("top_p", 0.0, "top_p 0"),
        ("top_p", 1.5, "top_p 1.5"),
        ("top_p", math.nan, "top_p nan"),
        ("uniform", 1.0, "uniform 1"),
        ("uniform", -0.25, "uniform -0.25"),
        ("uniform", math.nan, "uniform nan"),
    ],
)
def test_params_out_of_range_name_the_row(field, value, words):
    params = records([(0.8, 40, 0.95, 0.5)] * 5)
    params[3][field] = value
    with pytest.raises(TinyNNError, match=f"row 3: {words}"):
        sample_rows(np.zeros((5, 100), np.float32), params)


def test_wrapper_refuses_shapes_and_types():
    x = np.zeros((2, 10), np.float32)
    with pytest.raises(ValueError, match="float32"):
        sample_rows(x.astype(np.float64))
    with pytest.raises(ValueError, match="2-D"):
        sample_rows(x[0])
    with pytest.raises(ValueError, match="2-D"):
        sample_rows(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="SAMPLING_DTYPE"):
        sample_rows(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected 2 params"):
        sample_rows(x, records([(0.0, 0, 1.0, 0.0)] * 3))
    with pytest.raises(ValueError, match="n_top"):
        sample_rows(x, n_top=11)
    with pytest.raises(ValueError, match="n_top"):
        sample_rows(np.zeros((1, 500), np.float32), n_top=MAX_TOP + 1)
    with pytest.raises(ValueError, match="n_top"):
        sample_rows(x, n_top=-1)
    with pytest.raises(TypeError, match="n_top"):
        sample_rows(x, n_top=2.0)
    # a non-contiguous view is copied, not misread
    wide = np.arange(40, dtype=np.float32).reshape(2, 20)
    assert list(sample_rows(wide[:, ::2]).ids) == [9, 9]


class Raw:
    """Valid buffers for a raw tnn_sample_rows call of n rows of V, n_top each."""

    def __init__(self, n: int = 3, vocab: int = 16, n_top: int = 2):
        self.logits = np.zeros((n, vocab), np.float32)
        self.params = records([(1.0, 0, 1.0, 0.5)] * n)
        self.ids = np.zeros(n, np.int32)
        self.lps = np.zeros(n, np.float32)
        self.top_ids = np.zeros((n, n_top), np.int32)
        self.top_lps = np.zeros((n, n_top), np.float32)
        self.args = [
            self.logits.ctypes.data, self.logits.nbytes, n, vocab,
            self.params.ctypes.data, self.params.nbytes,
            self.ids.ctypes.data, self.ids.nbytes,
            self.lps.ctypes.data, self.lps.nbytes,
            n_top,
            self.top_ids.ctypes.data, self.top_ids.nbytes,
            self.top_lps.ctypes.data, self.top_lps.nbytes,
        ]  # fmt: skip

    def call(self, **changes):
        names = [
            "logits", "logits_nbytes", "n_rows", "n_vocab", "params", "params_nbytes",
            "out_ids", "ids_nbytes", "out_logprobs", "logprobs_nbytes", "n_top",
            "out_top_ids", "top_ids_nbytes", "out_top_logprobs", "top_logprobs_nbytes",
        ]  # fmt: skip
        args = list(self.args)
        for name, value in changes.items():
            args[names.index(name)] = value
        return load().tnn_sample_rows(*args)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"logits_nbytes": 3 * 16 * 4 - 4}, "logits_nbytes is 188, expected 192"),
        ({"logits_nbytes": 3 * 16 * 4 + 4}, "logits_nbytes is 196, expected 192"),
        ({"logits": None}, "logits is NULL"),
        ({"params_nbytes": 32}, "params_nbytes is 32, expected 48"),
        ({"params": None}, "params is NULL but params_nbytes is 48"),
        ({"ids_nbytes": 8}, "ids_nbytes is 8, expected 12"),
        ({"out_ids": None}, "out_ids is NULL"),
        ({"logprobs_nbytes": 16}, "logprobs_nbytes is 16, expected 12"),
        ({"out_logprobs": None}, "out_logprobs is NULL but"),
        ({"top_ids_nbytes": 12}, "top_ids_nbytes is 12, expected 24"),
        ({"out_top_ids": None}, "out_top_ids is NULL"),
        ({"top_logprobs_nbytes": 0}, "top_logprobs_nbytes is 0, expected 24"),
        ({"out_top_logprobs": None}, "out_top_logprobs is NULL"),
        ({"n_top": 0}, "top_ids_nbytes is 24, expected 0"),
        ({"n_top": 17}, "n_top is 17, expected 0..16"),
        ({"n_top": -1}, "n_top is -1"),
        ({"n_rows": -1}, "n_rows is -1"),
        ({"n_rows": 4}, "logits_nbytes is 192, expected 256"),
        ({"n_vocab": 0}, "n_vocab is 0"),
        ({"n_vocab": 2**31}, "n_vocab is 2147483648"),
        ({"n_rows": 2**62, "n_vocab": 2**31 - 1}, "do not fit"),
        ({"n_rows": -(2**63)}, "n_rows is"),
    ],
)
def test_raw_sizes_are_checked(changes, words):
    raw = Raw()
    with pytest.raises(TinyNNError, match=words) as info:
        raw.call(**changes)
    assert info.value.code < 0
    assert not raw.ids.any(), "nothing is written when a size is wrong"


def test_raw_n_top_bounded_by_max_top():
    raw = Raw(n=1, vocab=MAX_TOP + 50, n_top=MAX_TOP + 1)
    with pytest.raises(TinyNNError, match=f"n_top is {MAX_TOP + 1}, expected 0..{MAX_TOP}"):
        raw.call()
    assert Raw(n=1, vocab=MAX_TOP + 50, n_top=MAX_TOP).call() == 0


def test_raw_optional_outputs_and_zero_rows():
    raw = Raw()
    assert raw.call(params=None, params_nbytes=0, out_logprobs=None, logprobs_nbytes=0) == 0
    assert raw.call(n_top=0, out_top_ids=None, top_ids_nbytes=0, out_top_logprobs=None,
                    top_logprobs_nbytes=0) == 0  # fmt: skip
    empty = Raw(n=0)
    assert empty.call(logits=None, out_ids=None) == 0


def test_library_works_after_errors():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(TinyNNError):
            sample_rows(np.full((1, 4), value, np.float32))
    assert tinynn._lib.load().tnn_last_error().startswith(b"tnn_sample_rows: row 0")
    ids = sample_rows(np.eye(3, dtype=np.float32), records([(1e-4, 0, 1.0, 0.3)] * 3)).ids
    assert list(ids) == [0, 1, 2]
    assert ctypes.sizeof(ctypes.c_float) * 4 == SAMPLING_DTYPE.itemsize
