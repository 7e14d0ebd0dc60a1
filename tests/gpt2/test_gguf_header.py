"""gpt2.gguf_header: the same fields and tensor infos as gguf.GGUFReader on every fixture
GGUF (and a 50,257-token tokenizer), and a ValueError, never another exception, on
truncated or corrupt headers."""

from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from gpt2 import gguf_header
from gpt2.files import ModelFile
from gpt2.gguf_header import MAX_HEADER_ITEMS, GGUFHeader, read_gguf_header
from gpt2.tokenizer import EOS_TOKEN, Tokenizer

V = gguf.GGUFValueType


def parse(path: Path) -> GGUFHeader:
    with ModelFile(path) as f:
        return read_gguf_header(f)


def assert_same_as_gguf(path: Path, theirs: gguf.GGUFReader | None = None) -> GGUFHeader:
    """Every metadata field (types and value), tensor info and the data offset agree with
    gguf.GGUFReader's; on failure, the key or tensor and both values."""
    ours = parse(path)
    theirs = theirs or gguf.GGUFReader(path)
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]  # its header pseudo-keys
    assert list(ours.fields) == keys, path
    for key in keys:
        a, b = ours.get_field(key), theirs.get_field(key)
        if b.types == [V.ARRAY]:  # gguf gives no item type for an empty array; we do
            assert a.types[0] == V.ARRAY and a.contents() == [], key
        else:
            assert a.types == b.types, f"{key}: {a.types} != {b.types}"
        got, want = a.contents(), b.contents()
        if a.types[:2] == [V.ARRAY, V.ARRAY]:  # gguf flattens arrays of arrays; we do not
            got = flatten(got)
        assert type(got) is type(want), f"{key}: {type(got)} != {type(want)}"
        assert got == want, f"{key}: {got!r:.200} != {want!r:.200}"
    assert ours.get_field("no.such.key") is None
    assert len(ours.tensors) == len(theirs.tensors), path
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        want = (b.name, b.tensor_type, tuple(int(x) for x in b.shape), int(b.n_bytes))
        assert (a.name, a.tensor_type, a.shape, a.n_bytes) == want, a.name
        assert a.data_offset == int(b.data_offset), a.name
    assert ours.data_offset == theirs.data_offset, path
    assert ours.alignment == theirs.alignment, path
    return ours


def flatten(x: list) -> list:
    return [y for v in x for y in (flatten(v) if isinstance(v, list) else [v])]


# --- files ------------------------------------------------------------------------------


def synthetic_vocab(n: int) -> tuple[list[str], list[str]]:
    """GPT-2's shape of vocabulary: the 256 byte-level characters, then byte pairs (each a
    merge), then <|endoftext|>; `n` tokens and n - 257 merges."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens, merges = list(alphabet), []
    for a in alphabet:
        for b in alphabet:
            if len(tokens) == n - 1:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    return [*tokens, EOS_TOKEN], merges


def write_tokenizer_gguf(path: Path, n_vocab: int, **writer_args) -> Path:
    """A GGUF with llama.cpp's tokenizer keys for an `n_vocab` vocabulary, metadata of every
    value type (nested and empty arrays among them) and two small tensors."""
    tokens, merges = synthetic_vocab(n_vocab)
    types = [int(gguf.TokenType.NORMAL)] * (len(tokens) - 1) + [int(gguf.TokenType.CONTROL)]
    w = gguf.GGUFWriter(str(path), "gpt2", **writer_args)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_name("naïve ✓ model")  # multi-byte UTF-8
    for key, value, vtype in [
        ("t.u8", 200, V.UINT8),
        ("t.i8", -5, V.INT8),
        ("t.u16", 60000, V.UINT16),
        ("t.i16", -30000, V.INT16),
        ("t.u32", 4_000_000_000, V.UINT32),
        ("t.i32", -2_000_000_000, V.INT32),
        ("t.f32", 1e-5, V.FLOAT32),
        ("t.bool", True, V.BOOL),
        ("t.u64", 2**63 + 5, V.UINT64),
        ("t.i64", -(2**62), V.INT64),
        ("t.f64", 0.1, V.FLOAT64),
        ("t.empty_string", "", V.STRING),
    ]:
        w.add_key_value(key, value, vtype)
    w.add_array("t.floats", [0.5, -1.25, 3.0])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.empty", [])
    w.add_array("t.nested", [[1, 2, 3], [4], [5, 6]])
    w.add_array("t.nested_strings", [["a", "bc"], ["é"]])
    w.add_tensor("a", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.ones((2, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def big_tokenizer_gguf(tmp_path_factory) -> Path:
    """GPT-2's tokenizer size: 50,257 tokens, 50,000 merges (a ~1.4 MB header)."""
    return write_tokenizer_gguf(tmp_path_factory.mktemp("gguf") / "big.gguf", 50_257)


