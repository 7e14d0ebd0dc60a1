"""Bytes of an open file into tensors, as the file stores them: ``read_file_ranges``, one
call of ``tnn_read_file_ranges`` (native/file_reads.c).

A few threads read pieces of the file at once (pread, through the caller's descriptor),
straight into tensors in host memory (a CPU session's), or, for device memory, into a few
page-locked staging buffers whose rounds go to the device asynchronously while the next
rounds are read; one wait for the device at the end. Each piece is checked finite as it
lands. The GIL is released for the whole call.

    with open(path, "rb") as f:
        bad = tinynn.read_file_ranges(session, f.fileno(), [(wte, 4096, wte.nbytes, 0)])
    if bad is not None:  # (range index, byte offset in it) of a value that is not finite
        ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import TinyNNError
from .session import INT32, INT64, Session, Tensor, c_integer

# tnn_file_range (native/tinynn.h): where one range of the file goes
FILE_RANGE_DTYPE = np.dtype(
    [("t", "<u8"), ("file_offset", "<i8"), ("nbytes", "<i8"), ("offset", "<i8")]
)
READ_STAGED = 1  # TNN_READ_STAGED: stage host memory too (the device's path, for tests)


class FileReadError(TinyNNError):
    """A range could not be read (a read error, or the file ended early): ``range_index``
    is its index in the ranges given, -1 where an argument was refused before any read."""

    def __init__(self, message: str, code: int | None, range_index: int):
        super().__init__(message, code)
        self.range_index = range_index


def read_file_ranges(
    session: Session,
    fd: int,
    ranges: Sequence[tuple[Tensor, int, int, int]],
    *,
    n_threads: int = 1,
    staging_bytes: int = 16 << 20,
    n_staging: int = 4,
    staged: bool = False,
) -> tuple[int, int] | None:
    """Reads each range ``(tensor, file_offset, nbytes, offset)`` of the open file ``fd``
    into ``tensor`` from byte ``offset``, with ``n_threads`` threads; tensors in device
    memory (or all, ``staged``) go through ``n_staging`` staging buffers of
    ``staging_bytes``. Every range is checked before anything is read. Returns None, or
    (range index, byte offset in that range) of the first value that is not finite (f32,
    f16, bf16; q8_0: a block's scale), where reading stopped. FileReadError when a range
    cannot be read (the tensors then hold part of the file)."""
    records = np.zeros(len(ranges), FILE_RANGE_DTYPE)
    for i, (t, file_offset, nbytes, offset) in enumerate(ranges):
        if not isinstance(t, Tensor) or t.session.closed:
            raise ValueError(f"range {i}: expected a live Tensor, got {t!r}")
        records[i] = (
            t.handle,
            c_integer(file_offset, "file_offset"),
            c_integer(nbytes, "nbytes"),
            c_integer(offset, "offset"),
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
        return None
    return int(bad_range[0]), int(nonfinite_at[0])
