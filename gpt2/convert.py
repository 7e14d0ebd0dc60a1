"""Write GGUF files: HF folder -> llama.cpp's GPT-2 layout (f32/f16/q8_0), and the Ruby layout.

Type choices follow llama.cpp's `convert_hf_to_gguf.py`: 1-D tensors (norms, biases) and
`position_embd` stay F32; the other 2-D weights (token_embd included) take the target type.
Q8_0 packs rows in blocks of 32, so a tensor whose row length (ne0) is not a multiple of 32
falls back to F16, and the fallback is logged and returned.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np

from gpt2.config import GPT2Config
from gpt2.progress import progress
from gpt2.tokenizer import Tokenizer
from gpt2.weights import GPT2Weights, load_hf_folder, validate

log = logging.getLogger(__name__)

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_Q = gguf.GGMLQuantizationType
# 2-D tensors llama.cpp keeps in F32 whatever the target type
_KEEP_F32 = {"position_embd.weight"}


def convert_hf_to_gguf(
    hf_folder: str | Path, out_path: str | Path, dtype: str = "f32"
) -> dict[str, str]:
    """Convert an HF GPT-2 folder to a llama.cpp-layout GGUF; return {tensor: GGML type}."""
    loaded = load_hf_folder(hf_folder)
    return write_gguf_llama_layout(loaded.weights, out_path, dtype, loaded.tokenizer)


def write_gguf_llama_layout(
    weights: GPT2Weights,
    out_path: str | Path,
    dtype: str = "f32",
    tokenizer: Tokenizer | None = None,
) -> dict[str, str]:
    """Write llama.cpp's GPT-2 layout: fused attn_qkv, weights [out, in]; return types."""
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be one of {sorted(_FILE_TYPES)}, got {dtype!r}")
    validate(weights, "weights to convert")
    cfg, w = weights.config, weights.tensors
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"vocab mismatch: tokenizer has {tokenizer.vocab_size} tokens, "
            f"wte has {cfg.vocab_size} rows"
        )

    def t(x: np.ndarray) -> np.ndarray:  # Conv1D [in, out] -> llama.cpp [out, in]
        return np.ascontiguousarray(x.T)

    # No output.weight: the head is tied, and llama.cpp reuses token_embd when it is absent.
    tensors = {
        "token_embd.weight": w["wte"],
        "position_embd.weight": w["wpe"],
        "output_norm.weight": w["ln_f.weight"],
        "output_norm.bias": w["ln_f.bias"],
    }
    for i in range(cfg.n_layer):
        b, h = f"blk.{i}.", f"h.{i}."
        tensors[b + "attn_norm.weight"] = w[h + "ln_1.weight"]
        tensors[b + "attn_norm.bias"] = w[h + "ln_1.bias"]
        tensors[b + "attn_qkv.weight"] = t(w[h + "attn.c_attn.weight"])  # [3d, d]
        tensors[b + "attn_qkv.bias"] = w[h + "attn.c_attn.bias"]
        tensors[b + "attn_output.weight"] = t(w[h + "attn.c_proj.weight"])  # [d, d]
        tensors[b + "attn_output.bias"] = w[h + "attn.c_proj.bias"]
        tensors[b + "ffn_norm.weight"] = w[h + "ln_2.weight"]
        tensors[b + "ffn_norm.bias"] = w[h + "ln_2.bias"]
        tensors[b + "ffn_up.weight"] = t(w[h + "mlp.c_fc.weight"])  # [d_ff, d]
        tensors[b + "ffn_up.bias"] = w[h + "mlp.c_fc.bias"]
        tensors[b + "ffn_down.weight"] = t(w[h + "mlp.c_proj.weight"])  # [d, d_ff]
        tensors[b + "ffn_down.bias"] = w[h + "mlp.c_proj.bias"]

    writer = gguf.GGUFWriter(str(out_path), "gpt2")
    _write_hparams(writer, cfg)
    writer.add_file_type(int(_FILE_TYPES[dtype]))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer is not None:
        tokenizer.gguf_fields().write(writer)

    types: dict[str, str] = {}
    for name, x in progress(tensors.items(), f"converting to {dtype}", len(tensors)):
        qtype = _tensor_type(name, x, dtype)
        if qtype == _Q.Q8_0:
            # the writer derives the logical shape from the packed bytes' shape
            writer.add_tensor(name, gguf.quants.quantize(x, _Q.Q8_0), raw_dtype=_Q.Q8_0)
        elif qtype == _Q.F16:
            writer.add_tensor(name, x.astype(np.float16))
        else:
            writer.add_tensor(name, x)
        types[name] = qtype.name
    _finish(writer)
    return types


