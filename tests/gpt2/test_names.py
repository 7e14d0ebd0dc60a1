"""The one tensor-name table: canonical <-> HF <-> both GGUF layouts, and layout detection."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_ARCH, MODEL_TENSORS

from gpt2.config import GPT2Config
from gpt2.names import (
    GGUF_LAYOUTS,
    LAYOUT_GGUF_LLAMA,
    LAYOUT_GGUF_RUBY,
    LAYOUT_HF,
    LAYOUTS,
    TABLE,
    canonical_shapes,
    detect_layout,
    from_canonical,
    from_layout,
    is_hf_buffer,
    is_tied_head,
    layout_shapes,
    to_canonical,
    to_layout,
)

# Every dimension different (C 6, 3C 18, F 10, V 7, P 5), so a wrong transpose shows.
CONFIG = GPT2Config(n_layer=2, n_embd=6, n_head=2, n_positions=5, vocab_size=7, n_inner=10)


def random_tensors(config: GPT2Config) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in canonical_shapes(config).items()
    }


def test_canonical_shapes_in_checkpoint_order():
    shapes = canonical_shapes(CONFIG)
    names = list(shapes)
    assert names[:4] == ["wte", "wpe", "h.0.ln_1.weight", "h.0.ln_1.bias"]
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]
    assert len(names) == 4 + 12 * CONFIG.n_layer
    assert shapes["wte"] == (7, 6) and shapes["wpe"] == (5, 6)
    assert shapes["h.1.attn.c_attn.weight"] == (6, 18)  # [in, out]: q | k | v columns
    assert shapes["h.1.mlp.c_fc.weight"] == (6, 10)
    assert shapes["h.1.mlp.c_proj.weight"] == (10, 6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_names_round_trip(layout):
    """canonical -> layout -> canonical for every tensor; the names cover the layout exactly."""
    stored = []
    for name in canonical_shapes(CONFIG):
        mapped = from_canonical(name, layout)
        assert mapped, name
        for m in mapped:
            assert to_canonical(m, layout) == name, (name, m)
        stored += mapped
    assert sorted(stored) == sorted(layout_shapes(CONFIG, layout))
    assert len(set(stored)) == len(stored)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_round_trip(layout):
    """to_layout then from_layout gives the canonical tensors back (tolerance: exact)."""
    tensors = random_tensors(CONFIG)
    stored = to_layout(tensors, CONFIG, layout)
    shapes = layout_shapes(CONFIG, layout)
    assert list(stored) == list(shapes)  # file order
    for name, x in stored.items():
        assert x.shape == shapes[name], name
        assert x.flags.c_contiguous, name
    back = from_layout(stored.__getitem__, CONFIG, layout)
    assert list(back) == list(tensors)  # checkpoint order
    for name, x in tensors.items():
        np.testing.assert_array_equal(back[name], x, err_msg=f"{layout} {name}")


def test_each_layout_stores_as_declared():
    t = random_tensors(CONFIG)
    llama = to_layout(t, CONFIG, LAYOUT_GGUF_LLAMA)
    ruby = to_layout(t, CONFIG, LAYOUT_GGUF_RUBY)
    hf = to_layout(t, CONFIG, LAYOUT_HF)
    c_attn = t["h.1.attn.c_attn.weight"]  # [C, 3C]
    np.testing.assert_array_equal(llama["blk.1.attn_qkv.weight"], c_attn.T)
    np.testing.assert_array_equal(llama["blk.1.ffn_up.weight"], t["h.1.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(llama["blk.1.attn_qkv.bias"], t["h.1.attn.c_attn.bias"])
    for j, part in enumerate(("q", "k", "v")):
        q_k_or_v = c_attn[:, 6 * j : 6 * (j + 1)]
        np.testing.assert_array_equal(ruby[f"blk.1.attn_{part}.weight"], q_k_or_v)
    np.testing.assert_array_equal(ruby["blk.1.ffn_up.weight"], t["h.1.mlp.c_fc.weight"])
    np.testing.assert_array_equal(hf["transformer.wte.weight"], t["wte"])
    assert llama["token_embd.weight"] is t["wte"]


def test_known_names():
    assert from_canonical("wte", LAYOUT_HF) == ("transformer.wte.weight",)
    assert from_canonical("wte", LAYOUT_GGUF_LLAMA) == ("token_embd.weight",)
    assert from_canonical("ln_f.bias", LAYOUT_GGUF_RUBY) == ("output_norm.bias",)
    assert from_canonical("h.3.attn.c_attn.weight", LAYOUT_GGUF_LLAMA) == ("blk.3.attn_qkv.weight",)
    assert from_canonical("h.3.attn.c_attn.bias", LAYOUT_GGUF_RUBY) == (
        "blk.3.attn_q.bias",
        "blk.3.attn_k.bias",
        "blk.3.attn_v.bias",
    )
    assert from_canonical("h.11.mlp.c_proj.weight", LAYOUT_GGUF_LLAMA) == (
        "blk.11.ffn_down.weight",
    )
    # HF names are read with or without the prefix
    assert to_canonical("wpe.weight", LAYOUT_HF) == "wpe"
    assert to_canonical("transformer.h.0.ln_2.bias", LAYOUT_HF) == "h.0.ln_2.bias"
    assert to_canonical("h.0.ln_2.bias", LAYOUT_HF) == "h.0.ln_2.bias"


def test_ruby_file_order():
    """The Ruby converter's order: whole-model tensors, then per block norms, q, k, v, ..."""
    names = list(layout_shapes(CONFIG, LAYOUT_GGUF_RUBY))
    assert names[:4] == [
        "token_embd.weight",
        "position_embd.weight",
        "output_norm.weight",
        "output_norm.bias",
    ]
    assert names[4:12] == [
        "blk.0.attn_norm.weight",
        "blk.0.attn_norm.bias",
        "blk.0.ffn_norm.weight",
        "blk.0.ffn_norm.bias",
        "blk.0.attn_q.weight",
        "blk.0.attn_q.bias",
        "blk.0.attn_k.weight",
        "blk.0.attn_k.bias",
    ]


