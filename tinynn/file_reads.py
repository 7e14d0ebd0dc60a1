"""Bytes of an open file into tensors, as the file stores them or converted and transposed
on the way: ``read_file_ranges``, one call of ``tnn_read_file_ranges`` (native/file_reads.c).

A few threads read pieces of the file at once (pread, through the caller's descriptor),
straight into tensors in host memory (a CPU session's), or, for device memory, into a few
page-locked staging buffers whose rounds go to the device asynchronously while the next
rounds are read; one wait for the device at the end. Each piece is checked finite as it
lands. A range stored in another float type (f32 -> f16, f16 or bf16 -> f32) or transposed
(the file's R rows of C values, HF's Conv1D [in, out], become the tensor's C rows of R) is
read a tile at a time into a small buffer of the reading thread, converted and written
transposed from there: no copy of a tensor is made. The GIL is released for the whole call.

    with open(path, "rb") as f:
        bad = tinynn.read_file_ranges(session, f.fileno(), [(wte, 4096, wte.nbytes, 0)])
    if bad is not None:  # (range index, byte offset in it) of a value that is not finite
        ...
    # w_fc (f32, ne [768, 3072]): the file's [768, 3072] f32 Conv1D weight at byte 8192
    read_file_ranges(session, fd, [ReadRange(w_fc, 8192, w_fc.nbytes, file_rows=768)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .errors import TinyNNError
from .session import INT32, INT64, Session, Tensor, c_integer

# tnn_file_range (native/tinynn.h): where one range of the file goes, and how it lies there
FILE_RANGE_DTYPE = np.dtype(
    [
        ("t", "<u8"),
        ("file_offset", "<i8"),
        ("nbytes", "<i8"),
        ("offset", "<i8"),
        ("file_rows", "<i8"),
        ("file_type", "<i4"),
        ("layout", "<i4"),
    ]
)
READ_STAGED = 1  # TNN_READ_STAGED: stage host memory too (the device's path, for tests)
FILE_TYPE_OF_T = -1  # TNN_FILE_TYPE_OF_T
LAYOUT_ROW_MAJOR = 0  # TNN_LAYOUT_ROW_MAJOR: t's rows
LAYOUT_PACKED_ROWS = 1  # TNN_LAYOUT_PACKED_ROWS: our CPU product's tiles (Session.pack_rows)
# a file's value types a range may be converted from (TNN_TYPE_*; bf16: no tensor has it)
FILE_TYPE_IDS = {"f32": 0, "f16": 1, "bf16": 30}


class ReadRange(NamedTuple):
    """One range: `nbytes` of tensor `t` from byte `offset`, read from the file at
    `file_offset`. As the file stores them unless `file_type` ("f32", "f16", "bf16") is
    another type than t's (converted: f32 -> f16, f16 -> f32, bf16 -> f32; the file then
    holds nbytes / t's value size x its own) or `file_rows` R > 0 (the file holds the
    range's values as R rows of C, t takes them as C rows of R: transposed). `packed`:
    written in the layout Session.pack_rows makes, by the reading threads (the whole of a
    tensor pack_rows takes, in host memory, not staged); t is then packed."""

    t: Tensor
    file_offset: int
    nbytes: int
    offset: int = 0
    file_rows: int = 0
    file_type: str | None = None  # None: t's own
    packed: bool = False


class FileReadError(TinyNNError):
    """A range could not be read (a read error, or the file ended early): ``range_index``
    is its index in the ranges given, -1 where an argument was refused before any read."""

    def __init__(self, message: str, code: int | None, range_index: int):
        super().__init__(message, code)
        self.range_index = range_index


def read_file_ranges(
    session: Session,
    fd: int,
    ranges: Sequence[ReadRange | tuple],
    *,
    n_threads: int = 1,
    staging_bytes: int = 16 << 20,
    n_staging: int = 4,
    staged: bool = False,
) -> tuple[int, int] | None:
    """Reads each range (a ReadRange, or a tuple of its fields: ``(tensor, file_offset,
    nbytes, offset)`` as the file stores them) of the open file ``fd`` into its tensor,
    with ``n_threads`` threads; tensors in device memory (or all, ``staged``) go through
    ``n_staging`` staging buffers of ``staging_bytes``. Every range is checked before
    anything is read. Returns None, or (range index, byte offset in that range's bytes of
    the file) of the first value that is not finite (f32, f16, bf16; q8_0: a block's scale;
    a value converted to f16 that became inf; in a transposed range one of them), where
    reading stopped. FileReadError when a range cannot be read (the tensors then hold part
    of the file). A packed range's tensor is marked packed only when it returns None."""
    records = np.zeros(len(ranges), FILE_RANGE_DTYPE)
    for i, fields in enumerate(ranges):
        r = ReadRange(*fields)
        if not isinstance(r.t, Tensor) or r.t.session.closed:
            raise ValueError(f"range {i}: expected a live Tensor, got {r.t!r}")
        if r.file_type is not None and r.file_type not in FILE_TYPE_IDS:
            raise ValueError(
                f"range {i}: file_type must be one of {sorted(FILE_TYPE_IDS)} or None, "
                f"got {r.file_type!r}"
            )
        records[i] = (
            r.t.handle,
            c_integer(r.file_offset, "file_offset"),
            c_integer(r.nbytes, "nbytes"),
            c_integer(r.offset, "offset"),
            c_integer(r.file_rows, "file_rows"),
            FILE_TYPE_OF_T if r.file_type is None else FILE_TYPE_IDS[r.file_type],
            LAYOUT_PACKED_ROWS if r.packed else LAYOUT_ROW_MAJOR,
        )
    bad_range, nonfinite_at = np.full(1, -1, np.int64), np.full(1, -1, np.int64)
    lib = session._lib
    try:
        lib.tnn_read_file_ranges(
            session._ptr(),
            c_integer(fd, "fd", INT32),
            records.ctypes.data,
            len(records),
            records.nbytes,
            c_integer(n_threads, "n_threads", INT32),
            c_integer(staging_bytes, "staging_bytes", INT64),
            c_integer(n_staging, "n_staging", INT32),
            READ_STAGED if staged else 0,
            bad_range.ctypes.data,
            nonfinite_at.ctypes.data,
        )
    except TinyNNError as e:
        raise FileReadError(str(e), e.code, int(bad_range[0])) from None
    if bad_range[0] < 0:
        for fields in ranges:  # marked packed natively, as pack_rows marks them
            if ReadRange(*fields).packed:
                fields[0].packed = True
        return None
    return int(bad_range[0]), int(nonfinite_at[0])
