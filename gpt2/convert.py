"""Write GGUF files: HF folder -> llama.cpp's GPT-2 layout (f32/f16/q8_0), and the Ruby layout.

Type choices follow llama.cpp's `convert_hf_to_gguf.py`: 1-D tensors (norms, biases) and
`position_embd` stay F32; the other 2-D weights (token_embd included) take the target type.
Q8_0 packs rows in blocks of 32, so a tensor whose row length (ne0) is not a multiple of 32
falls back to F16, and the fallback is logged and returned.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import gguf
import numpy as np

from gpt2.config import GPT2Config
from gpt2.names import (
    GGUF_ARCH,
    LAYOUT_GGUF_LLAMA,
    LAYOUT_GGUF_RUBY,
    TRANSPOSE,
    from_canonical,
    stored_tensors,
    to_layout,
)
from gpt2.progress import progress
from gpt2.tokenizer import Tokenizer
from gpt2.weights import FileTensors, GPT2Weights, load_hf_folder, validate

log = logging.getLogger(__name__)

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_Q = gguf.GGMLQuantizationType
# 2-D tensors llama.cpp keeps in F32 whatever the target type
_KEEP_F32 = set(from_canonical("wpe", LAYOUT_GGUF_LLAMA))


def convert_hf_to_gguf(
    hf_folder: str | Path, out_path: str | Path, dtype: str = "f32"
) -> dict[str, str]:
    """Convert an HF GPT-2 folder to a llama.cpp-layout GGUF; return {tensor: GGML type}.
    Streams: one tensor is read, converted and written at a time."""
    loaded = load_hf_folder(hf_folder)
    return write_gguf_llama_layout(loaded.weights, out_path, dtype, loaded.tokenizer)


def write_gguf_llama_layout(
    weights: GPT2Weights,
    out_path: str | Path,
    dtype: str = "f32",
    tokenizer: Tokenizer | None = None,
) -> dict[str, str]:
    """Write llama.cpp's GPT-2 layout: fused attn_qkv, weights [out, in]; return types.

    The header (with every tensor's type, shape and size) goes first, then each tensor is
    read (from the model file, for loaded weights), converted and written before the next:
    peak memory is about the largest tensor. A value that does not fit the target type (f16
    past 65504) is a ValueError naming the tensor; the half-written file is removed."""
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be one of {sorted(_FILE_TYPES)}, got {dtype!r}")
    if not isinstance(weights.tensors, FileTensors):
        validate(weights, "weights to convert")  # in memory already: checking is cheap
    cfg = weights.config
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"vocab mismatch: tokenizer has {tokenizer.vocab_size} tokens, "
            f"wte has {cfg.vocab_size} rows"
        )

    # No output.weight: the head is tied, and llama.cpp reuses token_embd when it is absent.
    stored = [s for s in stored_tensors(cfg, LAYOUT_GGUF_LLAMA)]
    writer = gguf.GGUFWriter(str(out_path), GGUF_ARCH)
    _write_hparams(writer, cfg)
    writer.add_file_type(int(_FILE_TYPES[dtype]))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if tokenizer is not None:
        tokenizer.gguf_fields().write(writer)

    types: dict[str, str] = {}
    for s in stored:
        qtype = _tensor_type(s.name, s.shape, dtype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_bytes = math.prod(s.shape) // block * size
        np_dtype = {_Q.F32: np.float32, _Q.F16: np.float16}.get(qtype, np.uint8)
        raw = qtype if qtype == _Q.Q8_0 else None
        # the writer takes a quantized tensor's shape in bytes: (rows, bytes per row)
        shape = (*s.shape[:-1], s.shape[-1] // block * size) if raw else s.shape
        writer.add_tensor_info(s.name, shape, np.dtype(np_dtype), n_bytes, raw_dtype=raw)
        types[s.name] = qtype.name
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for s in progress(stored, f"converting to {dtype}", len(stored), unit="tensor"):
            x = weights[s.canonical]
            if s.how == TRANSPOSE:
                x = np.ascontiguousarray(x.T)  # [in, out] -> [out, in]
            writer.write_tensor_data(_convert(s.name, x, _Q[types[s.name]]))
        writer.close()
    except BaseException:
        writer.close()
        Path(out_path).unlink(missing_ok=True)
        raise
    return types


def _convert(name: str, x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """One tensor in its file type; ValueError naming it when a value does not fit."""
    if qtype == _Q.F32:
        return np.ascontiguousarray(x, np.float32)
    if qtype == _Q.F16:
        with np.errstate(over="ignore"):  # checked just below
            out = x.astype(np.float16)
        ok = np.isfinite(out).all()
    else:
        with np.errstate(over="ignore"):
            out = gguf.quants.quantize(np.ascontiguousarray(x, np.float32), _Q.Q8_0)
        ok = np.isfinite(out.reshape(-1, 34)[:, :2].copy().view(np.float16)).all()
    if not ok:
        raise ValueError(
            f"tensor {name}: values up to {float(np.max(np.abs(x))):.3g} do not fit "
            f"{qtype.name} (f16's largest is 65504; q8_0's is 127 x that): convert to f32"
        )
    return out


def _tensor_type(name: str, shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    if dtype == "f32" or len(shape) < 2 or name in _KEEP_F32:
        return _Q.F32
    if dtype == "f16":
        return _Q.F16
    block = gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]  # 32 values per block
    if shape[-1] % block:
        log.warning(
            "%s: row length %d is not a multiple of %d; stored as F16 instead of Q8_0",
            name,
            shape[-1],
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
    cfg = weights.config
    writer = gguf.GGUFWriter(str(out_path), GGUF_ARCH)
    _write_hparams(writer, cfg)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_uint32(f"{GGUF_ARCH}.vocab_size", cfg.vocab_size)
    if tokenizer is not None:
        tokenizer.gguf_fields().write(writer)

    for name, x in to_layout(weights.tensors, cfg, LAYOUT_GGUF_RUBY).items():
        writer.add_tensor(name, x)
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
