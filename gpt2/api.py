"""`gpt2.load`: the front door of the Python API.

import gpt2
with gpt2.load("model.gguf", device="auto", dtype="f16") as model:   # None: the embedded one
    print(model.generate("Once upon a time", 40, temperature=0.8, top_k=40, top_p=0.95,
                         repetition_penalty=1.1))   # the defaults are greedy
    c = model.complete("The Python", max_new_tokens=20, temperature=0.8, seed=1, logprobs=3)
    print(c.text, c.finish_reason, c.usage, c.logprobs[0].top)
    c = model("The Python", 20)                               # the same as complete()
    ids = model.generate([464, 2068], max_new_tokens=5)      # ids in, ids out
    stream = model.stream("The Python", max_new_tokens=20)
    for piece in stream:
        print(piece, end="", flush=True)
    print(stream.completion.finish_reason)                    # once it has ended
    logits = model.logits([464, 2068, 7586])                  # numpy [T, vocab]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from gpt2.completion import Completion
from gpt2.engine import FastGPT2
from gpt2.engine.base import Engine
from gpt2.engine.fast import DECODE_MODES
from gpt2.generate import (
    Member,
    StepTimings,
    complete,
    complete_batch,
    completion_pieces,
)
from gpt2.params import GenerationParams, resolve_params
from gpt2.port import (
    GPT2FullForwardFFICache,
    GPT2FullForwardFFICacheCuda,
    GPT2KVFFICache,
    GPT2KVFFICacheCuda,
)
from gpt2.resolve import resolve_model
from gpt2.slots import DEFAULT_SLOTS
from gpt2.weights import GPT2Weights, LoadedModel, load_model
from tinynn import cuda_available, cuda_unavailable_reason

log = logging.getLogger("gpt2")

ENGINES = ("fast", "full", "kv")
DEVICES = ("auto", "cpu", "cuda")

# The embedded model's own id (a server's /v1/models, a client's `model=`): not "gpt2",
# which reads as OpenAI's GPT-2. A GPT-2-shaped model of 6.9 M parameters trained on the
# Python documentation (README, "The embedded default model").
EMBEDDED_MODEL_ID = "tinynn-pydocs-6.9m"


def model_id(model: str | Path | None) -> str:
    """The id a model is served under: the embedded model's own id (None), a file's
    stem or a folder's name where the path exists, else the hub id as given."""
    if model is None:
        return EMBEDDED_MODEL_ID
    path = Path(str(model)).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.resolve().name
    return str(model)


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

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"{self.loaded.path} has no tokenizer: give token ids instead")
            return self.tokenizer.encode(prompt, max_tokens=self.engine.max_positions)
        if isinstance(prompt, (bytes, dict)) or not isinstance(prompt, Sequence):
            raise TypeError(f"prompt must be a str or a list of token ids, got {prompt!r:.60}")
        return list(prompt)

    def _member(self, prompt: str | Sequence[int], params: GenerationParams) -> Member:
        eos = self.tokenizer.eos_id if self.tokenizer else None
        return Member(self.engine, self.tokenizer, self._prompt_ids(prompt), params, eos)

    def complete(
        self, prompt: str | Sequence[int], max_new_tokens: int | None = None, **kw
    ) -> Completion:
        """One completion of a text or token-id prompt: its text, token ids,
        finish_reason ("stop", "length", "eos", "context"), usage and, with
        logprobs=n, each token's log-probability and n alternatives.
        Parameters as generate()'s: params=GenerationParams, or its fields as
        keywords (over it). `model(prompt, ...)` is the same call."""
        if isinstance(max_new_tokens, GenerationParams):  # the older complete(prompt, params)
            kw["params"], max_new_tokens = max_new_tokens, None
        if max_new_tokens is not None:
            kw["max_new_tokens"] = max_new_tokens
        p = resolve_params("complete", kw.pop("params", None), kw)
        return complete(self.engine, self._member(prompt, p))

    def __call__(
        self, prompt: str | Sequence[int], max_new_tokens: int | None = None, **kw
    ) -> Completion:
        """complete(prompt, max_new_tokens, **kw): the Completion."""
        return self.complete(prompt, max_new_tokens, **kw)

    def generate(
        self, prompt: str | Sequence[int], max_new_tokens: int | None = None, **kw
    ) -> str | list[int]:
        """The continuation: a string for a string prompt, new ids for ids (the
        end-of-text id kept when it ends there). Takes complete()'s parameters;
        the defaults (gpt2.params) are greedy."""
        if max_new_tokens is not None:
            kw["max_new_tokens"] = max_new_tokens
        p = resolve_params("generate", kw.pop("params", None), kw)
        if isinstance(prompt, str):
            return complete(self.engine, self._member(prompt, p)).text
        if p.stop:
            raise ValueError("stop strings need a text prompt")
        if p.logprobs is not None:
            raise ValueError("logprobs: use complete(), which returns them")
        # ids only (no text work); every parameter applies, penalties included
        eos = self.tokenizer.eos_id if self.tokenizer else None
        c = complete(self.engine, Member(self.engine, None, self._prompt_ids(prompt), p, eos))
        return c.token_ids + ([eos] if c.finish_reason == "eos" else [])

    def generate_batch(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int | None = None,
        **kw,
    ) -> list[str] | list[list[int]]:
        """Continuations of several prompts decoded together, for throughput:
        texts for text prompts, new ids for id lists. Takes generate()'s
        parameters (each prompt draws from its own generator seeded by seed), so
        each result equals generate() of that prompt alone. Needs len(prompts)
        <= n_slots."""
        done, text = self._complete_batch(prompts, max_new_tokens, kw, "generate_batch")
        if text:
            return [c.text for c in done]
        eos = self.tokenizer.eos_id if self.tokenizer else None
        return [c.token_ids + ([eos] if c.finish_reason == "eos" else []) for c in done]

    def complete_batch(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        params: GenerationParams | None = None,
        **kw,
    ) -> list[Completion]:
        """complete() of several prompts decoded together; each equals it alone."""
        kw["params"] = params
        return self._complete_batch(prompts, None, kw, "complete_batch")[0]

    def _complete_batch(
        self, prompts, max_new_tokens: int | None, kw: dict, caller: str
    ) -> tuple[list[Completion], bool]:
        """The completions, and whether the prompts were text."""
        if isinstance(prompts, str):
            raise ValueError(f"{caller} takes a list of prompts; for one, use generate()")
        if max_new_tokens is not None:
            kw["max_new_tokens"] = max_new_tokens
        p = resolve_params(caller, kw.pop("params", None), kw)
        texts = [isinstance(q, str) for q in prompts]
        if any(texts) and not all(texts):
            raise ValueError("give all prompts as text or all as token ids, not a mix")
        if p.stop and not all(texts):
            raise ValueError("stop strings need text prompts")
        members = [self._member(q, p) for q in prompts]
        return complete_batch(self.engine, members), all(texts)

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        *,
        timings: StepTimings | None = None,
        **kw,
    ) -> TextStream:
        """The continuation as a TextStream: iterate it for pieces of text as
        they are produced; once it has ended, its `completion` is what
        complete() returns. Takes complete()'s parameters. The stream holds a
        sequence slot until it ends or is closed (stream.close())."""
        if self.tokenizer is None:
            raise ValueError(f"{self.loaded.path} has no tokenizer: give token ids instead")
        if max_new_tokens is not None:
            kw["max_new_tokens"] = max_new_tokens
        p = resolve_params("stream", kw.pop("params", None), kw, extra=("timings",))
        member = self._member(prompt, p)
        return TextStream(member, completion_pieces(self.engine, member, timings))

    def close(self) -> None:
        """Frees the model and closes its file; waits for a step another thread is
        running, whose next call then raises ValueError."""
        self.engine.close()
        self.loaded.close()

    def __repr__(self) -> str:
        e = self.engine
        # the ports compute in f32 only (make_engine); the fast engine says its type
        parts = [
            f"{str(self.loaded.path)!r}",
            f"engine={self.engine_name!r}",
            f"device={self.device!r}",
            f"dtype={getattr(e, 'dtype', 'f32')!r}",
        ]
        if hasattr(e, "decode_mode"):  # the fast engine: our fused CUDA step or ggml's graphs
            path = "fused" if getattr(e, "decoder", None) is not None else "graphs"
            parts.append(f"decode={path!r}, decode_mode={e.decode_mode!r}")
        if e.closed:
            parts.append("closed")
        return f"GPT2Model({', '.join(parts)})"

    def __enter__(self) -> GPT2Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TextStream:
    """model.stream(...): pieces of a continuation's text as they are decided.

    Iterate it for the pieces; once it is exhausted, `completion` holds the
    Completion (text, token ids, finish_reason, usage, log-probabilities), as
    complete() gives it; before that, None. The stream holds its sequence slot
    until it ends or is closed (close(), `with`, or dropping it).
    """

    def __init__(self, member: Member, pieces: Iterator[str]):
        self._member = member
        self._pieces = pieces
        self.completion: Completion | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.completion is None and self._member.cont.done:
                self.completion = self._member.cont.result()
            raise

    def close(self) -> None:
        """Ends the stream and frees its slot; a stream closed before its end
        keeps completion None."""
        self._pieces.close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(
    path: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    engine: str = "fast",
    n_ctx: int | None = None,
    n_slots: int | None = None,
    n_threads: int | None = None,
    max_batch: int | None = None,
    decode: str = "auto",
) -> GPT2Model:
    """Loads a GGUF file, an HF snapshot folder or an HF hub id (None: the
    embedded default model) onto "cpu", "cuda" or "auto".

    engine "fast" (default) is gpt2.engine.FastGPT2 with f32, f16 or q8_0
    weights; "full" and "kv" are the close ports of the Ruby engine (f32).
    n_slots: how many sequences (generations, streams, batch members) may be
    alive at once (default gpt2.slots.DEFAULT_SLOTS); each holds a KV cache
    of n_ctx positions. max_batch is its older name: n_slots at least that.
    decode (fast engine): "auto" decodes in our fused CUDA kernels where they
    run (CUDA, f16 or q8_0 weights) and through ggml's graphs elsewhere, logging
    why; "fused" insists on our kernels (an error where they cannot run);
    "graphs" always uses ggml's graphs.
    """
    if max_batch is not None:
        n_slots = max(n_slots or DEFAULT_SLOTS, max_batch)
    loaded = load_model(resolve_model(path))
    device = pick_device(device)
    impl = make_engine(
        loaded.weights,
        engine,
        device,
        loaded.weights.dtype_for(dtype, engine),  # "auto": the file's own type
        n_ctx=n_ctx,
        n_slots=n_slots,
        n_threads=n_threads,
        decode=decode,
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
    decode: str = "auto",
) -> Engine:
    """One engine over canonical weights on "cpu" or "cuda". n_ctx bounds the
    positions (T_SEQ of the full-forward port, max_T of the KV port); gelu
    "ggml" builds the ports exactly as the Ruby engine did."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "fast":
        if gelu != "exact":
            raise ValueError("the fast engine always uses the exact GELU")
        return FastGPT2(
            weights, device, dtype, n_ctx=n_ctx, n_slots=n_slots, n_threads=n_threads, decode=decode
        )
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode == "fused":
        raise ValueError(f"decode='fused' needs the fast engine, not {engine!r}")
    if dtype != "f32":
        raise ValueError(f"the {engine} engine computes in f32 only (got dtype={dtype!r})")
    cuda = device == "cuda"
    if engine == "full":
        cls = GPT2FullForwardFFICacheCuda if cuda else GPT2FullForwardFFICache
    else:
        cls = GPT2KVFFICacheCuda if cuda else GPT2KVFFICache
    return cls.from_weights(weights, n_ctx, n_threads=n_threads, gelu=gelu, n_slots=n_slots)
