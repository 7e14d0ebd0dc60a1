"""Progress bars for the long steps (reading, converting, uploading a model):
shown on a terminal, silent when stderr is piped or redirected."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """`items`, with a tqdm bar on stderr when it is a terminal."""
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            unit="layer",
            leave=False,
            disable=not sys.stderr.isatty(),
        )
    )
