"""Incremental detokenizer: token ids in one at a time, the text that is final out.

A byte-level BPE token stands for bytes, not characters (Tokenizer.token_bytes),
and may end inside a UTF-8 character: an emoji is often four tokens of one byte.
`Detokenizer.feed` turns each id into its bytes and decodes them after the few
bytes still pending (an incomplete character: at most 3), so a step costs the
token's bytes, not the completion's length; decoding every id again at each
step, as Continuation did, was quadratic.

The pieces are exactly `tokenizer.decode(ids)` cut into parts: their
concatenation with `flush()` is decode of the whole list, invalid bytes (a
sequence no later byte can complete) becoming U+FFFD where decode puts them,
as soon as they are known to be invalid (tests/gpt2/test_detokenizer.py).
"""

from __future__ import annotations

__all__ = ["Detokenizer", "final_texts", "incomplete_tail"]

# The bytes that may follow a lead byte as its second (Unicode's table 3-7, well-formed
# UTF-8): no overlong form (E0, F0), no surrogate (ED), nothing past U+10FFFF (F4).
_SECOND = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def incomplete_tail(data: bytes) -> int:
    """How many of the last bytes of `data` (0 to 3) begin a character that more
    bytes could complete: a lead byte and the continuation bytes it allows so far.
    Any other end is final: a complete character, or bytes no later byte can make
    valid, which decode turns into U+FFFD whatever follows.

    Python's incremental UTF-8 decoder is not used: CPython 3.11's keeps ED BB (a
    surrogate's start, invalid) waiting where decode has made it U+FFFD U+FFFD."""
    for k in range(1, min(3, len(data)) + 1):
        b = data[-k]
        if b < 0x80:
            return 0  # ASCII: complete
        if b < 0xC0:
            continue  # a continuation byte: its lead is further back
        size = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
        if b < 0xC2 or b > 0xF4 or k >= size:
            return 0  # never a lead byte (C0, C1, F5..FF), or a complete character
        lo, hi = _SECOND.get(b, (0x80, 0xBF))
        return k if k == 1 or lo <= data[-k + 1] <= hi else 0
    return 0


# Per bytes table (by identity, the table kept alive with it): the text of each
# token's bytes that are complete UTF-8 by themselves, not ending in U+FFFD. A
# token fed with nothing pending is then one dict look-up. A few tables at most.
_FINAL_TEXTS: dict[int, tuple[object, dict[bytes, str]]] = {}
_MAX_TABLES = 4


def _final_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text.endswith("\ufffd") else text


def final_texts(table) -> dict[bytes, str]:
    """{bytes: text} for the entries of a bytes table (Tokenizer.bytes_table) that
    are final by themselves (no incomplete or invalid character, no U+FFFD at the
    end); built once per table."""
    entry = _FINAL_TEXTS.get(id(table))
    if entry is not None and entry[0] is table:
        return entry[1]
    texts = {}
    for data in table:
        text = _final_text(data)
        if text is not None:
            texts[data] = text
    while len(_FINAL_TEXTS) >= _MAX_TABLES:
        del _FINAL_TEXTS[next(iter(_FINAL_TEXTS))]
    _FINAL_TEXTS[id(table)] = (table, texts)
    return texts


class Detokenizer:
    """`feed(id)` returns the new final text (maybe ""); `flush()` the rest at the end.

    >>> d = Detokenizer(tokenizer)  # doctest: +SKIP
    >>> [d.feed(i) for i in tokenizer.encode("🙂!")], d.flush()  # doctest: +SKIP
    (['', '', '', '🙂', '!'], '')
    """

    def __init__(self, tokenizer) -> None:
        """`tokenizer`: a gpt2.tokenizer.Tokenizer. Where its decode is not byte-level
        (no per-token bytes: a tokenizer.json with another decoder), each step decodes
        the whole list again and shows the new text once it does not end in U+FFFD,
        as Continuation did before: exact for a decoder whose text of a list begins
        with the text of its prefixes, O(length) a step."""
        self._tokenizer = tokenizer
        self._table = tokenizer.bytes_table()
        self._texts = final_texts(self._table) if self._table is not None else None
        self._vocab_size = tokenizer.vocab_size
        self._pending = b""  # an incomplete character's bytes (incomplete_tail)
        # whether bytes of an incomplete character wait for the next token (so decode
        # of the ids so far ends in a U+FFFD that may yet become a character)
        self.pending = False
        self._ids: list[int] = []  # without a table only: the ids so far
        self._shown = 0  # without a table only: characters of decode(ids) returned

    def feed(self, token: int) -> str:
        """The text that the next id makes final (maybe "")."""
        token = int(token)
        if not 0 <= token < self._vocab_size:
            raise ValueError(f"token id {token} out of range [0, {self._vocab_size})")
        if self._table is None:
            return self._redecode(token)
        data = self._table[token]
        if not self._pending:
            text = self._texts.get(data)
            if text is not None:  # complete by itself: nothing left pending
                return text
        else:
            data = self._pending + data
        n = len(data) - incomplete_tail(data)
        self._pending = data[n:]
        self.pending = n < len(data)
        return data[:n].decode("utf-8", errors="replace")

    def flush(self) -> str:
        """At the end: the pending bytes as decode gives them (one U+FFFD for an
        incomplete character), or "" when none wait."""
        if self._table is None:
            text = self._tokenizer.decode(self._ids)
            tail, self._shown, self.pending = text[self._shown :], len(text), False
            return tail
        tail, self._pending = self._pending.decode("utf-8", errors="replace"), b""
        self.pending = False
        return tail

    def _redecode(self, token: int) -> str:
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids)
        self.pending = text.endswith("\ufffd")  # maybe a split character: wait
        if self.pending:
            return ""
        new, self._shown = text[self._shown :], len(text)
        return new
