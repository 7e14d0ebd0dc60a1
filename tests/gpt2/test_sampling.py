"""Tests for gpt2.sampling: argmax, filters, seeded draws, stop-string streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpt2.sampling import (
    StopChecker,
    apply_temperature,
    find_stop,
    greedy,
    sample,
    top_k_filter,
    top_p_filter,
)

# Finite, NaN-free logits of modest size; the range keeps softmax well conditioned.
logit_vectors = arrays(
    np.float64,
    st.integers(min_value=1, max_value=64),
    elements=st.floats(-30.0, 30.0, allow_nan=False, allow_infinity=False),
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# --- greedy and temperature 0 -------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    assert greedy(logits) == 1


@settings(max_examples=100, deadline=None)
@given(logit_vectors, st.integers(0, 2**32 - 1))
def test_temperature_zero_equals_argmax(logits: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # top_k/top_p must not change an explicit argmax.
    assert sample(logits, rng, temperature=0.0, top_k=3, top_p=0.5) == int(np.argmax(logits))


def test_temperature_zero_does_not_consume_rng() -> None:
    rng = np.random.default_rng(1)
    sample(np.array([1.0, 2.0]), rng, temperature=0.0)
    assert rng.random() == np.random.default_rng(1).random()


def test_apply_temperature_scales() -> None:
    np.testing.assert_allclose(apply_temperature(np.array([1.0, -2.0]), 0.5), [2.0, -4.0])


# --- top-k -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(logit_vectors, st.integers(1, 70))
def test_top_k_keeps_only_the_k_best(logits: np.ndarray, k: int) -> None:
    out = top_k_filter(logits, k)
    kept = np.flatnonzero(np.isfinite(out))
    assert len(kept) == min(k, logits.size)
    # Every kept logit is >= every removed one, and kept values are unchanged.
    removed = np.setdiff1d(np.arange(logits.size), kept)
    if removed.size:
        assert logits[kept].min() >= logits[removed].max()
    np.testing.assert_array_equal(out[kept], logits[kept])


@settings(max_examples=100, deadline=None)
@given(logit_vectors, st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_top_k_sample_never_leaves_the_k_best(logits: np.ndarray, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    allowed = set(np.flatnonzero(np.isfinite(top_k_filter(logits, k))).tolist())
    for _ in range(5):
        assert sample(logits, rng, temperature=1.5, top_k=k) in allowed


def test_top_k_zero_keeps_all_and_does_not_mutate() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    before = logits.copy()
    np.testing.assert_array_equal(top_k_filter(logits, 0), logits)
    top_k_filter(logits, 1)
    np.testing.assert_array_equal(logits, before)


def test_top_k_ties_keep_exactly_k() -> None:
    out = top_k_filter(np.zeros(5), 2)
    assert np.isfinite(out).sum() == 2


# --- top-p -----------------------------------------------------------------------------


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    # 0.5 < 0.6 <= 0.8: two tokens are needed.
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 0.6))).tolist() == [0, 1]
    # Exactly reaching p with two tokens does not pull in a third.
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 0.8))).tolist() == [0, 1]
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 0.81))).tolist() == [0, 1, 2]
    # A tiny p still keeps the single most likely token.
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 1e-9))).tolist() == [0]
    assert np.isfinite(top_p_filter(logits, 1.0)).all()


@settings(max_examples=150, deadline=None)
@given(logit_vectors, st.floats(0.01, 1.0))
def test_top_p_property(logits: np.ndarray, p: float) -> None:
    out = top_p_filter(logits, p)
    kept = np.flatnonzero(np.isfinite(out))
    probs = _softmax(logits)
    assert kept.size >= 1
    # The kept set reaches p ...
    assert probs[kept].sum() >= p - 1e-9
    # ... and is minimal: dropping its least likely member falls below p.
    if kept.size > 1:
        assert probs[kept].sum() - probs[kept].min() < p + 1e-9
    # ... and it consists of the most likely tokens.
    removed = np.setdiff1d(np.arange(logits.size), kept)
    if removed.size:
        assert logits[kept].min() >= logits[removed].max()


# --- seeds and distribution --------------------------------------------------------------


def test_same_seed_same_tokens() -> None:
    logits = np.random.default_rng(0).normal(size=100)

    def run(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample(logits, rng, temperature=0.9, top_k=50, top_p=0.95) for _ in range(50)]

    assert run(123) == run(123)
    assert run(123) != run(124)


def test_distribution_matches_softmax() -> None:
    """Chi-square goodness of fit with a fixed seed; the bound is loose on purpose."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    temperature = 0.8
    expected = _softmax(logits / temperature)
    rng = np.random.default_rng(2024)
    n = 20_000
    counts = np.bincount([sample(logits, rng, temperature) for _ in range(n)], minlength=5)
    chi2 = float((((counts - n * expected) ** 2) / (n * expected)).sum())
    # 4 degrees of freedom: the 0.999 quantile is 18.5.
    assert chi2 < 18.5, f"chi2={chi2:.2f} counts={counts.tolist()} expected={n * expected}"


