"""`gpt2.load`: the front door of the Python API.

import gpt2
with gpt2.load("model.gguf", device="auto", dtype="f16") as model:
    print(model.generate("Once upon a time", max_new_tokens=40))
    ids = model.generate([464, 2068], max_new_tokens=5)      # ids in, ids out
    for piece in model.stream("The Python", max_new_tokens=20):
        print(piece, end="", flush=True)
    logits = model.logits([464, 2068, 7586])                  # numpy [T, vocab]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from gpt2.engine import FastGPT2
from gpt2.generate import generate_ids, greedy_generate_batch, stream_text
from gpt2.port import (
    GPT2FullForwardFFICache,
    GPT2FullForwardFFICacheCuda,
    GPT2KVFFICache,
    GPT2KVFFICacheCuda,
)
from gpt2.protocol import Engine
from gpt2.resolve import resolve_model
from gpt2.slots import DEFAULT_SLOTS
from gpt2.weights import GPT2Weights, LoadedModel, load_model
from tinynn import cuda_available, cuda_unavailable_reason

log = logging.getLogger("gpt2")

ENGINES = ("fast", "full", "kv")
DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: str) -> str:
    """ "auto" is CUDA when a GPU is usable, else the CPU (logged either way)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "auto":
        return device
    if cuda_available():
        log.info("device auto: using CUDA")
        return "cuda"
    log.info("device auto: using the CPU (%s)", cuda_unavailable_reason())
    return "cpu"


class GPT2Model:
    """A loaded model on one engine. Text in gives text out; ids in, ids out.

    Safe to share between threads: each call runs its own sequence (cache
    slot and position) and the engine serializes device work (gpt2.slots).
    """

    def __init__(self, loaded: LoadedModel, engine: Engine, device: str, engine_name: str):
        self.loaded = loaded
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.engine = engine
        self.device = device
        self.engine_name = engine_name

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [T, vocab] (float32) of every position."""
        return self.engine.logits(ids)

    def generate(
        self, prompt: str | Sequence[int], max_new_tokens: int = 50, **kw
    ) -> str | list[int]:
        """The continuation: a string for a string prompt, new ids for ids.
        Keywords: temperature (0 = greedy), top_k, top_p, seed, stop (strings)."""
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, max_new_tokens, **kw))
        stop = kw.pop("stop", ())
        if stop:
            raise ValueError("stop strings need a text prompt")
        eos = self.tokenizer.eos_id if self.tokenizer else None
        return list(generate_ids(self.engine, list(prompt), max_new_tokens, eos_id=eos, **kw))

    def generate_batch(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], max_new_tokens: int = 50
    ) -> list[str] | list[list[int]]:
        """Greedy continuations of several prompts decoded together, for
        throughput: texts for text prompts, new ids for id lists. Each equals
        generate() of that prompt alone. Needs len(prompts) <= n_slots."""
        if isinstance(prompts, str):
            raise ValueError("generate_batch takes a list of prompts; for one, use generate()")
        texts = [isinstance(p, str) for p in prompts]
        if any(texts) and not all(texts):
            raise ValueError("give all prompts as text or all as token ids, not a mix")
        eos = self.tokenizer.eos_id if self.tokenizer else None
        if not any(texts):
            ids = [list(p) for p in prompts]
            return greedy_generate_batch(self.engine, ids, max_new_tokens, eos_id=eos)
        if self.tokenizer is None:
            raise ValueError(f"{self.loaded.path} has no tokenizer: give token ids instead")
        ids = [self.tokenizer.encode(p) for p in prompts]
        outs = greedy_generate_batch(self.engine, ids, max_new_tokens, eos_id=eos)
        return [self.tokenizer.decode([t for t in out if t != eos]) for out in outs]

    def stream(self, prompt: str, max_new_tokens: int = 50, **kw) -> Iterator[str]:
        """Yields pieces of the continuation's text as they are produced. The
        stream holds a sequence slot until it ends or is closed."""
        if self.tokenizer is None:
            raise ValueError(f"{self.loaded.path} has no tokenizer: give token ids instead")
        return stream_text(self.engine, self.tokenizer, prompt, max_new_tokens, **kw)

    def close(self) -> None:
        """Frees the model; waits for a step another thread is running, whose
        next call then raises ValueError."""
        self.engine.close()

    def __enter__(self) -> GPT2Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(
    path: str | Path | None = None,
    device: str = "auto",
    dtype: str = "f32",
    *,
    engine: str = "fast",
    n_ctx: int | None = None,
    n_slots: int | None = None,
    n_threads: int | None = None,
    max_batch: int | None = None,
) -> GPT2Model:
    """Loads a GGUF file, an HF snapshot folder or an HF hub id (None: the
    embedded default model) onto "cpu", "cuda" or "auto".

    engine "fast" (default) is gpt2.engine.FastGPT2 with f32, f16 or q8_0
    weights; "full" and "kv" are the close ports of the Ruby engine (f32).
    n_slots: how many sequences (generations, streams, batch members) may be
    alive at once (default gpt2.slots.DEFAULT_SLOTS); each holds a KV cache
    of n_ctx positions. max_batch is its older name: n_slots at least that.
    """
    if max_batch is not None:
        n_slots = max(n_slots or DEFAULT_SLOTS, max_batch)
    loaded = load_model(resolve_model(path))
    device = pick_device(device)
    impl = make_engine(
        loaded.weights,
        engine,
        device,
        dtype,
        n_ctx=n_ctx,
        n_slots=n_slots,
        n_threads=n_threads,
    )
    return GPT2Model(loaded, impl, device, engine)


def make_engine(
    weights: GPT2Weights,
    engine: str = "fast",
    device: str = "cpu",
    dtype: str = "f32",
    *,
    n_ctx: int | None = None,
    n_slots: int | None = None,
    n_threads: int | None = None,
    gelu: str = "exact",
) -> Engine:
    """One engine over canonical weights on "cpu" or "cuda". n_ctx bounds the
    positions (T_SEQ of the full-forward port, max_T of the KV port); gelu
    "ggml" builds the ports exactly as the Ruby engine did."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "fast":
        if gelu != "exact":
            raise ValueError("the fast engine always uses the exact GELU")
        return FastGPT2(weights, device, dtype, n_ctx=n_ctx, n_slots=n_slots, n_threads=n_threads)
    if dtype != "f32":
        raise ValueError(f"the {engine} engine computes in f32 only (got dtype={dtype!r})")
    cuda = device == "cuda"
    if engine == "full":
        cls = GPT2FullForwardFFICacheCuda if cuda else GPT2FullForwardFFICache
    else:
        cls = GPT2KVFFICacheCuda if cuda else GPT2KVFFICache
    return cls.from_weights(weights, n_ctx, n_threads=n_threads, gelu=gelu, n_slots=n_slots)
