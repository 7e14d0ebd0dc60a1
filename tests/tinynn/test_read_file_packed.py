"""tinynn.read_file_ranges with packed ranges (native/file_reads.c, value_layouts.c): the
weights written in our CPU product's layout (native/packed_layout.h) by the reading threads,
as the file stores them, converted or transposed.

Oracle: the same file read in t's own rows, then packed by Session.pack_rows; and the plain
read's download (a download of a packed tensor unpacks it). Tolerance: exact (bytes), for
f32 and f16, transposed and converted, K = 16 to rows past a tile, row counts with a partial
last tile of packed rows, 1 to 3 threads. The refusals: every precondition of pack_rows, a
part of a tensor, staged reads, a second range of the same tensor; each refused before any
byte is read, the process alive.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from tinynn import FileReadError, ReadRange, Session, TinyNNError, read_file_ranges

HEADER = 100  # bytes before the values: no read starts aligned
NUMPY = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}


def _values(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    if kind == "bf16":  # random bits, exponent not all ones
        bits = rng.integers(0, 1 << 16, shape, dtype=np.uint16)
        return np.where((bits & 0x7F80) == 0x7F80, bits & 0xBFFF, bits).astype(np.uint16)
    return rng.standard_normal(shape).astype(NUMPY[kind])


def _first_difference(got: bytes, want: bytes) -> str:
    g, w = np.frombuffer(got, np.uint8), np.frombuffer(want, np.uint8)
    if g.size != w.size:
        return f"{g.size} bytes, expected {w.size}"
    at = np.flatnonzero(g != w)
    return "equal" if at.size == 0 else f"{at.size} bytes differ, the first at {at[0]} of {g.size}"


def _read_both(tmp_path, values, into, transposed, n_threads=2):
    """Reads the file's values into two tensors of type `into`: `a` packed by the read, `b`
    read as t's rows, then packed by pack_rows. Returns (b's download before packing, a's
    download, the packed product of a, of b, over the same three columns). A download
    unpacks (a permutation), so a's equal to b's means a's bytes are pack_rows' bytes."""
    kind = next(k for k, v in NUMPY.items() if v == values.dtype.type)
    path = tmp_path / "values.bin"
    path.write_bytes(b"h" * HEADER + values.tobytes())
    rows, cols = values.shape
    ne = (rows, cols) if transposed else (cols, rows)  # transposed: t's rows are the columns
    x = np.random.default_rng(2).standard_normal((3, ne[0])).astype(np.float32)
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu", n_threads=2) as s:
            a, b = s.input_typed_persistent(into, ne), s.input_typed_persistent(into, ne)
            s.finalize_weights()
            file_type = None if kind == into else kind
            file_rows = rows if transposed else 0
            for t, packed in ((a, True), (b, False)):
                r = ReadRange(t, HEADER, t.nbytes, 0, file_rows, file_type, packed)
                assert read_file_ranges(s, fd, [r], n_threads=n_threads) is None
            assert a.packed and not b.packed
            plain = b.download()
            s.pack_rows(b)
            products = []
            for w in (a, b):
                with s.fork() as f:
                    xt = f.input_typed("f32", (ne[0], 3))
                    y = f.set_output(f.packed_matmul(w, xt))
                    f.realize(y)
                    products.append(f.compute_io(xt, x, y))
            return plain, a.download(), *products
    finally:
        os.close(fd)


# (the file's rows, its columns): K = 16; row counts 1, 7, 9, 13 (a partial last tile);
# rows longer than a tile of the file; a tile of many rows
SHAPES = [(16, 1), (16, 7), (16, 9), (32, 13), (48, 40), (768, 2304), (64, 300_000 // 16)]


@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "kind, into", [("f32", "f32"), ("f16", "f16"), ("f32", "f16"), ("f16", "f32"), ("bf16", "f32")]
)
@pytest.mark.parametrize("transposed", [False, True])
def test_a_packed_read_is_pack_rows_of_the_plain_read(
    tmp_path, shape, kind, into, transposed, n_threads
):
    rows, cols = shape
    if not transposed:  # t's rows are the file's rows: K = the file's columns
        rows, cols = cols, rows
    values = _values(np.random.default_rng(rows * 7 + cols), kind, (rows, cols))
    plain, got, product_a, product_b = _read_both(tmp_path, values, into, transposed, n_threads)
    assert got.tobytes() == plain.tobytes(), _first_difference(got.tobytes(), plain.tobytes())
    assert product_a.tobytes() == product_b.tobytes(), "the product reads them differently"


def test_a_packed_range_s_tensor_refuses_what_pack_rows_refuses_after(tmp_path):
    """Read packed, t is packed: pack_rows refuses it again, and so does a plain read."""
    values = _values(np.random.default_rng(1), "f32", (16, 32))
    path = tmp_path / "v.bin"
    path.write_bytes(values.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent("f32", (32, 16))
            s.finalize_weights()
            assert read_file_ranges(s, fd, [ReadRange(t, 0, t.nbytes, 0, 16, None, True)]) is None
            with pytest.raises(TinyNNError, match="packed"):
                s.pack_rows(t)
            with pytest.raises(FileReadError, match="packed"):
                read_file_ranges(s, fd, [ReadRange(t, 0, t.nbytes)])
    finally:
        os.close(fd)


def _refused(tmp_path, make, match, **kw):
    """A session whose tensors `make(s)` declares (before finalize) and returns as (ranges,
    a tensor that must stay unpacked and untouched): the read is refused with `match`."""
    path = tmp_path / "v.bin"
    path.write_bytes(np.ones(1 << 16, np.float32).tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            ranges, untouched = make(s)
            with pytest.raises(FileReadError, match=match) as e:
                read_file_ranges(s, fd, ranges, **kw)
            assert e.value.range_index in (-1, 0, 1)
            for t in untouched:
                assert not t.packed
                assert not np.asarray(t.download()).any(), "a byte was read"
    finally:
        os.close(fd)


def test_what_a_packed_read_refuses(tmp_path):
    def finalized(s, dtype="f32", ne=(32, 16)):
        t = s.input_typed_persistent(dtype, ne)
        s.finalize_weights()
        return t

    def whole(t):
        return ReadRange(t, 0, t.nbytes, packed=True)

    def k_not_16(s):
        t = finalized(s, ne=(24, 8))
        return [whole(t)], [t]

    def three_d(s):
        t = finalized(s, ne=(32, 4, 2))
        return [whole(t)], [t]

    def q8_0(s):
        t = finalized(s, "q8_0", (32, 8))
        return [whole(t)], []

    def part(s):
        t = finalized(s)
        return [ReadRange(t, 0, t.nbytes // 2, packed=True)], [t]

    def at_offset(s):
        t = finalized(s)
        return [ReadRange(t, 0, t.nbytes - 64, 64, packed=True)], [t]

    def twice(s):
        t = finalized(s)
        return [whole(t), whole(t)], [t]

    def and_plain(s):
        t = finalized(s)
        return [ReadRange(t, 0, 64), whole(t)], [t]

    def a_view(s):
        t = finalized(s)
        return [whole(s.view_2d(t, 32, 8, 128, 0))], [t]

    _refused(tmp_path, k_not_16, "packed rows: w .* must be 2-D with ne0 a multiple of 16")
    _refused(tmp_path, three_d, "packed rows: w .* must be 2-D")
    _refused(tmp_path, q8_0, "packed rows: w is .*q8_0.*expected f32 or f16")
    _refused(tmp_path, part, "packed rows: .* expected the whole tensor")
    _refused(tmp_path, at_offset, "packed rows: .* expected the whole tensor")
    _refused(tmp_path, twice, "range 1: .* read packed by range 0, which must be the only")
    _refused(tmp_path, and_plain, "range 0: .* read packed by range 1")
    _refused(tmp_path, a_view, "packed rows: w .* must be a persistent tensor, not a view")

    def staged(s):
        t = finalized(s)
        return [whole(t)], [t]

    _refused(tmp_path, staged, "packed rows are read straight into host memory", staged=True)


@contextlib.contextmanager
def _file_and_weight(tmp_path, n_floats: int):
    """An open file of n_floats ones and a finalized CPU session's f32 [32, 16] weight."""
    path = tmp_path / "v.bin"
    path.write_bytes(np.ones(n_floats, np.float32).tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent("f32", (32, 16))
            s.finalize_weights()
            yield fd, s, t
    finally:
        os.close(fd)


def test_a_packed_read_after_a_fork_or_a_graph_is_refused(tmp_path):
    with _file_and_weight(tmp_path, 512) as (fd, s, t):
        with s.fork():
            with pytest.raises(FileReadError, match="packed rows: the session has forks"):
                read_file_ranges(s, fd, [ReadRange(t, 0, t.nbytes, packed=True)])
        assert not t.packed


def test_a_failed_packed_read_leaves_t_unpacked(tmp_path):
    """The file ends inside the range: an error, and t is not marked packed."""
    with _file_and_weight(tmp_path, 100) as (fd, s, t):
        with pytest.raises(FileReadError, match="the file ended"):
            read_file_ranges(s, fd, [ReadRange(t, 0, t.nbytes, packed=True)])
        assert not t.packed
        s.pack_rows(t)  # still packable
