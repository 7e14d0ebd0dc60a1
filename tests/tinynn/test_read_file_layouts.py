"""tinynn.read_file_ranges with ranges the file holds another way than the tensor takes them
(native/file_reads.c, native/value_layouts.c): transposed (the file's R rows of C values
into the tensor's C rows of R: HF's Conv1D weights) and converted (f32 -> f16, f16 -> f32,
bf16 -> f32), read a tile at a time, straight into host memory or staged.

Oracle: numpy's transpose and casts of the file's values (bf16: its bits shifted).
Tolerance: exact (bytes), for every shape: 1 x 1, 1 x N, N x 1, shapes no block or tile
divides, rows longer than a tile, staging buffers smaller than a row.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tinynn import FileReadError, ReadRange, Session, TinyNNError, read_file_ranges
from tinynn.file_reads import FILE_RANGE_DTYPE

HEADER = 100  # bytes before the tensor: no read starts aligned
NUMPY = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}
TILE_BYTES = 1 << 20  # TNN_TILE_BYTES


def _values(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """Finite values of the file's type (bf16: random bits, exponent not all ones)."""
    if kind == "bf16":
        bits = rng.integers(0, 1 << 16, shape, dtype=np.uint16)
        return np.where((bits & 0x7F80) == 0x7F80, bits & 0xBFFF, bits).astype(np.uint16)
    return rng.standard_normal(shape).astype(NUMPY[kind])


def _as(kind: str, values: np.ndarray, into: str) -> np.ndarray:
    """The file's values as the tensor's type, as numpy casts them."""
    if kind == "bf16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(NUMPY[into])


def _first_difference(got: np.ndarray, want: np.ndarray) -> str:
    g, w = got.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8)
    if g.size != w.size:
        return f"{g.size} bytes, expected {w.size}"
    at = np.flatnonzero(g != w)
    return "equal" if at.size == 0 else f"first differing byte {at[0]} of {g.size}"


def _read(tmp_path, values: np.ndarray, into: str, transposed: bool, **kw):
    """Writes values after HEADER bytes, reads them into a fresh tensor of type `into` (the
    file's type given where it differs) and returns (what read_file_ranges returned, the
    tensor's values)."""
    kind = next(k for k, v in NUMPY.items() if v == values.dtype.type)
    path = tmp_path / "values.bin"
    path.write_bytes(b"h" * HEADER + values.tobytes())
    rows, cols = values.shape
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            # ne = [rows, cols] (transposed: t's rows are the file's columns), else the file's
            ne = (rows, cols) if transposed else (cols, rows)
            t = s.input_typed_persistent(into, ne)
            s.finalize_weights()
            file_type = None if kind == into else kind
            r = ReadRange(t, HEADER, t.nbytes, 0, rows if transposed else 0, file_type)
            bad = read_file_ranges(s, fd, [r], **kw)
            return bad, t.download()
    finally:
        os.close(fd)


SHAPES = [(1, 1), (1, 1000), (1000, 1), (16, 16), (17, 33), (37, 1000), (768, 2304)]
# past a tile: several tiles of whole rows; rows longer than a tile (cut along them too)
LARGE = [(300, 5000), (2, 300_000)]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES + LARGE)
def test_a_transposed_range_is_numpys_transpose(tmp_path, shape, n_threads):
    values = _values(np.random.default_rng(0), "f32", shape)
    bad, got = _read(tmp_path, values, "f32", True, n_threads=n_threads)
    want = np.ascontiguousarray(values.T)
    assert bad is None
    assert got.tobytes() == want.tobytes(), _first_difference(got, want)


@pytest.mark.parametrize(
    "kind, into", [("f16", "f16"), ("f32", "f16"), ("f16", "f32"), ("bf16", "f32")]
)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (17, 33), (37, 1000), (300, 5000)])
def test_converted_ranges_are_numpys_casts(tmp_path, kind, into, transposed, shape):
    values = _values(np.random.default_rng(1), kind, shape)
    bad, got = _read(tmp_path, values, into, transposed, n_threads=2)
    want = _as(kind, values, into)
    want = np.ascontiguousarray(want.T) if transposed else want
    assert bad is None
    assert got.tobytes() == want.tobytes(), _first_difference(got, want)


@pytest.mark.parametrize("staging_bytes", [4096, 5001, 16 << 20])
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("kind, into", [("f32", "f32"), ("f32", "f16"), ("bf16", "f32")])
@pytest.mark.parametrize("shape", [(1, 1), (1, 3000), (3000, 1), (17, 33), (1500, 3)])
def test_staged_transposed_ranges(tmp_path, shape, kind, into, n_threads, staging_bytes):
    """Staged (the device's path): a round holds t's rows begun, whole and ended (a band
    of the buffer's size, 1500 x 3 f32: a row of t is 6000 bytes, more than 4096), each
    band cut into tiles among the threads, and copied in one piece."""
    values = _values(np.random.default_rng(2), kind, shape)
    kw = {"staged": True, "staging_bytes": staging_bytes, "n_staging": 2, "n_threads": n_threads}
    bad, got = _read(tmp_path, values, into, True, **kw)
    want = np.ascontiguousarray(_as(kind, values, into).T)
    assert bad is None
    assert got.tobytes() == want.tobytes(), _first_difference(got, want)


