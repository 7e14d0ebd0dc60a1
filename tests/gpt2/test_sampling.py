"""Tests for gpt2.sampling: THE SAMPLING RULE (native/cuda/sampling.h) on the host,
its edge cases, filters, seeded draws, a transcription of the device's threshold
search, and stop-string streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpt2.sampling import (
    SamplingParams,
    StopChecker,
    apply_temperature,
    choose,
    draw_uniform,
    find_stop,
    greedy,
    kept_tokens,
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
def test_top_k_keeps_the_values_at_or_above_the_kth(logits: np.ndarray, k: int) -> None:
    out = top_k_filter(logits, k)
    kept = np.flatnonzero(np.isfinite(out))
    # Rule 3: the k-th largest as a sorted list counts it; every tie of it is kept.
    tau = np.sort(logits)[::-1][min(k, logits.size) - 1]
    assert kept.tolist() == np.flatnonzero(logits >= tau).tolist()
    assert len(kept) >= min(k, logits.size)
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


def test_top_k_ties_at_the_kth_value_are_all_kept() -> None:
    assert np.isfinite(top_k_filter(np.zeros(5), 2)).sum() == 5
    logits = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    assert np.flatnonzero(np.isfinite(top_k_filter(logits, 2))).tolist() == [0, 1, 2, 3]
    params = SamplingParams(1.0, top_k=2)
    assert kept_tokens(logits, params)[0].tolist() == [0, 1, 2, 3]
    # Every tie can be drawn: u sweeps the kept set in id order.
    assert {choose(logits, params, u) for u in np.linspace(0.0, 0.999, 200)} == {0, 1, 2, 3}


# --- top-p -----------------------------------------------------------------------------


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    # 0.5 < 0.6 <= 0.8: two tokens are needed (p away from the sums 0.5, 0.8, 0.95,
    # where rounding decides).
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 0.6))).tolist() == [0, 1]
    assert np.flatnonzero(np.isfinite(top_p_filter(logits, 0.79))).tolist() == [0, 1]
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
    # The kept set reaches p (up to the weights below 2^-40 the rule drops) ...
    assert probs[kept].sum() >= p - 1e-9
    # ... and is minimal: dropping its lowest value (with its ties) falls below p ...
    lowest = logits[kept].min()
    if (logits[kept] > lowest).any():
        assert probs[kept][logits[kept] > lowest].sum() < p + 1e-9
    # ... and it is everything at or above its lowest value.
    assert kept.tolist() == np.flatnonzero(logits >= lowest).tolist()


# --- seeds and distribution --------------------------------------------------------------


def test_same_seed_same_tokens() -> None:
    logits = np.random.default_rng(0).normal(size=100)

    def run(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        params = SamplingParams(temperature=0.9, top_k=50, top_p=0.95)
        return [sample(logits, params, rng) for _ in range(50)]

    assert run(123) == run(123)
    assert run(123) != run(124)


def test_distribution_matches_softmax() -> None:
    """Chi-square goodness of fit with a fixed seed; the bound is loose on purpose."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    temperature = 0.8
    expected = _softmax(logits / temperature)
    rng = np.random.default_rng(2024)
    n = 20_000
    params = SamplingParams(temperature)
    counts = np.bincount([sample(logits, params, rng) for _ in range(n)], minlength=5)
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


# --- the rule's edge cases ------------------------------------------------------------


def test_new_and_old_call_forms_agree() -> None:
    logits = np.random.default_rng(0).normal(size=300).astype(np.float32)
    params = SamplingParams(temperature=0.7, top_k=20, top_p=0.9)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    new = [sample(logits, params, a) for _ in range(30)]
    old = [sample(logits, b, 0.7, 20, 0.9) for _ in range(30)]
    assert new == old


def test_one_uniform_per_token_and_choose_is_pure() -> None:
    logits = np.random.default_rng(1).normal(size=100)
    params = SamplingParams(1.0, top_k=10, top_p=0.8)
    rng = np.random.default_rng(4)
    got = sample(logits, params, rng)
    again = np.random.default_rng(4)
    assert got == choose(logits, params, draw_uniform(again))
    assert rng.random() == again.random()  # both consumed exactly one draw


def test_params_are_the_devices_float32_values() -> None:
    params = SamplingParams(0.8, 40, 0.95)
    assert params.temperature == float(np.float32(0.8))
    assert params.top_p == float(np.float32(0.95))
    assert SamplingParams(0.0).greedy and not params.greedy


