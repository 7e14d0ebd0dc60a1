"""What one completion returns, and the state that decides when it ends.

`Continuation` takes the chosen tokens one at a time (with the logits they were
chosen from, when log-probabilities are asked) and keeps the text that is safe
to show: it ends at end-of-text ("eos"), before a stop string ("stop"), after
max_new_tokens ("length") or when the next token would need a position past
the context ("context"). The library's `complete`/`stream`, `generate_batch`
and the server's scheduler all drive it, so each gives the same text.

Log-probabilities are those of the model's distribution, log_softmax of the
step's raw logits (temperature 1, no top-k or top-p), computed on the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpt2.detokenizer import Detokenizer
from gpt2.params import GenerationParams
from gpt2.sampling import StopChecker

__all__ = ["FINISH_REASONS", "Completion", "Continuation", "TokenLogprob", "Usage", "token_logprob"]

FINISH_REASONS = ("stop", "length", "eos", "context")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its id, text, log-probability and the n most likely
    tokens of the same step (id, text, log-probability), most likely first."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    """A finished completion. token_ids are the generated tokens (end-of-text not
    among them); with finish_reason "stop" the last ones hold the stop string,
    which `text` leaves out. logprobs (when asked) has one entry a token id."""

    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    logprobs: list[TokenLogprob] | None = None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = float(x.max())
    return x - (m + np.log(np.exp(x - m).sum()))


def token_logprob(logits: np.ndarray, token: int, n_top: int, decode) -> TokenLogprob:
    """The log-probability of `token` under softmax(logits) and the n_top most
    likely ids (ties: the lower id first); decode maps ids to text."""
    lp = _log_softmax(logits)
    top: tuple[tuple[int, str, float], ...] = ()
    if n_top > 0:
        k = min(n_top, lp.size)
        cand = np.argpartition(-lp, k - 1)[:k] if k < lp.size else np.arange(lp.size)
        order = cand[np.lexsort((cand, -lp[cand]))][:k]
        top = tuple((int(i), decode([int(i)]), float(lp[i])) for i in order)
    return TokenLogprob(int(token), decode([int(token)]), float(lp[token]), top)


def _no_text(ids: list[int]) -> str:
    return ""


@dataclass
class Continuation:
    """The decided part of one completion (see the module docstring). A step's text
    work is the token's own: a Detokenizer turns it into its final text, and
    `text` keeps the shown pieces, joined when read."""

    tokenizer: object | None  # gpt2.tokenizer.Tokenizer, or None: ids only, no text
    n_prompt: int
    params: GenerationParams
    max_positions: int
    eos_id: int | None = None  # end-of-text: ends the completion, not part of it
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if self.params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer: the model has none")
        self._decode = self.tokenizer.decode if self.tokenizer is not None else _no_text
        self._detok = Detokenizer(self.tokenizer) if self.tokenizer is not None else None
        # no stop strings: every piece is shown as it comes (the checker would keep a
        # copy of the whole text, grown at every step)
        self._checker = StopChecker(self.params.stop) if self.params.stop else None
        # final text not yet shown, because it ends in U+FFFD: the text is shown once
        # the ids so far decode to a text that does not end in U+FFFD, as when each step
        # decoded them all, so the stop checker gets the same pieces
        self._held: list[str] = []
        self._pieces: list[str] = []  # the text shown so far, in pieces
        if self.params.logprobs is not None:
            self.logprobs = []
        if self.params.max_new_tokens == 0:
            self.finish_reason = "length"
        # it ends after this many tokens: max_new_tokens ("length"), or the last that
        # leaves the next one a position in the context ("context")
        self._last = min(self.params.max_new_tokens, self.max_positions - self.n_prompt + 1)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The text shown so far."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def feed(
        self, token: int, logits: np.ndarray | None = None, logprob: TokenLogprob | None = None
    ) -> str:
        """Takes the next chosen token and, where log-probabilities are asked, its
        TokenLogprob (from the step's native sampler) or the logits it was chosen
        from; returns the new text that may be shown."""
        if self.finish_reason is not None:
            raise ValueError(f"the completion has finished ({self.finish_reason})")
        if token == self.eos_id:
            self.finish_reason = "eos"
            return self._end()
        self.token_ids.append(int(token))
        if self.logprobs is not None:
            if logprob is None:
                if logits is None:
                    raise ValueError("log-probabilities need the step's logits")
                logprob = token_logprob(logits, token, self.params.logprobs, self._decode)
            self.logprobs.append(logprob)
        piece = ""
        detok = self._detok
        if detok is not None:
            new = detok.feed(token)
            held = self._held
            if not held and new and not detok.pending and new[-1] != "\ufffd":
                piece = new  # the common token: its text is final and nothing waits
            else:
                if new:
                    held.append(new)
                if held and not (detok.pending or held[-1].endswith("\ufffd")):
                    piece = "".join(held)
                    held.clear()
            if piece and self._checker is not None:
                piece = self._checker.feed(piece)
                if self._checker.stopped:
                    self.finish_reason = "stop"
                    self._show(piece)
                    return piece
        n = len(self.token_ids)
        if n >= self._last:
            if n >= self.params.max_new_tokens:
                self.finish_reason = "length"
            else:
                self.finish_reason = "context"  # the next token needs a position past it
        if piece:
            self._pieces.append(piece)
        if self.finish_reason is not None:
            return piece + self._end()
        return piece

    def _check(self, new: str) -> str:
        """The part of the new final text that the stop strings let show now."""
        return self._checker.feed(new) if self._checker is not None else new

    def _show(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)

    def _end(self) -> str:
        """The held-back text at the end (a stop string's possible start)."""
        if self._detok is None:
            return ""
        rest = "".join(self._held) + self._detok.flush()
        self._held.clear()
        tail = self._check(rest) if rest else ""
        if self._checker is not None:
            if self._checker.stopped:
                self.finish_reason = "stop"
            else:
                tail += self._checker.flush()
        self._show(tail)
        return tail

    def result(self) -> Completion:
        if not self.done:
            raise ValueError("the completion has not finished")
        usage = Usage(self.n_prompt, len(self.token_ids))
        return Completion(self.text, list(self.token_ids), self.finish_reason, usage, self.logprobs)
