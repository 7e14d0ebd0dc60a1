"""tinynn.read_file_ranges (tnn_read_file_ranges): ranges of an open file into tensors, by
several threads at once, straight into host memory or through staging buffers (the path
device memory takes, forced here on the CPU with `staged`): the tensors hold the file's
bytes, the first value that is not finite is reported by range and offset, a file cut
short and every bad argument are errors, and nothing is read when any range is refused.
Tolerance: exact (bytes)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.devices import DEVICES, use_device
from tinynn import FILE_RANGE_DTYPE, FileReadError, Session, TinyNNError, read_file_ranges

HEADER = 100  # bytes before the first tensor: no range starts aligned
# staged reads in rounds of at most this: every tensor below spans several rounds
SMALL_STAGING = 4096


@pytest.fixture
def model_file(tmp_path):
    """A file of a header and three tensors (f32 [3000, 700] over several direct pieces, f16
    [4096], q8_0 [64 blocks]): (path, descriptor, {name: (offset, bytes)})."""
    rng = np.random.default_rng(0)
    blobs = {
        "f32": rng.standard_normal(3000 * 700).astype(np.float32).tobytes(),
        "f16": rng.standard_normal(4096).astype(np.float16).tobytes(),
        "q8_0": _q8_0_blocks(rng, 64),
    }
    where, data = {}, bytearray(rng.integers(0, 256, HEADER, np.uint8).tobytes())
    for name, blob in blobs.items():
        where[name] = (len(data), blob)
        data += blob
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    yield path, fd, where
    os.close(fd)


def _q8_0_blocks(rng: np.random.Generator, n: int) -> bytes:
    """n q8_0 blocks: a finite f16 scale and 32 int8 values each."""
    blocks = rng.integers(-128, 128, (n, 34), np.int8).view(np.uint8)
    blocks[:, :2] = np.full(n, 0.01, np.float16).view(np.uint8).reshape(n, 2)
    return blocks.tobytes()


def _tensors(s: Session) -> dict:
    return {
        "f32": s.input_typed_persistent("f32", (700, 3000)),
        "f16": s.input_typed_persistent("f16", (4096,)),
        "q8_0": s.input_typed_persistent("q8_0", (64 * 32,)),
    }


def _bytes(t) -> bytes:
    return t.download().tobytes()


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("staged, staging_bytes", [(False, 0), (True, 4096), (True, 5001)])
def test_the_tensors_hold_the_files_bytes(model_file, staged, staging_bytes, n_threads):
    """Direct, and staged through buffers of a size q8_0 blocks do not divide (a round ends
    inside a block: the piece is cut before it)."""
    _, fd, where = model_file
    with Session("cpu") as s:
        ts = _tensors(s)
        s.finalize_weights()
        ranges = [(ts[n], off, len(blob), 0) for n, (off, blob) in where.items()]
        kw = {"n_staging": 2, "staging_bytes": staging_bytes or SMALL_STAGING, "staged": staged}
        bad = read_file_ranges(s, fd, ranges, n_threads=n_threads, **kw)
        assert bad is None
        for name, (_, blob) in where.items():
            assert _bytes(ts[name]) == blob, name


@pytest.mark.parametrize("n_staging", [1, 2, 5])
def test_parts_of_tensors_at_offsets_in_many_rounds(model_file, n_staging):
    """Several ranges into one tensor, each at its own offset, staged through buffers much
    smaller than a tensor; the bytes around them stay as they were (zero)."""
    _, fd, where = model_file
    off, blob = where["f32"]
    row = 700 * 4
    with Session("cpu") as s:
        t = s.input_typed_persistent("f32", (700, 3000))
        s.finalize_weights()
        parts = [(5, 9), (9, 10), (100, 1000), (2999, 3000)]  # rows
        ranges = [(t, off + r0 * row, (r1 - r0) * row, r0 * row) for r0, r1 in parts]
        kw = {"n_threads": 2, "staging_bytes": 4096, "n_staging": n_staging, "staged": True}
        assert read_file_ranges(s, fd, ranges, **kw) is None
        got, want = t.download().tobytes(), bytearray(len(blob))
        for r0, r1 in parts:
            want[r0 * row : r1 * row] = blob[r0 * row : r1 * row]
        assert got == bytes(want)


@pytest.mark.parametrize("staged", [False, True])
def test_the_first_value_that_is_not_finite_is_reported(model_file, tmp_path, staged):
    """By range index and byte offset within the range, the first in the ranges' order."""
    path, _, where = model_file
    data = bytearray(path.read_bytes())
    f16_at, f32_at = where["f16"][0] + 2 * 1001, where["f32"][0] + 4 * 5000
    data[f16_at : f16_at + 2] = np.float16(np.inf).tobytes()
    data[f32_at : f32_at + 4] = np.float32(np.nan).tobytes()
    bad_path = tmp_path / "bad.bin"
    bad_path.write_bytes(bytes(data))
    fd = os.open(bad_path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            ts = _tensors(s)
            s.finalize_weights()
            ranges = [(ts[n], where[n][0], len(where[n][1]), 0) for n in ("q8_0", "f16", "f32")]
            kw = {"n_threads": 2, "staging_bytes": SMALL_STAGING, "staged": staged}
            assert read_file_ranges(s, fd, ranges, **kw) == (1, 2 * 1001)
            assert read_file_ranges(s, fd, ranges[2:], **kw) == (0, 4 * 5000)
            assert read_file_ranges(s, fd, ranges[:1], **kw) is None
    finally:
        os.close(fd)


def test_a_q8_0_blocks_scale_is_checked(tmp_path):
    blocks = bytearray(_q8_0_blocks(np.random.default_rng(1), 4))
    blocks[2 * 34 : 2 * 34 + 2] = np.float16(np.nan).tobytes()
    path = tmp_path / "q8.bin"
    path.write_bytes(bytes(blocks))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Session("cpu") as s:
            t = s.input_typed_persistent("q8_0", (4 * 32,))
            s.finalize_weights()
            for staged in (False, True):
                kw = {"staged": staged, "staging_bytes": SMALL_STAGING}
                bad = read_file_ranges(s, fd, [(t, 0, 4 * 34, 0)], **kw)
                assert bad == (0, 2 * 34)
    finally:
        os.close(fd)


@pytest.mark.parametrize("staged", [False, True])
def test_a_file_that_ends_mid_read_is_an_error_naming_the_range(model_file, staged):
    """The file cut after its ranges were planned (the caller's header said more bytes):
    a FileReadError naming the range and the byte where the file ended."""
    path, fd, where = model_file
    off, blob = where["f16"]
    with Session("cpu") as s:
        ts = _tensors(s)
        s.finalize_weights()
        os.truncate(path, off + 1000)  # inside the f16 tensor
        ranges = [(ts["f32"], where["f32"][0], len(where["f32"][1]), 0)]
        ranges.append((ts["f16"], off, len(blob), 0))
        kw = {"n_threads": 2, "staging_bytes": SMALL_STAGING, "staged": staged}
        with pytest.raises(
            FileReadError, match=f"range 1: the file ended at byte {off + 1000}"
        ) as e:
            read_file_ranges(s, fd, ranges, **kw)
        assert e.value.range_index == 1


def test_bad_descriptors_are_errors(model_file):
    _, fd, where = model_file
    closed = os.dup(fd)
    os.close(closed)
    with Session("cpu") as s:
        t = _tensors(s)["f16"]
        s.finalize_weights()
        r = [(t, where["f16"][0], len(where["f16"][1]), 0)]
        with pytest.raises(FileReadError, match="fd=-1"):
            read_file_ranges(s, -1, r)
        for staged in (False, True):
            with pytest.raises(FileReadError, match="Bad file descriptor") as e:
                read_file_ranges(s, closed, r, staged=staged, staging_bytes=SMALL_STAGING)
            assert e.value.range_index == 0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"n_threads": 0}, "n_threads=0"),
        ({"n_threads": 65}, "n_threads=65"),
        ({"staging_bytes": 4095}, "staging_bytes=4095"),
        ({"staging_bytes": (1 << 30) + 1}, "staging_bytes="),
        ({"n_staging": 0}, "n_staging=0"),
        ({"n_staging": 17}, "n_staging=17"),
    ],
)
def test_bad_settings_are_errors(model_file, change, match):
    _, fd, where = model_file
    with Session("cpu") as s:
        t = _tensors(s)["f16"]
        s.finalize_weights()
        r = [(t, where["f16"][0], len(where["f16"][1]), 0)]
        with pytest.raises(FileReadError, match=match) as e:
            read_file_ranges(s, fd, r, **change)
        assert e.value.range_index == -1


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda t: (t["f16"], 0, 3, 0), "range 1: 3 bytes at offset 0 of t f16 .* not whole"),
        (lambda t: (t["q8_0"], 0, 34, 17), "range 1: .* not whole q8_0 values \\(34 bytes\\)"),
        (lambda t: (t["f16"], 0, 8194, 0), "range 1: 8194 bytes at offset 0 do not fit"),
        (lambda t: (t["f16"], -2, 2, 0), "range 1: file_offset=-2"),
        (lambda t: (t["f16"], (1 << 63) - 2, 4, 0), "range 1: file_offset="),
    ],
)
def test_a_bad_range_refuses_the_call_before_any_read(model_file, bad, match):
    """Every range is checked first: with the second one bad, the first is not read."""
    _, fd, where = model_file
    with Session("cpu") as s:
        ts = _tensors(s)
        s.finalize_weights()
        good = (ts["f32"], where["f32"][0], len(where["f32"][1]), 0)
        with pytest.raises(FileReadError, match=match):
            read_file_ranges(s, fd, [good, bad(ts)])
        assert not ts["f32"].download().any()  # nothing was read