def test_f32_to_f16_rounds_as_numpy_does(tmp_path):
    """Ties to even, f16's subnormals and its largest value, both ways round."""
    edge = [1 + 2**-11, 1 + 3 * 2**-11, 2**-24, 2**-25, 3 * 2**-26, 1e-7, 65504, 65519.99]
    edge = np.array(edge + [-x for x in edge], np.float32)
    values = np.resize(edge, (7, 13)).astype(np.float32)
    for transposed in (False, True):
        bad, got = _read(tmp_path, values, "f16", transposed)
        want = values.astype(np.float16)
        want = np.ascontiguousarray(want.T) if transposed else want
        assert bad is None
        assert got.tobytes() == want.tobytes(), _first_difference(got, want)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_a_value_that_is_not_finite_is_reported_where_the_file_holds_it(
    tmp_path, transposed, staged
):
    """The byte offset in the range's bytes of the file (row 5, column 7 of the file's
    [40, 300]), a NaN read as it is and a value f16 cannot hold (7e4: inf once converted)."""
    values = _values(np.random.default_rng(3), "f32", (40, 300))
    kw = {"staged": staged, "staging_bytes": 4096, "n_threads": 2}
    for bad_value, into in ((np.nan, "f32"), (np.nan, "f16"), (7e4, "f16")):
        v = values.copy()
        v[5, 7] = bad_value
        bad, _ = _read(tmp_path, v, into, transposed, **kw)
        assert bad == (0, (5 * 300 + 7) * 4), (bad_value, into)


@pytest.mark.parametrize("shape", [(300, 5000), (2, 300_000)])
def test_a_file_that_ends_inside_a_transposed_range(tmp_path, shape):
    """Tiles of whole rows (one pread each) and of parts of rows (a pread a row): the
    error names the range and the byte where the file ended."""
    values = _values(np.random.default_rng(4), "f32", shape)
    path = tmp_path / "cut.bin"
    path.write_bytes(b"h" * HEADER + values.tobytes())
    end = HEADER + values.nbytes // 2 + 2  # inside a value
    os.truncate(path, end)
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent("f32", shape)
            s.finalize_weights()
            with pytest.raises(FileReadError, match=f"range 0: the file ended at byte {end},"):
                read_file_ranges(s, fd, [ReadRange(t, HEADER, t.nbytes, 0, shape[0])])
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "t_type, ne, file_rows, file_type, match",
    [
        ("f32", (8, 4), 0, 8, "file_type=8 into t f32"),  # q8_0 is not converted
        ("f32", (8, 4), 0, -2, "file_type=-2"),
        ("f32", (8, 4), 0, 1000, "file_type=1000"),
        ("f16", (8, 4), 0, 30, "file_type=30 into t f16"),  # bf16 -> f16: not one of them
        ("q8_0", (32, 4), 0, 0, "file_type=0 into t q8_0"),
        ("f32", (8, 4), -1, -1, "file_rows=-1"),
        ("f32", (8, 4), 5, -1, "file_rows=5 for 32 f32 values"),
        ("q8_0", (32, 4), 4, -1, "file_rows=4 for 4 q8_0 values"),
    ],
)
def test_layouts_that_cannot_be_read_are_refused(tmp_path, t_type, ne, file_rows, file_type, match):
    """Checked before anything is read: the record's own fields, raw (the ctypes call)."""
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent(t_type, ne)
            s.finalize_weights()
            rec = np.zeros(1, FILE_RANGE_DTYPE)
            rec[0] = (t.handle, 0, t.nbytes, 0, file_rows, file_type, 0)
            out = np.full(2, -1, np.int64)
            read = s._lib.tnn_read_file_ranges
            with pytest.raises(TinyNNError, match=f"range 0: {match}"):
                read(s._ptr(), fd, rec.ctypes.data, 1, rec.nbytes, 1, 4096, 1, 0,
                     out.ctypes.data, out.ctypes.data + 8)  # fmt: skip
    finally:
        os.close(fd)


def test_a_converted_ranges_extent_in_the_file_is_checked(tmp_path):
    """f32 -> f16: the range spans twice its bytes of the file; an offset whose end would
    overflow is refused naming those bytes."""
    path = tmp_path / "x.bin"
    path.write_bytes(bytes(64))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent("f16", (16,))
            s.finalize_weights()
            r = ReadRange(t, (1 << 63) - 40, 32, 0, 0, "f32")
            with pytest.raises(FileReadError, match="room for 64 bytes"):
                read_file_ranges(s, fd, [r])
            with pytest.raises(ValueError, match="file_type must be one of"):
                read_file_ranges(s, fd, [ReadRange(t, 0, 32, 0, 0, "q8_0")])
    finally:
        os.close(fd)