@pytest.fixture(scope="module")
def big_gguf_reader(big_tokenizer_gguf) -> gguf.GGUFReader:
    return gguf.GGUFReader(big_tokenizer_gguf)  # ~2 s: read once


def summary(h: GGUFHeader) -> tuple:
    """What a header says, comparable with ==."""
    fields = {k: (f.types, f.contents()) for k, f in h.fields.items()}
    return fields, h.tensors, h.data_offset, h.alignment, h.version


def fixture_ggufs(tiny_models, ruby_outputs) -> list[Path]:
    paths = [p for m in tiny_models for p in (m.gguf_ruby, m.gguf_llama)]
    return paths + sorted(ruby_outputs.glob("*.gguf"))


# --- agreement with gguf.GGUFReader -------------------------------------------------------


def test_fixture_ggufs_agree_with_gguf(tiny_models, ruby_outputs):
    for path in fixture_ggufs(tiny_models, ruby_outputs):
        assert_same_as_gguf(path)


def test_big_tokenizer_agrees_with_gguf(big_tokenizer_gguf, big_gguf_reader):
    header = assert_same_as_gguf(big_tokenizer_gguf, big_gguf_reader)
    assert len(header.get_field("tokenizer.ggml.tokens").contents()) == 50_257
    assert len(header.get_field("tokenizer.ggml.merges").contents()) == 50_000


def test_big_tokenizer_same_from_either_reader(big_tokenizer_gguf, big_gguf_reader):
    """Tokenizer.from_gguf takes either reader and builds the same tokenizer; the vocabulary
    it keeps is the one `tokenizers` holds."""
    path = big_tokenizer_gguf
    ours = Tokenizer.from_gguf(parse(path), path)
    theirs = Tokenizer.from_gguf(big_gguf_reader, path)
    assert ours.vocab_size == theirs.vocab_size == 50_257
    assert ours._id_to_token == theirs._id_to_token
    vocab = ours._tok.get_vocab(with_added_tokens=True)
    assert ours._id_to_token == {i: t for t, i in vocab.items()}
    text = "Hello, world! naïve <|endoftext|> 12345"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.eos_id == 50_256


@pytest.mark.parametrize("first_read", [40, 1000, 100_000])
def test_header_read_in_growing_chunks(big_tokenizer_gguf, tiny_model, monkeypatch, first_read):
    """Headers longer than the first read grow the buffer (a string or an array straddling
    its end included) and give the same header as one read (checked against gguf above)."""
    for path in (big_tokenizer_gguf, tiny_model.gguf_llama):
        whole = summary(parse(path))
        with monkeypatch.context() as m:
            m.setattr(gguf_header, "FIRST_READ", first_read)
            assert summary(parse(path)) == whole, path


