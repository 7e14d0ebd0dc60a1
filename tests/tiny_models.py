"""Tiny random GPT-2 models written to disk with no network: HF folder + GGUF (both layouts).

Weights come from `gpt2.random_weights` (drawn like the Ruby project's fixtures).
The tokenizer is a byte-level BPE trained on fixed English text to exactly the model's
vocabulary size, with <|endoftext|> as a special token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt2.config import GPT2Config
from gpt2.convert import convert_hf_to_gguf, write_gguf_ruby_layout
from gpt2.random_weights import random_weights
from gpt2.tokenizer import EOS_TOKEN, Tokenizer
from gpt2.weights import GPT2Weights

CORPUS = [
    (
        "The quick brown fox jumps over the lazy dog. A small model learns to predict the next "
        "token from the tokens before it, one position at a time, and it never looks ahead."
    ),
    (
        "Once upon a time there was a little robot who lived in a quiet town by the sea. Every "
        "morning it walked along the harbour, counted the boats, and wrote their names in a "
        "notebook that it kept under its arm."
    ),
    (
        "Attention lets every position read from the positions before it. The queries and keys "
        "decide how much each earlier token matters, and the values carry what is read. Layer "
        "normalization keeps the numbers in a sensible range, and the residual stream carries "
        "information from the bottom of the network to the top."
    ),
    (
        "In the winter the river froze and the children skated between the bridges. In the "
        "summer they swam, fished, and argued about whose turn it was to row the old wooden boat "
        "that their grandfather had built before the war."
    ),
    (
        "Numbers like 1024, 3.14159 and 42 appear in text too; so do punctuation marks: commas, "
        "colons, semicolons, question marks? and exclamation marks! The tokenizer must handle "
        "all of them, as well as words it has never seen before."
    ),
    (
        "She opened the letter, read it twice, and then laughed so loudly that the cat jumped off "
        "the table. Nobody in the house could remember the last time anything so surprising had "
        "happened on an ordinary Tuesday afternoon."
    ),
    (
        "Weights are stored in files; files are read by loaders; loaders check every name and "
        "every shape, and they refuse anything that does not match what the model expects."
    ),
]


@dataclass(frozen=True)
class TinySpec:
    name: str
    config: GPT2Config
    seed: int


SPECS = [
    TinySpec(
        "tiny_a",
        GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=300),
        11,
    ),
    # d_head 16 with 6 heads
    TinySpec(
        "tiny_b",
        GPT2Config(n_layer=3, n_embd=96, n_head=6, n_positions=64, vocab_size=512),
        22,
    ),
    # d_head 12: not a power of two; n_embd 60 is not a multiple of 32 (Q8_0 falls back)
    TinySpec(
        "tiny_c",
        GPT2Config(n_layer=2, n_embd=60, n_head=5, n_positions=48, vocab_size=300),
        33,
    ),
]

# GPT-2's own head width, 64 (every release has it; our fused CUDA kernels take only it)
GPT2_HEAD_SPECS = [
    TinySpec(
        "tiny_heads64",
        GPT2Config(n_layer=2, n_embd=128, n_head=2, n_positions=64, vocab_size=320),
        44,
    ),
    TinySpec(
        "tiny_heads64_3",
        GPT2Config(n_layer=3, n_embd=192, n_head=3, n_positions=48, vocab_size=300),
        55,
    ),
]


@dataclass(frozen=True)
class TinyModel:
    name: str
    config: GPT2Config
    weights: GPT2Weights
    hf_dir: Path
    gguf_ruby: Path
    gguf_llama: Path
    tokenizer: Tokenizer


def train_tokenizer(vocab_size: int) -> HFTokenizer:
    """Byte-level BPE with exactly `vocab_size` ids (256 bytes + <|endoftext|> + merges)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(
            f"tokenizer trained to {tok.get_vocab_size()} ids, wanted {vocab_size}: "
            "the corpus is too small for that many merges"
        )
    return tok


def hf_config_dict(config: GPT2Config, eos_id: int | None) -> dict:
    """A config.json as transformers writes it for GPT2LMHeadModel."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.0,
        "bos_token_id": eos_id,
        "embd_pdrop": 0.0,
        "eos_token_id": eos_id,
        "initializer_range": 0.02,
        "model_type": "gpt2",
        "resid_pdrop": 0.0,
        "tie_word_embeddings": True,
        **config.to_hf_dict(),
    }


def write_hf_folder(
    weights: GPT2Weights,
    folder: Path,
    hf_tok: HFTokenizer | None,
    prefix: str = "transformer.",
) -> Path:
    """config.json + model.safetensors (+ tokenizer.json) as an HF snapshot has them."""
    folder.mkdir(parents=True, exist_ok=True)
    eos = hf_tok.token_to_id(EOS_TOKEN) if hf_tok is not None else None
    (folder / "config.json").write_text(json.dumps(hf_config_dict(weights.config, eos), indent=2))
    state = {}
    for name, t in weights.tensors.items():
        key = f"{name}.weight" if name in ("wte", "wpe") else name
        state[prefix + key] = t
    save_file(state, str(folder / "model.safetensors"))
    if hf_tok is not None:
        hf_tok.save(str(folder / "tokenizer.json"))
    return folder


def build_tiny_model(spec: TinySpec, root: Path) -> TinyModel:
    """Write one spec's HF folder and both GGUF layouts under `root`."""
    weights = random_weights(spec.config, spec.seed)
    hf_tok = train_tokenizer(spec.config.vocab_size)
    hf_dir = write_hf_folder(weights, root / f"{spec.name}_hf", hf_tok)
    tokenizer = Tokenizer.from_folder(hf_dir)
    gguf_ruby = root / f"{spec.name}_ruby.gguf"
    write_gguf_ruby_layout(weights, gguf_ruby)
    gguf_llama = root / f"{spec.name}_llama.gguf"
    convert_hf_to_gguf(hf_dir, gguf_llama, "f32")
    return TinyModel(spec.name, spec.config, weights, hf_dir, gguf_ruby, gguf_llama, tokenizer)


def build_tiny_models(root: Path, specs: list[TinySpec] = SPECS) -> list[TinyModel]:
    """The tiny models of specs, written under `root`."""
    return [build_tiny_model(spec, root) for spec in specs]


def check_close(ours: np.ndarray, ref: np.ndarray, tol: float, what: str) -> float:
    """Fail unless max |ours - ref| <= tol; the message names the largest difference and where.

    Returns the max-abs difference so callers can print or record it (llm.c's check_tensor).
    """
    a, b = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    diff = np.abs(a - b)
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    max_abs = float(diff[worst])
    assert max_abs <= tol, (
        f"{what}: max-abs {max_abs:.3e} > tol {tol:.1e} at index {tuple(map(int, worst))} "
        f"(ours {a[worst]!r}, ref {b[worst]!r})"
    )
    return max_abs
