"""Random GPT-2 weights, for tests, benchmarks and parity runs (no checkpoint needed).

Drawn like the Ruby project's fixture models (tests/fixtures/ruby_outputs/README.md):
embeddings N(0, 0.1), linear weights N(0, 0.08), LayerNorm gammas N(1, 0.1), LayerNorm
betas and all biases N(0, 0.1); one `numpy.random.default_rng(seed)`, tensors drawn in
`expected_shapes` order in float64, stored as float32. The same seed gives the same
weights: with the default scale, the fixtures' `model_a` and `model_b` are reproduced
bit for bit (a test checks it).
"""

from __future__ import annotations

import numpy as np

from gpt2.config import GPT2Config
from gpt2.weights import GPT2Weights, expected_shapes

EMBEDDING_STD = 0.1  # wte, wpe
LINEAR_STD = 0.08  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj weights
LN_GAMMA_STD = 0.1  # around 1
BIAS_STD = 0.1  # linear biases and LayerNorm betas


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
            x = rng.normal(0.0, EMBEDDING_STD, shape)
        elif name.endswith(".bias"):  # linear biases and LayerNorm betas
            x = rng.normal(0.0, BIAS_STD, shape)
        elif ".ln_" in name or name.startswith("ln_"):  # LayerNorm gamma
            x = rng.normal(1.0, LN_GAMMA_STD, shape)
        else:
            x = rng.normal(0.0, scale, shape)  # linear weight
        tensors[name] = np.ascontiguousarray(x, dtype=np.float32)
    return GPT2Weights(config, tensors)
