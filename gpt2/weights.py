"""Model files -> `GPT2Weights`: an index of the file's tensors, strictly validated, whose
tensors are read on demand, one at a time, from the file.

Canonical form (what `weights[name]` gives): HF GPT-2 names without the `transformer.`
prefix, HF Conv1D orientation (weights [in, out], so `y = x @ W + b`), float32, C-contiguous.
A loaded model holds no tensor: each read is a plain `pread` of the bytes the header declares
(gpt2.files: regular files only, sizes checked against the file before reading, a file cut
while it is read is a ValueError). A file is opened once and read through that descriptor
only (header and tensors; kept open while its tensors may be read): a file renamed over the
path while it loads cannot mix its weights in. A big-endian GGUF's tensors are swapped to the
host's order as they are read (float types; q8_0 and q4_0 block scales), other types refused.
`weights.stored(name)` gives a tensor in the file's own type (f16, q8_0 blocks) so that an
engine can upload it without a float32 copy.

Readers (the names and orientation of each layout are in `gpt2.names`):
- GGUF, the Ruby converter's layout: split attn_q/k/v, weights stored [in, out].
- GGUF, llama.cpp's GPT-2 layout: fused attn_qkv, weights stored [out, in].
- HF snapshot folder: config.json + model.safetensors, or its shards and
  model.safetensors.index.json (f32, f16, bf16, f64), or pytorch_model.bin (through torch,
  `weights_only=True`, when torch is installed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from gpt2.config import GPT2Config
from gpt2.files import ModelFile, read_text
from gpt2.gguf_header import read_gguf_header
from gpt2.names import (
    GGUF_LAYOUTS,
    HF_PREFIX,
    LAYOUT_HF,
    SPLIT_QKV,
    TIED_HEAD,
    TRANSPOSE,
    Stored,
    canonical_shapes,
    detect_layout,
    is_hf_buffer,
    is_tied_head,
    layout_shapes,
    stored_tensors,
    to_canonical,
)
from gpt2.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_Q = gguf.GGMLQuantizationType
# GGUF tensor types we read (float types as they are, the others dequantized to float32).
_GGUF_TYPES = {_Q.F32, _Q.F16, _Q.BF16, _Q.Q8_0, _Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1}
# safetensors dtype -> our kind
_ST_KINDS = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64"}
# the float kinds a tensor can hold, as numpy reads them (BF16: its raw 16 bits)
FLOAT_KINDS = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
# the engine dtype that keeps a file's type (bf16 -> f32: exact; f16 would clip bf16's range)
_AUTO = {"F32": "f32", "F64": "f32", "BF16": "f32", "F16": "f16", "Q8_0": "q8_0"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # bytes; a larger header means a corrupt file
_HOST_ORDER = "<" if sys.byteorder == "little" else ">"
# quantized types whose blocks start with their only multi-byte number, an f16 scale: what
# swapping a big-endian file's tensor takes (gguf_convert_endian's byteswap_q8_0/q4_0)
_SCALE_FIRST = {"Q8_0": 34, "Q4_0": 18}  # kind -> bytes per block


class HeldFile(ModelFile):
    """A model file held open while tensors that read from it live (TensorInfo.file): closed
    when the last of them goes, or by close()."""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit os may be gone
            self.close()


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lies: its file, byte range, kind and numpy shape."""

    name: str
    path: Path
    offset: int  # absolute byte offset in `path`
    n_bytes: int
    kind: str  # F32, F16, BF16, F64 or a GGUF quantized type name (Q8_0, ...)
    shape: tuple[int, ...]  # the logical numpy shape
    # the descriptor the header was read through, which the tensor is read through too
    # (None: the data is held in memory, pytorch_model.bin)
    file: ModelFile | None = field(default=None, repr=False, compare=False)
    byte_order: str = "<"  # the file's: "<", or ">" for a big-endian GGUF

    def read(self) -> np.ndarray:
        """The tensor in its own type: float arrays of `shape` (BF16 as uint16), quantized
        types as uint8 blocks of shape (*shape[:-1], bytes per row)."""
        return self.decode(self._pread(0, self.n_bytes))

    @property
    def row_bytes(self) -> int:
        """Bytes of one slice along the first axis of a tensor of 2 or more axes."""
        return self.n_bytes // max(self.shape[0], 1)

    def read_rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 (along the first axis) of a tensor of 2 or more axes, in its own type
        as `read` gives the whole (safe from several threads at once)."""
        raw = self._pread(r0 * self.row_bytes, (r1 - r0) * self.row_bytes)
        return self.decode(raw, (r1 - r0, *self.shape[1:]))

    def _pread(self, start: int, n_bytes: int) -> np.ndarray:
        """n_bytes from byte `start` of the tensor, into a fresh array (never zero-filled),
        through the descriptor its header was read through (never re-opened by path)."""
        if self.file is None:
            raise ValueError(f"{self.path}: tensor {self.name} is not read from the file")
        return self.file.pread_into(self.offset + start, np.empty(n_bytes, np.uint8), self.name)

    def decode(self, raw: bytearray | bytes | np.ndarray, shape=None) -> np.ndarray:
        """Raw bytes of `shape` (default: the whole tensor's) as `read` gives them."""
        shape = self.shape if shape is None else shape
        data = np.frombuffer(raw, np.uint8)
        swap = self.byte_order != _HOST_ORDER
        if self.kind in FLOAT_KINDS:
            values = data.view(FLOAT_KINDS[self.kind])
            return (values.byteswap() if swap else values).reshape(shape)
        if swap:  # checked swappable when the file was indexed (_check_byte_order)
            blocks = data.reshape(-1, _SCALE_FIRST[self.kind]).copy()
            blocks[:, :2] = blocks[:, 1::-1]
            data = blocks.reshape(-1)
        rows = math.prod(shape[:-1])
        return data.reshape(*shape[:-1], data.size // max(rows, 1))


@dataclass(frozen=True)
class FileRange:
    """Where rows lie in a file, as they are stored there (the host's byte order): for an
    engine that reads them straight into its own memory (tinynn.read_file_ranges), which
    then checks them finite and raises `nonfinite()` where they are not. With `file_rows`
    > 0 the file holds the whole tensor transposed, as `file_rows` rows of the Rows' row
    count (HF's Conv1D [in, out] for rows of `in` values), read whole and transposed on
    the way in."""

    file: ModelFile
    offset: int  # absolute byte offset of row 0 (transposed: of the file's row 0)
    row_bytes: int  # bytes of one of the Rows' rows in the file's type
    name: str  # the tensor's canonical name, for errors
    nonfinite: Callable[[], ValueError]
    file_rows: int = 0


@dataclass(frozen=True)
class Rows:
    """A 2-D tensor as an engine takes it, read a slice of rows at a time: `read(r0, r1)`
    gives rows r0..r1 in `kind` (floats in their numpy type, BF16 as uint16, quantized types
    as uint8 blocks), checked finite, and may be called from several threads at once.
    `in_file`: where they lie in the file as stored (or transposed, whole), or None (held
    in memory, swapped, in pieces)."""

    kind: str  # F32, F16, BF16, F64, Q8_0, ...
    shape: tuple[int, int]  # [rows, values per row]
    read: Callable[[int, int], np.ndarray]
    in_file: FileRange | None = None

    def f32(self, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 as a C-contiguous float32 array."""
        return to_f32(self.kind, self.read(r0, r1), (r1 - r0, self.shape[1]))


def to_f32(kind: str, data: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Stored data (see TensorInfo.read) as a C-contiguous float32 array of `shape`."""
    if kind == "BF16":
        bits = np.array(data, np.uint32, order="C")
        bits <<= 16
        return bits.view(np.float32)
    if kind in FLOAT_KINDS:
        return np.array(data, np.float32, order="C")
    x = gguf.quants.dequantize(data, _Q[kind])
    return np.array(x.reshape(shape if shape is not None else x.shape), np.float32, order="C")


def finite(kind: str, data: np.ndarray) -> bool:
    """Whether stored data holds only finite values (q8_0: its block scales)."""
    if kind == "F16":  # inf/NaN: all exponent bits set (4x faster than isfinite on f16)
        bits = data.view(np.uint16)
        return bits.size == 0 or int(np.bitwise_and(bits, 0x7FFF).max()) < 0x7C00
    if kind in ("F32", "F64"):
        return bool(np.isfinite(data).all())
    if kind == "BF16":
        return bool(((data & 0x7F80) != 0x7F80).all())
    if kind == "Q8_0":
        scales = data.reshape(-1, 34)[:, :2].copy().view(np.float16)
        return bool(np.isfinite(scales).all())
    return bool(np.isfinite(to_f32(kind, data)).all())


class FileTensors(Mapping):
    """Canonical name -> float32 tensor, read from the file at each access (no cache)."""

    def __init__(
        self,
        config: GPT2Config,
        layout: str,
        infos: dict[str, TensorInfo],
        source: str | Path,
        arrays: Mapping[str, np.ndarray] | None = None,
    ):
        self.config, self.layout, self.infos, self.source = config, layout, infos, source
        self._arrays = arrays  # pytorch_model.bin: the state dict, already in memory
        self._parts: dict[str, list[Stored]] = {}
        for s in stored_tensors(config, layout):
            self._parts.setdefault(s.canonical, []).append(s)

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def read_stored(self, stored_name: str) -> np.ndarray:
        """One stored tensor in its own type, checked finite."""
        info = self.infos[stored_name]
        data = self._arrays[info.name] if self._arrays is not None else info.read()
        return self._checked(stored_name, data)

    def read_rows(self, stored_name: str, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1 of one stored tensor (2-D or more) in its own type, checked finite."""
        info = self.infos[stored_name]
        if self._arrays is not None:
            return self._checked(stored_name, self._arrays[info.name][r0:r1])
        return self._checked(stored_name, info.read_rows(r0, r1))

    def _checked(self, stored_name: str, data: np.ndarray) -> np.ndarray:
        if not finite(self.infos[stored_name].kind, data):
            raise self.nonfinite(stored_name)
        return data

    def nonfinite(self, stored_name: str) -> ValueError:
        """The error for a stored tensor that holds a value that is not finite."""
        info = self.infos[stored_name]
        name = to_canonical(stored_name, self.layout)
        also = f" (stored as {info.name})" if info.name != name else ""
        return ValueError(f"non-finite values in tensor {name} of {self.source}{also}")

    def read_f32(self, stored_name: str) -> np.ndarray:
        info = self.infos[stored_name]
        try:
            return to_f32(info.kind, self.read_stored(stored_name), info.shape)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means bad data
            raise ValueError(f"{self.source}: cannot read tensor {stored_name}: {e}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        stored = self._parts[name]
        if stored[0].how == SPLIT_QKV:
            return np.concatenate([self.read_f32(s.name) for s in stored], axis=-1)  # q | k | v
        x = self.read_f32(stored[0].name)
        return np.ascontiguousarray(x.T) if stored[0].how == TRANSPOSE else x

    def rows(self, name: str, transposed: bool = False) -> Rows | None:
        """Canonical 2-D tensor `name` (transposed: name.T, [out, in]) as rows in the file's
        own type, read a slice at a time where the file holds it as one tensor in that
        orientation; read whole and sliced where it is a float tensor the other way round;
        None where it is in pieces (split q, k, v) or quantized the other way round."""
        stored = self._parts[name]
        if len(stored) != 1 or stored[0].how == SPLIT_QKV:
            return None
        s = stored[0]
        info = self.infos[s.name]
        in_file = info.file is not None and self._arrays is None and info.byte_order == _HOST_ORDER
        nonfinite = lambda: self.nonfinite(s.name)  # noqa: E731
        if (s.how == TRANSPOSE) == transposed:
            shape = (info.shape[0], math.prod(info.shape[1:]))
            where = FileRange(info.file, info.offset, info.row_bytes, name, nonfinite)
            read = lambda r0, r1: self.read_rows(s.name, r0, r1)  # noqa: E731
            return Rows(info.kind, shape, read, where if in_file else None)
        if info.kind not in FLOAT_KINDS:
            return None
        whole = _ReadOnce(lambda: self.read_stored(s.name).T)  # by the first slice's reader
        shape = (math.prod(info.shape[1:]), info.shape[0])
        row_bytes = info.n_bytes // max(shape[0], 1)
        where = FileRange(info.file, info.offset, row_bytes, name, nonfinite, info.shape[0])
        return Rows(info.kind, shape, lambda r0, r1: whole()[r0:r1], where if in_file else None)


class _ReadOnce:
    """A value made by the first call, in whichever thread calls first; the others wait
    for it (a tensor read whole once, then sliced by several threads)."""

    def __init__(self, make: Callable[[], np.ndarray]):
        self._make, self._value, self._lock = make, None, threading.Lock()

    def __call__(self) -> np.ndarray:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value


@dataclass
class GPT2Weights:
    """All parameters of a GPT-2, by canonical name (see `expected_shapes`).

    `tensors` is a dict of float32 arrays (random weights, tests) or a `FileTensors` that
    reads each tensor from the model file when it is asked for.
    """

    config: GPT2Config
    tensors: Mapping[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def rows(self, name: str, transposed: bool = False) -> Rows:
        """2-D tensor `name` (transposed: name.T) a slice of rows at a time: in the file's
        own type where FileTensors.rows can, else as float32 read whole (held in memory, split
        q, k, v, quantized the other way round)."""
        if isinstance(self.tensors, FileTensors):
            rows = self.tensors.rows(name, transposed)
            if rows is not None:
                return rows
        x = self.tensors[name]
        x = x.T if transposed else x
        return Rows("F32", x.shape, lambda r0, r1: x[r0:r1])

    @property
    def file_kind(self) -> str:
        """The stored type of the 2-D block weights (the most common one): F32, F16, BF16,
        Q8_0, ...; F32 for weights held in memory."""
        if not isinstance(self.tensors, FileTensors):
            return "F32"
        kinds = [
            self.tensors.infos[s.name].kind
            for name, parts in self.tensors._parts.items()
            if name.endswith("mlp.c_fc.weight")
            for s in parts
        ]
        return max(set(kinds), key=kinds.count) if kinds else "F32"

    def dtype_for(self, dtype: str, engine: str = "fast") -> str:
        """The engine weight type for `dtype`: "auto" is the file's type where the engine
        takes it (f32, f16 or q8_0 for the fast engine; bf16 and f64 -> f32, other quantized
        types -> q8_0, logged); the ports compute in f32. Other values are returned as given."""
        if dtype != "auto":
            return dtype
        if engine != "fast":
            return "f32"
        kind = self.file_kind
        if kind not in _AUTO:
            log.info("%s weights are converted to q8_0 once, while loading", kind)
        return _AUTO.get(kind, "q8_0")

    def to_memory(self) -> GPT2Weights:
        """Every tensor read now, as float32 arrays held in memory (what the numpy reference
        and the parity tools want)."""
        return GPT2Weights(self.config, {n: self.tensors[n] for n in self.tensors})


@dataclass
class LoadedModel:
    """What `load_model` returns: the weights index plus where and how they were read."""

    config: GPT2Config
    weights: GPT2Weights
    tokenizer: Tokenizer | None
    layout: str  # one of gpt2.names.LAYOUTS
    path: Path
    files: list[Path] = field(default_factory=list)

    def close(self) -> None:
        """Closes the files the weights are read through (their tensors cannot be read
        afterwards); the engines hold their own copies. Idempotent."""
        tensors = self.weights.tensors
        if isinstance(tensors, FileTensors):
            for f in {id(i.file): i.file for i in tensors.infos.values() if i.file}.values():
                f.close()


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """The canonical tensor table: every name and its shape, in checkpoint order."""
    return canonical_shapes(config)


def validate(weights: GPT2Weights, source: str | Path) -> None:
    """Raise ValueError naming `source` and the tensor unless `weights` is complete and sane
    (this reads every tensor of file-backed weights)."""
    _check_names_shapes(weights.tensors, expected_shapes(weights.config), source)
    for name in weights.tensors:
        t = weights.tensors[name]
        if t.dtype != np.float32:
            raise ValueError(f"{source}: tensor {name}: expected dtype float32, found {t.dtype}")
        if not t.flags.c_contiguous:
            raise ValueError(f"{source}: tensor {name} is not C-contiguous")
        if not np.isfinite(t).all():
            raise ValueError(f"non-finite values in tensor {name} of {source}")


def load_model(path: str | Path) -> LoadedModel:
    """Index a `.gguf` file or an HF snapshot folder; raise ValueError on anything wrong.
    No tensor is read into memory here beyond the checks (see GPT2Weights)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    if p.is_dir():
        return load_hf_folder(p)
    return load_gguf(p)


# ---------------------------------------------------------------------------------------
# GGUF


def load_gguf(path: str | Path) -> LoadedModel:
    """Index a GPT-2 GGUF in either layout (told apart by tensor names)."""
    path = Path(path)
    f = HeldFile(path)  # the one descriptor: header and tensors are read through it
    try:
        magic = f.pread(0, min(4, f.size), "the magic")
        if magic != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (magic {bytes(magic)!r}, expected b'GGUF')")
        return _parse_gguf(f)
    except BaseException:
        f.close()
        raise


def open_gguf(f: ModelFile):
    """Context: the parsed GGUF header of `f` (gpt2.gguf_header: metadata and tensor infos
    read with plain preads, never the tensor data, never past MAX_GGUF_HEADER)."""
    return contextlib.nullcontext(read_gguf_header(f))


def _gguf_infos(reader, f: ModelFile) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for t in reader.tensors:
        if t.name in infos:
            raise ValueError(f"{f.path}: tensor {t.name} appears twice")
        kind = t.tensor_type.name
        end = int(t.data_offset) + int(t.n_bytes)
        if end > f.size:
            raise ValueError(
                f"{f.path}: truncated: tensor {t.name} ends at byte {end}, file has {f.size}"
            )
        shape = tuple(int(x) for x in reversed(t.shape))
        infos[t.name] = TensorInfo(
            t.name, f.path, int(t.data_offset), int(t.n_bytes), kind, shape, f, reader.byte_order
        )
    return infos


def _parse_gguf(f: ModelFile) -> LoadedModel:
    path = f.path
    with open_gguf(f) as reader:
        _check_metadata_types(reader, path)
        raw = _gguf_infos(reader, f)
        config = GPT2Config.from_gguf(reader, path)
        _check_layer_count(config, len(raw), path)
        layout = detect_layout(raw, path, among=GGUF_LAYOUTS)
        table = layout_shapes(config, layout)
        head = TIED_HEAD[layout]  # optional (llama.cpp writes a copy of token_embd)
        extra = sorted(set(raw) - set(table) - {head})
        if extra:
            raise ValueError(f"{path}: unexpected tensor(s) {extra} in {layout} layout")
        shapes = {n: t.shape for n, t in raw.items()}
        _check_names_shapes({n: s for n, s in shapes.items() if n in table}, table, path)
        for name, t in raw.items():
            if _Q[t.kind] not in _GGUF_TYPES:
                raise ValueError(
                    f"{path}: tensor {name}: unsupported type {t.kind} "
                    f"(expected one of {sorted(x.name for x in _GGUF_TYPES)})"
                )
            _check_n_bytes(t, path)
            _check_byte_order(t, path)
        tokenizer = Tokenizer.from_gguf(reader, path)
    tensors = FileTensors(config, layout, {n: t for n, t in raw.items() if n in table}, path)
    if head in raw:
        want = canonical_shapes(config)["wte"]
        if shapes[head] != want:
            raise ValueError(f"{path}: tensor {head}: expected shape {want}, found {shapes[head]}")
        _check_tied(tensors, raw[head], None, head, path)
    _check_vocab(tokenizer, config, path)
    return LoadedModel(config, GPT2Weights(config, tensors), tokenizer, layout, path, [path])


# metadata keys whose value type the readers rely on: key -> (GGUF type, array item type)
_V = gguf.GGUFValueType
_META_TYPES = {
    "general.architecture": (_V.STRING, None),
    "tokenizer.ggml.model": (_V.STRING, None),
    "tokenizer.ggml.tokens": (_V.ARRAY, _V.STRING),
    "tokenizer.ggml.merges": (_V.ARRAY, _V.STRING),
    "tokenizer.ggml.token_type": (_V.ARRAY, "int"),
}
_INT_TYPES = {_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32, _V.UINT64, _V.INT64}


def _check_metadata_types(reader, path: Path) -> None:
    """ValueError naming the key when a metadata value has another type than GGUF says."""
    for key, (want, item) in _META_TYPES.items():
        f = reader.get_field(key)
        if f is None:
            continue
        types = list(f.types)
        ok = bool(types) and types[0] == want
        if ok and item is not None:
            rest = types[1:]
            ok = not rest or (rest[0] in _INT_TYPES if item == "int" else rest[0] == item)
        if not ok:
            got = "/".join(t.name for t in types) or "nothing"
            wanted = want.name + (
                f" of {item if isinstance(item, str) else item.name}" if item else ""
            )
            raise ValueError(f"{path}: metadata {key} is {got}, expected {wanted}")


def _check_n_bytes(t: TensorInfo, path: Path) -> None:
    """The byte size a tensor's type and shape need, against the header's."""
    block, size = gguf.GGML_QUANT_SIZES[_Q[t.kind]]
    n = math.prod(t.shape)
    if t.shape and t.shape[-1] % block:
        raise ValueError(
            f"{path}: tensor {t.name}: rows of {t.shape[-1]} do not fill {t.kind} blocks"
        )
    if n // block * size != t.n_bytes:
        raise ValueError(
            f"{path}: tensor {t.name}: {t.kind} {t.shape} needs {n // block * size} bytes, "
            f"the header says {t.n_bytes}"
        )


def _check_byte_order(t: TensorInfo, path: Path) -> None:
    """A tensor of a file in the other byte order must be one that decode can swap."""
    if t.byte_order != _HOST_ORDER and t.kind not in FLOAT_KINDS and t.kind not in _SCALE_FIRST:
        order = "big-endian" if t.byte_order == ">" else "little-endian"
        raise ValueError(
            f"{path}: tensor {t.name}: {t.kind} in a {order} GGUF is not supported "
            f"(F32, F16, BF16, {', '.join(_SCALE_FIRST)} are; convert the file with "
            "gguf_convert_endian or to one of those types)"
        )


# ---------------------------------------------------------------------------------------
# HF folder


def load_hf_folder(path: str | Path) -> LoadedModel:
    """Index an HF GPT-2 snapshot: config.json, model.safetensors (or its shards and index,
    or pytorch_model.bin), tokenizer."""
    folder = Path(path)
    config = GPT2Config.from_hf_config(folder / "config.json")
    infos, files, arrays = _hf_tensor_infos(folder)
    source = files[0] if len(files) == 1 else folder

    _check_layer_count(config, len(infos), source)
    canonical: dict[str, TensorInfo] = {}
    lm_head = None
    for key, info in infos.items():
        if is_hf_buffer(key):
            continue  # causal-mask buffers saved by old transformers; not parameters
        if is_tied_head(key, LAYOUT_HF):
            lm_head = info
            continue
        try:
            name = to_canonical(key, LAYOUT_HF)
        except ValueError:
            name = key.removeprefix(HF_PREFIX)  # no GPT-2 name: reported as unexpected below
        if name in canonical:
            raise ValueError(f"{source}: tensor {name} present with and without prefix")
        if info.kind not in _ST_KINDS:
            raise ValueError(
                f"{source}: tensor {key}: unsupported dtype {info.kind} "
                "(expected F32, F16, BF16 or F64)"
            )
        canonical[name] = info
    _check_names_shapes({n: i.shape for n, i in canonical.items()}, expected_shapes(config), source)
    # stored under HF's names (with or without the prefix): index them by the stored name
    # that names.stored_tensors gives (always prefixed)
    by_stored = {HF_PREFIX + _hf_name(n): i for n, i in canonical.items()}
    tensors = FileTensors(config, LAYOUT_HF, by_stored, source, arrays)
    if lm_head is not None:
        head = TIED_HEAD[LAYOUT_HF]
        _check_tied(tensors, lm_head, arrays, head, source)
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        tokenizer = Tokenizer.from_folder(folder)
    _check_vocab(tokenizer, config, folder)
    weights = GPT2Weights(config, tensors)
    return LoadedModel(config, weights, tokenizer, LAYOUT_HF, folder, files)


def _hf_name(canonical: str) -> str:
    return {"wte": "wte.weight", "wpe": "wpe.weight"}.get(canonical, canonical)


def _hf_tensor_infos(
    folder: Path,
) -> tuple[dict[str, TensorInfo], list[Path], dict[str, np.ndarray] | None]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    torch_bin = folder / "pytorch_model.bin"
    if single.exists():
        files = [single]
    elif index.exists():
        files = [folder / f for f in shard_names(index)]
    elif torch_bin.exists():
        from gpt2.torch_bin import read_torch_bin  # it imports this module (TensorInfo)

        infos, arrays = read_torch_bin(torch_bin)
        return infos, [torch_bin], arrays
    else:
        raise ValueError(
            f"{folder}: no model.safetensors, model.safetensors.index.json or "
            "pytorch_model.bin: not a model folder"
        )
    infos: dict[str, TensorInfo] = {}
    for f in files:
        part = safetensors_infos(f)
        dup = set(part) & set(infos)
        if dup:
            raise ValueError(f"{f}: tensor {min(dup)} also in another shard")
        infos.update(part)
    return infos, files, None


def safetensors_infos(path: Path) -> dict[str, TensorInfo]:
    """The tensor table of a safetensors file, every entry checked against its dtype, shape
    and the file's size (nothing past the header is read); the tensors are read through the
    descriptor the header was read through (held open by them)."""
    f = HeldFile(path)
    try:
        return _safetensors_infos(f)
    except BaseException:
        f.close()
        raise


def _safetensors_infos(f: HeldFile) -> dict[str, TensorInfo]:
    path = f.path
    if f.size < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({f.size} bytes)")
    (n,) = struct.unpack("<Q", f.pread(0, 8, "the header length"))
    if n > min(f.size - 8, MAX_SAFETENSORS_HEADER):
        raise ValueError(f"{path}: header length {n} does not fit the file ({f.size} bytes)")
    try:
        header = json.loads(f.pread(8, n, "the header").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: safetensors header is not valid JSON ({e})") from None
    size = f.size
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    infos = {}
    for name, e in header.items():
        try:
            dtype, shape, (begin, end) = e["dtype"], e["shape"], e["data_offsets"]
            ok = (
                isinstance(dtype, str)
                and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)
                and type(begin) is int
                and type(end) is int
                and 0 <= begin <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: bad safetensors entry for tensor {name}: {e!r:.200}")
        if 8 + n + end > size:
            raise ValueError(
                f"{path}: truncated: tensor {name} ends at byte {8 + n + end}, file has {size}"
            )
        if dtype in _ST_KINDS:
            need = math.prod(shape) * np.dtype(FLOAT_KINDS[dtype]).itemsize
            if end - begin != need:
                raise ValueError(
                    f"{path}: tensor {name}: {dtype} {tuple(shape)} needs {need} bytes, "
                    f"the header gives {end - begin}"
                )
        infos[name] = TensorInfo(name, path, 8 + n + begin, end - begin, dtype, tuple(shape), f)
    return infos


def shard_names(index: Path) -> list[str]:
    """The shard files named by a model.safetensors.index.json, checked."""
    try:
        weight_map = json.loads(read_text(index))["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v and "/" not in v and "\\" not in v and v not in (".", "..")
        for v in weight_map.values()
    ):
        raise ValueError(
            f"{index}: weight_map must map tensor names to shard file names in the same folder"
        )
    return sorted(set(weight_map.values()))


# ---------------------------------------------------------------------------------------
# shared checks


def _check_names_shapes(
    found: Mapping, expected: dict[str, tuple[int, ...]], source: str | Path
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


def _check_tied(
    tensors: FileTensors,
    head: TensorInfo,
    arrays: Mapping[str, np.ndarray] | None,
    name: str,
    source: str | Path,
) -> None:
    """The file's copy of the output head must equal wte (bytes first, then values)."""
    (wte_name,) = [s.name for s in tensors._parts["wte"]]
    wte_info = tensors.infos[wte_name]
    if arrays is not None:
        head_data = arrays[head.name]
    else:
        head_data = head.read()
    if wte_info.kind == head.kind and wte_info.n_bytes == head.n_bytes:
        if np.array_equal(tensors.read_stored(wte_name).view(np.uint8), head_data.view(np.uint8)):
            return
    wte = tensors["wte"]
    try:
        head_f32 = to_f32(head.kind, head_data, head.shape)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{source}: cannot read tensor {name}: {e}") from None
    if not np.array_equal(head_f32, wte):
        diff = float(np.max(np.abs(head_f32 - wte)))
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


__all__ = [
    "FileTensors",
    "GPT2Weights",
    "LoadedModel",
    "TensorInfo",
    "expected_shapes",
    "load_model",
    "validate",
]
