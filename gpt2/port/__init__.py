"""The close port of the Ruby engine classes: per-layer blocks (blocks), the
full-forward engine (full: GPT2FullForwardFFICache and its Cuda twin) and the
KV-cache engine (kv: GPT2KVFFICache and its Cuda twin)."""

from gpt2.port.full import GPT2FullForwardFFICache, GPT2FullForwardFFICacheCuda
from gpt2.port.kv import GPT2KVFFICache, GPT2KVFFICacheCuda

__all__ = [
    "GPT2FullForwardFFICache",
    "GPT2FullForwardFFICacheCuda",
    "GPT2KVFFICache",
    "GPT2KVFFICacheCuda",
]
