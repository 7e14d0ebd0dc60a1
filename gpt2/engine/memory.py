"""What the fast engine's memory will be, checked before any of it is allocated.

A model file says how long its context is; it does not decide how much memory
a user pays. The engine's persistent memory (weights, KV cache of n_slots x
n_ctx rows a layer, the causal mask table) follows ``n_ctx``, whose default is
bounded (``DEFAULT_MAX_N_CTX``), and ``check_fits`` compares the bytes the root
session has declared with the memory free on its device before
``finalize_weights`` allocates them: a request past it is a ValueError that
names the bytes and how to ask for less.
"""

from __future__ import annotations

import dataclasses
import os
import resource

from tinynn import Session, Tensor

# n_ctx when the user gives none: the model's context, at most this. GPT-2's
# checkpoints have 1024; a file declaring 2**20 positions gets 4096 unless asked.
DEFAULT_MAX_N_CTX = 4096
# The check leaves this much of what is free to everything else (compute
# memory, the host copy of the weights, other processes).
HEADROOM = 0.9


def default_n_ctx(n_positions: int) -> int:
    """The context an engine gets when the user names none."""
    return min(n_positions, DEFAULT_MAX_N_CTX)


def declared_bytes(*groups: object) -> int:
    """Bytes of every Tensor in groups (dataclasses, lists or tensors), each once."""
    seen: dict[int, int] = {}

    def walk(x: object) -> None:
        if isinstance(x, Tensor):
            seen.setdefault(id(x), x.nbytes)
        elif isinstance(x, list | tuple):
            for item in x:
                walk(item)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))

    for g in groups:
        walk(g)
    return sum(seen.values())


def host_available_bytes() -> int | None:
    """Memory this process may still take on the host: the smaller of the
    kernel's MemAvailable (Linux) or free pages, and what RLIMIT_AS leaves.
    None where neither can be read."""
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            free = None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        mapped = _mapped_bytes()
        if mapped is not None:
            left = max(0, limit - mapped)
            free = left if free is None else min(free, left)
    return free


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def available_bytes(session: Session) -> int | None:
    """Free memory of the session's device (CUDA: the runtime's count), or the host's."""
    if session.device == "cuda":
        return session.device_memory()[0]
    return host_available_bytes()


def check_fits(session: Session, *groups: object, n_ctx: int, n_slots: int) -> int:
    """Raises ValueError, before anything is allocated, when the tensors
    declared in groups need more than the device has free; returns their bytes."""
    need = declared_bytes(*groups)
    free = available_bytes(session)
    if free is not None and need > HEADROOM * free:
        where = "CUDA device" if session.device == "cuda" else "host"
        raise ValueError(
            f"the engine needs {need:,} bytes ({need / 2**20:,.1f} MiB: weights, KV cache of "
            f"{n_slots} slots x {n_ctx} positions, mask) but the {where} has {free:,} bytes free; "
            f"ask for less with n_ctx (positions per sequence) or n_slots (sequences at once)"
        )
    return need
