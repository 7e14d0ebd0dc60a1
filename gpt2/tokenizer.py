"""GPT-2 byte-level BPE tokenizer: a thin owner of `tokenizers.Tokenizer`.

Sources: an HF folder (`tokenizer.json`, or `vocab.json` + `merges.txt`) or GGUF metadata
(`tokenizer.ggml.*`, llama.cpp's keys). `gguf_fields()` gives what a GGUF writer needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

EOS_TOKEN = "<|endoftext|>"

# What a tokenizer file may make `tokenizers` do (GPT-2's own tokenizer.json has no
# normalizer and one 13-character special token). The library is Rust: a runaway
# normalizer aborts the process on a failed allocation, and a panic reaches Python as
# PanicException, a BaseException. So bound what is read, and catch what is raised.
MAX_TOKENIZER_JSON_BYTES = 256 << 20  # a 250k-token vocabulary is about 17 MB
MAX_JSON_DEPTH = 64  # nesting of tokenizer.json's objects
MAX_NORMALIZER_STEPS = 32  # normalizers, counted through nested Sequences
MAX_NORMALIZER_GROWTH = 64  # product of Replace contents' lengths: how much text may grow
MAX_SPECIAL_TOKEN_CHARS = 1024  # tokenizers' matcher takes ~80x an added token's size

# llama.cpp token types (gguf.TokenType): ordinary BPE tokens and special/control tokens.
_NORMAL = int(gguf.TokenType.NORMAL)
_CONTROL = int(gguf.TokenType.CONTROL)
_USER_DEFINED = int(gguf.TokenType.USER_DEFINED)


@dataclass(frozen=True)
class GGUFTokenizerFields:
    """The tokenizer as llama.cpp stores it in GGUF metadata."""

    model: str  # tokenizer.ggml.model ("gpt2" = byte-level BPE)
    pre: str  # tokenizer.ggml.pre (pre-tokenizer regex family)
    tokens: list[str]  # tokenizer.ggml.tokens, indexed by id
    token_types: list[int]  # tokenizer.ggml.token_type (gguf.TokenType values)
    merges: list[str]  # tokenizer.ggml.merges, "left right", in rank order
    bos_id: int | None
    eos_id: int | None

    def write(self, writer: gguf.GGUFWriter) -> None:
        """Add these fields to a GGUFWriter (before its header is written)."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        if self.bos_id is not None:
            writer.add_bos_token_id(self.bos_id)
        if self.eos_id is not None:
            writer.add_eos_token_id(self.eos_id)