def test_llama_layout_uses_ggufs_gpt2_tensors():
    assert {row.gguf for row in TABLE} <= set(MODEL_TENSORS[MODEL_ARCH.GPT2])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_detect_each_layout(layout):
    names = list(layout_shapes(CONFIG, layout))
    assert detect_layout(names, "m") == layout
    assert detect_layout(names[::-1], "m") == layout


def test_detect_hf_without_prefix_and_gguf_only():
    names = [n.removeprefix("transformer.") for n in layout_shapes(CONFIG, LAYOUT_HF)]
    assert detect_layout(names, "m") == LAYOUT_HF
    with pytest.raises(ValueError, match="m.gguf: no attention tensors"):
        detect_layout(names, "m.gguf", among=GGUF_LAYOUTS)


def test_detect_rejects_none_and_mixtures():
    no_attention = [n for n in layout_shapes(CONFIG, LAYOUT_GGUF_LLAMA) if "attn_qkv" not in n]
    with pytest.raises(ValueError) as err:
        detect_layout(no_attention, "x.gguf")
    message = str(err.value)
    assert message.startswith("x.gguf: no attention tensors")
    assert "blk.N.attn_qkv.weight" in message and "blk.N.attn_q.weight" in message
    mixed = ["blk.0.attn_qkv.weight", "blk.1.attn_q.weight"]
    with pytest.raises(ValueError, match="x.gguf: has the attention tensors of gguf-llama and"):
        detect_layout(mixed, "x.gguf")


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("blk.0.attn_rope.weight", LAYOUT_GGUF_LLAMA),
        ("blk.0.attn_q.weight", LAYOUT_GGUF_LLAMA),  # a Ruby name, not a llama.cpp one
        ("blk.0.attn_qkv.weight", LAYOUT_GGUF_RUBY),
        ("transformer.h.0.attn.rotary.weight", LAYOUT_HF),
        ("token_embd.weight", LAYOUT_HF),
        ("h.x.ln_1.weight", LAYOUT_HF),
    ],
)
def test_name_of_no_layout_rejected(name, layout):
    with pytest.raises(ValueError) as err:
        to_canonical(name, layout)
    message = str(err.value)
    assert repr(name) in message
    assert f"not a GPT-2 tensor name in the {layout} layout" in message
    assert "expected names like" in message


def test_unknown_canonical_name_and_layout_rejected():
    with pytest.raises(ValueError, match="'h.0.attn.rotary.weight' is not a GPT-2 tensor name"):
        from_canonical("h.0.attn.rotary.weight", LAYOUT_HF)
    with pytest.raises(ValueError, match="unknown layout 'onnx'"):
        from_canonical("wte", "onnx")
    with pytest.raises(ValueError, match="unknown layout 'onnx'"):
        layout_shapes(CONFIG, "onnx")


def test_tied_head_and_buffers():
    assert is_tied_head("lm_head.weight", LAYOUT_HF)
    assert is_tied_head("output.weight", LAYOUT_GGUF_LLAMA)
    assert not is_tied_head("token_embd.weight", LAYOUT_GGUF_RUBY)
    assert is_hf_buffer("transformer.h.3.attn.masked_bias")
    assert is_hf_buffer("h.0.attn.bias")
    assert not is_hf_buffer("h.0.attn.c_attn.bias")