def _tensor_type(name: str, x: np.ndarray, dtype: str) -> gguf.GGMLQuantizationType:
    if dtype == "f32" or x.ndim < 2 or name in _KEEP_F32:
        return _Q.F32
    if dtype == "f16":
        return _Q.F16
    block = gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]  # 32 values per block
    if x.shape[-1] % block:
        log.warning(
            "%s: row length %d is not a multiple of %d; stored as F16 instead of Q8_0",
            name,
            x.shape[-1],
            block,
        )
        return _Q.F16
    return _Q.Q8_0


def write_gguf_ruby_layout(
    weights: GPT2Weights, out_path: str | Path, tokenizer: Tokenizer | None = None
) -> None:
    """Write the Ruby converter's layout (F32, split Q/K/V, weights [in, out], gpt2.vocab_size).

    Used by tests to produce files like the Ruby project's; tensor order matches its converter.
    """
    validate(weights, "weights to write")
    cfg, w = weights.config, weights.tensors
    d = cfg.n_embd
    writer = gguf.GGUFWriter(str(out_path), "gpt2")
    _write_hparams(writer, cfg)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_uint32("gpt2.vocab_size", cfg.vocab_size)
    if tokenizer is not None:
        tokenizer.gguf_fields().write(writer)

    writer.add_tensor("token_embd.weight", w["wte"])
    writer.add_tensor("position_embd.weight", w["wpe"])
    writer.add_tensor("output_norm.weight", w["ln_f.weight"])
    writer.add_tensor("output_norm.bias", w["ln_f.bias"])
    for i in range(cfg.n_layer):
        b, h = f"blk.{i}.", f"h.{i}."
        writer.add_tensor(b + "attn_norm.weight", w[h + "ln_1.weight"])
        writer.add_tensor(b + "attn_norm.bias", w[h + "ln_1.bias"])
        writer.add_tensor(b + "ffn_norm.weight", w[h + "ln_2.weight"])
        writer.add_tensor(b + "ffn_norm.bias", w[h + "ln_2.bias"])
        c_attn_w, c_attn_b = w[h + "attn.c_attn.weight"], w[h + "attn.c_attn.bias"]
        for j, n in enumerate(("attn_q", "attn_k", "attn_v")):
            cols = slice(j * d, (j + 1) * d)
            writer.add_tensor(f"{b}{n}.weight", np.ascontiguousarray(c_attn_w[:, cols]))
            writer.add_tensor(f"{b}{n}.bias", np.ascontiguousarray(c_attn_b[cols]))
        writer.add_tensor(b + "attn_output.weight", w[h + "attn.c_proj.weight"])
        writer.add_tensor(b + "attn_output.bias", w[h + "attn.c_proj.bias"])
        writer.add_tensor(b + "ffn_up.weight", w[h + "mlp.c_fc.weight"])
        writer.add_tensor(b + "ffn_up.bias", w[h + "mlp.c_fc.bias"])
        writer.add_tensor(b + "ffn_down.weight", w[h + "mlp.c_proj.weight"])
        writer.add_tensor(b + "ffn_down.bias", w[h + "mlp.c_proj.bias"])
    _finish(writer)


def _write_hparams(writer: gguf.GGUFWriter, cfg: GPT2Config) -> None:
    """llama.cpp's GPT-2 keys (gpt2.*)."""
    writer.add_context_length(cfg.n_positions)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
