"""Random GPT-2 weights, for tests, benchmarks and parity runs (no checkpoint needed).

Drawn like the Ruby project's fixture models (tests/fixtures/ruby_outputs/README.md):
embeddings N(0, 0.1), linear weights N(0, 0.08), LayerNorm gammas N(1, 0.1), LayerNorm
betas and all biases N(0, 0.1); one `numpy.random.default_rng(seed)`, tensors drawn in
`expected_shapes` order in float64, stored as float32. The same seed gives the same
weights: with the default scale, the fixtures' `model_a` and `model_b` are reproduced
bit for bit (a test checks it). Tensors of more than LARGE values (GPT-2-small's and
larger models' matrices) are drawn uniform in float32 with the same mean and standard
deviation: ten times faster, and only timing runs use such models.
"""

from __future__ import annotations

import numpy as np

from gpt2.config import GPT2Config
from gpt2.weights import GPT2Weights, expected_shapes

EMBEDDING_STD = 0.1  # wte, wpe
LINEAR_STD = 0.08  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj weights
LN_GAMMA_STD = 0.1  # around 1
BIAS_STD = 0.1  # linear biases and LayerNorm betas
LARGE = 1 << 20  # values in a tensor above which it is drawn uniform in float32


def _draw(rng: np.random.Generator, mean: float, std: float, shape) -> np.ndarray:
    if int(np.prod(shape)) <= LARGE:
        return rng.normal(mean, std, shape)
    half_width = np.float32(std * np.sqrt(3.0))  # uniform(-a, a) has std a / sqrt(3)
    x = rng.random(shape, dtype=np.float32)
    x *= 2 * half_width
    x += np.float32(mean) - half_width
    return x


def random_weights(config: GPT2Config, seed: int = 0, *, scale: float = LINEAR_STD) -> GPT2Weights:
    """GPT-2 weights of `config`'s shapes in canonical form, random but reproducible.

    `scale` is the standard deviation of the linear weights. The default (0.08) keeps
    the logits of small models far from flat, so argmax and top-5 comparisons mean
    something; 0.02 (GPT-2's `initializer_range`) keeps deep, wide models' activations
    near GPT-2's own.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if name in ("wte", "wpe"):
            x = _draw(rng, 0.0, EMBEDDING_STD, shape)
        elif name.endswith(".bias"):  # linear biases and LayerNorm betas
            x = _draw(rng, 0.0, BIAS_STD, shape)
        elif ".ln_" in name or name.startswith("ln_"):  # LayerNorm gamma
            x = _draw(rng, 1.0, LN_GAMMA_STD, shape)
        else:
            x = _draw(rng, 0.0, scale, shape)  # linear weight
        tensors[name] = np.ascontiguousarray(x, dtype=np.float32)
    return GPT2Weights(config, tensors)