def test_tensors_that_cannot_take_the_bytes_are_errors(model_file):
    _, fd, where = model_file
    off, blob = where["f16"]
    with Session("cpu") as s, Session("cpu") as other:
        t = s.input_typed_persistent("f16", (4096,))
        ids = s.input_typed_persistent("i32", (16,))
        with pytest.raises(FileReadError, match="range 0: t has no memory yet"):
            read_file_ranges(s, fd, [(t, off, len(blob), 0)])
        s.finalize_weights()
        foreign = other.input_typed_persistent("f16", (4096,))
        other.finalize_weights()
        with pytest.raises(FileReadError, match="range 1: t .* is not a live tensor"):
            read_file_ranges(s, fd, [(t, off, len(blob), 0), (foreign, off, len(blob), 0)])
        with pytest.raises(FileReadError, match="range 0: t is i32 .* index tensors"):
            read_file_ranges(s, fd, [(ids, off, 64, 0)])


def test_no_ranges_read_nothing(model_file):
    _, fd, _ = model_file
    with Session("cpu") as s:
        s.input_typed_persistent("f16", (8,))
        s.finalize_weights()
        assert read_file_ranges(s, fd, []) is None


def test_the_records_are_checked_against_their_count(model_file):
    """The raw call: ranges_nbytes must be n_ranges records of 48 bytes."""
    _, fd, where = model_file
    with Session("cpu") as s:
        t = _tensors(s)["f16"]
        s.finalize_weights()
        records = np.zeros(1, FILE_RANGE_DTYPE)
        records[0] = (t.handle, where["f16"][0], len(where["f16"][1]), 0, 0, -1, 0)
        out = [ctypes.c_int64(), ctypes.c_int64()]
        outs = [ctypes.addressof(o) for o in out]
        read = s._lib.tnn_read_file_ranges
        for n, nbytes in ((1, 47), (2, 48), (-1, -48)):
            with pytest.raises(TinyNNError, match="records need"):
                read(s._ptr(), fd, records.ctypes.data, n, nbytes, 1, 4096, 1, 0, *outs)
        with pytest.raises(TinyNNError, match="records need .* and NULL"):
            read(s._ptr(), fd, None, 1, 48, 1, 4096, 1, 0, *outs)
        with pytest.raises(TinyNNError, match="flags=2"):
            read(s._ptr(), fd, records.ctypes.data, 1, 48, 1, 4096, 1, 2, *outs)
        with pytest.raises(TinyNNError, match="bad_range or nonfinite_at is NULL"):
            read(s._ptr(), fd, records.ctypes.data, 1, 48, 1, 4096, 1, 0, None, None)
        bad = records.copy()
        bad["layout"] = 7
        with pytest.raises(TinyNNError, match=r"range 0: layout=7: expected 0 \(t's rows\) or 1"):
            read(s._ptr(), fd, bad.ctypes.data, 1, 48, 1, 4096, 1, 0, *outs)
        read(s._ptr(), fd, records.ctypes.data, 1, 48, 1, 4096, 1, 0, *outs)
        assert (out[0].value, out[1].value) == (-1, -1)
        assert _bytes(t) == where["f16"][1]


