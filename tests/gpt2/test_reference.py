"""The numpy float64 reference against HF transformers and the Ruby engine's dumps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from gpt2.parity import compare, read_dump
from gpt2.reference import GPT2Reference
from gpt2.weights import load_model
from tests.tiny_models import check_close

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

TINY = [0, 1, 2]  # indices into the tiny_models fixture


def hf_logits(hf_dir, ids: list[int], dtype: torch.dtype, start_pos: int = 0) -> np.ndarray:
    """All-position logits of HF GPT2LMHeadModel loaded from the folder (eager attention)."""
    model = GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager")
    model = model.to(dtype).eval()
    x = torch.tensor([ids])
    pos = torch.arange(start_pos, start_pos + len(ids))[None]
    with torch.no_grad():
        out = model(input_ids=x, position_ids=pos).logits[0]
    return out.double().numpy()


def prompts(model) -> list[list[int]]:
    """Three prompts: text through the tokenizer, a random full-context one, one token."""
    rng = np.random.default_rng(7)
    cfg = model.config
    text = model.tokenizer.encode("The quick brown fox attends to everything before it.")
    return [
        text,
        rng.integers(0, cfg.vocab_size, cfg.n_positions).tolist(),
        [cfg.vocab_size - 1],
    ]


@pytest.mark.parametrize("i", TINY)
def test_reference_matches_hf_float32(tiny_models, i):
    """Tolerance: max-abs 1e-4 vs HF float32, every position (SPEC).

    Measured <= 2.4e-6 (2026-11-29).
    """
    m = tiny_models[i]
    ref = GPT2Reference(m.weights)
    for ids in prompts(m):
        ours = ref.logits(ids)
        check_close(
            ours,
            hf_logits(m.hf_dir, ids, torch.float32),
            1e-4,
            f"{m.name} T={len(ids)}",
        )


@pytest.mark.parametrize("i", TINY)
def test_reference_matches_hf_float64(tiny_models, i):
    """Tolerance: max-abs 1e-10 vs HF float64 (same math, rounding only; measured <= 4.4e-15)."""
    m = tiny_models[i]
    ref = GPT2Reference(m.weights)
    for ids in prompts(m):
        check_close(ref.logits(ids), hf_logits(m.hf_dir, ids, torch.float64), 1e-10, m.name)


def test_start_pos_matches_hf_position_ids(tiny_model):
    """start_pos shifts wpe like HF position_ids; tolerance 1e-10 at float64."""
    m = tiny_model
    ids = m.tokenizer.encode("shifted positions")
    start = m.config.n_positions - len(ids)
    ours = GPT2Reference(m.weights).logits(ids, start_pos=start)
    check_close(ours, hf_logits(m.hf_dir, ids, torch.float64, start), 1e-10, "start_pos")


@pytest.mark.parametrize("name", ["model_a", "model_b"])
def test_reference_matches_ruby_native_and_hf_dumps(ruby_outputs, name):
    """Last-position logits vs the Ruby f64 engine and HF float64 dumps.

    Tolerance: max-abs 1e-9, argmax equal, top-5 5/5. Measured: ~2e-15 (a) and ~3e-15 (b).
    """
    model = load_model(ruby_outputs / f"{name}.gguf")
    ids = [int(t) for t in (ruby_outputs / f"{name}_prompt_ids.txt").read_text().split()]
    ours = GPT2Reference(model.weights).logits(ids)[-1]
    for dump in ("native", "hf_f64"):
        ref = read_dump(ruby_outputs / f"{name}_{dump}.txt")
        report = compare(ours, ref, max_abs=1e-9)
        assert report.passed, f"{name} vs {dump}: max-abs {report.max_abs:.3e} " + (
            f"at [{report.max_abs_index}], argmax {report.argmax_ours}/{report.argmax_ref}, "
            f"top-5 overlap {report.overlap}/5"
        )


@pytest.mark.parametrize("name", ["model_a", "model_b"])
def test_ruby_ggml_dumps_are_within_ggml_accuracy(ruby_outputs, name):
    """The Ruby ggml (f32) dumps sit ~1e-3 from the reference; tolerance 2e-3, argmax equal.

    Measured: ffi_full/ffi_kv 7.0e-4 (model_a), 9.1e-4 (model_b), as in the fixture README.
    """
    model = load_model(ruby_outputs / f"{name}.gguf")
    ids = [int(t) for t in (ruby_outputs / f"{name}_prompt_ids.txt").read_text().split()]
    ours = GPT2Reference(model.weights).logits(ids)[-1]
    for dump in ("ffi_full", "ffi_kv"):
        report = compare(read_dump(ruby_outputs / f"{name}_{dump}.txt"), ours, max_abs=2e-3)
        assert report.passed, f"{name} {dump}: max-abs {report.max_abs:.3e}"


def test_causal(tiny_model):
    """Changing a later token leaves earlier positions' logits bit-identical."""
    ref = GPT2Reference(tiny_model.weights)
    a = ref.logits([1, 2, 3, 4, 5])
    b = ref.logits([1, 2, 3, 9, 7])
    np.testing.assert_array_equal(a[:3], b[:3])
    assert np.abs(a[3:] - b[3:]).max() > 1e-3


def test_input_validation(tiny_model):
    ref = GPT2Reference(tiny_model.weights)
    n_ctx, vocab = tiny_model.config.n_positions, tiny_model.config.vocab_size
    with pytest.raises(
        ValueError, match=f"token id {vocab} at position 1 is outside the vocabulary"
    ):
        ref.logits([0, vocab])
    with pytest.raises(ValueError, match="token id -1 at position 0 is outside the vocabulary"):
        ref.logits([-1])
    with pytest.raises(ValueError, match="non-empty"):
        ref.logits([])
    with pytest.raises(ValueError, match=f"context of {n_ctx}"):
        ref.logits([0] * (n_ctx + 1))
    with pytest.raises(ValueError, match=f"context of {n_ctx}"):
        ref.logits([0, 1], start_pos=n_ctx - 1)
    with pytest.raises(ValueError, match="context"):
        ref.logits([0], start_pos=-1)
    ref.logits([0], start_pos=n_ctx - 1)  # the last position is fine
