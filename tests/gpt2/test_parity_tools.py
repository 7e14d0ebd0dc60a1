"""Parity tools: the Ruby dump format, compare/format_report, and every engine against HF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2.parity import (
    HF_PARITY_ENGINES,
    KV_LONG_PROMPT,
    KV_SHORT_POSITIONS,
    compare,
    format_hf_parity,
    format_parity_table,
    format_report,
    hf_logits,
    hf_parity,
    kv_positions,
    parity_row,
    random_prompts,
    read_dump,
    write_dump,
)
from gpt2.reference import GPT2Reference
from tests.tiny_models import check_close


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


# -- every engine against HF transformers -------------------------------------------------


def test_random_prompts_are_fixed_by_the_seed():
    a = random_prompts(300, 3, 16)
    assert a == random_prompts(300, 3, 16)
    assert [len(p) for p in a] == [16, 16, 16]
    assert all(0 <= i < 300 for p in a for i in p)
    assert random_prompts(300, 3, 16, seed=1) != a


def test_kv_positions_shorten_long_prompts():
    assert kv_positions(1) == 1
    assert kv_positions(KV_LONG_PROMPT) == KV_LONG_PROMPT
    assert kv_positions(KV_LONG_PROMPT + 1) == KV_SHORT_POSITIONS


def test_parity_row_and_table():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(6, 40))
    good = parity_row("fast_f32", "cpu", ref + 1e-4, ref, max_abs=1e-3)
    assert (good.positions, good.argmax_equal, good.top5_overlap_min) == (6, 6, 5)
    assert good.passed and good.vs == "hf_f64"
    assert good.max_abs == pytest.approx(1e-4)
    ours = ref.copy()
    ours[3] = -ref[3]  # one position upside down: its argmax and top-5 disagree
    bad = parity_row("kv", "cuda", ours, ref, max_abs=1e3)
    assert not bad.passed and bad.argmax_equal == 5 and bad.top5_overlap_min < 5
    lines = format_parity_table([good, bad], 1e-3).splitlines()
    assert lines[0].split() == [
        "engine", "device", "vs", "max-abs", "mean-abs", "argmax", "top-5", "min", "result"
    ]  # fmt: skip
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split()[:3] == ["fast_f32", "cpu", "hf_f64"] and lines[2].endswith("PASS")
    assert "5/6" in lines[3] and lines[3].endswith("FAIL")
    assert lines[-1].startswith("pass: max-abs <= 0.001")


def test_hf_logits_match_the_reference(tiny_model):
    """HF in float64 against our numpy float64 model: tol 1e-9 (both f64, same math)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    prompts = random_prompts(tiny_model.config.vocab_size, 2, 5)
    hf32, hf64 = hf_logits(tiny_model.hf_dir, prompts)
    assert hf32.shape == hf64.shape == (10, tiny_model.config.vocab_size)
    ref = np.concatenate([GPT2Reference(tiny_model.weights).logits(p) for p in prompts])
    check_close(hf64, ref, 1e-9, "HF f64 vs reference")
    check_close(hf32, ref, 1e-4, "HF f32 vs reference")


def test_hf_parity_on_a_tiny_model(tiny_model):
    """Every engine passes at 1e-2; with prompts past KV_LONG_PROMPT the kv row covers
    KV_SHORT_POSITIONS positions of each prompt."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    length = KV_LONG_PROMPT + 2
    result = hf_parity(tiny_model.hf_dir, "cpu", n_prompts=2, length=length, n_threads=1)
    names = ["hf_f32", "reference", *(row for row, _ in HF_PARITY_ENGINES)]
    assert [r.engine for r in result.rows] == names
    assert result.passed, format_hf_parity(result)
    by_name = {r.engine: r for r in result.rows}
    assert by_name["kv"].positions == 2 * KV_SHORT_POSITIONS == result.kv_positions * 2
    assert by_name["fast_f32"].positions == 2 * length
    assert by_name["reference"].max_abs < 1e-4, by_name["reference"]
    assert result.prompts == random_prompts(tiny_model.config.vocab_size, 2, length)

    doc = json.loads(json.dumps(result.to_json()))
    assert (doc["prompts"], doc["length"], doc["max_abs_threshold"]) == (2, length, 1e-2)
    assert doc["rows"][0] == {
        "engine": "hf_f32", "device": "cpu", "vs": "hf_f64", "positions": 2 * length,
        "max_abs": by_name["hf_f32"].max_abs, "mean_abs": by_name["hf_f32"].mean_abs,
        "argmax_equal": 2 * length, "top5_overlap_min": 5, "passed": True,
    }  # fmt: skip
    text = format_hf_parity(result)
    assert f"2 random prompts of {length} tokens (seed 1234)" in text
    assert f"kv on the first {KV_SHORT_POSITIONS} positions" in text
    assert text.count("PASS") == len(names)


def test_hf_parity_refuses_bad_input(tiny_model):
    with pytest.raises(ValueError, match="needs an HF folder"):
        hf_parity(tiny_model.gguf_llama)
    context = tiny_model.config.n_positions
    with pytest.raises(ValueError, match=f"length must be in 1..{context}"):
        hf_parity(tiny_model.hf_dir, length=context + 1)
    with pytest.raises(ValueError, match="n_prompts must be >= 1"):
        hf_parity(tiny_model.hf_dir, n_prompts=0)
