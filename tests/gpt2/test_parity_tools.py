"""Parity tools: the Ruby dump format and compare/format_report."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2.parity import compare, format_report, read_dump, write_dump


def test_dump_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    row = rng.normal(0, 3, 1000)
    row[:3] = [0.1, -1e-300, 5e300]  # repr must round-trip extreme values too
    path = tmp_path / "ours.txt"
    write_dump(path, row)
    assert len(path.read_text().splitlines()) == 1
    np.testing.assert_array_equal(read_dump(path), row)
    npy = tmp_path / "ours.npy"
    np.save(npy, row[3:].astype(np.float32))
    np.testing.assert_array_equal(read_dump(npy), row[3:].astype(np.float32))


def test_reads_ruby_float_to_s_dumps(ruby_outputs):
    a = read_dump(ruby_outputs / "model_a_native.txt")
    assert a.shape == (1000,)
    assert a.dtype == np.float64
    assert read_dump(ruby_outputs / "model_b_ffi_kv.txt").shape == (2000,)


def test_read_dump_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_dump(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0 2.0 abc\n")
    with pytest.raises(ValueError, match="not a list of floats"):
        read_dump(bad)
    bad.write_text("1.0\n2.0\n")
    with pytest.raises(ValueError, match="expected one line"):
        read_dump(bad)
    with pytest.raises(ValueError, match="one row"):
        write_dump(bad, np.zeros((2, 3)))


def test_compare_matches_the_recorded_crosscheck(ruby_outputs):
    """Reproduces crosscheck_metrics.jsonl: model_a ffi_full vs hf_f64."""
    ours = read_dump(ruby_outputs / "model_a_ffi_full.txt")
    ref = read_dump(ruby_outputs / "model_a_hf_f64.txt")
    r = compare(ours, ref, max_abs=1e-2)
    assert r.passed
    assert r.max_abs == pytest.approx(0.0007037910000748937, rel=1e-12)
    assert r.max_abs_index == 306
    assert r.mean_abs == pytest.approx(0.0001492718636254213, rel=1e-9)
    assert (r.argmax_ours, r.argmax_ref) == (234, 234)
    assert r.top_ours == r.top_ref == [234, 974, 613, 461, 64]
    assert r.overlap == 5
    assert not compare(ours, ref, max_abs=1e-4).passed  # threshold alone can fail it


def test_compare_fails_on_argmax_or_top5():
    ref = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    swapped = ref.copy()
    swapped[[5, 6]] = [6.0, 5.0]
    r = compare(swapped, ref)
    assert not r.passed
    assert not r.argmax_equal
    assert r.overlap == 5
    sixth_in = ref.copy()
    sixth_in[1] = 5.5  # enters the top-5 without changing argmax
    r = compare(sixth_in, ref)
    assert r.argmax_equal
    assert r.overlap == 4
    assert not r.passed
    assert "FAIL" in format_report(r)


def test_compare_2d_reports_worst_row():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 50))
    ours = ref + 1e-6
    ours[2, 17] += 0.5
    r = compare(ours, ref, max_abs=1e-3)
    assert not r.passed
    assert r.rows_failed == [2]
    assert (r.row, r.max_abs_row, r.max_abs_index) == (2, 2, 17)
    assert r.max_abs == pytest.approx(0.5 + 1e-6)
    assert r.ours_at_max == ours[2, 17]
    text = format_report(r)
    assert "[2, 17]" in text
    assert "rows failed: 1/4" in text


def test_compare_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="non-finite values in ours"):
        compare(np.array([np.nan, 1.0]), np.zeros(2))


def test_format_report_lines():
    ref = np.arange(10.0)
    text = format_report(compare(ref + 0.01, ref, max_abs=0.1))
    assert "shape: (10,)" in text
    assert "max-abs diff: 1.000000e-02" in text
    assert "argmax: ours=9 ref=9 match" in text
    assert "top-5 overlap: 5/5" in text
    assert text.endswith("result: PASS (max-abs threshold: 0.1)")
