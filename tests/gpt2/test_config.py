"""GPT2Config: defaults, validation, HF config.json and GGUF metadata."""

from __future__ import annotations

import json
import os

import gguf
import pytest

from gpt2.config import GPT2Config


def test_defaults_are_gpt2_small():
    c = GPT2Config()
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (
        12,
        768,
        12,
        1024,
        50257,
    )
    assert c.d_ff == 3072
    assert c.d_head == 64
    assert c.layer_norm_epsilon == 1e-5
    assert GPT2Config(n_inner=100).d_ff == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"n_embd": 60, "n_head": 7},
            r"n_embd \(60\) must be divisible by n_head \(7\)",
        ),
        ({"n_layer": 0}, "n_layer must be a positive integer, got 0"),
        ({"n_head": -1}, "n_head must be a positive integer"),
        ({"vocab_size": 3.5}, "vocab_size must be a positive integer"),
        ({"n_positions": True}, "n_positions must be a positive integer"),
        ({"n_inner": 0}, "n_inner must be a positive integer"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon must be a positive float"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**kwargs)


def test_from_hf_config_file(ruby_outputs):
    c = GPT2Config.from_hf_config(ruby_outputs / "model_a_hf" / "config.json")
    assert c == GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=1000)
    assert GPT2Config.from_hf_config(ruby_outputs / "model_b_hf") == GPT2Config(
        n_layer=3, n_embd=96, n_head=6, n_positions=64, vocab_size=2000
    )


def test_from_hf_config_openai_style_dict():
    # openai-community/gpt2's config.json keys (n_ctx, task_specific_params, ...)
    d = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    }
    assert GPT2Config.from_hf_config(d) == GPT2Config()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"activation_function": "relu"}, "unsupported activation_function='relu'"),
        (
            {"scale_attn_by_inverse_layer_idx": True},
            "unsupported scale_attn_by_inverse",
        ),
        ({"model_type": "gptj"}, "model_type 'gptj' is not GPT-2"),
        ({"model_type": "llama", "rope_theta": 1e4}, "model_type 'llama' is not GPT-2"),
        ({"layer_norm_epsilon": float("inf")}, "layer_norm_epsilon must be a positive float"),
        ({"n_head": 5}, r"n_embd \(64\) must be divisible by n_head \(5\)"),
        ({"n_ctx": 32}, r"n_ctx \(32\) differs from n_positions \(64\)"),
    ],
)
def test_from_hf_config_rejects(tmp_path, ruby_outputs, change, message):
    d = json.loads((ruby_outputs / "model_a_hf" / "config.json").read_text())
    d.update(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as err:
        GPT2Config.from_hf_config(path)
    assert str(path) in str(err.value)


def test_from_hf_config_ignores_unknown_keys(tmp_path, ruby_outputs, caplog):
    """HF's convention: keys we do not use load, with a debug log that names them."""
    d = json.loads((ruby_outputs / "model_a_hf" / "config.json").read_text())
    base = GPT2Config.from_hf_config(d)
    d["rotary_dim"] = 64
    with caplog.at_level("DEBUG", logger="gpt2.config"):
        assert GPT2Config.from_hf_config(d) == base
    assert "rotary_dim" in caplog.text


def test_from_hf_config_deeply_nested(tmp_path):
    """Issue 15 item 5: a RecursionError before; a ValueError naming the file now."""
    path = tmp_path / "config.json"
    path.write_text('{"x": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ValueError, match="nested too deeply") as err:
        GPT2Config.from_hf_config(path)
    assert str(path) in str(err.value)


def test_from_hf_config_fifo_and_device(tmp_path):
    """Issue 15 item 2: a FIFO as config.json hung; /dev/zero was read without bound."""
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    with pytest.raises(ValueError, match="not a regular file"):
        GPT2Config.from_hf_config(fifo)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "config.json").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="not a regular file"):
        GPT2Config.from_hf_config(dev)


def test_from_hf_config_missing_or_broken_file(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        GPT2Config.from_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT2Config.from_hf_config(tmp_path)


def test_from_gguf_ruby_file(ruby_outputs):
    path = ruby_outputs / "model_b.gguf"
    c = GPT2Config.from_gguf(gguf.GGUFReader(path), path)
    # eps is stored as f32 (9.99999974e-06) and must come back as exactly 1e-5
    assert c == GPT2Config(n_layer=3, n_embd=96, n_head=6, n_positions=64, vocab_size=2000)


def test_from_gguf_vocab_from_token_embd(tiny_model):
    # llama.cpp-layout files carry no gpt2.vocab_size; the rows of token_embd give it
    reader = gguf.GGUFReader(tiny_model.gguf_llama)
    assert reader.get_field("gpt2.vocab_size") is None
    assert GPT2Config.from_gguf(reader, tiny_model.gguf_llama) == tiny_model.config


def test_from_gguf_missing_key(tmp_path):
    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(ValueError, match="missing metadata key gpt2.embedding_length"):
        GPT2Config.from_gguf(gguf.GGUFReader(path), path)


def test_to_hf_dict_round_trips():
    c = GPT2Config(n_layer=3, n_embd=48, n_head=4, n_positions=40, vocab_size=99, n_inner=100)
    assert GPT2Config.from_hf_config(c.to_hf_dict()) == c
    assert GPT2Config.from_hf_config(GPT2Config().to_hf_dict()) == GPT2Config()
