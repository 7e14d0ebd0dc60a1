"""Memory follows what the user asks for, not what a file declares (issue 15, item 3).

A tiny model whose config declares a huge context used to get a KV cache and mask
table for all of it (a 66 KB GGUF with context 16384 took 3.4 GB). Now n_ctx
defaults to at most gpt2.engine.memory.DEFAULT_MAX_N_CTX, and a request past the
memory free is a ValueError naming the bytes and n_ctx / n_slots before anything
is allocated.
"""

from __future__ import annotations

import pytest

from gpt2.config import GPT2Config
from gpt2.engine import FastGPT2, memory
from gpt2.random_weights import random_weights


def _tiny(n_positions: int) -> GPT2Config:
    return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=n_positions, vocab_size=50)


def test_default_context_is_bounded():
    weights = random_weights(_tiny(16384))
    with FastGPT2(weights, "cpu", "f32", n_threads=1, n_slots=1) as engine:
        assert engine.n_ctx == memory.DEFAULT_MAX_N_CTX == 4096
        cache = memory.declared_bytes(engine.cache)
        assert cache <= 4096 * 4096 * 4 + 2 * 2 * 32 * 4096 * 4  # mask table + K|V rows
    with FastGPT2(weights, "cpu", "f32", n_threads=1, n_slots=1, n_ctx=100) as engine:
        assert engine.n_ctx == 100


def test_a_request_past_memory_is_refused_before_allocating():
    weights = random_weights(_tiny(2**20))
    # 2**20 positions: K|V rows 2 layers x 4 slots x 2**20 x 64 f32 = 2 GiB, and the
    # mask table 2**40 x 4 bytes: far past any machine's memory
    with pytest.raises(ValueError, match=r"needs [\d,]+ bytes .* n_ctx .* n_slots") as e:
        FastGPT2(weights, "cpu", "f32", n_ctx=2**20, n_threads=1)
    assert "host has" in str(e.value)


def test_check_fits_uses_the_free_memory(monkeypatch):
    weights = random_weights(_tiny(1024))
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 1 << 20)  # 1 MiB free
    with pytest.raises(ValueError, match="host has 1,048,576 bytes free"):
        FastGPT2(weights, "cpu", "f32", n_threads=1)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 1 << 30)
    with FastGPT2(weights, "cpu", "f32", n_threads=1) as engine:
        assert engine.n_ctx == 1024


def test_host_available_bytes_is_positive():
    free = memory.host_available_bytes()
    assert free is None or free > 0
