"""The f32-exact paths for CUDA, forced on the CPU too: attention as
softmax(K^T Q) V instead of flash attention, and prefills of 4..16 tokens
padded to 17 (gpt2.tf32), in the fast engine and the
full-forward port.

Tolerances: against the float64 reference max-abs 1e-3 at every position,
argmax and the top-5 set equal everywhere (SPEC.md's f32 criteria). On CUDA
too: with no TF32 product and no f16 K/V, the CUDA engines compute like the
CPU's (TF32 alone measured 2.1e-3 on tiny_a, so 1e-3 tells them apart).
Padded against unpadded on the CPU: 1e-5 (the same f32 products).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gpt2.engine import FastGPT2
from gpt2.generate import greedy_generate
from gpt2.port import GPT2FullForwardFFICache, GPT2FullForwardFFICacheCuda
from gpt2.reference import GPT2Reference
from gpt2.tf32 import STRICT_F32_COLUMNS, TF32_COLUMNS
from gpt2.weights import GPT2Weights
from tests.devices import DEVICES, use_device
from tests.tiny_models import check_close, random_weights

REF_TOL = 1e-3
SAME_TOL = 1e-5
PADDED = STRICT_F32_COLUMNS  # 17
SHORT = (1, 4, 9, 16)  # prompt lengths: unpadded, then padded to 17


@pytest.fixture(params=DEVICES)
def device(request):
    return use_device(request.param)


def _exact(device: str) -> dict:
    """On CUDA the automatic choice (checked), on the CPU both forced on."""
    return {} if device == "cuda" else {"exact_attention": True, "pad_prefill": True}


def _prompt(config, n: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(0, config.vocab_size, n)]


def _check_top5(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """argmax equal and the same top-5 set at every position."""
    assert (got.argmax(1) == ref.argmax(1)).all(), f"{what}: argmax differs"
    top_got = np.sort(np.argsort(-got, axis=1)[:, :5], axis=1)
    top_ref = np.sort(np.argsort(-ref, axis=1)[:, :5], axis=1)
    bad = np.flatnonzero((top_got != top_ref).any(axis=1))
    assert bad.size == 0, f"{what}: top-5 differs at positions {bad.tolist()}"


def test_the_exact_paths_are_chosen_for_f32_on_cuda(tiny_model, device):
    for dtype in ("f32", "f16", "q8_0"):
        with FastGPT2(tiny_model.weights, device, dtype) as fast:
            on = device == "cuda" and dtype == "f32"
            assert (fast.exact_attention, fast.pad_prefill) == (on, on), dtype
            assert fast.kv_dtype == ("f32" if on or device == "cpu" and dtype == "f32" else "f16")
    with FastGPT2(tiny_model.weights, device, exact_attention=True, pad_prefill=False) as fast:
        assert fast.exact_attention and not fast.pad_prefill and fast.kv_dtype == "f32"


def test_exact_attention_matches_reference_at_every_position(tiny_models, device):
    for m in tiny_models:
        ids = _prompt(m.config, m.config.n_positions, seed=3)
        ref = GPT2Reference(m.weights).logits(ids)
        with FastGPT2(m.weights, device, **_exact(device)) as fast:
            assert fast.exact_attention
            got = fast.logits(ids)
        what = f"{m.name} exact attention on {device}"
        check_close(got, ref, REF_TOL, what)
        _check_top5(got, ref, what)


def test_padded_prefill_matches_reference(tiny_models, device):
    for m in tiny_models:
        ids = _prompt(m.config, 16, seed=5)
        ref = GPT2Reference(m.weights).logits(ids)
        with FastGPT2(m.weights, device, **_exact(device)) as fast:
            for t in SHORT:
                # every length up to 16 takes the least bucket, 16, which is TF32: 17
                # (a prompt of one token runs as a decode step)
                assert fast._prefill_length(1, t) == PADDED
                what = f"{m.name} prefill of {t} on {device}"
                got = fast.logits(ids[:t])
                check_close(got, ref[:t], REF_TOL, what)
                _check_top5(got, ref[:t], what)
                with fast.sequence() as seq:
                    last = seq.start(ids[:t])  # the last_only graph: row t-1, not 16
                check_close(last, ref[t - 1], REF_TOL, what + ", last token")
            # one padded graph per kind serves every length in 4..16
            keys = {(g.n_seq, g.n_q, not g.last_only) for g in fast._prefill_graphs}
            assert {(1, PADDED, True), (1, PADDED, False)} <= keys, keys
            assert not any(n_q in TF32_COLUMNS for _, n_q, _ in keys), keys


def test_padded_prefill_equals_unpadded_on_cpu(tiny_models):
    for m in tiny_models:
        ids = _prompt(m.config, 16, seed=6)
        with (
            FastGPT2(m.weights, exact_attention=True, pad_prefill=True) as padded,
            FastGPT2(m.weights, exact_attention=True, pad_prefill=False) as plain,
        ):
            for t in (4, 16):
                check_close(padded.logits(ids[:t]), plain.logits(ids[:t]), SAME_TOL, f"t={t}")


def test_decode_after_padded_prefill(tiny_models, device):
    """Decode overwrites the padding rows: logits and greedy ids as unpadded."""
    for m in tiny_models:
        ids = _prompt(m.config, 20, seed=7)
        ref = GPT2Reference(m.weights)
        want_logits = ref.logits(ids)
        with FastGPT2(m.weights, device, **_exact(device)) as fast:
            with fast.sequence() as seq:
                first = seq.start(ids[:5])
                steps = [seq.step(t) for t in ids[5:]]
            got = np.vstack([first, *steps])
            check_close(got, want_logits[4:], REF_TOL, f"{m.name} padded prefill + decode")
            _check_top5(got, want_logits[4:], f"{m.name} padded prefill + decode")
            prompt, n_new = ids[:6], 20
            padded = greedy_generate(fast, prompt, n_new)
        want, seq = [], list(prompt)
        for _ in range(n_new):
            want.append(int(ref.logits(seq)[-1].argmax()))
            seq.append(want[-1])
        assert padded == want, m.name
        with FastGPT2(m.weights, device, exact_attention=True, pad_prefill=False) as plain:
            assert greedy_generate(plain, prompt, n_new) == padded, m.name


def test_padded_batch_prefill_matches_single(tiny_model, device):
    m = tiny_model
    for n_seq, t in ((3, 7), (2, 2)):  # padded for n_q = 7, and for N = 4 columns
        prompts = [_prompt(m.config, t, seed=s) for s in range(n_seq)]
        with FastGPT2(m.weights, device, n_slots=n_seq, **_exact(device)) as fast:
            assert fast._prefill_length(n_seq, t) == PADDED
            singles = [greedy_generate(fast, p, 8) for p in prompts]
            with fast.batch(n_seq) as together:
                tokens = together.start_greedy(prompts)
                batch = [[tok] for tok in tokens]
                for _ in range(7):
                    tokens = together.step_greedy(tokens)
                    for seq, tok in zip(batch, tokens, strict=True):
                        seq.append(tok)
        assert batch == singles, (n_seq, t)


def test_padding_past_a_short_context(tiny_model, device):
    """n_ctx (the bound on positions) below 17 still pads a short prefill: the
    engine keeps 17 cache rows a sequence; decode then runs to n_ctx."""
    m = tiny_model
    ids = _prompt(m.config, 8, seed=8)
    want = GPT2Reference(m.weights)
    with FastGPT2(m.weights, device, n_ctx=12, **_exact(device)) as fast:
        assert fast._prefill_length(1, 8) == PADDED and fast.max_positions == 12
        check_close(fast.logits(ids), want.logits(ids), REF_TOL, f"{device} n_ctx=12")
        assert greedy_generate(fast, ids, 50) == greedy_generate(fast, ids, 5)
        with fast.sequence() as seq:
            new = [seq.start_greedy(ids)]  # the prefill's pick, then positions 8..11
            for _ in range(4):
                new.append(seq.step_greedy(new[-1]))
            with pytest.raises(ValueError, match="past the context"):
                seq.step_greedy(new[-1])  # position 12
    seq = list(ids)
    for _ in range(5):
        seq.append(int(np.argmax(want.logits(seq)[-1])))
    assert new == seq[8:]


def test_no_padding_without_room(tiny_model):
    """A model whose whole context is shorter than 17 cannot pad: a short
    prefill runs as it is (on TF32 under CUDA)."""
    config = replace(tiny_model.config, n_positions=12)
    weights = random_weights(config, seed=8)
    ids = _prompt(config, 8, seed=8)
    with FastGPT2(weights, exact_attention=True, pad_prefill=True) as fast:
        assert fast._prefill_length(1, 8) == 8
        got = fast.logits(ids)
    check_close(got, GPT2Reference(weights).logits(ids), REF_TOL, "n_positions=12")


class _PaddedFullForwardCpu(GPT2FullForwardFFICache):
    """The CPU port with the CUDA class's padding, to test it here."""

    PAD_PAST_TF32 = True