class Tokenizer:
    """Byte-level BPE: `encode(text) -> ids`, `decode(ids) -> text`."""

    def __init__(
        self, hf: _HFTokenizer, source: str = "<memory>", vocab: dict[str, int] | None = None
    ) -> None:
        """`vocab`: token -> id with the added tokens, where the caller built `hf` from it
        and has it (from_gguf); else it is asked of `hf` (a copy of 50,257 tokens: ~25 ms)."""
        self._tok = hf
        self.source = source
        if vocab is None:
            vocab = _guarded(
                source, "cannot read its vocabulary", hf.get_vocab, with_added_tokens=True
            )
        self._id_to_token = {i: t for t, i in vocab.items()}
        n = len(self._id_to_token)
        if set(self._id_to_token) != set(range(n)):
            raise ValueError(f"{source}: token ids are not the contiguous range 0..{n - 1}")
        # characters one token can cover at most (byte-level: one char per byte), so a
        # text longer than max_tokens times this has more than max_tokens tokens
        self._max_token_chars = max(map(len, vocab), default=1) or 1
        self._bytes_table: tuple[bytes, ...] | None = None  # built on first use

    @classmethod
    def from_folder(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json`, or else `vocab.json` + `merges.txt`, from an HF folder."""
        folder = Path(path)
        tj = folder / "tokenizer.json"
        if tj.is_file():
            text = _read_tokenizer_json(tj)
            return cls(_guarded(tj, "cannot read tokenizer", _HFTokenizer.from_str, text), str(tj))
        try:
            vocab, merges = folder / "vocab.json", folder / "merges.txt"
            if vocab.is_file() and merges.is_file():
                bpe = models.BPE.from_file(str(vocab), str(merges))
                tok = _byte_level(bpe)
                if EOS_TOKEN in tok.get_vocab():
                    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
                return cls(tok, str(folder))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ValueError(f"{folder}: cannot read tokenizer: {e}") from None
        raise ValueError(f"{folder}: no tokenizer.json or vocab.json + merges.txt")

    @classmethod
    def from_gguf(cls, reader: Any, path: str | Path = "<gguf>") -> Tokenizer | None:
        """Build from `tokenizer.ggml.*` metadata; None when the file embeds no tokenizer.
        `reader`: a gpt2.gguf_header.GGUFHeader or a gguf.GGUFReader (`get_field`)."""
        tokens_field = reader.get_field(gguf.Keys.Tokenizer.LIST)
        if tokens_field is None:
            return None
        model = reader.get_field(gguf.Keys.Tokenizer.MODEL)
        if model is not None and model.contents() != "gpt2":
            raise ValueError(
                f"{path}: tokenizer.ggml.model is {model.contents()!r}; only 'gpt2' "
                "(byte-level BPE) is supported"
            )
        tokens = tokens_field.contents()
        merges_field = reader.get_field(gguf.Keys.Tokenizer.MERGES)
        merges = merges_field.contents() if merges_field is not None else []
        types_field = reader.get_field(gguf.Keys.Tokenizer.TOKEN_TYPE)
        types = types_field.contents() if types_field is not None else [_NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise ValueError(
                f"{path}: tokenizer.ggml.token_type has {len(types)} entries, "
                f"tokenizer.ggml.tokens has {len(tokens)}"
            )
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.tokens holds duplicate tokens")
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        bad = next((m for m, p in zip(merges, pairs, strict=True) if len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"{path}: bad merge {bad!r} (expected 'left right')")
        try:
            tok = _byte_level(models.BPE(vocab=vocab, merges=pairs))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ValueError(f"{path}: cannot build tokenizer: {e}") from None
        special = [t for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL]
        for t in special:
            _check_special_token(t, path)
        if special:
            tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
        # the special tokens are tokens of `vocab`: they keep their ids, and add none
        return cls(tok, str(path), vocab)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self._id_to_token)

    @property
    def eos_id(self) -> int | None:
        """Id of `<|endoftext|>`, or None when the vocabulary lacks it."""
        return self._tok.token_to_id(EOS_TOKEN)

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Token ids of `text` (no BOS/EOS added: GPT-2 uses none).

        With `max_tokens` (a context's length), a text of more tokens is a
        ValueError, and a text too long to fit is refused from its length alone,
        before it is encoded: a 20 MB prompt costs nothing (it cost 2.6 GB and 18 s
        of encoding). The bound counts characters before any normalizer."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if max_tokens is not None:
            if len(text) > max_tokens * self._max_token_chars:
                raise ValueError(
                    f"the prompt has {len(text):,} characters, more than {max_tokens} tokens "
                    f"(the context holds {max_tokens}; a token here covers at most "
                    f"{self._max_token_chars} characters)"
                )
        enc = _guarded(
            self.source,
            "tokenizer failed while encoding",
            self._tok.encode,
            text,
            add_special_tokens=False,
        )
        ids = list(enc.ids)
        if max_tokens is not None and len(ids) > max_tokens:
            raise ValueError(f"the prompt has {len(ids)} tokens, the context holds {max_tokens}")
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; special tokens are kept so that decode(encode(s)) == s."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} out of range [0, {self.vocab_size})")
        return _guarded(
            self.source,
            "tokenizer failed while decoding",
            self._tok.decode,
            ids,
            skip_special_tokens=False,
        )

    def token(self, i: int) -> str:
        """The vocabulary string of id `i` (byte-level alphabet, e.g. 'Ġthe')."""
        return self._id_to_token[i]

    @property
    def byte_level(self) -> bool:
        """Whether decode is byte-level: each id stands for bytes of its own (token_bytes)."""
        return isinstance(self._tok.decoder, decoders.ByteLevel)

    def token_bytes(self, i: int) -> bytes:
        """The bytes id `i` stands for in decode: `decode(ids)` is
        `b"".join(map(token_bytes, ids)).decode("utf-8", "replace")`. A token may hold
        part of a character (an emoji's first byte). ValueError where decode is not
        byte-level (see bytes_table)."""
        table = self.bytes_table()
        if table is None:
            raise ValueError(
                f"{self.source}: decode is not byte-level ({type(self._tok.decoder).__name__}): "
                "a token has no bytes of its own"
            )
        return table[i]

    def bytes_table(self) -> tuple[bytes, ...] | None:
        """token_bytes of every id, indexed by id; None where the decoder is not
        byte-level (no per-token table can reproduce it). Built once, on first use.

        What `tokenizers`' ByteLevel decoder does, token by token: a token whose
        characters are all in the byte-level alphabet stands for those bytes (an added
        token '<|ü|>' too: 'ü' is byte 0xFC there, so it decodes to '<|\ufffd|>'); any
        other (an added '€uro') for its UTF-8 bytes. Special and added tokens go through
        the decoder like the others (decode keeps them), so '<|endoftext|>', plain
        ASCII, stands for itself. The bytes of the whole list are
        then decoded as Rust's String::from_utf8_lossy does, which replaces each maximal
        invalid subpart by one U+FFFD, as Python's errors="replace" does; there is no
        clean-up of spaces (that is transformers', not tokenizers')."""
        if self._bytes_table is None and self.byte_level:
            to_byte = _byte_level_decoder()
            table = []
            for i in range(self.vocab_size):
                token = self._tok.id_to_token(i)  # decode's lookup: added tokens first
                try:
                    table.append(bytes(to_byte[c] for c in token))
                except KeyError:
                    table.append(token.encode("utf-8"))
            self._bytes_table = tuple(table)
        return self._bytes_table

    def merges(self) -> list[str]:
        """BPE merges in rank order as 'left right' strings."""
        model: dict[str, Any] = json.loads(self._tok.to_str())["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"{self.source}: tokenizer model is {model.get('type')}, not BPE")
        # tokenizers writes merges as [left, right] pairs (newer) or "left right" (older).
        return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model.get("merges", [])]

    def gguf_fields(self) -> GGUFTokenizerFields:
        """The tokenizer in llama.cpp's GGUF form (what llama.cpp's GPT-2 converter writes)."""
        added = self._tok.get_added_tokens_decoder()
        types = []
        for i in range(self.vocab_size):
            if i in added:
                types.append(_CONTROL if added[i].special else _USER_DEFINED)
            else:
                types.append(_NORMAL)
        eos = self.eos_id
        return GGUFTokenizerFields(
            model="gpt2",
            pre="gpt-2",
            tokens=[self._id_to_token[i] for i in range(self.vocab_size)],
            token_types=types,
            merges=self.merges(),
            bos_id=eos,  # GPT-2 uses <|endoftext|> for both, as llama.cpp's converter does
            eos_id=eos,
        )


def _byte_level(bpe: models.BPE) -> _HFTokenizer:
    """GPT-2's pipeline around a BPE model: byte-level pre-tokenizer (with GPT-2's regex)."""
    tok = _HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (openai/gpt-2's bytes_to_unicode,
    reversed): the 188 printable bytes stand for themselves, the other 68 (controls,
    space, 0x7f-0xa0, 0xad) for U+0100 onwards in byte order ('Ġ' is the space)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    chars = {chr(b): b for b in printable}
    chars.update({chr(0x100 + n): b for n, b in enumerate(shifted)})
    return chars


def _guarded(source: str | Path, what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), with whatever `tokenizers` raises (a plain Exception, or
    a Rust panic: PanicException, a BaseException) as a ValueError naming the file.
    KeyboardInterrupt, SystemExit and MemoryError pass through."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        raise ValueError(f"{source}: {what}: {type(e).__name__}: {e}") from None


def _read_tokenizer_json(path: Path) -> str:
    """tokenizer.json's text, after checking what it asks the tokenizer to do."""
    size = path.stat().st_size
    if size > MAX_TOKENIZER_JSON_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, more than {MAX_TOKENIZER_JSON_BYTES:,}")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_TOKENIZER_JSON_BYTES + 1)
    if len(raw) > MAX_TOKENIZER_JSON_BYTES:
        raise ValueError(f"{path}: more than {MAX_TOKENIZER_JSON_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
        spec = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(
            f"{path}: cannot read tokenizer: not JSON: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    _check_depth(spec, path)
    _check_normalizer(spec.get("normalizer"), path)
    added = spec.get("added_tokens") or []
    if not isinstance(added, list):
        raise ValueError(f"{path}: added_tokens must be a list")
    for t in added:
        content = t.get("content") if isinstance(t, dict) else None
        if not isinstance(content, str):
            raise ValueError(f"{path}: an added token has no string content: {str(t)[:80]!r}")
        _check_special_token(content, path)
    return text


def _check_depth(spec: object, path: Path) -> None:
    """Nesting of at most MAX_JSON_DEPTH (iterative: no recursion to exhaust)."""
    stack = [(spec, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(x, dict):
            stack.extend((v, depth + 1) for v in x.values() if isinstance(v, dict | list))
        elif isinstance(x, list):
            stack.extend((v, depth + 1) for v in x if isinstance(v, dict | list))


def _check_normalizer(normalizer: object, path: Path) -> None:
    """At most MAX_NORMALIZER_STEPS steps, and Replace steps that cannot grow the
    text more than MAX_NORMALIZER_GROWTH times (each may multiply it by its
    content's length: nested Replaces abort the process on a failed allocation).
    A pattern that can match the empty string (String "", a regex such as "a*" or
    "(?=a)") inserts the content between every two characters, a growth of its length
    plus one; any regex is counted so, since which ones match nothing is not decided here."""
    steps, growth = 0, 1
    stack = [normalizer]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        if not isinstance(n, dict):
            raise ValueError(f"{path}: a normalizer must be an object, got {str(n)[:80]!r}")
        steps += 1
        if steps > MAX_NORMALIZER_STEPS:
            raise ValueError(f"{path}: more than {MAX_NORMALIZER_STEPS} normalizer steps")
        if n.get("type") == "Sequence":
            inner = n.get("normalizers")
            if not isinstance(inner, list):
                raise ValueError(f"{path}: a Sequence normalizer needs a list of normalizers")
            stack.extend(inner)
        elif n.get("type") == "Replace":
            content = n.get("content")
            size = len(content) if isinstance(content, str) else 1
            pattern = n.get("pattern")
            literal = pattern.get("String") if isinstance(pattern, dict) else None
            if size and not (isinstance(literal, str) and literal):
                size += 1  # an empty match: the content between every two characters
            growth *= max(1, size)
            if growth > MAX_NORMALIZER_GROWTH:
                raise ValueError(
                    f"{path}: its Replace normalizers can grow a text {growth}x "
                    f"(at most {MAX_NORMALIZER_GROWTH}x is taken)"
                )


def _check_special_token(token: str, path: str | Path) -> None:
    if len(token) > MAX_SPECIAL_TOKEN_CHARS:
        raise ValueError(
            f"{path}: a special token of {len(token):,} characters "
            f"(at most {MAX_SPECIAL_TOKEN_CHARS} are taken): {token[:40]!r}..."
        )
