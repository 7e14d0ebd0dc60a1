"""Device parametrization and numeric comparison shared by every test module.

``DEVICES`` lists the backends a test runs on. The CUDA case skips itself,
naming the reason libtinynn gives, where no CUDA device can be used, unless
``TINYNN_REQUIRE_CUDA=1`` (``make test-cuda``): then a missing CUDA fails the
test instead, so a GPU run cannot pass by skipping everything.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import tinynn

DEVICES = ["cpu", "cuda"]


def cuda_required() -> bool:
    """True when the run must fail, not skip, without CUDA."""
    return os.environ.get("TINYNN_REQUIRE_CUDA") == "1"


def use_device(name: str) -> str:
    """Returns ``name`` when its backend can be used; skips (or fails under
    TINYNN_REQUIRE_CUDA=1) a CUDA test on a machine without CUDA."""
    if name == "cuda":
        reason = tinynn.cuda_unavailable_reason()
        if reason is not None:
            if cuda_required():
                pytest.fail(f"TINYNN_REQUIRE_CUDA=1 but CUDA is unavailable: {reason}")
            pytest.skip(f"CUDA unavailable: {reason}")
    return name


def device_params() -> list:
    """``pytest.param`` per device, for ``@pytest.mark.parametrize`` or a
    fixture's ``params``; pass the value through ``use_device``."""
    return [pytest.param(name, id=name) for name in DEVICES]


def assert_close(
    got: np.ndarray, want: np.ndarray, tol: float, what: str, *, relative: bool = True
) -> float:
    """Fails unless every element of ``got`` is within ``tol`` of ``want``.

    With ``relative`` (the default) the error of an element is
    ``|got - want| / max(1, |want|)``: absolute for values below 1, relative
    above. Otherwise it is ``|got - want|``. Equal infinities count as equal;
    a NaN on either side fails. On failure the message gives the largest
    error, where it is, and both values there (llm.c's check_tensor).
    Returns the largest error so callers may report it.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        pytest.fail(f"{what}: shape {got.shape}, expected {want.shape}")
    same = got == want  # also true for equal infinities
    nan = np.isnan(got) | np.isnan(want)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
        if relative:
            diff = diff / np.maximum(1.0, np.abs(np.where(same, 0.0, want)))
    diff = np.where(nan, np.inf, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)  # inf - inf of unequal signs
    if diff.size == 0:
        return 0.0
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    err = float(diff[worst])
    kind = "relative-ish" if relative else "absolute"
    print(f"[assert_close] {what}: max {kind} error {err:.3g} (tolerance {tol:g})")
    if not err <= tol:
        n_bad = int(np.count_nonzero(~(diff <= tol)))
        pytest.fail(
            f"{what}: max {kind} error {err:.6g} > tolerance {tol:g} at index "
            f"{tuple(int(i) for i in worst)}: got {got[worst]!r}, want {want[worst]!r} "
            f"({n_bad} of {diff.size} elements out of tolerance)"
        )
    return err
