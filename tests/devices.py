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


# ggml-cuda computes f32 matrix products with TF32 tensor cores (its cuBLAS
# handle is set to CUBLAS_TF32_TENSOR_OP_MATH and its mmf kernels use tf32
# MMA): about 1e-3 relative, where the CPU's f32 products give 1e-7. Its
# kernels are built with -use_fast_math, which loosens tanh (GELU) too.
# Measured on the H200 (2026-11-29, bench/h200_2026-11-29_run.log): the
# full-forward port (batched matmuls) 2.1e-3 from the KV port (matrix-vector,
# plain f32) on a tiny model, 1.1e-2 from f64 on GPT-2-small shapes.
CUDA_MATMUL_TOL = 5e-3
CUDA_GELU_TOL = 1e-4


def matmul_tol(device: str, cpu_tol: float = 1e-5) -> float:
    """Tolerance of an f32 matrix product result on this device."""
    return CUDA_MATMUL_TOL if device == "cuda" else cpu_tol


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
