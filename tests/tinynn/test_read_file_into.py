"""Tensor.read_file_into (tnn_read_file_into): bytes of an open file straight into a CPU
tensor's memory, checked finite as they land; every bad argument an error, the process
alive. Tolerance: exact (bytes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tinynn import Session, TinyNNError


@pytest.fixture
def file_fd(tmp_path):
    """A file of 4 header bytes, 64 f32 values, 64 f32 values with an inf at index 5."""
    good = np.arange(64, dtype=np.float32)
    bad = good.copy()
    bad[5] = np.inf
    path = tmp_path / "data.bin"
    path.write_bytes(b"hdr!" + good.tobytes() + bad.tobytes())
    fd = os.open(path, os.O_RDONLY)
    yield fd, good
    os.close(fd)


def test_reads_the_bytes_and_reports_the_first_non_finite(file_fd):
    fd, good = file_fd
    with Session("cpu") as s:
        t = s.input_typed_persistent("f32", (64,))
        s.finalize_weights()
        assert t.read_file_into(fd, 4, 256) == -1
        assert np.array_equal(t.download(), good)
        assert t.read_file_into(fd, 4 + 256, 256) == 5 * 4  # byte offset of the inf
        assert t.read_file_into(fd, 4 + 16, 16, offset=32) == -1  # values 4..7 at 8..11
        assert t.download()[8:12].tolist() == [4, 5, 6, 7]


def test_f16_and_q8_0_values_are_checked(tmp_path):
    f16 = np.array([1, 2, np.nan, 4] * 8, np.float16)
    q8 = np.zeros((2, 34), np.uint8)
    q8[1, :2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)  # block 1's scale
    path = tmp_path / "typed.bin"
    path.write_bytes(f16.tobytes() + q8.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            a = s.input_typed_persistent("f16", (32,))
            b = s.input_typed_persistent("q8_0", (64,))
            s.finalize_weights()
            assert a.read_file_into(fd, 0, 64) == 4
            assert b.read_file_into(fd, 64, 68) == 34
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "args, match",
    [
        ((4 + 512, 256), "the file ended at byte 516"),  # past the end: a short read
        ((4, 2), "not whole f32 values"),
        ((4, 260), "do not fit"),
        ((-4, 4), "offset >= 0"),
    ],
)
def test_bad_ranges_are_errors(file_fd, args, match):
    fd, _ = file_fd
    with Session("cpu") as s:
        t = s.input_typed_persistent("f32", (64,))
        s.finalize_weights()
        with pytest.raises(TinyNNError, match=match):
            t.read_file_into(fd, *args)


def test_bad_descriptors_and_states_are_errors(file_fd):
    fd, _ = file_fd
    with Session("cpu") as s:
        t = s.input_typed_persistent("f32", (64,))
        with pytest.raises(TinyNNError, match="no memory yet"):
            t.read_file_into(fd, 4, 256)
        s.finalize_weights()
        with pytest.raises(TinyNNError, match="fd=-1"):
            t.read_file_into(-1, 4, 256)
        closed = os.dup(fd)
        os.close(closed)
        with pytest.raises(TinyNNError, match="Bad file descriptor"):
            t.read_file_into(closed, 4, 256)
        i32 = s.input_typed("i32", (4,))
        with pytest.raises(TinyNNError):
            i32.read_file_into(fd, 4, 16)
