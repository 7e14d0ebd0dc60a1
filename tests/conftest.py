"""Shared fixtures: tiny random GPT-2 models on disk (no network) and the Ruby dumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import GPT2_HEAD_SPECS, TinyModel, build_tiny_models

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[TinyModel]:
    """Three tiny GPT-2 shapes, each as HF folder, Ruby-layout GGUF and llama.cpp GGUF."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_model(tiny_models: list[TinyModel]) -> TinyModel:
    """The first tiny model (2 layers, n_embd 64, 4 heads, vocab 300, context 64)."""
    return tiny_models[0]


@pytest.fixture(scope="session")
def gpt2_head_models(tmp_path_factory: pytest.TempPathFactory) -> list[TinyModel]:
    """Tiny models with GPT-2's 64-wide heads (2 and 3 of them): what our fused
    CUDA decode step takes."""
    return build_tiny_models(tmp_path_factory.mktemp("gpt2_heads"), GPT2_HEAD_SPECS)


@pytest.fixture(scope="session")
def ruby_outputs() -> Path:
    """The Ruby engine's fixture models and logit dumps (see its README.md)."""
    return FIXTURES / "ruby_outputs"
