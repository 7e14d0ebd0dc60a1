"""tnn_penalize_rows (native/sampler.c) against a numpy reference of gpt2.params' rule.

Tolerance: bit-exact (the C code and the reference do the same float32 operations in
the same order). Every error case raises TinyNNError naming the row at fault (or
ValueError from the wrapper), leaves the logits unchanged and the library working.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tinynn import TinyNNError, penalize_rows, sample_rows


def reference(logits, ids, counts, starts, params):
    """gpt2.params' rule in numpy, float32: repetition, then frequency and presence."""
    out = logits.copy()
    for r in range(len(out)):
        rep, freq, pres = (np.float32(v) for v in params[r])
        for j in range(starts[r], starts[r + 1]):
            i, c = ids[j], counts[j]
            lv = out[r, i]
            if rep != 1:
                lv = lv / rep if lv > 0 else lv * rep
            if c > 0:
                lv = lv - (freq * np.float32(c) + pres)
            out[r, i] = lv
    return out


def random_case(rng, n_rows, vocab):
    logits = rng.normal(0, 3, (n_rows, vocab)).astype(np.float32)
    ids, counts, starts = [], [], [0]
    for _ in range(n_rows):
        k = int(rng.integers(0, min(vocab, 40) + 1))
        ids.append(rng.choice(vocab, k, replace=False).astype(np.int32))
        counts.append(rng.integers(0, 4, k).astype(np.int32))
        starts.append(starts[-1] + k)
    params = np.stack(
        [rng.uniform(0.5, 2.0, n_rows), rng.uniform(-2, 2, n_rows), rng.uniform(-2, 2, n_rows)],
        axis=1,
    ).astype(np.float32)
    return (
        logits,
        np.concatenate(ids),
        np.concatenate(counts),
        np.array(starts, dtype=np.int64),
        params,
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("vocab", [1, 7, 300, 50257])
def test_matches_numpy_reference(seed, vocab):
    rng = np.random.default_rng(seed)
    case = random_case(rng, 6, vocab)
    want = reference(*case)
    logits = case[0]
    penalize_rows(*case)
    diff = np.abs(logits - want)
    assert np.array_equal(logits, want), f"largest difference {diff.max()} at {diff.argmax()}"


def test_neutral_penalties_leave_logits_and_choice_unchanged():
    rng = np.random.default_rng(1)
    logits, ids, counts, starts, params = random_case(rng, 4, 500)
    params[:] = (1.0, 0.0, 0.0)
    before = logits.copy()
    penalize_rows(logits, ids, counts, starts, params)
    assert np.array_equal(logits, before)
    assert np.array_equal(sample_rows(logits).ids, sample_rows(before).ids)


def test_no_rows_and_empty_histories():
    penalize_rows(
        np.zeros((0, 5), np.float32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(1, np.int64),
        np.zeros((0, 3), np.float32),
    )
    x = np.ones((2, 5), np.float32)
    penalize_rows(
        x,
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(3, np.int64),
        np.full((2, 3), 2.0, np.float32),
    )
    assert np.array_equal(x, np.ones((2, 5), np.float32))


def _args(**change):
    args = {
        "ids": np.array([1, 2, 3, 0], np.int32),
        "counts": np.array([0, 1, 2, 1], np.int32),
        "row_starts": np.array([0, 2, 3, 4], np.int64),
        "penalties": np.array([[1.2, 0.5, 0.5]] * 3, np.float32),
    }
    args.update(change)
    return args


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"ids": np.array([1, 2, 9, 0], np.int32)}, "row 1: id 9 (entry 0), expected 0..7"),
        ({"ids": np.array([1, 2, 3, -1], np.int32)}, "row 2: id -1"),
        ({"ids": np.array([1, 1, 3, 0], np.int32)}, "row 0: id 1 is listed twice"),
        ({"counts": np.array([0, 1, -2, 1], np.int32)}, "row 1: id 3 has count -2"),
        ({"row_starts": np.array([0, 3, 2, 4], np.int64)}, "row 1: ids 3..2"),
        ({"row_starts": np.array([1, 2, 3, 4], np.int64)}, "row_starts[0] is 1"),
        (
            {"penalties": np.array([[1.2, 0.5, 0.5], [1.2, 0, 0], [0.0, 0, 0]], np.float32)},
            "row 2: repetition penalty 0",
        ),
        (
            {"penalties": np.array([[1.2, 0.5, 0.5], [1, np.nan, 0], [1, 0, 0]], np.float32)},
            "row 1: frequency penalty nan",
        ),
    ],
)
def test_bad_arguments_name_the_row_and_change_nothing(change, words):
    logits = np.arange(24, dtype=np.float32).reshape(3, 8)
    with pytest.raises(TinyNNError, match=re.escape(words)):
        penalize_rows(logits, **_args(**change))
    assert np.array_equal(logits, np.arange(24, dtype=np.float32).reshape(3, 8))
    penalize_rows(logits, **_args())  # the library goes on


def test_raw_sizes_are_checked():
    from tinynn._lib import load

    logits = np.zeros((2, 4), np.float32)
    ids = np.array([0, 1], np.int32)
    starts = np.array([0, 1, 2], np.int64)
    params = np.ones((2, 3), np.float32)
    lib = load()
    base = [logits.ctypes.data, 32, 2, 4, ids.ctypes.data, 8, ids.ctypes.data, 8]
    base += [starts.ctypes.data, 24, params.ctypes.data, 24]
    for at, value, words in [
        (1, 31, "logits_nbytes 31, expected 32"),
        (5, 4, "ids_nbytes 4, expected 8"),
        (7, 12, "counts_nbytes 12, expected 8"),
        (9, 16, "starts_nbytes 16, expected 24"),
        (11, 0, "params_nbytes 0, expected 24"),
        (2, -1, "n_rows is -1"),
        (3, 0, "n_vocab is 0"),
        (8, None, "row_starts: NULL"),
    ]:
        args = list(base)
        args[at] = value
        with pytest.raises(TinyNNError, match=re.escape(words)):
            lib.tnn_penalize_rows(*args)


def test_wrapper_refuses_shapes_and_types():
    good = _args()
    with pytest.raises(ValueError, match="float32"):
        penalize_rows(np.zeros((3, 8)), **good)
    with pytest.raises(ValueError, match="C-contiguous"):
        penalize_rows(np.zeros((8, 3), np.float32).T, **good)
    with pytest.raises(ValueError, match="row_starts must have shape"):
        penalize_rows(np.zeros((2, 8), np.float32), **good)
    with pytest.raises(ValueError, match="ids must be"):
        penalize_rows(np.zeros((3, 8), np.float32), **_args(ids=np.array([1, 2, 3, 0])))
