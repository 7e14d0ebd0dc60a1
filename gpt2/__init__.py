"""GPT-2 on ggml through tinynn.

import gpt2
with gpt2.load(device="auto") as model:      # the embedded default model
    print(model.generate("Once upon a time", 40, temperature=0.8, top_k=40, top_p=0.95,
                         repetition_penalty=1.1, seed=6))   # greedy (the default) loops

What is here, a concern a module:
- api (load, GPT2Model, TextStream), completion (Completion), generate,
  sampling, tokenizer: text in, text out.
- engine.base (the Engine every engine implements: step(plan)), engine.step
  (the plan), engine.context (cache slots, the position table, the lock that
  serializes device work), sequence and slots (a model's sequences).
- engine/ (FastGPT2: the file's weights uploaded as stored, graph, KV cache;
  our fused CUDA decode step through tinynn.Decoder), port/ (the close port of
  the Ruby engine classes).
- config, names (the one tensor-name table), weights (GGUF and HF checkpoints),
  torch_bin (pytorch_model.bin), convert, inspect_model, resolve (paths and hub ids).
- reference (float64 numpy), parity, bench, random_weights, cli.
"""

from gpt2.api import GPT2Model, TextStream, load
from gpt2.completion import Completion
from gpt2.config import GPT2Config

__version__ = "0.1.0"

__all__ = ["Completion", "GPT2Config", "GPT2Model", "TextStream", "load", "__version__"]