# A child that reads 32 MiB of a file into a CPU tensor and prints its huge pages (kB). No
# numpy array of its own that large: numpy advises huge pages for those itself.
_HUGE_CHILD = r"""
import os, sys
from tinynn import Session, read_file_ranges
with Session("cpu") as s:
    t = s.input_typed_persistent("f32", (8 << 20,))
    s.finalize_weights()
    fd = os.open(sys.argv[1], os.O_RDONLY)
    assert read_file_ranges(s, fd, [(t, 0, 32 << 20, 0)], n_threads=2) is None
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            print(int(line.split()[1]))
"""


def test_host_weights_take_huge_pages_as_asked(tmp_path):
    """With TINYNN_HUGE_PAGES=1 the memory a read fills whole is advised to use 2 MiB pages
    (1/512 of the faults); with 0 it keeps small ones (native/host_weights.c says when that
    is better, and what happens without the variable)."""
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.is_file() or "[madvise]" not in mode.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(32 << 20))
    kb = {}
    for value in ("1", "0"):
        env = dict(os.environ, TINYNN_HUGE_PAGES=value)
        out = subprocess.run(
            [sys.executable, "-c", _HUGE_CHILD, str(path)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        kb[value] = int(out.stdout.split()[-1])
    assert kb["0"] == 0, kb
    if kb["1"] == 0:
        pytest.skip("the kernel gave no huge pages (fragmented memory?); the opt-out holds")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_staging, staging_bytes", [(1, 4096), (2, 5001), (4, 16 << 20)])
def test_a_devices_tensors_hold_the_files_bytes(model_file, device, n_staging, staging_bytes):
    """On CUDA every range is staged (the device's memory is not the host's): through one
    buffer (each round waits for the last), two of a size q8_0 blocks do not divide, and
    the engine's default; the CPU runs the same reads staged on request."""
    use_device(device)
    _, fd, where = model_file
    with Session(device) as s:
        ts = _tensors(s)
        s.finalize_weights()
        ranges = [(ts[n], off, len(blob), 0) for n, (off, blob) in where.items()]
        kw = {"n_staging": n_staging, "staging_bytes": staging_bytes, "staged": device == "cpu"}
        assert read_file_ranges(s, fd, ranges, n_threads=3, **kw) is None
        for name, (_, blob) in where.items():
            assert _bytes(ts[name]) == blob, (device, name)
