"""The ggml engines against the float64 reference, the Ruby dumps and each other.

Tolerances (SPEC.md, issue 3): the ported engines (f32, exact GELU) and the
fast engine in f32 within max-abs 1e-3 of the reference at every position,
argmax equal everywhere; the ports built as the original graph (ggml's f16
GELU table) against the Ruby engine's own dumps: the full forward bit for bit
(same graph; the products, LayerNorms and softmaxes in the ports' own order,
that of the ggml-cpu AVX-512 build the dumps were made with, on any CPU:
gpt2.port.blocks), the KV port within 5e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinynn
from gpt2.engine import FastGPT2
from gpt2.generate import greedy_generate, greedy_generate_batch
from gpt2.parity import compare, read_dump
from gpt2.port import (
    GPT2FullForwardFFICache,
    GPT2FullForwardFFICacheCuda,
    GPT2KVFFICache,
    GPT2KVFFICacheCuda,
)
from gpt2.reference import GPT2Reference
from gpt2.weights import load_model
from tests.devices import DEVICES, use_device
from tests.tiny_models import check_close

FULL = {"cpu": GPT2FullForwardFFICache, "cuda": GPT2FullForwardFFICacheCuda}
KV = {"cpu": GPT2KVFFICache, "cuda": GPT2KVFFICacheCuda}
# ggml-cuda's f32 matrix products use TF32 tensor cores (tests/devices.py) and
# its flash attention reads f16: CUDA gets SPEC.md's GPU tolerance, 1e-2.
PORT_TOL = {"cpu": 1e-3, "cuda": 1e-2}


@pytest.fixture(params=DEVICES)
def device(request):
    return use_device(request.param)


def _prompt(config, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, n)


def test_full_forward_matches_reference_at_every_position(tiny_models, device):
    for m in tiny_models:
        ids = _prompt(m.config, m.config.n_positions)
        ref = GPT2Reference(m.weights).logits(ids)
        with FULL[device].from_weights(m.weights) as engine:
            assert engine.sess.backend_name == device
            got = engine.forward(ids)
        check_close(got, ref, PORT_TOL[device], f"{m.name} full-forward on {device}")
        assert (got.argmax(1) == ref.argmax(1)).all(), m.name


def test_full_forward_right_pads_short_prompts(tiny_model, device):
    ids = _prompt(tiny_model.config, 5)
    ref = GPT2Reference(tiny_model.weights).logits(ids)
    with FULL[device].from_weights(tiny_model.weights, t_seq=32) as engine:
        got = engine.forward(ids)
    assert got.shape == (5, tiny_model.config.vocab_size)
    check_close(got, ref, PORT_TOL[device], "padded full-forward")


def test_kv_step_by_step_equals_full_forward(tiny_models, device):
    for m in tiny_models:
        ids = _prompt(m.config, 24, seed=1)
        with FULL[device].from_weights(m.weights, t_seq=24) as full:
            want = full.forward(ids)
        with KV[device].from_weights(m.weights, max_t=24) as kv:
            got = kv.logits_for(ids)
        # CPU: both plain f32. CUDA: the full-forward's batched products are TF32
        # (measured 2.1e-3 on tiny_a on the H200), the KV's matrix-vector ones f32.
        tol = 1e-4 if device == "cpu" else 1e-2
        check_close(got, want, tol, f"{m.name} KV vs full-forward on {device}")
        ref = GPT2Reference(m.weights).logits(ids)
        check_close(got, ref, PORT_TOL[device], f"{m.name} KV vs reference on {device}")


def test_greedy_sequences_identical_across_engines(tiny_models, device):
    for m in tiny_models:
        prompt = list(_prompt(m.config, 6, seed=2))
        n_new = 20
        ref = GPT2Reference(m.weights)
        want, ids = [], list(prompt)
        for _ in range(n_new):
            nxt = int(ref.logits(ids)[-1].argmax())
            want.append(nxt)
            ids.append(nxt)
        with FULL[device].from_weights(m.weights, t_seq=len(prompt) + n_new) as full:
            assert greedy_generate(full, prompt, n_new) == want, m.name
        with KV[device].from_weights(m.weights, max_t=len(prompt) + n_new) as kv:
            assert greedy_generate(kv, prompt, n_new) == want, m.name
        with FastGPT2(m.weights, device) as fast:
            assert greedy_generate(fast, prompt, n_new) == want, m.name


@pytest.mark.parametrize("model", ["model_a", "model_b"])
def test_ruby_outputs_parity(ruby_outputs, model):
    """Our ports built as the Ruby graph, against the Ruby engine's dumps."""
    loaded = load_model(ruby_outputs / f"{model}.gguf")
    ids = [int(t) for t in (ruby_outputs / f"{model}_prompt_ids.txt").read_text().split()]
    with GPT2FullForwardFFICache.from_weights(loaded.weights, t_seq=8, gelu="ggml") as full:
        ours_full = full.forward(ids)[-1]
    with GPT2KVFFICache.from_weights(loaded.weights, max_t=32, gelu="ggml") as kv:
        ours_kv = kv.logits_for(ids)[-1]
    # The full forward reduces in the Ruby engine's order (its ggml-cpu AVX-512
    # build's, owned by the ports: gpt2.port.blocks), on any CPU: bit for bit.
    want_full = read_dump(ruby_outputs / f"{model}_ffi_full.txt")
    diff = np.abs(ours_full.astype(np.float64) - want_full)
    assert np.array_equal(ours_full.astype(np.float64), want_full), (
        f"{model} ffi_full: max-abs {diff.max():.3g} at {int(diff.argmax())} (want 0)"
    )
    # The KV port, measured on the 2-core CI machine kind: 3.6e-7 (model_a),
    # 1.7e-5 (model_b), the same on ggml's AVX-512, AVX2 and SSE builds and on
    # every CPU level. Not bit for bit: positions 1.. differ from our own full
    # forward too, in attention (cause not yet found; tolerance SPEC.md's 5e-5).
    report = compare(ours_kv, read_dump(ruby_outputs / f"{model}_ffi_kv.txt"), max_abs=5e-5)
    assert report.passed, f"{model} ffi_kv: max-abs {report.max_abs:.3g} at {report.max_abs_index}"
    # and the exact-GELU default against the Ruby f64 native dump
    with GPT2FullForwardFFICache.from_weights(loaded.weights, t_seq=8) as full:
        exact = full.forward(ids)[-1]
    report = compare(exact, read_dump(ruby_outputs / f"{model}_native.txt"), max_abs=1e-5)
    assert report.passed, f"{model} exact vs native: {report.max_abs:.3g}"


