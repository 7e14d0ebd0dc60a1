"""GPT-2 forward pass in numpy float64: the oracle every engine is measured against.

A port of the Ruby engine's `GPT2LM` (RUBY_ENGINE.md section 5) with the same math as HF
`GPT2LMHeadModel`: pre-LN blocks, LayerNorm with biased variance and the config's eps,
tanh GELU (`gelu_new`), causal attention scaled by 1/sqrt(d_head), tied unembedding.
Names follow the checkpoint (wte, wpe, h.{i}.ln_1, attn.c_attn, mlp.c_fc, ln_f);
T = sequence length, C = n_embd, nh = heads, hs = head size, V = vocab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gpt2.token_ids import check_token_ids
from gpt2.weights import GPT2Weights, validate

_GELU_C = math.sqrt(2.0 / math.pi)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """Normalize each row over its last axis (biased variance, as torch does)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x**3)))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, max-subtracted."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class GPT2Reference:
    """Float64 GPT-2. `logits(ids)` returns [T, V] logits for every position."""

    def __init__(self, weights: GPT2Weights) -> None:
        validate(weights, "GPT2Reference weights")
        self.config = weights.config
        # widen once: every product below is then float64
        self.w = {name: t.astype(np.float64) for name, t in weights.tensors.items()}

    def logits(self, ids: Sequence[int] | np.ndarray, start_pos: int = 0) -> np.ndarray:
        """Logits [T, V] for tokens `ids` sitting at positions start_pos .. start_pos+T-1.

        Without a KV cache, start_pos > 0 only shifts the positional embedding: the tokens
        attend to each other, not to an earlier prefix.
        """
        cfg, w = self.config, self.w
        idx = check_token_ids(ids, cfg.vocab_size)
        T = idx.size
        if isinstance(start_pos, bool) or not isinstance(start_pos, (int, np.integer)):
            raise TypeError(f"start_pos must be an int, got {start_pos!r}")
        if start_pos < 0 or start_pos + T > cfg.n_positions:
            raise ValueError(
                f"positions {start_pos}..{start_pos + T - 1} do not fit the context "
                f"of {cfg.n_positions} (start_pos={start_pos}, T={T})"
            )

        x = w["wte"][idx] + w["wpe"][start_pos : start_pos + T]  # [T, C]
        for i in range(cfg.n_layer):
            x = x + self._attention(
                i, layer_norm(x, *self._ln(f"h.{i}.ln_1"), cfg.layer_norm_epsilon)
            )
            x = x + self._mlp(i, layer_norm(x, *self._ln(f"h.{i}.ln_2"), cfg.layer_norm_epsilon))
        x = layer_norm(x, *self._ln("ln_f"), cfg.layer_norm_epsilon)  # [T, C]
        return x @ w["wte"].T  # [T, V], tied unembedding

    def _ln(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        return self.w[prefix + ".weight"], self.w[prefix + ".bias"]

    def _attention(self, i: int, x: np.ndarray) -> np.ndarray:
        """Causal multi-head self-attention of block i on normalized input x [T, C]."""
        w, p = self.w, f"h.{i}.attn."
        T, C = x.shape
        nh, hs = self.config.n_head, self.config.d_head
        qkv = x @ w[p + "c_attn.weight"] + w[p + "c_attn.bias"]  # [T, 3C]
        q, k, v = np.split(qkv, 3, axis=1)  # 3 x [T, C]
        q = q.reshape(T, nh, hs).transpose(1, 0, 2)  # [nh, T, hs]
        k = k.reshape(T, nh, hs).transpose(1, 0, 2)  # [nh, T, hs]
        v = v.reshape(T, nh, hs).transpose(1, 0, 2)  # [nh, T, hs]
        att = (q @ k.transpose(0, 2, 1)) * (1.0 / math.sqrt(hs))  # [nh, T, T]
        future = np.triu(np.ones((T, T), dtype=bool), k=1)  # j > i
        att = np.where(future, -np.inf, att)  # exp(-inf) = 0 exactly
        y = softmax(att) @ v  # [nh, T, hs]
        y = y.transpose(1, 0, 2).reshape(T, C)  # [T, C], head h -> columns h*hs..(h+1)*hs
        return y @ w[p + "c_proj.weight"] + w[p + "c_proj.bias"]  # [T, C]

    def _mlp(self, i: int, x: np.ndarray) -> np.ndarray:
        """GPT-2 MLP of block i on normalized input x [T, C]."""
        w, p = self.w, f"h.{i}.mlp."
        h = gelu_new(x @ w[p + "c_fc.weight"] + w[p + "c_fc.bias"])  # [T, d_ff]
        return h @ w[p + "c_proj.weight"] + w[p + "c_proj.bias"]  # [T, C]
