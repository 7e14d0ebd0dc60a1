"""Loaders: every source gives the same canonical weights; bad files are rejected by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpt2.config import GPT2Config
from gpt2.names import LAYOUT_GGUF_LLAMA, LAYOUT_GGUF_RUBY, LAYOUT_HF
from gpt2.weights import GPT2Weights, expected_shapes, finite, load_model, validate


def gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """Raw tensors of a GGUF (F32 files only), numpy-shaped, copied."""
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def write_gguf(
    path: Path,
    tensors: dict[str, np.ndarray],
    config: GPT2Config,
    *,
    head_count: int | None = None,
    tokens: list[str] | None = None,
) -> Path:
    """A GGUF with gpt2.* metadata and the given tensors (to build broken variants)."""
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(config.d_ff)
    w.add_block_count(config.n_layer)
    w.add_head_count(head_count or config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_merges([])
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_same_weights(a: GPT2Weights, b: GPT2Weights, what: str) -> None:
    """Bit-identical tensors; on failure name the tensor and the largest difference."""
    assert a.config == b.config, what
    assert a.tensors.keys() == b.tensors.keys(), what
    for name in a.tensors:
        x, y = a.tensors[name], b.tensors[name]
        assert x.dtype == y.dtype == np.float32, f"{what}: {name} dtype"
        assert x.flags.c_contiguous, f"{what}: {name} not C-contiguous"
        if not np.array_equal(x, y):
            d = np.abs(x - y)
            at = np.unravel_index(int(d.argmax()), d.shape)
            pytest.fail(f"{what}: {name} differs, max-abs {d.max():.3e} at {at}")


# --- every source gives the same weights -----------------------------------------------


def test_all_sources_identical(tiny_models):
    """Tolerance: exact (bit-identical float32) across HF folder, Ruby and llama.cpp GGUF."""
    for m in tiny_models:
        hf, ruby, llama = (load_model(p) for p in (m.hf_dir, m.gguf_ruby, m.gguf_llama))
        assert (hf.layout, ruby.layout, llama.layout) == (
            LAYOUT_HF,
            LAYOUT_GGUF_RUBY,
            LAYOUT_GGUF_LLAMA,
        )
        for loaded in (hf, ruby, llama):
            assert_same_weights(loaded.weights, m.weights, f"{m.name} {loaded.layout}")
            assert loaded.config == m.config
        assert hf.tokenizer is not None
        assert llama.tokenizer is not None
        assert ruby.tokenizer is None
        assert hf.tokenizer.encode("hello there") == llama.tokenizer.encode("hello there")


@pytest.mark.parametrize("name", ["model_a", "model_b"])
def test_ruby_fixture_gguf_equals_hf_folder(ruby_outputs, name):
    g = load_model(ruby_outputs / f"{name}.gguf")
    h = load_model(ruby_outputs / f"{name}_hf")
    assert g.layout == LAYOUT_GGUF_RUBY
    assert_same_weights(g.weights, h.weights, name)
    assert len(g.weights.tensors) == len(expected_shapes(g.config)) == 4 + 12 * g.config.n_layer


def test_hf_variants_load(tiny_model, tmp_path):
    """No prefix, tied lm_head.weight, and old attn.bias/masked_bias buffers are accepted."""
    state = load_file(str(tiny_model.hf_dir / "model.safetensors"))
    plain = {k.removeprefix("transformer."): v for k, v in state.items()}
    plain["lm_head.weight"] = plain["wte.weight"]
    mask = np.tril(np.ones((1, 1, 64, 64), np.float32))
    plain["h.0.attn.bias"] = mask
    plain["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    folder = tmp_path / "plain"
    shutil.copytree(tiny_model.hf_dir, folder)
    save_file(plain, str(folder / "model.safetensors"))
    assert_same_weights(load_model(folder).weights, tiny_model.weights, "no prefix")


def test_hf_sharded_index(tiny_model, tmp_path):
    """model.safetensors.index.json with two shards loads like the single file."""
    state = load_file(str(tiny_model.hf_dir / "model.safetensors"))
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model.hf_dir, folder)
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2]}
    shards["model-00002-of-00002.safetensors"] = keys[1::2]
    weight_map = {}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / file))
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_weights(load_model(folder).weights, tiny_model.weights, "sharded")


def test_llama_layout_with_tied_output_weight(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_llama)
    t["output.weight"] = t["token_embd.weight"].copy()
    path = write_gguf(tmp_path / "tied.gguf", t, tiny_model.config)
    assert_same_weights(load_model(path).weights, tiny_model.weights, "tied output")


def test_validate_direct(tiny_model):
    validate(tiny_model.weights, "fixture")
    bad = GPT2Weights(tiny_model.config, dict(tiny_model.weights.tensors))
    bad.tensors["wpe"] = bad.tensors["wpe"].astype(np.float64)
    with pytest.raises(ValueError, match="tensor wpe: expected dtype float32, found float64"):
        validate(bad, "mem")


# --- bad files --------------------------------------------------------------------------


def expect_error(path: Path, *fragments: str) -> str:
    """load_model(path), or reading its tensors (they stream from the file when an engine
    takes them), must raise ValueError whose message holds every fragment."""
    with pytest.raises(ValueError) as err:
        validate(load_model(path).weights, path)
    message = str(err.value)
    for f in fragments:
        assert f in message, f"{f!r} not in {message!r}"
    return message


def test_nonexistent_path(tmp_path):
    expect_error(tmp_path / "nope.gguf", "nope.gguf", "no such file")


def test_wrong_magic(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 not gguf at all")
    expect_error(path, str(path), "not a GGUF file")


def test_truncated_at_several_offsets(tiny_model, tmp_path):
    data = tiny_model.gguf_ruby.read_bytes()
    for cut in (0, 3, 8, 20, 100, 1000, len(data) // 2, len(data) - 4, len(data) - 1):
        path = tmp_path / f"cut_{cut}.gguf"
        path.write_bytes(data[:cut])
        expect_error(path, str(path))


@pytest.mark.parametrize("layout", ["ruby", "llama"])
def test_gguf_missing_tensor(tiny_model, tmp_path, layout):
    src = tiny_model.gguf_ruby if layout == "ruby" else tiny_model.gguf_llama
    t = gguf_tensors(src)
    victim = "blk.1.attn_k.weight" if layout == "ruby" else "blk.1.attn_qkv.weight"
    del t[victim]
    path = write_gguf(tmp_path / "missing.gguf", t, tiny_model.config)
    expect_error(path, str(path), f"missing tensor {victim}", "expected shape")


def test_gguf_extra_tensor(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_ruby)
    t["blk.0.attn_rope.weight"] = np.zeros(4, np.float32)
    path = write_gguf(tmp_path / "extra.gguf", t, tiny_model.config)
    expect_error(path, str(path), "unexpected tensor", "blk.0.attn_rope.weight")


def test_gguf_wrong_shape(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_llama)
    d, f = tiny_model.config.n_embd, tiny_model.config.d_ff
    t["blk.0.ffn_up.weight"] = np.ascontiguousarray(t["blk.0.ffn_up.weight"].T)  # [d, f]
    path = write_gguf(tmp_path / "shape.gguf", t, tiny_model.config)
    expect_error(
        path,
        str(path),
        "tensor blk.0.ffn_up.weight",
        f"expected shape ({f}, {d})",
        f"({d}, {f})",
    )


def test_gguf_wrong_dtype(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_ruby)
    t["output_norm.bias"] = t["output_norm.bias"].astype(np.int32)
    path = write_gguf(tmp_path / "dtype.gguf", t, tiny_model.config)
    expect_error(path, str(path), "tensor output_norm.bias", "unsupported type I32")


def test_gguf_untied_output_rejected(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_llama)
    t["output.weight"] = t["token_embd.weight"] * 2
    path = write_gguf(tmp_path / "untied.gguf", t, tiny_model.config)
    expect_error(path, str(path), "output.weight differs", "only tied")


def test_gguf_vocab_mismatch(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_llama)
    tokens = [tiny_model.tokenizer.token(i) for i in range(tiny_model.config.vocab_size - 1)]
    path = write_gguf(tmp_path / "vocab.gguf", t, tiny_model.config, tokens=tokens)
    v = tiny_model.config.vocab_size
    expect_error(path, str(path), "vocab mismatch", f"{v - 1} tokens", f"{v} rows")


def test_gguf_heads_do_not_divide(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_ruby)
    path = write_gguf(tmp_path / "heads.gguf", t, tiny_model.config, head_count=5)
    expect_error(path, str(path), "n_embd (64) must be divisible by n_head (5)")


def test_gguf_nan(tiny_model, tmp_path):
    t = gguf_tensors(tiny_model.gguf_ruby)
    t["blk.1.ffn_down.weight"][3, 4] = np.nan
    path = write_gguf(tmp_path / "nan.gguf", t, tiny_model.config)
    expect_error(path, f"non-finite values in tensor h.1.mlp.c_proj.weight of {path}")


def test_gguf_unknown_layout(tiny_model, tmp_path):
    t = {k: v for k, v in gguf_tensors(tiny_model.gguf_ruby).items() if "attn_" not in k}
    path = write_gguf(tmp_path / "layout.gguf", t, tiny_model.config)
    expect_error(path, str(path), "no attention tensors")


# HF folder variants: copy the fixture folder, then break one thing


@pytest.fixture
def hf_copy(tiny_model, tmp_path) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    return folder


def edit_state(folder: Path, change) -> Path:
    path = folder / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))
    return path


def test_hf_missing_tensor(hf_copy):
    path = edit_state(hf_copy, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    expect_error(hf_copy, str(path), "missing tensor h.1.mlp.c_fc.bias", "expected shape (256,)")


def test_hf_extra_tensor(hf_copy):
    def add(s):
        s["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)

    path = edit_state(hf_copy, add)
    expect_error(hf_copy, str(path), "unexpected tensor", "h.0.attn.rotary.weight")


def test_hf_wrong_shape(hf_copy):
    def change(s):
        s["transformer.h.0.attn.c_attn.weight"] = s["transformer.h.0.attn.c_attn.weight"][:, :-1]

    path = edit_state(hf_copy, change)
    expect_error(hf_copy, str(path), "h.0.attn.c_attn.weight", "(64, 192)", "(64, 191)")


def test_hf_wrong_dtype(hf_copy):
    def change(s):
        s["transformer.ln_f.bias"] = s["transformer.ln_f.bias"].astype(np.int32)

    path = edit_state(hf_copy, change)
    expect_error(hf_copy, str(path), "transformer.ln_f.bias", "unsupported dtype I32")


def test_hf_nan_and_inf(hf_copy):
    def change(s):
        s["transformer.wpe.weight"][5, 5] = np.inf

    path = edit_state(hf_copy, change)
    expect_error(hf_copy, f"non-finite values in tensor wpe of {path}")


def test_hf_untied_lm_head(hf_copy):
    def change(s):
        s["lm_head.weight"] = s["transformer.wte.weight"] + 1

    edit_state(hf_copy, change)
    expect_error(hf_copy, "lm_head.weight differs", "only tied")


def test_hf_vocab_mismatch(hf_copy, tiny_models):
    shutil.copy(tiny_models[1].hf_dir / "tokenizer.json", hf_copy / "tokenizer.json")
    expect_error(hf_copy, "vocab mismatch", "512 tokens", "300 rows")


def test_hf_heads_do_not_divide(hf_copy):
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["n_head"] = 6
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    expect_error(hf_copy, "config.json", "n_embd (64) must be divisible by n_head (6)")


def test_hf_no_weights(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    expect_error(hf_copy, "no model.safetensors")


def test_hf_corrupt_safetensors(hf_copy):
    path = hf_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    expect_error(hf_copy, str(path), "header length 2592 does not fit the file (100 bytes)")


def test_finite_f16_by_bits_agrees_with_isfinite():
    """gpt2.weights.finite checks f16 through its bits: the same answer as np.isfinite on
    every one of the 65,536 f16 values, and on arrays holding one of them."""
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for v in every:
        a = np.full((2, 3), 1.0, np.float16)
        a[1, 2] = v
        assert finite("F16", a) == bool(np.isfinite(v)), repr(v)
    assert finite("F16", np.zeros((0, 4), np.float16))