@pytest.mark.parametrize("level", tinynn.CPU_KERNELS)
def test_ruby_outputs_parity_on_every_cpu_level(ruby_outputs, monkeypatch, level):
    """The ports' products forced onto each CPU level this CPU runs
    (TINYNN_CPU_KERNELS): the same Ruby bits from each, so a CPU without
    AVX-512 gets them too."""
    if level not in tinynn.cpu_kernels_supported():
        pytest.skip(f"this CPU cannot run the {level} level")
    monkeypatch.setenv("TINYNN_CPU_KERNELS", level)
    for model in ("model_a", "model_b"):
        loaded = load_model(ruby_outputs / f"{model}.gguf")
        ids = [int(t) for t in (ruby_outputs / f"{model}_prompt_ids.txt").read_text().split()]
        with GPT2FullForwardFFICache.from_weights(loaded.weights, t_seq=8, gelu="ggml") as full:
            ours_full = full.forward(ids)[-1].astype(np.float64)
        want_full = read_dump(ruby_outputs / f"{model}_ffi_full.txt")
        diff = np.abs(ours_full - want_full)
        assert np.array_equal(ours_full, want_full), (
            f"{model} ffi_full on {level}: max-abs {diff.max():.3g} at {int(diff.argmax())}"
        )
        with GPT2KVFFICache.from_weights(loaded.weights, max_t=32, gelu="ggml") as kv:
            ours_kv = kv.logits_for(ids)[-1]
        report = compare(ours_kv, read_dump(ruby_outputs / f"{model}_ffi_kv.txt"), max_abs=5e-5)
        assert report.passed, f"{model} ffi_kv on {level}: max-abs {report.max_abs:.3g}"


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_fast_engine_parity(tiny_models, device, dtype):
    """f32: max-abs 1e-3 (CPU) at every position. f16 and q8_0 measured on the
    three tiny models (CPU): f16 max-abs 3.1e-3, argmax 100%; q8_0 max-abs
    8.4e-2, argmax 94% to 100% (random tiny models have close logits)."""
    tol = {"f32": PORT_TOL[device], "f16": 1e-2, "q8_0": 0.2}[dtype]
    for m in tiny_models:
        ids = _prompt(m.config, m.config.n_positions, seed=3)
        ref = GPT2Reference(m.weights).logits(ids)
        with FastGPT2(m.weights, device, dtype) as fast:
            got = fast.logits(ids)
        check_close(got, ref, tol, f"{m.name} fast {dtype} on {device}")
        agree = (got.argmax(1) == ref.argmax(1)).mean()
        assert agree >= (1.0 if dtype != "q8_0" else 0.9), f"{m.name} argmax {agree:.3f}"


