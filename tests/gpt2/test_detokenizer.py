"""Detokenizer: its pieces are tokenizer.decode cut into parts, and a step's work does
not grow with the completion's length.

Oracles: `tokenizer.decode` of the ids so far (exact string equality), and, for
Continuation, the algorithm it used before (decode every id again at each step), kept
here as `_redecoding_continuation`. Work is counted (token-bytes lookups, ids given to
decode), never timed.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, decoders
from tokenizers import Tokenizer as HFTokenizer

from gpt2.completion import Continuation
from gpt2.detokenizer import Detokenizer, incomplete_tail
from gpt2.params import GenerationParams
from gpt2.resolve import DEFAULT_MODEL
from gpt2.sampling import StopChecker
from gpt2.tokenizer import Tokenizer

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # write no .hypothesis folder into the repo
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# characters of 2, 3 and 4 UTF-8 bytes, and text that the embedded model's tokenizer
# (trained on English) cuts into byte tokens
SPLIT_TEXTS = ["é", "Ελληνικά", "日本語のテキスト", "🙂", "👩‍👩‍👧‍👦", "🇫🇷", "\ufffd", "a\u0300"]

# added tokens whose characters the byte-level alphabet maps to other bytes ('é' is byte
# 0xE9 there, 'ü' 0xFC, 'Ġ' the space) or cannot map ('€' is not in it: its UTF-8 then);
# 'é' and 'Ġx' are in the vocabulary already, and keep their ids
ADDED = ["é", "<|ü|>", "Ġx", "€uro", "plain"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The embedded model's tokenizer (8,192 ids, <|endoftext|> the last)."""
    return Tokenizer.from_gguf(gguf.GGUFReader(DEFAULT_MODEL), DEFAULT_MODEL)


@pytest.fixture(scope="module")
def added_tokenizer(tiny_model) -> Tokenizer:
    """The tiny model's tokenizer with ADDED as added tokens, special and not."""
    hf = HFTokenizer.from_file(str(tiny_model.hf_dir / "tokenizer.json"))
    hf.add_tokens([AddedToken(t, special=False) for t in ADDED[:2]])
    hf.add_special_tokens([AddedToken(t, special=True) for t in ADDED[2:]])
    return Tokenizer(hf, "tiny + added")


@pytest.fixture(scope="module")
def other_decoder_tokenizer(tiny_model) -> Tokenizer:
    """A decoder that is not ByteLevel itself (a Sequence around it): no byte table."""
    hf = HFTokenizer.from_file(str(tiny_model.hf_dir / "tokenizer.json"))
    hf.decoder = decoders.Sequence([decoders.ByteLevel()])
    return Tokenizer(hf, "tiny, Sequence decoder")


def id_lists(tok: Tokenizer, max_parts: int = 12) -> st.SearchStrategy[list[int]]:
    """Lists of ids: any id, single-byte tokens of any bytes (partial and invalid UTF-8),
    the ids of texts with multi-byte characters cut anywhere, and the special tokens."""
    table = tok.bytes_table()
    byte_id = {t[0]: i for i, t in enumerate(table) if len(t) == 1}
    assert len(byte_id) == 256, "a byte-level vocabulary has a token for every byte"
    specials = [tok.eos_id] + [ids[0] for t in ADDED if len(ids := tok.encode(t)) == 1]
    any_id = st.integers(0, tok.vocab_size - 1).map(lambda i: [i])
    some_bytes = st.binary(min_size=1, max_size=6).map(lambda b: [byte_id[x] for x in b])
    cut_text = st.tuples(
        st.lists(st.sampled_from(SPLIT_TEXTS), min_size=1, max_size=3),
        st.integers(0, 40),
        st.integers(0, 40),
    ).map(lambda t: tok.encode("".join(t[0]))[t[1] :][: max(1, t[2])])
    text = st.text(max_size=12).map(tok.encode)
    special = st.sampled_from(specials).map(lambda i: [i])
    parts = [any_id, some_bytes, cut_text, text, special]
    return st.lists(st.one_of(parts), max_size=max_parts).map(lambda p: sum(p, []))


def check_pieces(tok: Tokenizer, ids: list[int]) -> None:
    """After each id, the pieces so far are decode of the ids so far, less the one
    U+FFFD that decode gives an incomplete last character; with flush, all of it."""
    d = Detokenizer(tok)
    shown = ""
    for n, i in enumerate(ids, 1):
        shown += d.feed(i)
        want = tok.decode(ids[:n])
        got = shown + ("\ufffd" if d.pending else "")
        assert got == want, (ids[:n], got, want)
    assert shown + d.flush() == tok.decode(ids), ids
    assert not d.pending


@SETTINGS
@given(data=st.data())
def test_pieces_are_decode(tokenizer, data):
    """Property: for any ids, the pieces plus flush() == tokenizer.decode(ids)."""
    check_pieces(tokenizer, data.draw(id_lists(tokenizer)))