def test_filtered_distribution_renormalizes() -> None:
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    rng = np.random.default_rng(7)
    n = 10_000
    counts = np.bincount([sample(logits, rng, 1.0, top_k=2) for _ in range(n)], minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / n - 0.4 / 0.7) < 0.03, counts


def test_masked_tokens_are_never_drawn() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0])
    rng = np.random.default_rng(3)
    assert {sample(logits, rng, 1.0) for _ in range(200)} == {1, 3}


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_k": -1}, "top_k"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample(np.zeros(4), np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((2, 3)), "1-D"),
        (np.array([]), "empty"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([0.0, np.inf]), r"\+inf"),
        (np.array([-np.inf, -np.inf]), "-inf"),
    ],
)
def test_bad_logits_raise(logits: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample(logits, np.random.default_rng(0), temperature=1.0)
    with pytest.raises(ValueError, match=message):
        greedy(logits)


def test_filter_argument_errors() -> None:
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(np.zeros(3), -2)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(np.zeros(3), 0.0)
    with pytest.raises(TypeError, match="rng"):
        sample(np.zeros(3), 42, temperature=1.0)  # type: ignore[arg-type]


# --- stop strings --------------------------------------------------------------------------


def test_find_stop_cut_and_holdback() -> None:
    assert find_stop("Hello world", ["\n\n"]).cut is None
    assert find_stop("Hello world", ["\n\n"]).holdback == 0
    assert find_stop("Hello\n", ["\n\n"]).holdback == 1
    assert find_stop("Hello\n\nmore", ["\n\n"]).cut == 5
    # Earliest stop wins, whichever is listed first.
    assert find_stop("a END b STOP", ["STOP", "END"]).cut == 2
    # The longest partial prefix over all stops is held back.
    assert find_stop("x ST", ["STOP", "XYZ"]).holdback == 2
    assert find_stop("abcab", ["abcabd"]).holdback == 5


def test_stop_string_split_over_two_pieces() -> None:
    sc = StopChecker(["<END>"])
    assert sc.feed("The answer is 42.<E") == "The answer is 42."
    assert not sc.stopped
    assert sc.feed("ND> trailing") == ""
    assert sc.stopped
    assert sc.final_text == "The answer is 42."
    assert sc.feed("more") == ""


def test_held_back_text_is_released_when_no_stop_follows() -> None:
    sc = StopChecker(["<END>"])
    assert sc.feed("a <E") == "a "
    assert sc.feed("xample") == "<Example"
    assert sc.feed(" <") == " "
    assert sc.flush() == "<"
    assert sc.final_text == "a <Example <"


def test_stream_pieces_concatenate_to_cut_text() -> None:
    rng = np.random.default_rng(5)
    text = "one two\n\nthree"
    for _ in range(50):
        cuts = sorted(rng.choice(np.arange(1, len(text)), size=3, replace=False).tolist())
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        sc = StopChecker(["\n\n", "zzz"])
        streamed = "".join(sc.feed(p) for p in pieces) + sc.flush()
        assert streamed == "one two"


def test_bad_stop_strings() -> None:
    with pytest.raises(TypeError):
        StopChecker("\n")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        find_stop("x", [""])
