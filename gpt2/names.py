"""GPT-2 tensor names: one table, for the project's canonical form and the three layouts it reads.

    canonical   the checkpoint's names (nanoGPT's, HF's) without "transformer.", and the
                embeddings without ".weight": wte, h.0.attn.c_attn.weight, ln_f.bias. Weights
                are HF Conv1D's [in, out] (y = x @ W + b); c_attn holds q | k | v columns.
    hf          HF transformers' safetensors: "transformer." + the canonical name (the prefix
                may be absent), except that the embeddings end in .weight (wte.weight).
    gguf-llama  llama.cpp's GPT-2 GGUF: gguf's own names (blk.0.attn_qkv.weight), the linear
                weights stored [out, in].
    gguf-ruby   the Ruby converter's GGUF: gguf's names, [in, out] kept, c_attn split into
                attn_q, attn_k and attn_v.

`TABLE` says all of it, one row per canonical tensor; the rest of this module derives names,
shapes, file order and conversions from it:

    canonical_shapes(config)          canonical name -> numpy shape, in checkpoint order
    layout_shapes(config, layout)     stored name -> numpy shape, in file order
    to_layout(tensors, config, layout), from_layout(read, config, layout)   whole models
    to_canonical(name, layout), from_canonical(name, layout)                one name
    detect_layout(names, source)      which layout a file's tensor names are in
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES

if TYPE_CHECKING:  # not imported at run time, so that gpt2.config may use these names
    from gpt2.config import GPT2Config

T = MODEL_TENSOR  # short, for the table

LAYOUT_HF = "hf"
LAYOUT_GGUF_LLAMA = "gguf-llama"
LAYOUT_GGUF_RUBY = "gguf-ruby"
LAYOUTS = (LAYOUT_HF, LAYOUT_GGUF_LLAMA, LAYOUT_GGUF_RUBY)
GGUF_LAYOUTS = (LAYOUT_GGUF_LLAMA, LAYOUT_GGUF_RUBY)

GGUF_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.GPT2]  # "gpt2": general.architecture, key prefix
HF_PREFIX = "transformer."  # what GPT2LMHeadModel puts before every name; GPT2Model does not

# How a layout stores a canonical tensor.
KEEP = "keep"  # as it is
TRANSPOSE = "transpose"  # transposed: [out, in], nn.Linear's orientation
SPLIT_QKV = "split-qkv"  # as three tensors attn_q, attn_k, attn_v: the last axis cut in three
_QKV = (T.ATTN_Q, T.ATTN_K, T.ATTN_V)


@dataclass(frozen=True)
class Row:
    """One canonical tensor and how each layout names and stores it."""

    canonical: str  # "{i}" stands for the block number
    shape: str  # canonical numpy shape: V vocab_size, P n_positions, C n_embd, F d_ff
    gguf: MODEL_TENSOR  # gguf's name for it; the suffix is the canonical one (wte, wpe: .weight)
    llama: str  # how gguf-llama stores it
    ruby: str  # how gguf-ruby stores it
    hf: str = ""  # HF's name after HF_PREFIX, where it is not the canonical name

    @property
    def part(self) -> str:
        return "bias" if self.canonical.endswith(".bias") else "weight"


# In checkpoint order (nanoGPT's, HF's).
# fmt: off
TABLE = (
    #   canonical                   shape   GGUF           gguf-llama gguf-ruby
    Row("wte",                      "V C",  T.TOKEN_EMBD,  KEEP,      KEEP,     hf="wte.weight"),
    Row("wpe",                      "P C",  T.POS_EMBD,    KEEP,      KEEP,     hf="wpe.weight"),
    Row("h.{i}.ln_1.weight",        "C",    T.ATTN_NORM,   KEEP,      KEEP),
    Row("h.{i}.ln_1.bias",          "C",    T.ATTN_NORM,   KEEP,      KEEP),
    Row("h.{i}.attn.c_attn.weight", "C 3C", T.ATTN_QKV,    TRANSPOSE, SPLIT_QKV),
    Row("h.{i}.attn.c_attn.bias",   "3C",   T.ATTN_QKV,    KEEP,      SPLIT_QKV),
    Row("h.{i}.attn.c_proj.weight", "C C",  T.ATTN_OUT,    TRANSPOSE, KEEP),
    Row("h.{i}.attn.c_proj.bias",   "C",    T.ATTN_OUT,    KEEP,      KEEP),
    Row("h.{i}.ln_2.weight",        "C",    T.FFN_NORM,    KEEP,      KEEP),
    Row("h.{i}.ln_2.bias",          "C",    T.FFN_NORM,    KEEP,      KEEP),
    Row("h.{i}.mlp.c_fc.weight",    "C F",  T.FFN_UP,      TRANSPOSE, KEEP),
    Row("h.{i}.mlp.c_fc.bias",      "F",    T.FFN_UP,      KEEP,      KEEP),
    Row("h.{i}.mlp.c_proj.weight",  "F C",  T.FFN_DOWN,    TRANSPOSE, KEEP),
    Row("h.{i}.mlp.c_proj.bias",    "C",    T.FFN_DOWN,    KEEP,      KEEP),
    Row("ln_f.weight",              "C",    T.OUTPUT_NORM, KEEP,      KEEP),
    Row("ln_f.bias",                "C",    T.OUTPUT_NORM, KEEP,      KEEP),
)

# GGUF files list the whole-model tensors first, then each block's in this order (a .weight
# before its .bias); the Ruby converter's order is kept so that its files are reproduced byte
# for byte.
GGUF_BLOCK_ORDER = {
    LAYOUT_GGUF_LLAMA: (T.ATTN_NORM, T.ATTN_QKV, T.ATTN_OUT, T.FFN_NORM, T.FFN_UP, T.FFN_DOWN),
    LAYOUT_GGUF_RUBY: (T.ATTN_NORM, T.FFN_NORM, *_QKV, T.ATTN_OUT, T.FFN_UP, T.FFN_DOWN),
}
# fmt: on

# The output head. GPT-2 ties it to wte, so it is no canonical tensor; a file may carry a copy,
# which the loader checks against wte and drops.
TIED_HEAD = {
    LAYOUT_HF: "lm_head.weight",
    LAYOUT_GGUF_LLAMA: TENSOR_NAMES[T.OUTPUT] + ".weight",
    LAYOUT_GGUF_RUBY: TENSOR_NAMES[T.OUTPUT] + ".weight",
}
# The causal-mask buffers old transformers saved with the parameters: skipped when read.
_HF_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def is_tied_head(name: str, layout: str) -> bool:
    """Whether `name` is the (tied) output head in `layout`."""
    if layout == LAYOUT_HF:
        name = name.removeprefix(HF_PREFIX)
    return name == TIED_HEAD[_check_layout(layout)]


def is_hf_buffer(name: str) -> bool:
    """Whether an HF name is a saved attention-mask buffer rather than a parameter."""
    return _HF_BUFFER.fullmatch(name.removeprefix(HF_PREFIX)) is not None


# ---------------------------------------------------------------------------------------
# whole models


@dataclass(frozen=True)
class Stored:
    """One tensor as a layout stores it, and which canonical tensor it holds."""

    name: str  # its name in the file
    shape: tuple[int, ...]  # its numpy shape there
    canonical: str
    how: str  # KEEP, TRANSPOSE or SPLIT_QKV
    piece: int = 0  # SPLIT_QKV: 0, 1, 2 for q, k, v


def canonical_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor and its shape, in checkpoint order."""
    return {
        row.canonical.format(i=i): _shape(row.shape, config)
        for row, i in _in_order(range(config.n_layer))
    }


