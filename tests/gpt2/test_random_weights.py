"""gpt2.random_weights: shapes, reproducibility, and the Ruby fixtures it reproduces."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2.config import GPT2Config
from gpt2.random_weights import random_weights
from gpt2.weights import expected_shapes, load_model

SMALL = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=50)


def test_every_tensor_has_its_shape_in_float32():
    w = random_weights(SMALL)
    shapes = expected_shapes(SMALL)
    assert set(w.tensors) == set(shapes)
    for name, shape in shapes.items():
        assert w[name].shape == shape, name
        assert w[name].dtype == np.float32, name


def test_same_seed_same_weights():
    a, b, c = random_weights(SMALL, 3), random_weights(SMALL, 3), random_weights(SMALL, 4)
    for name in a.tensors:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["wte"], c["wte"])


def test_scale_is_the_linear_weights_std():
    big = GPT2Config(n_layer=1, n_embd=256, n_head=4, n_positions=16, vocab_size=50)
    for scale in (0.02, 0.08):
        w = random_weights(big, scale=scale)
        std = float(w["h.0.mlp.c_fc.weight"].std())  # 262144 draws: within 1%
        assert std == pytest.approx(scale, rel=0.01), (scale, std)
        assert float(w["h.0.ln_1.weight"].mean()) == pytest.approx(1.0, abs=0.03)
        assert float(w["wte"].std()) == pytest.approx(0.1, rel=0.02)
    with pytest.raises(ValueError, match="scale must be > 0"):
        random_weights(SMALL, scale=0.0)


@pytest.mark.parametrize(("model", "seed"), [("model_a", 101), ("model_b", 202)])
def test_reproduces_the_ruby_fixtures(ruby_outputs, model, seed):
    """Exact: the stored fixture models are these draws (README.md's seeds)."""
    stored = load_model(ruby_outputs / f"{model}_hf")
    ours = random_weights(stored.config, seed)
    for name, want in stored.weights.tensors.items():
        np.testing.assert_array_equal(ours[name], want, err_msg=f"{model} {name}")
