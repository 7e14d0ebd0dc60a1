"""Model files parsed from a private in-memory copy.

gguf and safetensors memory-map the files they read. If another process cuts
such a file while it is read, the next access past the new end kills this
process with SIGBUS, which Python cannot catch. Copied with read() first, a
cut file is only a short copy, and the parsers' checks turn it into a clean
ValueError. The price: the file's bytes in memory while it is parsed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


@contextlib.contextmanager
def private_copy(path: Path) -> Iterator[Path]:
    """A path to an in-memory copy of `path` (a memfd), for readers that map
    files. Where memfd does not exist (not Linux) the file itself."""
    if not hasattr(os, "memfd_create"):
        yield path
        return
    fd = os.memfd_create(f"gpt2-{path.name}", os.MFD_CLOEXEC)
    try:
        with open(path, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        # a map made through this path keeps the copy alive after the fd closes
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