@SETTINGS
@given(data=st.data())
def test_pieces_are_decode_with_added_tokens(added_tokenizer, data):
    """The same with added tokens, special or not, that are not byte-level strings."""
    check_pieces(added_tokenizer, data.draw(id_lists(added_tokenizer)))


# bytes where UTF-8's rules change: ASCII, continuation bytes at the edges of the ranges
# E0, ED, F0 and F4 allow next, the bytes that are never a lead (C0, C1, F5..FF), leads
EDGE_BYTES = [0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF]
EDGE_BYTES += [0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]


@SETTINGS
@given(data=st.data())
def test_pieces_are_decode_at_utf8_edges(tokenizer, data):
    """Single-byte tokens of the bytes where UTF-8's rules change (overlong forms,
    surrogates, past U+10FFFF, truncated characters), mixed with multi-byte tokens."""
    byte_id = {t[0]: i for i, t in enumerate(tokenizer.bytes_table()) if len(t) == 1}
    multi = tokenizer.encode("é日🙂")
    token = st.one_of(st.sampled_from(EDGE_BYTES).map(byte_id.get), st.sampled_from(multi))
    check_pieces(tokenizer, data.draw(st.lists(token, max_size=16)))


def _incomplete_tail_oracle(data: bytes) -> int:
    """The last k bytes that Python's final decode calls "unexpected end of data" (a
    character cut short), not an invalid byte: what more bytes could complete."""
    for k in range(1, min(3, len(data)) + 1):
        try:
            data[-k:].decode("utf-8")
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data" and (e.start, e.end) == (0, k):
                return k
    return 0


def test_incomplete_tail_every_ending():
    """incomplete_tail against the oracle: every 1- and 2-byte text, and every byte
    before two or three continuation bytes at the edges of their ranges."""
    conts = [0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF]
    texts = [bytes([a]) for a in range(256)]
    texts += [bytes([a, b]) for a in range(256) for b in range(256)]
    texts += [bytes([a, b, c]) for a in range(256) for b in conts for c in conts]
    texts += [bytes([a, b, c, 0x80]) for a in range(256) for b in conts for c in conts]
    bad = [
        (t.hex(" "), incomplete_tail(t), want)
        for t in texts
        if incomplete_tail(t) != (want := _incomplete_tail_oracle(t))
    ]
    assert not bad, f"{len(bad)} endings differ (bytes, got, want), e.g. {bad[:5]}"


def test_added_tokens_bytes(added_tokenizer):
    """decode passes added tokens through the ByteLevel decoder: each of its characters
    in the byte-level alphabet is that byte, a token with any other is its UTF-8."""
    tok = added_tokenizer
    ids = {t: tok.encode(t) for t in ADDED}
    assert all(len(v) == 1 for v in ids.values()), ids
    got = {t: tok.token_bytes(v[0]) for t, v in ids.items()}
    want = {
        "é": b"\xe9",
        "<|ü|>": b"<|\xfc|>",
        "Ġx": b" x",
        "€uro": "€uro".encode(),
        "plain": b"plain",
    }
    assert got == want
    assert tok.decode(ids["<|ü|>"]) == "<|\ufffd|>"  # what tokenizers does: 0xFC alone
    byte_id = {t[0]: i for i, t in enumerate(tok.bytes_table()) if len(t) == 1}
    assert tok.decode(ids["é"] + [byte_id[0xA6], byte_id[0x99]]) == "香"  # E9 A6 99


def test_special_token_and_invalid_bytes(tokenizer):
    """<|endoftext|> is its own text; invalid bytes are U+FFFD as soon as they are known
    invalid, not held; an incomplete character waits, and flush gives its U+FFFD."""
    eos = tokenizer.eos_id
    byte_id = {t[0]: i for i, t in enumerate(tokenizer.bytes_table()) if len(t) == 1}
    d = Detokenizer(tokenizer)
    assert d.feed(eos) == "<|endoftext|>"
    assert d.feed(byte_id[0xFF]) == "\ufffd"  # never valid in UTF-8
    assert d.feed(byte_id[0xF0]) == ""  # a 4-byte character's start
    assert d.pending
    assert d.feed(byte_id[0x9F]) == ""
    assert d.feed(byte_id[0x41]) == "\ufffdA"  # F0 9F then 'A': one U+FFFD, as decode
    assert d.feed(byte_id[0xED]) == ""
    assert d.feed(byte_id[0xBB]) == "\ufffd\ufffd"  # ED BB: a surrogate's, never valid
    assert d.feed(byte_id[0xE6]) == ""
    assert d.flush() == "\ufffd"
    assert d.feed(byte_id[0x41]) == "A"  # after a flush, a fresh start


def test_bad_ids_are_refused(tokenizer):
    d = Detokenizer(tokenizer)
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(ValueError, match="out of range"):
            d.feed(bad)
        with pytest.raises(ValueError, match="out of range"):
            tokenizer.decode([bad])


@SETTINGS
@given(data=st.data())
def test_other_decoder_redecodes(other_decoder_tokenizer, data):
    """Without a byte table the detokenizer decodes the whole list again: still exact."""
    tok = other_decoder_tokenizer
    assert tok.bytes_table() is None
    with pytest.raises(ValueError, match="not byte-level"):
        tok.token_bytes(0)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=20))
    d = Detokenizer(tok)
    assert "".join(map(d.feed, ids)) + d.flush() == tok.decode(ids)