def test_big_endian_and_custom_alignment(tmp_path):
    path = tmp_path / "be.gguf"
    write_tokenizer_gguf(path, 400, endianess=gguf.GGUFEndian.BIG)
    assert parse(path).byte_order == ">"
    assert_same_as_gguf(path)
    path = tmp_path / "aligned.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_custom_alignment(256)
    w.add_tensor("a", np.ones(7, np.float32))
    w.add_tensor("b", np.ones(3, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = assert_same_as_gguf(path)
    assert h.alignment == 256 and h.data_offset % 256 == 0
    assert [t.data_offset % 256 for t in h.tensors] == [0, 0]


def test_loader_reads_only_the_header(big_tokenizer_gguf, monkeypatch):
    """One pread of FIRST_READ bytes at most for a 1.4 MB header (no second parse)."""
    reads = []
    real = ModelFile.pread

    def spy(self, offset, n_bytes, what="data"):
        reads.append((offset, n_bytes))
        return real(self, offset, n_bytes, what)

    monkeypatch.setattr(ModelFile, "pread", spy)
    header = parse(big_tokenizer_gguf)
    size = big_tokenizer_gguf.stat().st_size
    assert reads == [(0, min(size, gguf_header.FIRST_READ))]
    assert header.data_offset > 1_000_000


# --- corrupt and truncated headers ----------------------------------------------------------


def expect_value_error(path: Path, *fragments: str) -> str:
    with pytest.raises(ValueError) as err:
        parse(path)
    message = str(err.value)
    for f in (str(path), *fragments):
        assert f in message, f"{f!r} not in {message!r}"
    return message


def test_truncated_anywhere_in_the_header_says_truncated(tiny_model, tmp_path):
    data = tiny_model.gguf_llama.read_bytes()
    end = gguf.GGUFReader(tiny_model.gguf_llama).data_offset
    path = tmp_path / "cut.gguf"
    cuts = sorted(set(range(0, 64)) | set(random.Random(0).sample(range(64, end), 200)))
    for cut in cuts:
        path.write_bytes(data[:cut])
        expect_value_error(path, "truncated")


def test_random_flips_and_cuts_raise_value_error_only(tiny_models, tmp_path):
    """1-4 random byte changes in the header region, sometimes a cut too: the parse gives
    a header whose values can all be read, or a ValueError. Where gguf.GGUFReader also
    reads the file, both agree on the tensor infos."""
    rng = random.Random(1234)
    sources = [(p, p.read_bytes()) for m in tiny_models for p in (m.gguf_ruby, m.gguf_llama)]
    path = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    for i in range(600):
        src, data = sources[i % len(sources)]
        end = gguf.GGUFReader(src).data_offset if i < len(sources) else None
        b = bytearray(data)
        header_end = end or min(len(b), 4096)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(min(header_end, len(b)))
            b[pos] = rng.randrange(256) if rng.random() < 0.5 else b[pos] ^ (1 << rng.randrange(8))
        if rng.random() < 0.3:
            del b[rng.randrange(len(b)) :]
        path.write_bytes(bytes(b))
        try:
            header = parse(path)
        except ValueError as e:
            assert str(path) in str(e), str(e)
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        for key, f in header.fields.items():
            try:
                f.contents()
            except ValueError as e:  # a value that is not UTF-8, refused when read
                assert "not UTF-8" in str(e), key
        try:
            theirs = gguf.GGUFReader(path)
        except Exception:  # noqa: BLE001 - gguf raises many types on bad bytes
            continue
        assert [t.name for t in header.tensors] == [t.name for t in theirs.tensors]
        assert header.data_offset == theirs.data_offset
    assert outcomes["ok"] > 20 and outcomes["error"] > 100, outcomes


def raw_header(version: int = 3, n_tensors: int = 0, n_kv: int = 0, kvs: bytes = b"") -> bytes:
    """Magic, version and counts, then `kvs` (hand-made metadata)."""
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs


def gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def test_versions_other_than_2_and_3_refused(tmp_path):
    path = tmp_path / "v.gguf"
    for version in (0, 1, 4, 0xFFFF):
        path.write_bytes(raw_header(version) + bytes(64))
        expect_value_error(path, f"GGUF version {version} is not supported")
    for version in (2, 3):
        path.write_bytes(raw_header(version) + bytes(64))
        assert parse(path).version == version


def test_unknown_value_type_is_corrupt(tmp_path):
    path = tmp_path / "t.gguf"
    for kv in (
        gguf_string(b"k") + struct.pack("<I", 13) + bytes(8),  # type 13: unknown
        gguf_string(b"k") + struct.pack("<IIQ", 9, 99, 1) + bytes(8),  # array of type 99
    ):
        path.write_bytes(raw_header(n_kv=1, kvs=kv) + bytes(64))
        expect_value_error(path, "corrupt GGUF header", "unknown value type")


def test_duplicate_key_and_bad_alignment_are_corrupt(tmp_path):
    path = tmp_path / "t.gguf"
    kv = gguf_string(b"general.alignment") + struct.pack("<II", 4, 48)
    path.write_bytes(raw_header(n_kv=1, kvs=kv) + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "alignment 48 is not a power of two")
    kv = gguf_string(b"general.alignment") + struct.pack("<IQ", 10, 64)
    path.write_bytes(raw_header(n_kv=1, kvs=kv) + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "general.alignment is UINT64")
    kv = gguf_string(b"k") + struct.pack("<II", 4, 1)
    path.write_bytes(raw_header(n_kv=2, kvs=kv + kv) + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "metadata key k appears twice")


def test_not_utf8(tmp_path):
    """A key or tensor name that is not UTF-8 makes the header corrupt; a string value is
    refused when it is read (gguf.GGUFReader decodes values lazily too)."""
    path = tmp_path / "t.gguf"
    kv = gguf_string(b"k\xff") + struct.pack("<II", 4, 1)
    path.write_bytes(raw_header(n_kv=1, kvs=kv) + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "not UTF-8")
    kv = gguf_string(b"general.name") + struct.pack("<I", 8) + gguf_string(b"\xc3(")
    kv += gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2)
    kv += gguf_string(b"ok") + gguf_string(b"\xe2\x82")
    path.write_bytes(raw_header(n_kv=2, kvs=kv) + bytes(64))
    header = parse(path)
    for key in ("general.name", "tokenizer.ggml.tokens"):
        with pytest.raises(ValueError, match=f"metadata {key}: .*not UTF-8"):
            header.get_field(key).contents()


def test_tensor_infos_checked(tmp_path):
    path = tmp_path / "t.gguf"
    info = gguf_string(b"w") + struct.pack("<I", 5) + bytes(40) + struct.pack("<IQ", 0, 0)
    path.write_bytes(raw_header(n_tensors=1) + info + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "tensor w has 5 dimensions")
    info = gguf_string(b"w") + struct.pack("<IQIQ", 1, 4, 1000, 0)
    path.write_bytes(raw_header(n_tensors=1) + info + bytes(64))
    expect_value_error(path, "corrupt GGUF header", "tensor w has unknown ggml type 1000")


def test_corrupt_counts_in_a_sparse_file_cost_nothing(tmp_path):
    """A huge count or length in a file with a 4 GiB hole: refused from the bytes the
    header may have (MAX_GGUF_HEADER), before anything is allocated or read for it."""
    path = tmp_path / "sparse.gguf"
    big = 2**40
    key = gguf_string(b"k")
    cases = [
        (raw_header(n_tensors=big), "tensor_count"),
        (raw_header(n_kv=big), "kv_count"),
        (raw_header(n_kv=1, kvs=key + struct.pack("<IQ", 8, big)), "a string of k"),
        (raw_header(n_kv=1, kvs=key + struct.pack("<IIQ", 9, 8, big)), "length of k"),
        (raw_header(n_kv=1, kvs=key + struct.pack("<IIQ", 9, 12, big)), "length of k"),
        (raw_header(n_kv=1, kvs=key + struct.pack("<IIQ", 9, 9, big)), "length of k"),
        (raw_header(n_kv=1, kvs=struct.pack("<Q", 2**63)), "a metadata key"),
    ]
    for data, fragment in cases:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.truncate(4 * 2**30)
        tracemalloc.start()
        try:
            message = expect_value_error(path, fragment)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "more than the 67108864" in message, message
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB for: {message}"


def test_zeros_in_a_hole_are_bounded_items(tmp_path):
    """An array of empty strings (zeros, as a hole reads) stops at MAX_HEADER_ITEMS."""
    path = tmp_path / "zeros.gguf"
    with open(path, "wb") as fh:
        fh.write(raw_header(n_kv=1, kvs=gguf_string(b"k") + struct.pack("<IIQ", 9, 8, 10**6)))
        fh.truncate(64 * 2**20)
    expect_value_error(path, "corrupt GGUF header", f"more than {MAX_HEADER_ITEMS} metadata items")


def test_deep_nesting_refused(tmp_path):
    path = tmp_path / "deep.gguf"
    kv = gguf_string(b"k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 20 + bytes(64)
    path.write_bytes(raw_header(n_kv=1, kvs=kv))
    expect_value_error(path, "corrupt GGUF header", "nested deeper")
