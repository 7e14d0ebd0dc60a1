"""The /v1/completions request, as OpenAI's API defines it, and its checks.

Types are strict (a string is not a number). Fields OpenAI defines that we do
not implement are accepted at their neutral values only. `logit_bias` maps
token ids (decimal strings, as JSON keys are) to biases in [-100, 100]; the
app checks the ids against the vocabulary. `top_k` and
`repetition_penalty` are our extensions (HF's and llama.cpp's meanings; the
penalties' rule is gpt2.params'). Unset sampling fields take the library's defaults (gpt2.params):
greedy, 50 tokens.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpt2.params import MAX_LOGIT_BIAS, MAX_LOGPROBS

MAX_N = 16  # choices a request may ask for
MAX_STOP = 4  # stop strings a request may give (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters of one stop string
# Token ids (or texts) in all of a request's prompts. Checked before the union's
# types: a body of 2.6 million ids took pydantic's strict union 2 s on the event loop.
MAX_PROMPT_ITEMS = 65536


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)  # our extension
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)  # ours
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # OpenAI's, taken at their neutral values only
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_items(cls, v: Any) -> Any:
        if isinstance(v, list):
            n = sum(len(p) if isinstance(p, list) else 1 for p in v[: MAX_PROMPT_ITEMS + 1])
            if n > MAX_PROMPT_ITEMS:
                raise ValueError(f"more than {MAX_PROMPT_ITEMS} token ids or prompts")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_bounds(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        for s in stops:
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string has {len(s)} characters, at most {MAX_STOP_CHARS}")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_bounds(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not (key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValueError(f"keys are token ids (decimal integers), got {key[:20]!r}")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:  # NaN too
                raise ValueError(f"a bias lies in [-100, 100], got {bias} for token {key}")
        return v

    def bias_pairs(self) -> list[tuple[int, float]]:
        """logit_bias as (token id, bias) pairs ("007" and "7" are one id, given twice)."""
        return [(int(k), b) for k, b in (self.logit_bias or {}).items()]

    def unsupported(self) -> str | None:
        """The first field set to something we do not implement, or None."""
        if self.best_of not in (None, 1, self.n):
            return "best_of"
        if self.suffix:
            return "suffix"
        return None

    def prompts(self) -> list[str | list[int]]:
        """One prompt or several: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if len(p) == 0:
            return [""]
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