class _FixedDraw:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_draw_uniform_is_a_float32_below_one() -> None:
    u = draw_uniform(_FixedDraw(1.0 - 1e-12))  # type: ignore[arg-type]
    assert u < 1.0 and u == float(np.float32(u))
    assert draw_uniform(_FixedDraw(0.0)) == 0.0  # type: ignore[arg-type]


def test_temperature_zero_takes_the_lowest_id_of_the_max() -> None:
    logits = np.array([1.0, 5.0, 5.0, -np.inf, 2.0], dtype=np.float32)
    assert choose(logits, SamplingParams(0.0), 0.9) == 1
    assert sample(logits, SamplingParams(0.0, 2, 0.5), np.random.default_rng(0)) == 1


def test_tiny_top_p_keeps_the_max_and_its_ties() -> None:
    logits = np.array([0.5, 3.0, 1.0, 3.0, 2.9])
    params = SamplingParams(1.0, top_p=1e-6)
    assert kept_tokens(logits, params)[0].tolist() == [1, 3]
    assert choose(logits, params, 0.0) == 1
    assert choose(logits, params, 0.999) == 3
    assert choose(logits[[0, 1, 2, 4]], params, 0.999) == 1


def test_neg_inf_logits_are_never_kept() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 1.0, -np.inf])
    # top_k 4 reaches into the -inf entries (they count in the sorted list) but a
    # token of weight 0 is never drawn.
    for params in (SamplingParams(1.0), SamplingParams(1.0, top_k=4), SamplingParams(5.0, 0, 0.99)):
        assert kept_tokens(logits, params)[0].tolist() == [1, 3]
        assert {choose(logits, params, u) for u in (0.0, 0.5, 0.999)} <= {1, 3}


def test_u_sweeps_the_kept_ids_in_id_order() -> None:
    logits = np.log(np.array([0.1, 0.4, 0.2, 0.3]))
    params = SamplingParams(1.0)
    # Running sums 0.1, 0.5, 0.7, 1.0: the first that exceeds u.
    assert [
        choose(logits, params, u) for u in (0.0, 0.09, 0.11, 0.49, 0.51, 0.69, 0.71, 0.999)
    ] == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]


def test_weights_below_two_to_the_minus_40_are_dropped() -> None:
    # exp(-28) < 2^-40 < exp(-27).
    logits = np.array([0.0, -27.0, -28.0, -np.inf])
    assert kept_tokens(logits, SamplingParams(1.0))[0].tolist() == [0, 1]


