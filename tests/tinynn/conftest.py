"""Fixtures of the tinynn binding tests."""

from __future__ import annotations

import pytest

from tests.devices import device_params, use_device


@pytest.fixture(params=device_params())
def device(request: pytest.FixtureRequest) -> str:
    """ "cpu", then "cuda" (skipped with libtinynn's reason where there is no
    CUDA, failed instead under TINYNN_REQUIRE_CUDA=1)."""
    return use_device(request.param)
