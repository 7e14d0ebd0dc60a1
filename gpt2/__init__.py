"""GPT-2 on ggml through tinynn.

import gpt2
with gpt2.load(device="auto") as model:      # the embedded default model
    print(model.generate("Once upon a time", max_new_tokens=40))
"""

from gpt2.api import GPT2Model, load
from gpt2.config import GPT2Config

__version__ = "0.1.0"

__all__ = ["GPT2Config", "GPT2Model", "load", "__version__"]
