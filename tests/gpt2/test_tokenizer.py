"""Tokenizer: HF folder and GGUF sources agree, and any UTF-8 text round-trips."""

from __future__ import annotations

import json

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox.",
    "  leading spaces, tabs\tand\nnewlines\r\n",
    "Ünïcödé: naïve café, Ελληνικά, русский, 日本語のテキスト, العربية",
    "emoji 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "ends with <|endoftext|>",
    "",
    "\x00\x01 control bytes \x7f",
]


@pytest.fixture(scope="module")
def gguf_tokenizer(tiny_model) -> Tokenizer:
    return Tokenizer.from_gguf(gguf.GGUFReader(tiny_model.gguf_llama), tiny_model.gguf_llama)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tiny_model, gguf_tokenizer, text):
    for tok in (tiny_model.tokenizer, gguf_tokenizer):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


@settings(
    max_examples=200,
    deadline=None,
    database=None,  # write no .hypothesis folder into the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=80))
def test_round_trip_any_text(tiny_model, text):
    """Property: decode(encode(s)) == s for any Unicode string (surrogates excluded)."""
    tok = tiny_model.tokenizer
    assert tok.decode(tok.encode(text)) == text


def test_gguf_tokenizer_equals_folder_tokenizer(tiny_models):
    for m in tiny_models:
        t = Tokenizer.from_gguf(gguf.GGUFReader(m.gguf_llama), m.gguf_llama)
        assert t.vocab_size == m.tokenizer.vocab_size == m.config.vocab_size
        assert t.eos_id == m.tokenizer.eos_id == 0
        for text in TEXTS:
            assert t.encode(text) == m.tokenizer.encode(text), text


def test_special_token_is_one_id(tiny_model):
    tok = tiny_model.tokenizer
    assert tok.encode("<|endoftext|>") == [tok.eos_id]
    assert tok.token(tok.eos_id) == "<|endoftext|>"


def test_vocab_json_merges_txt(tiny_model, tmp_path):
    """The older HF form (vocab.json + merges.txt) gives the same ids as tokenizer.json."""
    tok = tiny_model.tokenizer
    vocab = {tok.token(i): i for i in range(tok.vocab_size)}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(tok.merges()) + "\n", encoding="utf-8"
    )
    old = Tokenizer.from_folder(tmp_path)
    assert old.vocab_size == tok.vocab_size
    assert old.eos_id == tok.eos_id
    for text in TEXTS:
        assert old.encode(text) == tok.encode(text)
        assert old.decode(old.encode(text)) == text


def test_gguf_fields(tiny_model):
    f = tiny_model.tokenizer.gguf_fields()
    assert f.model == "gpt2"
    assert len(f.tokens) == len(f.token_types) == tiny_model.config.vocab_size
    assert f.token_types[f.eos_id] == gguf.TokenType.CONTROL
    assert f.token_types.count(gguf.TokenType.NORMAL) == len(f.tokens) - 1
    # 256 byte symbols + <|endoftext|> + one id per merge
    assert len(f.merges) == tiny_model.config.vocab_size - 257


def test_errors(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="no tokenizer.json or vocab.json"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        Tokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        tiny_model.tokenizer.decode([tiny_model.config.vocab_size])


def test_gguf_without_tokenizer_gives_none(ruby_outputs):
    path = ruby_outputs / "model_a.gguf"
    assert Tokenizer.from_gguf(gguf.GGUFReader(path), path) is None
