"""The fast engine: FastGPT2 (fast), its weights uploaded as the file stores them
(upload), its graph (graph), and the KV cache with its sequence slots (kv_cache)."""

from gpt2.engine.fast import FastGPT2
from gpt2.engine.upload import WEIGHT_DTYPES

__all__ = ["WEIGHT_DTYPES", "FastGPT2"]
