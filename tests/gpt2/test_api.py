"""gpt2.load and the model object: text in, text out; ids in, ids out; the embedded model."""

from __future__ import annotations

import re

import numpy as np
import pytest

import gpt2
from gpt2.reference import GPT2Reference
from gpt2.resolve import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def default_model():
    with gpt2.load(device="cpu") as model:
        yield model


def test_embedded_model_writes_english(default_model):
    text = default_model.generate("The Python interpreter", max_new_tokens=40, temperature=0)
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 15, text
    # Readable, not noise: mostly common lower-case words, some of them English staples.
    assert sum(w.lower() in {"the", "is", "a", "of", "and", "to", "in", "with"} for w in words) >= 3
    letters = sum(c.isalpha() or c.isspace() for c in text)
    assert letters / max(len(text), 1) > 0.8, text


def test_embedded_model_is_small_and_has_a_tokenizer(default_model):
    assert DEFAULT_MODEL.stat().st_size <= 20 * 2**20
    assert default_model.tokenizer is not None
    assert default_model.tokenizer.eos_id is not None


def test_stream_equals_generate(default_model):
    kw = {"max_new_tokens": 25, "temperature": 0.9, "top_k": 40, "seed": 7}
    streamed = "".join(default_model.stream("Once upon a time", **kw))
    assert streamed == default_model.generate("Once upon a time", **kw)


def test_seed_reproduces_and_differs(default_model):
    kw = {"max_new_tokens": 20, "temperature": 1.0}
    a = default_model.generate("import", seed=1, **kw)
    assert a == default_model.generate("import", seed=1, **kw)
    others = {default_model.generate("import", seed=s, **kw) for s in range(2, 6)}
    assert len(others | {a}) > 1


def test_stop_string_cuts_text(default_model):
    full = default_model.generate("The Python", max_new_tokens=30, temperature=0)
    stop = full.strip().split()[3]
    cut = default_model.generate("The Python", max_new_tokens=30, temperature=0, stop=[stop])
    assert stop not in cut and full.startswith(cut)


def test_ids_in_ids_out_match_the_reference(tiny_model):
    ids = [3, 17, 42]
    ref = GPT2Reference(tiny_model.weights)
    want, seq = [], list(ids)
    for _ in range(6):
        nxt = int(ref.logits(seq)[-1].argmax())
        want.append(nxt)
        seq.append(nxt)
    for engine in ("fast", "full", "kv"):
        with gpt2.load(tiny_model.gguf_llama, device="cpu", engine=engine) as model:
            got = model.generate(ids, max_new_tokens=6, temperature=0)
            assert got == want, engine
            logits = model.logits(ids)
            assert logits.shape == (3, tiny_model.config.vocab_size)
            assert np.abs(logits - ref.logits(ids)).max() < 1e-3


def test_load_rejects_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="engine"):
        gpt2.load(tiny_model.gguf_llama, device="cpu", engine="turbo")
    with pytest.raises(ValueError, match="device"):
        gpt2.load(tiny_model.gguf_llama, device="tpu")
    with pytest.raises(ValueError, match="f32 only"):
        gpt2.load(tiny_model.gguf_llama, device="cpu", engine="kv", dtype="f16")
    with pytest.raises(FileNotFoundError):
        gpt2.load(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="no such model"):
        resolve_model("./nowhere/model.gguf")


def test_generate_batch_equals_generate_of_each():
    prompts = ["The list", "Python is a programming", "def"]
    with gpt2.load(device="cpu", max_batch=3) as model:
        alone = [model.generate(p, max_new_tokens=12) for p in prompts]
        assert model.generate_batch(prompts, max_new_tokens=12) == alone
        ids = [model.tokenizer.encode(p) for p in prompts]
        assert model.generate_batch(ids, max_new_tokens=5) == [
            model.generate(i, max_new_tokens=5) for i in ids
        ]
        with pytest.raises(ValueError, match="not a mix"):
            model.generate_batch(["a", [1, 2]], max_new_tokens=2)
    with gpt2.load(device="cpu", n_slots=2) as model, pytest.raises(ValueError, match="n_slots=3"):
        model.generate_batch(prompts, max_new_tokens=2)


def test_generation_stops_at_the_context(tiny_model):
    n = tiny_model.config.n_positions
    with gpt2.load(tiny_model.gguf_llama, device="cpu") as model:
        out = model.generate([1] * (n - 3), max_new_tokens=50, temperature=0)
        # the prompt fills positions 0..n-4; feeding back new tokens at n-3..n-1
        # gives three more after the first: four in all
        assert len(out) == 4
        with pytest.raises(ValueError, match="empty"):
            model.generate([], max_new_tokens=5)