def stored_tensors(config: GPT2Config, layout: str) -> list[Stored]:
    """What a file in `layout` holds (no tied head), in the order our writers write it."""
    order = GGUF_BLOCK_ORDER.get(_check_layout(layout))
    ranked = []
    for n, (row, i) in enumerate(_in_order(range(config.n_layer))):
        how = _how(row, layout)
        shape = _shape(row.shape, config)
        if how == TRANSPOSE:
            shape = shape[::-1]
        elif how == SPLIT_QKV:
            shape = (*shape[:-1], shape[-1] // 3)
        canonical = row.canonical.format(i=i)
        for piece, (template, tensor) in enumerate(_templates(row, layout)):
            name = (HF_PREFIX if layout == LAYOUT_HF else "") + template.format(i=i)
            if order is None:
                rank = (n,)  # checkpoint order
            elif i is None:
                rank = (-1, n)  # the whole-model tensors first
            else:
                rank = (i, order.index(tensor), row.part == "bias")
            ranked.append((rank, Stored(name, shape, canonical, how, piece)))
    ranked.sort(key=lambda x: x[0])
    return [s for _, s in ranked]


def layout_shapes(config: GPT2Config, layout: str) -> dict[str, tuple[int, ...]]:
    """Stored name -> numpy shape of every tensor of `layout` (no tied head), in file order."""
    return {s.name: s.shape for s in stored_tensors(config, layout)}


def to_layout(
    tensors: Mapping[str, np.ndarray], config: GPT2Config, layout: str
) -> dict[str, np.ndarray]:
    """Canonical tensors -> the tensors a file in `layout` stores, by name, in file order."""
    out = {}
    for s in stored_tensors(config, layout):
        x = tensors[s.canonical]
        if s.how == TRANSPOSE:
            x = np.ascontiguousarray(x.T)  # [in, out] -> [out, in]
        elif s.how == SPLIT_QKV:
            n = x.shape[-1] // 3
            x = np.ascontiguousarray(x[..., s.piece * n : (s.piece + 1) * n])  # q, k or v
        out[s.name] = x
    return out


def from_layout(
    read: Callable[[str], np.ndarray],
    config: GPT2Config,
    layout: str,
    layers: Iterable[int] | None = None,
) -> dict[str, np.ndarray]:
    """The canonical tensors, from `read(stored name)` of a file in `layout`.

    In checkpoint order; `layers` are the blocks to read (all, by default: a loader passes
    them through a progress bar).
    """
    parts: dict[str, list[Stored]] = {}
    for s in stored_tensors(config, layout):
        parts.setdefault(s.canonical, []).append(s)
    layers = range(config.n_layer) if layers is None else layers
    names = [row.canonical.format(i=i) for row, i in _in_order(layers)]
    out = {}
    for name in names:
        stored = parts[name]
        if stored[0].how == SPLIT_QKV:
            x = np.concatenate([read(s.name) for s in stored], axis=-1)  # q | k | v
        elif stored[0].how == TRANSPOSE:
            x = np.ascontiguousarray(read(stored[0].name).T)  # [out, in] -> [in, out]
        else:
            x = read(stored[0].name)
        out[name] = x
    return out


# ---------------------------------------------------------------------------------------
# one name


def from_canonical(name: str, layout: str) -> tuple[str, ...]:
    """The stored name(s) of a canonical tensor (three for gguf-ruby's c_attn; HF: prefixed)."""
    row, i = _parse(name, "canonical")
    prefix = HF_PREFIX if _check_layout(layout) == LAYOUT_HF else ""
    return tuple(prefix + t.format(i=i) for t, _ in _templates(row, layout))


def to_canonical(name: str, layout: str) -> str:
    """The canonical tensor that a stored name holds (for gguf-ruby's attn_q/k/v, a third of)."""
    row, i = _parse(name, _check_layout(layout))
    return row.canonical.format(i=i)


def detect_layout(names: Iterable[str], source: object, among: Iterable[str] = LAYOUTS) -> str:
    """The layout whose attention tensors (c_attn, attn_qkv or attn_q/k/v) `names` holds.

    Raise ValueError naming `source` when there are none, or those of two layouts.
    """
    among = tuple(_check_layout(x) for x in among)
    names = set(names)
    found = []
    for layout in among:
        marks = [p for p, row in _patterns(layout) if row.gguf == T.ATTN_QKV]
        if any(p.fullmatch(_unprefixed(n, layout)) for n in names for p in marks):
            found.append(layout)
    if len(found) > 1:
        raise ValueError(f"{source}: has the attention tensors of {' and '.join(found)} layouts")
    if not found:
        marks = [
            "/".join(t.format(i="N") for t, _ in _templates(row, layout))
            for layout in among
            for row in TABLE
            if row.gguf == T.ATTN_QKV and row.part == "weight"
        ]
        raise ValueError(
            f"{source}: no attention tensors ({' or '.join(marks)}): "
            "not a GPT-2 file this loader knows"
        )
    return found[0]


# ---------------------------------------------------------------------------------------


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    return layout


def _in_block(row: Row) -> bool:
    return "{i}" in row.canonical


def _in_order(layers: Iterable[int]) -> Iterator[tuple[Row, int | None]]:
    """(row, block number or None) in checkpoint order: the table's rows above its first
    block row, every block's rows, then the rest (ln_f)."""
    first = next(n for n, row in enumerate(TABLE) if _in_block(row))
    yield from ((row, None) for row in TABLE[:first])
    for i in layers:
        yield from ((row, i) for row in TABLE if _in_block(row))
    yield from ((row, None) for row in TABLE[first:] if not _in_block(row))


def _how(row: Row, layout: str) -> str:
    return {LAYOUT_HF: KEEP, LAYOUT_GGUF_LLAMA: row.llama, LAYOUT_GGUF_RUBY: row.ruby}[layout]


def _shape(spec: str, config: GPT2Config) -> tuple[int, ...]:
    dims = {"V": config.vocab_size, "P": config.n_positions, "C": config.n_embd, "F": config.d_ff}
    return tuple(int(d[:-1] or 1) * dims[d[-1]] for d in spec.split())  # "3C" -> 3 * n_embd


def _templates(row: Row, layout: str) -> list[tuple[str, MODEL_TENSOR]]:
    """The name(s) of `row` in `layout` (or "canonical"), "{i}" for the block, no HF prefix,
    each with its GGUF tensor."""
    if layout == "canonical":
        return [(row.canonical, row.gguf)]
    if layout == LAYOUT_HF:
        return [(row.hf or row.canonical, row.gguf)]
    tensors = _QKV if _how(row, layout) == SPLIT_QKV else (row.gguf,)
    return [(TENSOR_NAMES[t].format(bid="{i}") + "." + row.part, t) for t in tensors]


@cache
def _patterns(layout: str) -> tuple[tuple[re.Pattern, Row], ...]:
    return tuple(
        (re.compile(re.escape(t).replace(re.escape("{i}"), r"(?P<i>\d+)")), row)
        for row in TABLE
        for t, _ in _templates(row, layout)
    )


def _unprefixed(name: str, layout: str) -> str:
    return name.removeprefix(HF_PREFIX) if layout == LAYOUT_HF else name


def _parse(name: str, layout: str) -> tuple[Row, str | None]:
    """The row `name` belongs to in `layout` (or "canonical"), and its block number."""
    for pattern, row in _patterns(layout):
        m = pattern.fullmatch(_unprefixed(name, layout))
        if m:
            return row, m.groupdict().get("i")
    examples = ", ".join(t.format(i=0) for row in TABLE[:5] for t, _ in _templates(row, layout))
    raise ValueError(
        f"tensor {name!r} is not a GPT-2 tensor name in the {layout} layout "
        f"(expected names like {examples})"
    )