def test_fast_engine_decode_continues_prefill(tiny_model, device):
    m = tiny_model
    ids = list(_prompt(m.config, 10, seed=4))
    ref = GPT2Reference(m.weights).logits(ids)
    with FastGPT2(m.weights, device) as fast, fast.sequence() as seq:
        first = seq.start(ids[:4])
        steps = [seq.step(t) for t in ids[4:]]
    check_close(np.vstack([first, *steps]), ref[3:], PORT_TOL[device], "prefill + decode")


@pytest.mark.parametrize("lengths", [(7, 7, 7), (3, 9, 1)], ids=["equal", "unequal"])
def test_fast_engine_batch_matches_single(tiny_model, device, lengths):
    """Sequences decoded together (each at its own position when the prompts
    differ in length) continue exactly as each does alone."""
    m = tiny_model
    prompts = [list(_prompt(m.config, t, seed=s)) for s, t in enumerate(lengths)]
    with FastGPT2(m.weights, device, n_slots=3) as fast:
        singles = [greedy_generate(fast, p, 12) for p in prompts]
        assert greedy_generate_batch(fast, prompts, 12) == singles


def test_batch_generation_ends_each_sequence_on_its_own(tiny_model):
    m = tiny_model
    prompts = [list(_prompt(m.config, t, seed=s)) for s, t in enumerate((4, 6))]
    with FastGPT2(m.weights, "cpu", n_slots=2) as fast:
        alone = [greedy_generate(fast, p, 10) for p in prompts]
        eos = alone[0][3]  # the first sequence's 4th new token ends it
        got = greedy_generate_batch(fast, prompts, 10, eos_id=eos)
        assert got[0] == alone[0][: alone[0].index(eos) + 1]
        assert got[1] == alone[1][: alone[1].index(eos) + 1] if eos in alone[1] else alone[1]
        # a prompt at the context end stops there; the others go on, as alone
        n = m.config.n_positions
        long_prompts = [[1] * (n - 3), [2] * 2]
        got = greedy_generate_batch(fast, long_prompts, 50)
        assert [len(g) for g in got] == [4, 50]
        assert got == [greedy_generate(fast, p, 50) for p in long_prompts]
        with pytest.raises(ValueError, match="n_slots=3"):
            greedy_generate_batch(fast, [[1]] * 3, 4)
        assert greedy_generate_batch(fast, prompts, 0) == [[], []]


def test_engines_reject_bad_input(tiny_model):
    m = tiny_model
    v, n = m.config.vocab_size, m.config.n_positions
    with GPT2FullForwardFFICache.from_weights(m.weights, t_seq=8) as full:
        with pytest.raises(ValueError, match="T_SEQ"):
            full.forward(list(range(9)))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            full.forward([0, v])
        with pytest.raises(ValueError, match="non-empty"):
            full.forward([])
    with GPT2KVFFICache.from_weights(m.weights, max_t=8) as kv:
        with pytest.raises(ValueError, match="max_T"):
            kv.decode_step(1, 8)
        with pytest.raises(ValueError, match="max_T"):
            kv.logits_for(list(range(9)))
    with FastGPT2(m.weights) as fast, fast.sequence() as seq:
        with pytest.raises(ValueError, match="context"):
            fast.logits([1] * (n + 1))
        with pytest.raises(ValueError, match="start"):
            seq.step(1)
        seq.start([1] * (n - 1))
        seq.step(1)
        with pytest.raises(ValueError, match="past the context"):
            seq.step(1)
    with pytest.raises(ValueError, match="closed|not realized"):
        full.forward([1])