def test_large_vocab_fast_paths_match_a_plain_transcription() -> None:
    """The sampled-bound top-k, bucketed top-p and blocked draw against full sorts."""
    rng = np.random.default_rng(12)
    for trial in range(20):
        x = (rng.normal(size=50257) * 3).astype(np.float32)
        if trial % 4 == 0:
            x = np.round(x)  # many ties
        params = SamplingParams(
            0.8, [0, 40, 1000, 50256][trial % 4], [0.5, 0.9, 0.95, 1.0][trial // 5]
        )
        ids, _ = kept_tokens(x, params)
        xs = x.astype(np.float64)
        w = np.exp((xs - xs.max()) / params.temperature)
        w[w < 2.0**-40] = 0.0
        tau = -np.inf
        if 0 < params.top_k < x.size:
            tau = np.sort(xs)[::-1][params.top_k - 1]
        if params.top_p < 1.0:
            surv = np.flatnonzero(xs >= tau)
            order = surv[np.argsort(-xs[surv], kind="stable")]
            cum = np.cumsum(w[order])
            j = int(np.searchsorted(cum, params.top_p * w[surv].sum(), side="left"))
            tau = xs[order[min(j, order.size - 1)]]
        expected = np.flatnonzero((xs >= tau) & (w > 0))
        assert ids.tolist() == expected.tolist(), (trial, ids.size, expected.size)
        u = float(rng.random())
        cum = np.cumsum(w[expected])
        want = expected[min(int(np.searchsorted(cum, u * cum[-1], side="right")), cum.size - 1)]
        assert choose(x, params, u) == want


# --- the device's threshold search, transcribed ------------------------------------------

_KEY_NEG_INF = np.uint32(0x007FFFFF)


def _device_keys(x32: np.ndarray) -> np.ndarray:
    """sampling_kernels.cuh's key_of: order-preserving uint32 of a float32 (-0 as +0)."""
    b = np.where(x32 == 0, np.float32(0), x32).astype(np.float32).view(np.uint32)
    return np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def _device_radix_search(keys, values, lo: int, hi: int, need: int) -> int:
    """cluster_radix_search: the largest key t with sum(values[lo <= key, key >= t]) >= need,
    8 bits a pass from the top, leading bytes common to lo and hi skipped."""
    first = 4 if lo == hi else (32 - int(lo ^ hi).bit_length()) // 8
    prefix = 0 if first == 0 else hi & ((0xFFFFFFFF << (32 - 8 * first)) & 0xFFFFFFFF)
    for pass_ in range(first, 4):
        shift = 24 - 8 * pass_
        mask = 0 if pass_ == 0 else (0xFFFFFFFF << (32 - 8 * pass_)) & 0xFFFFFFFF
        sel = (keys >= lo) & ((keys & np.uint32(mask)) == prefix)
        hist = np.zeros(256, dtype=np.uint64)
        np.add.at(
            hist, ((keys[sel] >> np.uint32(shift)) & np.uint32(255)).astype(np.int64), values[sel]
        )
        incl = np.cumsum(hist[::-1])  # from the top bin down
        r = int(np.argmax(incl >= need))
        digit = 255 - r
        prefix |= digit << shift
        need -= int(incl[r] - hist[digit])
    return prefix


def _device_kept(x32: np.ndarray, params: SamplingParams) -> np.ndarray:
    keys = _device_keys(x32)
    m = x32.max()
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        w32 = np.exp((x32 - m) / np.float32(params.temperature)).astype(np.float32)
    fix = np.floor(np.where(w32 > 0, w32, 0).astype(np.float64) * 2.0**40).astype(np.uint64)
    hi = int(keys.max())
    tau = int(_KEY_NEG_INF)
    if 0 < params.top_k < x32.size:
        tau = _device_radix_search(keys, np.ones(x32.size, np.uint64), tau, hi, params.top_k)
    if params.top_p < 1.0:
        total = int(fix[keys >= tau].sum())
        need = min(max(int(np.ceil(float(params.top_p) * total)), 1), total)
        tau = _device_radix_search(keys, fix, tau, hi, need)
    return np.flatnonzero((keys >= tau) & (fix > 0))


def test_device_threshold_search_keeps_the_hosts_set() -> None:
    """Kept sets agree on many random rows, except where the top-p mass lands within
    1e-6 of top_p * W (float32 weights on the device, float64 here): counted, rare."""
    rng = np.random.default_rng(2026)
    near = 0
    rows = 400
    for r in range(rows):
        n = int(rng.integers(1, 3000))
        x = (rng.normal(size=n) * rng.choice([0.5, 3.0, 10.0])).astype(np.float32)
        if r % 5 == 0:
            x = np.round(x).astype(np.float32)  # ties
        if r % 7 == 0:
            x[rng.random(n) < 0.3] = -np.inf
            x[rng.integers(0, n)] = 1.0
        params = SamplingParams(
            float(rng.choice([0.3, 0.8, 1.0, 2.0])),
            int(rng.choice([0, 1, 5, 40, max(n - 1, 0)])),
            float(rng.choice([0.05, 0.5, 0.9, 0.95, 1.0])),
        )
        host = kept_tokens(x, params)[0]
        device = _device_kept(x, params)
        if host.tolist() == device.tolist():
            continue
        # Both are "everything at or above a threshold": one holds the other, and the
        # smaller one's float64 mass sits at top_p * W within rounding.
        small, big = (host, device) if host.size < device.size else (device, host)
        assert set(small.tolist()) <= set(big.tolist()), (r, params)
        xs = x.astype(np.float64)
        w = np.exp((xs - xs.max()) / params.temperature)
        w[w < 2.0**-40] = 0.0
        tau_k = np.sort(xs)[::-1][params.top_k - 1] if 0 < params.top_k < n else -np.inf
        total = w[xs >= tau_k].sum()
        gap = abs(w[small].sum() - params.top_p * total) / total
        assert gap < 1e-5, (r, params, gap)
        near += 1
    assert near <= rows // 50, f"{near} of {rows} rows near a boundary"


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
