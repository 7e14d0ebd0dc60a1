"""Reading model files safely: regular files only, plain reads, sizes checked first.

Memory-mapping a file that another process cuts kills the reader with SIGBUS, which Python
cannot catch; a FIFO or a device blocks or never ends; a sparse file's hole reads as gigabytes
of zeros. So every model file is opened here: refused unless it is a regular file (checked on
the open descriptor, opened without blocking), read with `os.pread` at offsets its header
declares and the file's size allows, and a short read is a ValueError.

    with ModelFile(path) as f:
        raw = f.pread(offset, n_bytes, what="tensor wte")
        f.pread_into(offset, np.empty(n_bytes, np.uint8), what="tensor wte")  # no zero-fill
    text = read_text(path, limit=MAX_JSON_BYTES)

GGUF headers are parsed from such reads too (gpt2.gguf_header).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json, index files: far past any real one


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of `path`; ValueError (before any read) unless it is a
    regular file. A FIFO is opened without blocking, so that the refusal cannot hang."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file ({_kind(mode)}); refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class ModelFile:
    """One open regular file, read with pread at checked offsets."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd = open_regular(self.path)
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset: int, n_bytes: int, what: str = "data") -> bytearray:
        """Exactly `n_bytes` at `offset`; ValueError if the header's range passes the end of
        the file (checked first) or the file was cut while it is read (a short read)."""
        self.check_range(offset, n_bytes, what)
        buf = bytearray(n_bytes)
        self._read_into(offset, memoryview(buf), what)
        return buf

    def pread_into(self, offset: int, out: np.ndarray, what: str = "data") -> np.ndarray:
        """Fills `out` (a C-contiguous writeable array, never zero-filled first) with its
        nbytes at `offset`, as `pread` checks them; returns `out`. Safe from several threads
        at once (pread has no shared file position)."""
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("pread_into needs a writeable C-contiguous array")
        self.check_range(offset, out.nbytes, what)
        self._read_into(offset, memoryview(out.reshape(-1).view(np.uint8)), what)
        return out

    def check_range(self, offset: int, n_bytes: int, what: str) -> None:
        """ValueError unless bytes offset..offset+n_bytes lie in the file (its size when
        it was opened)."""
        if offset < 0 or n_bytes < 0 or offset + n_bytes > self.size:
            raise ValueError(
                f"{self.path}: truncated: {what} needs bytes {offset}..{offset + n_bytes}, "
                f"the file has {self.size}"
            )

    def _read_into(self, offset: int, view: memoryview, what: str) -> None:
        n_bytes, done = len(view), 0
        while done < n_bytes:
            try:
                got = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as e:
                raise ValueError(f"{self.path}: cannot read {what} ({e.strerror or e})") from None
            if got == 0:
                raise ValueError(
                    f"{self.path}: truncated while reading {what}: got {done} of {n_bytes} "
                    f"bytes at offset {offset}"
                )
            done += got

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_bytes(path: str | Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The whole of a small regular file; ValueError past `limit` bytes."""
    with ModelFile(path) as f:
        if f.size > limit:
            raise ValueError(f"{path}: {f.size} bytes, more than the {limit} this file may have")
        return bytes(f.pread(0, f.size, "the file"))


def read_text(path: str | Path, limit: int = MAX_JSON_BYTES) -> str:
    """A small regular file as UTF-8 text; ValueError when it is not."""
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
