"""What a tokenizer file or a prompt may make the tokenizer do (issue 15, items 7, 8, 13).

- nested Replace normalizers grew the text until Rust's allocator aborted the process;
- a backtracking Split regex raised PanicException, a BaseException that escapes
  ``except Exception``;
- a special token cost about 80x its size (a 30 MB token: 2.4 GB);
- a 20 MB prompt cost 2.6 GB and 18 s of encoding before the context check.

Each case that could abort runs in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2.tokenizer import MAX_NORMALIZER_GROWTH, MAX_SPECIAL_TOKEN_CHARS, Tokenizer

from .child import ROOT, child_pythonpath


def _folder(tmp_path: Path, tiny_model, change) -> Path:
    spec = json.loads((tiny_model.hf_dir / "tokenizer.json").read_text())
    change(spec)
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


def _in_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": child_pythonpath(), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_nested_replace_normalizers_are_refused(tmp_path, tiny_model):
    def bomb(spec):  # each step doubles every "a": 2**24 times the text
        step = {"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}
        spec["normalizer"] = {"type": "Sequence", "normalizers": [step] * 24}

    folder = _folder(tmp_path, tiny_model, bomb)
    code = f"""
from gpt2.tokenizer import Tokenizer
try:
    Tokenizer.from_folder({str(folder)!r}).encode("a" * 4096)
except ValueError as e:
    print("REFUSED", e)
"""
    proc = _in_child(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and f"at most {MAX_NORMALIZER_GROWTH}x" in proc.stdout


@pytest.mark.parametrize("pattern", [{"String": ""}, {"Regex": ""}, {"Regex": "b*"}])
def test_replace_steps_with_an_empty_match_are_refused(tmp_path, tiny_model, pattern):
    """Found by the tokenizer-bombs fuzz family: a pattern that matches the empty string
    inserts its content between every two characters, so 18 Replace steps of content "a"
    grew a text 2**18 times (a hang, then an abort) while the bound counted 1x."""

    def bomb(spec):
        step = {"type": "Replace", "pattern": pattern, "content": "a"}
        spec["normalizer"] = {"type": "Sequence", "normalizers": [step] * 18}

    folder = _folder(tmp_path, tiny_model, bomb)
    code = f"""
from gpt2.tokenizer import Tokenizer
try:
    Tokenizer.from_folder({str(folder)!r}).encode("x" * 2000)
except ValueError as e:
    print("REFUSED", e)
"""
    proc = _in_child(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED" in proc.stdout and f"at most {MAX_NORMALIZER_GROWTH}x" in proc.stdout


def test_a_small_replace_normalizer_still_loads(tmp_path, tiny_model):
    def one(spec):
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": "x"}, "content": "yy"}

    tok = Tokenizer.from_folder(_folder(tmp_path, tiny_model, one))
    assert tok.encode("axb") == tok.encode("ayyb")


def test_a_panicking_split_regex_is_a_value_error(tmp_path, tiny_model):
    def backtracking(spec):
        spec["pre_tokenizer"] = {
            "type": "Split",
            "pattern": {"Regex": "(a|aa)+$"},
            "behavior": "Isolated",
            "invert": False,
        }

    tok = Tokenizer.from_folder(_folder(tmp_path, tiny_model, backtracking))
    with pytest.raises(ValueError, match="tokenizer.json: tokenizer failed while encoding"):
        tok.encode("a" * 50_000 + "b")  # onig's retry limit: a Rust panic
    assert tok.encode("ab")  # and the tokenizer still works


def test_a_huge_special_token_is_refused(tmp_path, tiny_model):
    def huge(spec):
        spec["added_tokens"].append(
            {"id": 10**6, "content": "<" + "x" * 30_000_000 + ">", "single_word": False,
             "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        )  # fmt: skip

    folder = _folder(tmp_path, tiny_model, huge)
    with pytest.raises(ValueError, match=f"at most {MAX_SPECIAL_TOKEN_CHARS} are taken"):
        Tokenizer.from_folder(folder)


def test_deeply_nested_tokenizer_json_is_a_value_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(
        '{"normalizer": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        Tokenizer.from_folder(tmp_path)


def test_a_prompt_far_past_the_context_is_refused_before_encoding(tiny_model):
    tok = tiny_model.tokenizer
    text = "hello world " * 1_700_000  # 20 MB
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="more than 64 tokens"):
        tok.encode(text, max_tokens=64)
    assert time.perf_counter() - t0 < 1.0  # it took 18 s (and 2.6 GB) to encode first
    ids = tok.encode("hello world", max_tokens=64)
    assert ids == tok.encode("hello world")
    long = "hello world " * 40  # fits the character bound, not the token bound
    assert len(tok.encode(long)) > 64
    with pytest.raises(ValueError, match="tokens, the context holds 64"):
        tok.encode(long, max_tokens=64)