def test_bytes_table_is_built_once(tokenizer):
    assert tokenizer.bytes_table() is tokenizer.bytes_table()
    assert len(tokenizer.bytes_table()) == tokenizer.vocab_size


def _redecoding_continuation(tok, ids, params, eos_id, max_positions=10_000):
    """Continuation's pieces, text and finish reason as it computed them before the
    detokenizer: decode every id again at each step, wait while the text ends in U+FFFD."""
    checker, shown, pieces, taken, reason = StopChecker(params.stop), "", [], [], None

    def end():
        nonlocal reason
        text = tok.decode(taken)
        tail = checker.feed(text[len(shown) :]) if len(text) > len(shown) else ""
        if checker.stopped:
            reason = "stop"
        else:
            tail += checker.flush()
        return tail

    for i in ids:
        if i == eos_id:
            reason = "eos"
            pieces.append(end())
            break
        taken.append(i)
        piece = ""
        text = tok.decode(taken)
        if not text.endswith("\ufffd"):
            piece = checker.feed(text[len(shown) :])
            shown = text
            if checker.stopped:
                reason = "stop"
                pieces.append(piece)
                break
        if len(taken) >= params.max_new_tokens:
            reason = "length"
        elif len(taken) > max_positions:
            reason = "context"
        if reason is not None:
            piece += end()
        pieces.append(piece)
        if reason is not None:
            break
    return pieces, "".join(pieces), reason


STOPS = [" ", "e", "th", "\n", "\ufffd", "🙂", "<|endoftext|>", "s t", "ab"]


@SETTINGS
@given(data=st.data())
def test_continuation_shows_what_it_showed_before(tokenizer, data):
    """Property: Continuation's pieces, text and finish reason are those of the old
    algorithm, with and without stop strings, for any ids."""
    ids = data.draw(id_lists(tokenizer, max_parts=8))
    stop = data.draw(st.lists(st.sampled_from(STOPS), max_size=2, unique=True))
    eos = data.draw(st.sampled_from([None, tokenizer.eos_id]))
    params = GenerationParams(max_new_tokens=data.draw(st.integers(1, 60)), stop=stop)
    cont = Continuation(tokenizer, 0, params, 10_000, eos)
    pieces = []
    for i in ids:
        pieces.append(cont.feed(i))
        if cont.done:
            break
    want_pieces, want_text, want_reason = _redecoding_continuation(tokenizer, ids, params, eos)
    assert (pieces, cont.text, cont.finish_reason) == (want_pieces, want_text, want_reason)


class _CountingTable:
    """A token-bytes table that counts its lookups."""

    def __init__(self, table):
        self.table, self.lookups = table, 0

    def __len__(self):
        return len(self.table)

    def __getitem__(self, i):
        self.lookups += 1
        return self.table[i]


class _CountingTokenizer:
    """The tokenizer, counting the ids each decode call is given."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.vocab_size = tok.vocab_size
        self.table = _CountingTable(tok.bytes_table())
        self.decoded: list[int] = []  # ids a call, one entry a decode call

    def bytes_table(self):
        return self.table

    def decode(self, ids):
        self.decoded.append(len(ids))
        return self.tok.decode(ids)


@pytest.mark.parametrize("logprobs", [None, 3], ids=["text", "logprobs"])
def test_feed_work_does_not_grow_with_length(tokenizer, logprobs):
    """A 2,000-token completion: each feed looks up one token's bytes and decodes no list
    of ids (with log-probabilities: one id a decode call, 1 + n_top calls a step), the
    same at the 2,000th token as at the first; the text is decode of all the ids."""
    n = 2000
    text = "The quick brown fox 🙂 jumps over 日本語 the lazy dog. " * 200
    ids = tokenizer.encode(text)[:n]
    assert len(ids) == n
    tok = _CountingTokenizer(tokenizer)
    params = GenerationParams(max_new_tokens=n, logprobs=logprobs)
    cont = Continuation(tok, 0, params, 10_000, tokenizer.eos_id)
    logits = np.random.default_rng(0).standard_normal(tokenizer.vocab_size)
    lookups, decode_calls, pieces = [], [], []
    for i in ids:
        before = (tok.table.lookups, len(tok.decoded))
        pieces.append(cont.feed(i, logits if logprobs else None))
        lookups.append(tok.table.lookups - before[0])
        decode_calls.append(tok.decoded[before[1] :])
    assert cont.finish_reason == "length"
    assert set(lookups) == {1}, "one token's bytes looked up a step"
    want_calls = [1] * (1 + logprobs) if logprobs else []
    bad = [(k, c) for k, c in enumerate(decode_calls) if c != want_calls]
    assert not bad, f"steps (index, ids a decode call) other than {want_calls}: {bad[:5]}"
    assert "".join(pieces) == cont.text == tokenizer.decode(ids)
