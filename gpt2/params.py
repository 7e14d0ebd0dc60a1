"""Generation parameters: one typed, validated object, also given as keywords.

`GenerationParams` decides a whole completion: how many tokens, how each is
chosen (its `sampling`, THE SAMPLING RULE's parameters of gpt2.sampling),
where it stops and what it reports. Its defaults are the one set that the
library (`generate`, `stream`, `complete`, `generate_batch`), the CLI
(`gpt2 generate`) and the server (`gpt2 serve`) share: greedy, 50 new tokens.

Keywords are checked by name: Hugging Face's `do_sample` is accepted with HF's
meaning (False: greedy; True: sampling at temperature 1 with top_k 50 unless
given); HF's other names are refused with a TypeError that says what to use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpt2.sampling import SamplingParams, _validate_stops

__all__ = ["DEFAULT_PARAMS", "MAX_LOGPROBS", "GenerationParams", "resolve_params"]

MAX_LOGPROBS = 20  # alternatives a token may report (OpenAI's chat limit)

# HF's sampling defaults when do_sample=True leaves them out (GenerationConfig)
_HF_SAMPLE_DEFAULTS = {"temperature": 1.0, "top_k": 50}

# HF names we do not take, with what to use instead
_REFUSED = {
    "max_length": "max_new_tokens (it counts new tokens only)",
    "min_length": None,
    "min_new_tokens": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "repetition_penalty": None,
    "no_repeat_ngram_size": None,
    "num_beams": None,
    "num_return_sequences": "generate_batch([prompt] * n, seed=...) or the server's n",
    "stop_strings": "stop",
    "max_tokens": "max_new_tokens",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class GenerationParams:
    """One completion's parameters, validated when built.

    temperature 0 is greedy (an argmax, no draw); top_k 0 and top_p 1 are off.
    seed None draws from fresh entropy; an int reproduces the run. stop: strings
    the text ends before (never shown). logprobs None reports none; n >= 0 reports
    each token's log-probability and its n most likely alternatives.
    """

    max_new_tokens: int = 50  # >= 0
    temperature: float = 0.0  # >= 0; 0: greedy
    top_k: int = 0  # >= 0; 0: off
    top_p: float = 1.0  # in (0, 1]; 1: off
    seed: int | None = None  # >= 0, or None
    stop: tuple[str, ...] = ()  # one string or several
    logprobs: int | None = None  # 0..MAX_LOGPROBS, or None

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if not _is_int(n) or n < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {n!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if stop is None:
            stop = ()
        if not isinstance(stop, Sequence):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        object.__setattr__(self, "stop", _validate_stops(list(stop)))
        lp = self.logprobs
        if lp is not None and (not _is_int(lp) or not 0 <= lp <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an int in 0..{MAX_LOGPROBS} or None, got {lp!r}")
        sampling = SamplingParams(self.temperature, self.top_k, self.top_p)  # checks them
        object.__setattr__(self, "temperature", sampling.temperature)
        object.__setattr__(self, "top_k", sampling.top_k)
        object.__setattr__(self, "top_p", sampling.top_p)

    @property
    def sampling(self) -> SamplingParams:
        """The token-choice part (what the device's sampler takes)."""
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


DEFAULT_PARAMS = GenerationParams()
FIELDS = tuple(f.name for f in dataclasses.fields(GenerationParams))


def resolve_params(
    caller: str,
    params: GenerationParams | None,
    kw: Mapping[str, Any],
    extra: Sequence[str] = (),
) -> GenerationParams:
    """params (or the defaults) with the keywords kw applied on top.

    An unknown keyword raises TypeError naming `caller` and listing the supported
    names (plus `extra`, the caller's own); HF's do_sample is taken with HF's meaning.
    """
    if params is not None and not isinstance(params, GenerationParams):
        raise TypeError(
            f"{caller}() params must be a GenerationParams, got {type(params).__name__}"
        )
    kw = dict(kw)
    supported = ", ".join((*FIELDS, "do_sample", "params", *extra))
    for name in kw:
        if name in FIELDS or name == "do_sample":
            continue
        hint = _REFUSED.get(name)
        what = "Hugging Face's " if name in _REFUSED else ""
        use = f"; use {hint}" if hint else ""
        raise TypeError(
            f"{caller}() got an unsupported keyword argument {what}{name!r}{use}. "
            f"Supported: {supported}"
        )
    if "do_sample" in kw:
        do_sample = kw.pop("do_sample")
        if not isinstance(do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
        if not do_sample:
            kw["temperature"] = 0.0
        else:
            for name, value in _HF_SAMPLE_DEFAULTS.items():
                if name not in kw and (
                    params is None or getattr(params, name) == getattr(DEFAULT_PARAMS, name)
                ):
                    kw[name] = value
    base = params if params is not None else DEFAULT_PARAMS
    return dataclasses.replace(base, **kw) if kw else base
