"""tnn_move_to_huge_pages: a background thread moves weights onto huge pages; the values
stay, the arguments are checked, and freeing the session while it runs stops it."""

from __future__ import annotations

import numpy as np
import pytest

import tinynn
from tinynn import TinyNNError


def test_values_stay_and_free_stops_the_thread() -> None:
    big = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)  # 16 MiB
    for _ in range(3):  # freed at once, while the thread may still copy
        with tinynn.Session("cpu") as s:
            w = s.input_typed_persistent("f32", (4096, 1024))
            b = s.input_typed_persistent("f32", (4096,))
            cache = s.input_typed_persistent("f32", (4096, 512))
            s.finalize_weights()
            w.upload(big)
            s.move_to_huge_pages([w, b])
            assert np.array_equal(w.download(), big)
            assert not cache.download().any()
    with tinynn.Session("cpu") as s:  # and left to finish
        w = s.input_typed_persistent("f32", (4096, 1024))
        s.finalize_weights()
        w.upload(big)
        s.move_to_huge_pages([w])
        x = s.input_2d_f32(1, 4096)
        y = s.set_output(s.matmul(w, x))
        s.realize(y)
        for _ in range(20):
            got = s.compute_io(x, big[:1], y)
        np.testing.assert_allclose(got[0], big @ big[0], rtol=1e-4, atol=1e-2)


def test_arguments_are_checked() -> None:
    with tinynn.Session("cpu") as s:
        w = s.input_typed_persistent("f32", (32, 8))
        with pytest.raises(TinyNNError, match="finalize"):
            s.move_to_huge_pages([w])
        s.finalize_weights()
        x = s.input_2d_f32(1, 32)
        with pytest.raises(TinyNNError, match="not a persistent tensor"):
            s.move_to_huge_pages([w, x])
        s.move_to_huge_pages([w])
        with pytest.raises(TinyNNError, match="once"):
            s.move_to_huge_pages([w])
