"""Model files -> one canonical in-memory form (`GPT2Weights`), strictly validated.

Canonical form: HF GPT-2 names without the `transformer.` prefix, HF Conv1D orientation
(weights [in, out], so `y = x @ W + b`), float32, C-contiguous.

Readers (the names and orientation of each layout are in `gpt2.names`):
- GGUF, the Ruby converter's layout: split attn_q/k/v, weights stored [in, out].
- GGUF, llama.cpp's GPT-2 layout: fused attn_qkv, weights stored [out, in].
- HF snapshot folder: config.json + model.safetensors (+ tokenizer files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load as load_safetensors

from gpt2.config import GPT2Config
from gpt2.names import (
    GGUF_LAYOUTS,
    HF_PREFIX,
    LAYOUT_HF,
    TIED_HEAD,
    canonical_shapes,
    detect_layout,
    from_layout,
    is_hf_buffer,
    is_tied_head,
    layout_shapes,
    to_canonical,
)
from gpt2.private_copy import private_copy
from gpt2.progress import progress
from gpt2.tokenizer import Tokenizer

# GGUF tensor types we can turn into float32.
_GGUF_TYPES = {
    gguf.GGMLQuantizationType.F32,
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.BF16,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
    gguf.GGMLQuantizationType.Q5_0,
    gguf.GGMLQuantizationType.Q5_1,
}
_HF_DTYPES = (np.float32, np.float16, np.float64)


@dataclass
class GPT2Weights:
    """All parameters of a GPT-2, by HF name (see `expected_shapes`)."""

    config: GPT2Config
    tensors: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]


@dataclass
class LoadedModel:
    """What `load_model` returns: weights plus where and how they were read."""

    config: GPT2Config
    weights: GPT2Weights
    tokenizer: Tokenizer | None
    layout: str  # one of gpt2.names.LAYOUTS
    path: Path


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The canonical tensor table: every name and its shape, in checkpoint order."""
    return canonical_shapes(config)


def validate(weights: GPT2Weights, source: str | Path) -> None:
    """Raise ValueError naming `source` and the tensor unless `weights` is complete and sane."""
    _check_names_shapes(weights.tensors, expected_shapes(weights.config), source)
    for name, t in weights.tensors.items():
        if t.dtype != np.float32:
            raise ValueError(f"{source}: tensor {name}: expected dtype float32, found {t.dtype}")
        if not t.flags.c_contiguous:
            raise ValueError(f"{source}: tensor {name} is not C-contiguous")
        if not np.isfinite(t).all():
            raise ValueError(f"non-finite values in tensor {name} of {source}")


def load_model(path: str | Path) -> LoadedModel:
    """Load a `.gguf` file or an HF snapshot folder; raise ValueError on anything wrong."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    if p.is_dir():
        return load_hf_folder(p)
    return load_gguf(p)


# ---------------------------------------------------------------------------------------
# GGUF


def load_gguf(path: str | Path) -> LoadedModel:
    """Read a GPT-2 GGUF in either layout (told apart by tensor names)."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        with private_copy(path) as readable:  # another process may cut the file
            reader = gguf.GGUFReader(readable, "r")
            size = readable.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # gguf raises ValueError, IndexError, struct errors on bad bytes
        raise ValueError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from e
    raw = {}
    for t in reader.tensors:
        if t.name in raw:
            raise ValueError(f"{path}: tensor {t.name} appears twice")
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ValueError(
                f"{path}: truncated: tensor {t.name} ends at byte {end}, file has {size}"
            )
        raw[t.name] = t

    config = GPT2Config.from_gguf(reader, path)
    _check_layer_count(config, len(raw), path)
    layout = detect_layout(raw, path, among=GGUF_LAYOUTS)
    table = layout_shapes(config, layout)
    head = TIED_HEAD[layout]  # optional (llama.cpp writes a copy of token_embd); checked below
    shapes = {n: tuple(int(x) for x in reversed(t.shape)) for n, t in raw.items()}
    extra = sorted(set(raw) - set(table) - {head})
    if extra:
        raise ValueError(f"{path}: unexpected tensor(s) {extra} in {layout} layout")
    _check_names_shapes({n: s for n, s in shapes.items() if n in table}, table, path)
    for name, t in raw.items():
        if t.tensor_type not in _GGUF_TYPES:
            raise ValueError(
                f"{path}: tensor {name}: unsupported type {t.tensor_type.name} "
                f"(expected one of {sorted(x.name for x in _GGUF_TYPES)})"
            )

    def f32(name: str) -> np.ndarray:
        t = raw[name]
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
            # copy: detaches from the memory map and gives C-contiguous float32
            return np.array(data.reshape(table.get(name, shapes[name])), np.float32, order="C")
        except Exception as e:  # noqa: BLE001 - any failure here means bad data
            raise ValueError(f"{path}: cannot read tensor {name}: {e}") from None

    layers = progress(range(config.n_layer), f"reading {path.name}")
    tensors = from_layout(f32, config, layout, layers)
    if head in raw:
        want = canonical_shapes(config)["wte"]
        if shapes[head] != want:
            raise ValueError(f"{path}: tensor {head}: expected shape {want}, found {shapes[head]}")
        _check_tied(f32(head), tensors["wte"], head, path)

    weights = GPT2Weights(config, tensors)
    validate(weights, path)
    tokenizer = Tokenizer.from_gguf(reader, path)
    _check_vocab(tokenizer, config, path)
    return LoadedModel(config, weights, tokenizer, layout, path)