FULL = {"cpu": _PaddedFullForwardCpu, "cuda": GPT2FullForwardFFICacheCuda}


def test_full_forward_pads_short_t_seq(tiny_models, device):
    for m in tiny_models:
        for t in (3, 5, 16):
            ids = _prompt(m.config, t, seed=9)
            ref = GPT2Reference(m.weights).logits(ids)
            with FULL[device].from_weights(m.weights, t_seq=t) as full:
                assert full.t_graph == (PADDED if t in TF32_COLUMNS else t)
                assert full.max_positions == t
                got = full.forward(ids)
                with pytest.raises(ValueError, match="T_SEQ"):
                    full.forward([0] * (t + 1))
            what = f"{m.name} full-forward T_SEQ={t} on {device}"
            assert got.shape == (t, m.config.vocab_size), what
            # on CUDA the tiny models' d_head of 12..16 puts the V product
            # (d_head columns) on TF32 whatever T is: the port's 1e-2 there
            check_close(got, ref, REF_TOL if device == "cpu" else 1e-2, what)
            assert (got.argmax(1) == ref.argmax(1)).all(), what
            if device == "cpu":
                with GPT2FullForwardFFICache.from_weights(m.weights, t_seq=t) as plain:
                    check_close(got, plain.forward(ids), SAME_TOL, what + " vs unpadded")


def test_full_forward_pads_past_a_short_context(tiny_model):
    """A model whose context is under 17 still pads (wpe rows of zeros)."""
    m = tiny_model
    tensors = {**m.weights.tensors, "wpe": m.weights["wpe"][:8]}
    weights = GPT2Weights(replace(m.config, n_positions=8), tensors)
    ids = _prompt(m.config, 6, seed=10)
    with _PaddedFullForwardCpu.from_weights(weights) as full:
        assert (full.t_seq, full.t_graph) == (8, PADDED)
        got = full.forward(ids)
    check_close(got, GPT2Reference(weights).logits(ids), REF_TOL, "context 8, padded")
