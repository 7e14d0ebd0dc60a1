"""Generation parameters: one typed, validated object, also given as keywords.

`GenerationParams` decides a whole completion: how many tokens, how each is
chosen (its `sampling`, THE SAMPLING RULE's parameters of gpt2.sampling),
where it stops and what it reports. Its defaults are the one set that the
library (`generate`, `stream`, `complete`, `generate_batch`) and the server
(`gpt2 serve`) share: greedy, 50 new tokens, no penalty; deterministic, as HF's
generate(). The CLI's `gpt2 generate` samples instead (gpt2.cli.GENERATE_DEFAULTS:
temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1), where a person
reads the text and a small model's greedy text repeats itself.

Keywords are checked by name: Hugging Face's `do_sample` is accepted with HF's
meaning (False: greedy; True: sampling at temperature 1 with top_k 50 unless
given); HF's other names are refused with a TypeError that says what to use.

Penalties change the raw logits l of a token choice, before THE SAMPLING RULE
(greedy included), in this order (llama.cpp's):

- `repetition_penalty` r > 0 (HF's and llama.cpp's; 1: off): for every token i
  that occurs in the prompt or among the tokens generated so far,
  l_i = l_i / r if l_i > 0 else l_i * r;
- `frequency_penalty` f and `presence_penalty` p in [-2, 2] (OpenAI's; 0: off):
  l_i -= f * count_i + p * (count_i > 0), where count_i is how often token i
  occurs among the tokens generated so far in this completion (not the prompt).

`logit_bias` (OpenAI's: token id -> a bias in [-100, 100]) is added to those
tokens' raw logits before the penalties (llama.cpp's sampler chain has it first):
-100 all but bans a token, +100 all but forces it.

Log-probabilities (`logprobs`) stay those of the raw logits: a penalty or bias changes
which token is chosen, never the probabilities reported. The shim's C sampler
applies them (tnn_penalize_rows); a row with a penalty or a bias brings its logits
to the host, since the device samplers (the CUDA sampler, the fused decode step) do
not apply them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpt2.sampling import SamplingParams, _validate_stops

__all__ = ["DEFAULT_PARAMS", "MAX_LOGPROBS", "GenerationParams", "resolve_params"]

MAX_LOGPROBS = 20  # alternatives a token may report (OpenAI's chat limit)

# HF's sampling defaults when do_sample=True leaves them out (GenerationConfig)
_HF_SAMPLE_DEFAULTS = {"temperature": 1.0, "top_k": 50}

MAX_OPENAI_PENALTY = 2.0  # frequency_penalty and presence_penalty lie in [-2, 2]
MAX_LOGIT_BIAS = 100.0  # a logit_bias value lies in [-100, 100] (OpenAI's)

# HF names we do not take, with what to use instead
_REFUSED = {
    "max_length": "max_new_tokens (it counts new tokens only)",
    "min_length": None,
    "min_new_tokens": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "no_repeat_ngram_size": None,
    "num_beams": None,
    "num_return_sequences": "generate_batch([prompt] * n, seed=...) or the server's n",
    "stop_strings": "stop",
    "max_tokens": "max_new_tokens",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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
    repetition_penalty: float = 1.0  # > 0; 1: off (prompt and generated tokens)
    frequency_penalty: float = 0.0  # in [-2, 2]; 0: off (times each generated count)
    presence_penalty: float = 0.0  # in [-2, 2]; 0: off (once for each generated token)
    # token id -> bias in [-100, 100] (a mapping or pairs; kept as sorted pairs)
    logit_bias: tuple[tuple[int, float], ...] = ()

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
        self._check_penalties()
        object.__setattr__(self, "logit_bias", _check_logit_bias(self.logit_bias))
        sampling = SamplingParams(self.temperature, self.top_k, self.top_p)  # checks them
        object.__setattr__(self, "temperature", sampling.temperature)
        object.__setattr__(self, "top_k", sampling.top_k)
        object.__setattr__(self, "top_p", sampling.top_p)

    def _check_penalties(self) -> None:
        r = self.repetition_penalty
        if not _is_number(r) or not (math.isfinite(r) and r > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {r!r}")
        object.__setattr__(self, "repetition_penalty", float(r))
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not _is_number(v) or not -MAX_OPENAI_PENALTY <= v <= MAX_OPENAI_PENALTY:
                raise ValueError(f"{name} must be a number in [-2, 2], got {v!r}")
            object.__setattr__(self, name, float(v))

    @property
    def penalized(self) -> bool:
        """Whether any penalty is on (a choice then needs the history and the logits)."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    @property
    def penalties(self) -> tuple[float, float, float]:
        """(repetition, frequency, presence), tnn_penalize_rows' record of a row."""
        return (self.repetition_penalty, self.frequency_penalty, self.presence_penalty)

    @property
    def sampling(self) -> SamplingParams:
        """The token-choice part (what the device's sampler takes)."""
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _check_logit_bias(bias: Any) -> tuple[tuple[int, float], ...]:
    """logit_bias as sorted (id, bias) pairs: ids ints >= 0, each once (the vocabulary
    is the engine's check), biases numbers in [-100, 100]."""
    if bias is None:
        return ()
    pairs = list(bias.items()) if isinstance(bias, Mapping) else bias
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise ValueError(f"logit_bias must map token ids to biases, got {bias!r}")
    out: dict[int, float] = {}
    for pair in pairs:
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"logit_bias must map token ids to biases, got {pair!r}")
        token, value = pair
        if not _is_int(token) or token < 0:
            raise ValueError(f"logit_bias: a token id must be an int >= 0, got {token!r}")
        if token in out:
            raise ValueError(f"logit_bias: token {token} is given twice")
        if not _is_number(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias: a bias must be a number in [-100, 100], got {value!r}")
        out[token] = float(value)
    return tuple(sorted(out.items()))


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