# ---------------------------------------------------------------------------------------
# HF folder


def load_hf_folder(path: str | Path) -> LoadedModel:
    """Read an HF GPT-2 snapshot: config.json, model.safetensors (or an index), tokenizer."""
    folder = Path(path)
    config = GPT2Config.from_hf_config(folder / "config.json")
    state, files = _read_safetensors(folder)
    source = files[0] if len(files) == 1 else folder

    _check_layer_count(config, len(state), source)
    tensors: dict[str, np.ndarray] = {}
    lm_head = None
    for key, arr in state.items():
        if is_hf_buffer(key):
            continue  # causal-mask buffers saved by old transformers; not parameters
        if is_tied_head(key, LAYOUT_HF):
            lm_head = arr
            continue
        try:
            name = to_canonical(key, LAYOUT_HF)
        except ValueError:
            name = key.removeprefix(HF_PREFIX)  # no GPT-2 name: reported as unexpected below
        if name in tensors:
            raise ValueError(f"{source}: tensor {name} present with and without prefix")
        if arr.dtype not in _HF_DTYPES:
            raise ValueError(
                f"{source}: tensor {key}: unsupported dtype {arr.dtype} "
                "(expected float32, float16 or float64)"
            )
        tensors[name] = arr
    _check_names_shapes(tensors, expected_shapes(config), source)
    tensors = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in tensors.items()}
    if lm_head is not None:
        head = TIED_HEAD[LAYOUT_HF]
        _check_tied(np.asarray(lm_head, np.float32), tensors["wte"], head, source)

    weights = GPT2Weights(config, tensors)
    validate(weights, source)
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        tokenizer = Tokenizer.from_folder(folder)
    _check_vocab(tokenizer, config, folder)
    return LoadedModel(config, weights, tokenizer, LAYOUT_HF, folder)


def _read_safetensors(folder: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = [folder / f for f in _shard_names(index)]
    else:
        raise ValueError(
            f"{folder}: no model.safetensors (or model.safetensors.index.json); "
            "only safetensors checkpoints are read"
        )
    state: dict[str, np.ndarray] = {}
    for f in files:
        try:
            part = load_safetensors(f.read_bytes())  # read, not mapped: see private_copy
        except Exception as e:  # noqa: BLE001 - safetensors has its own error type
            raise ValueError(f"{f}: cannot read safetensors file: {e}") from None
        dup = set(part) & set(state)
        if dup:
            raise ValueError(f"{f}: tensor {min(dup)} also in another shard")
        state.update(part)
    return state, files


def _shard_names(index: Path) -> list[str]:
    """The shard files named by a model.safetensors.index.json, checked."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v and "/" not in v for v in weight_map.values()
    ):
        raise ValueError(f"{index}: weight_map must map tensor names to shard file names")
    return sorted(set(weight_map.values()))


# ---------------------------------------------------------------------------------------
# shared checks


def _check_names_shapes(
    found: dict, expected: dict[str, tuple[int, ...]], source: str | Path
) -> None:
    """`found` maps name -> array or shape tuple."""
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(
            f"{source}: missing tensor {missing[0]} (expected shape {expected[missing[0]]}){more}"
        )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f"{source}: unexpected tensor(s) {extra}")
    for name, want in expected.items():
        v = found[name]
        got = tuple(v) if isinstance(v, tuple) else tuple(v.shape)
        if got != want:
            raise ValueError(f"{source}: tensor {name}: expected shape {want}, found {got}")


def _check_layer_count(config: GPT2Config, n_tensors: int, source: str | Path) -> None:
    """Every block has at least 8 tensors: refuse an n_layer the file cannot hold before
    the name tables are built (n_layer = 2^32 - 1 from a corrupt header would make them
    loop for minutes and take gigabytes)."""
    if config.n_layer * 8 > n_tensors:
        raise ValueError(
            f"{source}: n_layer={config.n_layer} but the file has only {n_tensors} tensors"
        )


def _check_tied(head: np.ndarray, wte: np.ndarray, name: str, source: str | Path) -> None:
    if not np.array_equal(head, wte):
        diff = float(np.max(np.abs(head - wte)))
        raise ValueError(
            f"{source}: tensor {name} differs from the token embedding (max-abs {diff:.3g}); "
            "only tied output heads (GPT-2's) are supported"
        )


def _check_vocab(tokenizer: Tokenizer | None, config: GPT2Config, source: str | Path) -> None:
    if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"{source}: vocab mismatch: tokenizer has {tokenizer.vocab_size} tokens, "
            f"token embedding has {config.vocab_size} rows"
        )
