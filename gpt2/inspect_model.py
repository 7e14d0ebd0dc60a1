"""What is in a model file or folder, read from its metadata only (no weights are decoded).

    d = describe("model.gguf")        # or an HF snapshot folder
    print(format_description(d))

GGUF headers are parsed from plain reads (gpt2.gguf_header: the file is never mapped, so
cutting it while it is read is a ValueError, not SIGBUS);
HF folders through `config.json` and the safetensors headers, checked as `load_model` checks
them (shard names inside the folder only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gpt2.config import GPT2Config
from gpt2.files import ModelFile
from gpt2.names import GGUF_LAYOUTS, HF_PREFIX, LAYOUT_HF, canonical_shapes, detect_layout
from gpt2.tokenizer import Tokenizer
from gpt2.weights import _check_metadata_types, open_gguf, safetensors_infos, shard_names


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of a GGUF file or an HF folder; ValueError on bad input."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model file or folder: {p}")
    if p.is_dir():
        config, layout, tensors, tokenizer, extra = _describe_hf(p)
        fmt = "hf-safetensors"
        file_size = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    else:
        config, layout, tensors, tokenizer, extra = _describe_gguf(p)
        fmt = "gguf"
        file_size = p.stat().st_size
    by_dtype: dict[str, dict[str, int]] = {}
    for dtype, n_bytes in tensors:
        entry = by_dtype.setdefault(dtype, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += n_bytes
    return {
        "path": str(p),
        "format": fmt,
        "layout": layout,
        "architecture": {
            "n_layer": config.n_layer,
            "n_embd": config.n_embd,
            "n_head": config.n_head,
            "d_head": config.d_head,
            "d_ff": config.d_ff,
            "n_positions": config.n_positions,
            "vocab_size": config.vocab_size,
            "layer_norm_epsilon": config.layer_norm_epsilon,
        },
        # the canonical parameters (tied head counted once), whatever the file stores
        "parameters": sum(math.prod(s) for s in canonical_shapes(config).values()),
        "tensors": {
            "count": len(tensors),
            "bytes": sum(b for _, b in tensors),
            "by_dtype": dict(sorted(by_dtype.items())),
        },
        "tokenizer": {
            "present": tokenizer is not None,
            "vocab_size": tokenizer.vocab_size if tokenizer is not None else None,
            "eos_id": tokenizer.eos_id if tokenizer is not None else None,
        },
        "file_size": file_size,
        **extra,
    }


def format_description(d: dict[str, Any]) -> str:
    """The description as aligned human-readable lines."""
    a, t, tok = d["architecture"], d["tensors"], d["tokenizer"]
    lines = [
        f"path:         {d['path']}",
        f"format:       {d['format']} (layout {d['layout']})",
        (
            f"architecture: n_layer={a['n_layer']} n_embd={a['n_embd']} n_head={a['n_head']} "
            f"d_head={a['d_head']} d_ff={a['d_ff']} n_positions={a['n_positions']} "
            f"vocab={a['vocab_size']} eps={a['layer_norm_epsilon']:g}"
        ),
        f"parameters:   {d['parameters']:,} ({_human_count(d['parameters'])})",
        f"tensors:      {t['count']} stored, {_human_bytes(t['bytes'])}",
    ]
    for dtype, e in t["by_dtype"].items():
        lines.append(f"  {dtype:<8} {e['count']:>5} tensors  {_human_bytes(e['bytes']):>11}")
    if tok["present"]:
        lines.append(f"tokenizer:    {tok['vocab_size']} tokens, eos id {tok['eos_id']}")
    else:
        lines.append("tokenizer:    none (give token ids, or use a file with a tokenizer)")
    if "name" in d:
        lines.append(f"name:         {d['name']}")
    if "tensor_prefix" in d:
        lines.append(f"prefix:       {d['tensor_prefix']!r}")
    lines.append(f"file size:    {_human_bytes(d['file_size'])} ({d['file_size']:,} bytes)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def _describe_gguf(path: Path):
    with ModelFile(path) as f:
        magic = f.pread(0, min(4, f.size), "the magic")
        if magic != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (magic {bytes(magic)!r}, expected b'GGUF')")
        with open_gguf(f) as reader:
            _check_metadata_types(reader, path)
            config = GPT2Config.from_gguf(reader, path)
            try:
                layout = detect_layout((t.name for t in reader.tensors), path, among=GGUF_LAYOUTS)
            except ValueError:
                layout = "unknown"  # described all the same; load_model says what is wrong
            tensors = [(t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors]
            tokenizer = Tokenizer.from_gguf(reader, path)
            extra: dict[str, Any] = {}
            name = reader.get_field("general.name")
            if name is not None:
                extra["name"] = str(name.contents())
    return config, layout, tensors, tokenizer, extra


def _describe_hf(folder: Path):
    config = GPT2Config.from_hf_config(folder / "config.json")
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        files = [folder / f for f in shard_names(index)]
    elif (folder / "pytorch_model.bin").exists():
        files = []
    else:
        raise ValueError(
            f"{folder}: no model.safetensors, model.safetensors.index.json or "
            "pytorch_model.bin: not a model folder"
        )
    tensors, names = [], []
    for f in files:
        for name, info in safetensors_infos(f).items():
            tensors.append((info.kind, info.n_bytes))
            names.append(name)
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        tokenizer = Tokenizer.from_folder(folder)
    prefix = HF_PREFIX if any(n.startswith(HF_PREFIX) for n in names) else ""
    return config, LAYOUT_HF, tensors, tokenizer, {"tensor_prefix": prefix}


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def _human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)
