"""A GGUF header parser: the metadata and tensor infos of a model file, read with plain
`pread`s (gpt2.files) into one growing buffer; the tensor data is not read.

    with ModelFile(path) as f:
        header = read_gguf_header(f)
    header.get_field("gpt2.block_count").contents()   # 12
    header.tensors[0]                                 # HeaderTensor(name, type, ne, ...)

The layout, from the GGUF format description (versions 2 and 3; numbers little-endian, or
all big-endian in a file written for such a host):

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x   (key: string, value type: u32, value)
    tensor_count x (name: string, n_dims: u32, ne: u64 x n_dims, ggml type: u32, offset: u64)
    padding to `general.alignment` (32 when absent), then the tensor data; each tensor's
    offset counts from there.

    string = length u64 + that many UTF-8 bytes; array = item type u32 + count u64 + items.

A GPT-2 header holds ~150,000 strings (vocabulary and merges): they are sliced out of the
buffer in one tight loop, not one numpy view each (gguf.GGUFReader's way, ~30x slower).

Every count is bounded before it is used: by the bytes the header may still have (the
file's size and MAX_GGUF_HEADER, whichever is less), by MAX_HEADER_ITEMS in all, and by
GGML's limits (ndims, types). So a corrupt count, or a sparse file's hole read as zeros,
costs at most MAX_GGUF_HEADER bytes and MAX_HEADER_ITEMS items; it never allocates from a
count alone. Anything wrong is a ValueError naming the file: "truncated" when the header
runs past the file's end, "corrupt GGUF header" otherwise. A string value that is not UTF-8
is refused when it is read (`contents()`), as gguf.GGUFReader does, so that a bad value
under a key nobody reads does not refuse the file; keys and tensor names are read at once.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from gpt2.files import ModelFile

MAX_GGUF_HEADER = 64 * 1024 * 1024  # a GPT-2 GGUF header (vocab, merges, infos) is ~3 MB
MAX_HEADER_ITEMS = 600_000  # keys, strings, arrays and tensor infos (GPT-2 has ~150,000)
FIRST_READ = 4 * 1024 * 1024  # bytes read first: all of a GPT-2 header, in one pread
MAX_ARRAY_NESTING = 8  # arrays of arrays: GGUF allows them, no model file nests them deep
MAX_DIMS = 4  # GGML_MAX_DIMS

_V = gguf.GGUFValueType
_Q = gguf.GGMLQuantizationType
# numeric GGUF value types -> struct format letter (the numpy dtype uses the same letter)
_SCALARS = {
    _V.UINT8: "B",
    _V.INT8: "b",
    _V.UINT16: "H",
    _V.INT16: "h",
    _V.UINT32: "I",
    _V.INT32: "i",
    _V.FLOAT32: "f",
    _V.BOOL: "?",
    _V.UINT64: "Q",
    _V.INT64: "q",
    _V.FLOAT64: "d",
}
_VALUE_TYPES = {int(t): t for t in _V}


@dataclass(frozen=True)
class HeaderTensor:
    """One tensor info of a GGUF header (what gguf.ReaderTensor holds, without the data)."""

    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml's ne order: (n_embd, n_vocab) for wte
    n_bytes: int
    data_offset: int  # absolute


@dataclass(frozen=True, eq=False)  # a numpy value has no truth for ==
class HeaderField:
    """One metadata key and its value: `types` as gguf.ReaderField gives them ([STRING];
    [ARRAY, item type], also for an empty array; [ARRAY, ARRAY, ...] for arrays of arrays,
    the rest from the first sub-array), `contents()` the value (arrays of arrays as lists of
    lists, where gguf.ReaderField flattens them)."""

    name: str
    types: list[gguf.GGUFValueType]
    value: Any  # str, int, float, bool; list; numpy array (numeric arrays); _BadString
    offset: int  # where the key starts in the file

    def contents(self) -> Any:
        """The value as Python objects: str, int, float, bool, or a (fresh) list of them."""
        return _contents(self.value, self.name)


class _Nested(list):
    """The value of an array of arrays: one value per sub-array."""


class _BadString:
    """A string value whose bytes are not UTF-8: refused when read."""

    def __init__(self, path: Path, offset: int, error: UnicodeDecodeError):
        self.message = f"{path}: string at byte {offset} is not UTF-8 ({error.reason})"


def _contents(value: Any, key: str) -> Any:
    if isinstance(value, _BadString):
        raise ValueError(f"metadata {key}: {value.message}")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, _Nested):
        return [_contents(v, key) for v in value]
    if isinstance(value, list):
        return list(value)
    return value


@dataclass
class GGUFHeader:
    """A parsed GGUF header: `get_field(key)`, `fields`, `tensors`, `data_offset`, the
    parts of gguf.GGUFReader that the loaders use."""

    path: Path
    version: int
    byte_order: str  # "<" or ">"
    fields: dict[str, HeaderField]
    tensors: list[HeaderTensor]
    alignment: int
    data_offset: int  # absolute: where the tensor data starts

    def get_field(self, key: str) -> HeaderField | None:
        return self.fields.get(key)


def read_gguf_header(f: ModelFile) -> GGUFHeader:
    """Parse the header of the open GGUF `f`; ValueError naming the file on anything wrong."""
    return _Parser(f).parse()


class _Parser:
    """One parse over one growing buffer: `buf` holds the file's first bytes, `pos` is the
    next byte to read, `limit` the most bytes the header may take."""

    def __init__(self, f: ModelFile):
        self.f, self.path = f, f.path
        self.limit = min(f.size, MAX_GGUF_HEADER)
        self.buf = f.pread(0, min(FIRST_READ, self.limit), "the GGUF header")
        self.pos = 0
        self.items = 0

    # --- bounds and reads -------------------------------------------------------------

    def corrupt(self, detail: str) -> ValueError:
        return ValueError(f"{self.path}: corrupt GGUF header: {detail}")

    def need(self, end: int, what: str) -> None:
        """Make buf hold bytes [0, end): read more (doubling), or raise when the header
        would pass the file's end or MAX_GGUF_HEADER."""
        if end <= len(self.buf):
            return
        if end > self.f.size and self.f.size <= MAX_GGUF_HEADER:
            raise ValueError(
                f"{self.path}: truncated: the GGUF header needs {end} bytes for {what}, "
                f"the file has {self.f.size}"
            )
        if end > MAX_GGUF_HEADER:  # a larger file, or a hole where the header would go on
            raise ValueError(
                f"{self.path}: the GGUF header would be {end} bytes (at {what}), more than "
                f"the {MAX_GGUF_HEADER} a model's metadata takes"
            )
        have = len(self.buf)
        grown = min(max(end, 2 * have), self.limit)
        self.buf += self.f.pread(have, grown - have, "the GGUF header")  # in place: same object

    def count(self, n: int, what: str) -> None:
        self.items += n
        if self.items > MAX_HEADER_ITEMS:
            raise self.corrupt(
                f"more than {MAX_HEADER_ITEMS} metadata items at {what} "
                "(a GPT-2 header has ~150,000)"
            )

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        end = self.pos + fmt.size
        self.need(end, what)
        out = fmt.unpack_from(self.buf, self.pos)
        self.pos = end
        return out

    def string(self, what: str) -> str:
        (n,) = self.unpack(self.u64, what)
        start = self.pos
        self.need(start + n, what)
        self.pos = start + n
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.corrupt(f"{what} at byte {start} is not UTF-8 ({e.reason})") from None

    # --- the header ---------------------------------------------------------------------

    def parse(self) -> GGUFHeader:
        self.need(8, "the version")
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError(f"{self.path}: not a GGUF file (magic {bytes(self.buf[:4])!r})")
        (version,) = struct.unpack_from("<I", self.buf, 4)
        order = "<"
        if version & 0xFFFF == 0:  # written on a big-endian host
            order = ">"
            (version,) = struct.unpack_from(">I", self.buf, 4)
        if version not in (2, 3):
            raise ValueError(
                f"{self.path}: GGUF version {version} is not supported (expected 2 or 3)"
            )
        self.order = order
        self.u32 = struct.Struct(order + "I")
        self.u64 = struct.Struct(order + "Q")
        self.pos = 8
        n_tensors, n_kv = self.unpack(struct.Struct(order + "QQ"), "the counts")
        # a key/value takes at least 13 bytes (key length, type, one byte), a tensor info 24
        self.bound(n_kv, 13, "kv_count")
        self.bound(n_tensors, 24, "tensor_count")
        self.count(n_kv + n_tensors, "the counts")

        fields: dict[str, HeaderField] = {}
        for _ in range(n_kv):
            start = self.pos
            key = self.string("a metadata key")
            (raw,) = self.unpack(self.u32, f"the type of {key}")
            types, value = self.value(raw, key, 0)
            if key in fields:
                raise self.corrupt(f"metadata key {key} appears twice")
            fields[key] = HeaderField(key, types, value, start)

        infos = [self.tensor_info() for _ in range(n_tensors)]
        alignment = self.alignment(fields.get("general.alignment"))
        data_offset = -(-self.pos // alignment) * alignment
        self.need(data_offset, "the padding before the tensor data")
        tensors = [
            HeaderTensor(name, qtype, ne, n_bytes, data_offset + offset)
            for name, qtype, ne, n_bytes, offset in infos
        ]
        return GGUFHeader(self.path, version, order, fields, tensors, alignment, data_offset)

    def bound(self, n: int, min_bytes: int, what: str) -> None:
        """A count whose items take at least `min_bytes` each must fit the bytes left."""
        if n * min_bytes > self.limit - self.pos:
            self.need(self.pos + n * min_bytes, f"{what} {n}")  # raises: past the limit

    def alignment(self, field: HeaderField | None) -> int:
        if field is None:
            return gguf.GGUF_DEFAULT_ALIGNMENT
        if field.types != [_V.UINT32]:
            got = "/".join(t.name for t in field.types)
            raise self.corrupt(f"general.alignment is {got}, expected UINT32")
        a = field.value
        if a == 0 or a & (a - 1):
            raise self.corrupt(f"general.alignment {a} is not a power of two")
        return a

    def tensor_info(self) -> tuple:
        name = self.string("a tensor name")
        (n_dims,) = self.unpack(self.u32, f"the n_dims of tensor {name}")
        if n_dims > MAX_DIMS:
            raise self.corrupt(f"tensor {name} has {n_dims} dimensions (ggml allows {MAX_DIMS})")
        ne = self.unpack(struct.Struct(f"{self.order}{n_dims}Q"), f"the shape of tensor {name}")
        (raw,) = self.unpack(self.u32, f"the type of tensor {name}")
        (offset,) = self.unpack(self.u64, f"the offset of tensor {name}")
        try:
            qtype = _Q(raw)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise self.corrupt(f"tensor {name} has unknown ggml type {raw}") from None
        n_bytes = math.prod(ne) * size // block
        return name, qtype, tuple(ne), n_bytes, offset

    # --- values -------------------------------------------------------------------------

    def value(self, raw: int, key: str, depth: int) -> tuple[list[gguf.GGUFValueType], Any]:
        """(types, value) of one value of GGUF type `raw` at pos."""
        vtype = _VALUE_TYPES.get(raw)
        if vtype is None:
            raise self.corrupt(f"metadata {key} has unknown value type {raw}")
        if vtype == _V.STRING:
            return [vtype], self.strings(1, key, one=True)
        if vtype != _V.ARRAY:
            fmt = struct.Struct(self.order + _SCALARS[vtype])
            return [vtype], self.unpack(fmt, f"the value of {key}")[0]
        if depth >= MAX_ARRAY_NESTING:
            raise self.corrupt(f"metadata {key}: arrays nested deeper than {MAX_ARRAY_NESTING}")
        (raw_item,) = self.unpack(self.u32, f"the item type of {key}")
        (n,) = self.unpack(self.u64, f"the length of {key}")
        item = _VALUE_TYPES.get(raw_item)
        if item is None:
            raise self.corrupt(f"metadata {key} is an array of unknown value type {raw_item}")
        self.count(1, key)
        if item == _V.STRING:
            return [vtype, item], self.strings(n, key)
        if item != _V.ARRAY:
            dtype = np.dtype(self.order + _SCALARS[item])
            self.bound(n, dtype.itemsize, f"the length of {key}")
            start = self.pos
            self.need(start + n * dtype.itemsize, f"the items of {key}")
            self.pos = start + n * dtype.itemsize
            if n == 0:
                return [vtype, item], np.empty(0, dtype)
            return [vtype, item], np.frombuffer(self.buf, dtype, n, start).copy()
        self.bound(n, 12, f"the length of {key}")  # each sub-array: item type and count
        values, types = _Nested(), [vtype, item]
        for i in range(n):
            sub_types, v = self.value(int(_V.ARRAY), key, depth + 1)
            if i == 0:
                types = [vtype, *sub_types]
            values.append(v)
        return types, values

    def strings(self, n: int, key: str, one: bool = False) -> list[str] | str | _BadString:
        """`n` strings at pos (`one`: the one string itself): the loop that reads a
        vocabulary. Each is sliced and decoded in place; a count or length past the bytes
        left is refused before anything is allocated for it. Bytes that are not UTF-8 make
        the whole value a _BadString (refused when read)."""
        self.bound(n, 8, f"the length of {key}")
        self.count(n, key)
        u64 = self.u64.unpack_from
        buf, pos, have = self.buf, self.pos, len(self.buf)
        out: list[str] = []
        append = out.append
        bad = None
        for _ in range(n):
            if pos + 8 > have:
                self.need(pos + 8, f"a string of {key}")
                have = len(buf)
            (length,) = u64(buf, pos)
            pos += 8
            end = pos + length
            if end > have:
                self.need(end, f"a string of {key}")
                have = len(buf)
            try:
                append(buf[pos:end].decode("utf-8"))
            except UnicodeDecodeError as e:
                bad = bad or _BadString(self.path, pos, e)
            pos = end
        self.pos = pos
        if bad is not None:
            return bad
        return out[0] if one else out
