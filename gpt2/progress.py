"""Progress bars for the long steps (reading, converting, uploading a model): shown on a
terminal once a step has taken a second, silent when stderr is piped or redirected."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
DELAY_S = 1.0  # a step shorter than this never shows a bar


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "layer"
) -> Iterator[T]:
    """`items`, with a tqdm bar on stderr when it is a terminal and the step lasts."""
    if not sys.stderr.isatty():  # no bar: tqdm would still make its lock (~17 ms)
        return iter(items)
    return iter(
        tqdm(
            items,
            desc=desc,
            total=total,
            unit=unit,
            leave=False,
            delay=DELAY_S,
        )
    )
