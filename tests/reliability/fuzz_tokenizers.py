"""Fuzz family "tokenizer bombs": tokenizer.json files built from the shapes that hurt.

Run as a child (tests/reliability/test_fuzz.py does it):
``python -m tests.reliability.fuzz_tokenizers --repro FILE --examples N --seed S --hf-dir D``.

Each example takes the tiny model's tokenizer.json and applies 1-3 of: a normalizer tree
(Sequences nested up to a few levels, Replace steps whose content is longer than their
pattern, empty and regex patterns, Unicode normalizers, Prepend), a chain of up to 40
copies of one growing Replace (the nested-Replace bomb that aborted the process), a Split
pre-tokenizer with a backtracking or invalid regex, added tokens of up to 200,000
characters (past the 1,024 taken), JSON nested up to 100,000 deep in some field, a field
of the wrong type. The folder is loaded with `gpt2.tokenizer.Tokenizer.from_folder`, and
what loads encodes (and decodes) texts of up to 20,000 characters.

Allowed outcomes: it loads and each encode gives ids in the vocabulary, or a `ValueError`
whose message names the file. Anything else fails the example (exit 1, reproducer on
disk); an abort or a crash kills the child; a case that takes more than CASE_SECONDS is
ended by faulthandler's watchdog (it needs no GIL, so it also ends a loop inside Rust)
with exit code 1; memory is bounded by the parent's RLIMIT_AS.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import time
from collections import Counter
from pathlib import Path

from hypothesis import given, seed
from hypothesis import strategies as st

from gpt2.tokenizer import Tokenizer

from .child import Repro, fuzz_settings, summary

CASE_SECONDS = 30

# patterns that match often, never, everywhere (empty) or backtrack; contents that grow
PATTERNS = ["a", "aa", " ", "", "Ġ", "<|endoftext|>", "é"]
REGEXES = ["a", "a*", "", "(?=a)", "(a|aa)+$", "(a+)+b", "(.*a){12}", "\\s*", "(", "[z-a]"]
CONTENTS = ["", "a", "aa", "aaaa", "aaaaaaaa", " ", "xyz", "é" * 3, "\u0000"]
SPLIT_REGEXES = [
    "(a|aa)+$",
    "(a+)+$",
    "(a*)*b",
    "(\\w+\\s?)*$",
    "(.*a){20}",
    "",
    "a*",
    "(",
    "'s|'t| ?\\p{L}+| ?\\p{N}+",
]
BEHAVIORS = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]
SPECIAL_LENGTHS = [1, 13, 1024, 1025, 5_000, 200_000]
DEPTHS = [8, 63, 64, 65, 500, 5_000, 100_000]
TEXT_LENGTHS = [0, 16, 2_000, 20_000]


def replace(pattern: str, content: str, regex: bool) -> dict:
    return {
        "type": "Replace",
        "pattern": {"Regex" if regex else "String": pattern},
        "content": content,
    }


LEAF = st.one_of(
    st.builds(replace, st.sampled_from(PATTERNS), st.sampled_from(CONTENTS), st.just(False)),
    st.builds(replace, st.sampled_from(REGEXES), st.sampled_from(CONTENTS), st.just(True)),
    st.sampled_from(
        [
            {"type": "NFKC"},
            {"type": "NFD"},
            {"type": "NFKD"},
            {"type": "Lowercase"},
            {"type": "StripAccents"},
            {"type": "Strip", "strip_left": True, "strip_right": True},
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Prepend", "prepend": "▁" * 64},
        ]
    ),
)
NORMALIZER = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, min_size=0, max_size=6).map(
        lambda steps: {"type": "Sequence", "normalizers": steps}
    ),
    max_leaves=40,
)
# one growing Replace repeated: the bomb of issue 15 item 7
CHAIN = st.builds(
    lambda step, n: {"type": "Sequence", "normalizers": [step] * n},
    st.builds(replace, st.sampled_from(PATTERNS), st.sampled_from(CONTENTS), st.booleans()),
    st.integers(1, 40),
)
SPLIT = st.builds(
    lambda regex, behavior, invert, then_bytes: (
        {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": regex},
                    "behavior": behavior,
                    "invert": invert,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        }
        if then_bytes
        else {"type": "Split", "pattern": {"Regex": regex}, "behavior": behavior, "invert": invert}
    ),
    st.sampled_from(SPLIT_REGEXES),
    st.sampled_from(BEHAVIORS),
    st.booleans(),
    st.booleans(),
)
# the bombs twice, so that most examples reach encode (wrong types and deep JSON stop at load)
MUTATION = st.one_of(
    st.tuples(st.just("normalizer"), NORMALIZER),
    st.tuples(st.just("normalizer"), NORMALIZER),
    st.tuples(st.just("chain"), CHAIN),
    st.tuples(st.just("chain"), CHAIN),
    st.tuples(st.just("split"), SPLIT),
    st.tuples(st.just("split"), SPLIT),
    st.tuples(
        st.just("special"),
        st.lists(
            st.tuples(st.sampled_from(SPECIAL_LENGTHS), st.booleans()), min_size=1, max_size=3
        ),
    ),
    st.tuples(
        st.just("deep"),
        st.tuples(
            st.sampled_from(DEPTHS),
            st.sampled_from(["normalizer", "pre_tokenizer", "post_processor", "decoder", "extra"]),
        ),
    ),
    st.tuples(
        st.just("retype"),
        st.tuples(
            st.sampled_from(["normalizer", "pre_tokenizer", "added_tokens", "model", "decoder"]),
            st.sampled_from([None, 7, "x", [], {}, [1, 2], {"type": "Nope"}, True]),
        ),
    ),
)
TEXT = st.tuples(
    st.sampled_from(TEXT_LENGTHS), st.sampled_from(["a", "ab", "é ", " ", "aaa<|endoftext|>"])
)


def build(base: dict, muts: list) -> str:
    """The mutated tokenizer.json's text (deep nesting written as text: json.dumps
    recurses, and 100,000 levels pass its limit)."""
    spec = copy.deepcopy(base)
    deep: list[tuple[int, str]] = []
    # wrong types and deep nesting last: the other mutations expect the base's shapes
    for kind, value in sorted(muts, key=lambda m: m[0] in ("retype", "deep")):
        if kind in ("normalizer", "chain"):
            spec["normalizer"] = value
        elif kind == "split":
            spec["pre_tokenizer"] = value
        elif kind == "special":
            added = spec.setdefault("added_tokens", [])
            vocab_size = len(spec["model"]["vocab"]) + len(added)
            for i, (n, normalized) in enumerate(value):
                added.append(
                    {"id": vocab_size + i, "content": "<" + "x" * n + f"{i}>", "single_word": False,
                     "lstrip": False, "rstrip": False, "normalized": normalized, "special": True}
                )  # fmt: skip
                spec["model"]["vocab"]["<" + "x" * n + f"{i}>"] = vocab_size + i
        elif kind == "deep":
            deep.append(value)
            spec[value[1]] = "@DEEP@"
        elif kind == "retype":
            spec[value[0]] = value[1]
    text = json.dumps(spec)
    for depth, _ in deep:
        text = text.replace('"@DEEP@"', "[" * depth + "]" * depth, 1)
    return text


def check(folder: Path, texts: list[str], outcomes: Counter) -> None:
    """Loads and encodes, or a ValueError that names the file; anything else raises."""
    where = str(folder)
    try:
        tok = Tokenizer.from_folder(folder)
    except ValueError as e:
        assert where in str(e), f"the ValueError does not name the file: {e}"
        outcomes["refused at load"] += 1
        return
    for text in texts:
        try:
            ids = tok.encode(text)
        except ValueError as e:
            assert where in str(e), f"the ValueError does not name the file: {e}"
            outcomes["refused at encode"] += 1
            return
        assert all(0 <= i < tok.vocab_size for i in ids), "an id outside the vocabulary"
        try:
            tok.decode(ids)
        except ValueError as e:
            assert where in str(e), f"the ValueError does not name the file: {e}"
            outcomes["refused at decode"] += 1
            return
    outcomes["loaded and encoded"] += 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repro", required=True)
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf-dir", type=Path, required=True)
    a = ap.parse_args()
    repro = Repro(a.repro)
    base = json.loads((a.hf_dir / "tokenizer.json").read_text())
    folder = Path(a.repro + ".dir")
    folder.mkdir(exist_ok=True)
    outcomes: Counter = Counter()
    slowest = 0.0
    t0 = time.perf_counter()

    @fuzz_settings(a.examples)
    @seed(a.seed)
    @given(st.lists(MUTATION, min_size=1, max_size=3), st.lists(TEXT, min_size=1, max_size=3))
    def example(muts, text_specs) -> None:
        nonlocal slowest
        (folder / "tokenizer.json").write_text(build(base, muts))
        texts = [(unit * n)[:n] + "b" for n, unit in text_specs]
        repro.write(
            f"# tokenizer fuzz, seed {a.seed}, example {outcomes.total()}\n"
            f"mutations={str(muts)[:4000]}\ntexts (length, unit)={text_specs!r}\n"
            f"folder={folder}\n"
            'replay: python -c "from gpt2.tokenizer import Tokenizer; '
            f"Tokenizer.from_folder('{folder}').encode('a' * 2000)\"\n"
        )
        faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
        t = time.perf_counter()
        try:
            check(folder, texts, outcomes)
        finally:
            faulthandler.cancel_dump_traceback_later()
        slowest = max(slowest, time.perf_counter() - t)

    example()
    summary(
        family="tokenizers",
        seed=a.seed,
        examples=outcomes.total(),
        outcomes=dict(sorted(outcomes.items())),
        slowest_case_s=round(slowest, 2),
        seconds=round(time.perf_counter() - t0, 1),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
