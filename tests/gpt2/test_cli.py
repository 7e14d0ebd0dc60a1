"""The `gpt2` command, run in-process through `gpt2.cli.main` on the tiny fixture models.

Every command that runs ggml passes `--threads 1`: on a busy 2-core machine ggml's
spinning worker threads can make a tiny model hundreds of times slower.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gpt2
import tinynn
from gpt2.cli import main

T1 = ["--threads", "1"]
GENERATE_OPTIONS = [
    "--model",
    "--device",
    "--dtype",
    "--threads",
    "--max-new-tokens",
    "--temperature",
    "--top-k",
    "--top-p",
    "--seed",
    "--stop",
    "--engine",
    "--stream",
    "--no-stream",
    "--timing",
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, model: Path, prompt: str, *extra: str) -> str:
    code, out, err = run(capsys, "generate", prompt, "--model", model, *T1, *extra)
    assert code == 0, err
    return out


# -- help and version ------------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert gpt2.__version__ in out


def test_generate_help_lists_every_option_with_defaults(capsys):
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0
    missing = [o for o in GENERATE_OPTIONS if o not in out]
    assert not missing, f"generate --help lacks {missing}:\n{out}"
    # defaults are shown: the library's (gpt2.params), greedy
    assert "(default: 0.0)" in out and "(default: 50)" in out


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for cmd in ("generate", "logits", "parity", "convert", "inspect", "bench", "serve"):
        assert cmd in out


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "generate", "hi", "--engine", "nope")
    assert code == 2
    assert "--engine" in err


# -- generate ----------------------------------------------------------------------------------


def test_generate_same_seed_same_text(capsys, tiny_model):
    args = ("--seed", "7", "--max-new-tokens", "12")
    first = generate(capsys, tiny_model.gguf_llama, "The quick brown", *args)
    second = generate(capsys, tiny_model.gguf_llama, "The quick brown", *args)
    assert first == second
    assert first.startswith("The quick brown")


def test_generate_greedy_stream_equals_no_stream(capsys, tiny_model):
    args = ("--temperature", "0", "--max-new-tokens", "20")
    streamed = generate(capsys, tiny_model.gguf_llama, "Once upon a time", *args, "--stream")
    whole = generate(capsys, tiny_model.gguf_llama, "Once upon a time", *args, "--no-stream")
    assert streamed == whole
    assert len(streamed) > len("Once upon a time\n")


def test_generate_greedy_same_text_on_every_engine(capsys, tiny_model):
    args = ("--temperature", "0", "--max-new-tokens", "10", "--no-stream")
    texts = {
        e: generate(capsys, tiny_model.gguf_llama, "The river", *args, "--engine", e)
        for e in ("fast", "full", "kv")
    }
    assert texts["full"] == texts["fast"] == texts["kv"], texts


def test_generate_stop_cuts_before_the_stop_string(capsys, tiny_model):
    prompt, args = "Once upon a time", ("--temperature", "0", "--max-new-tokens", "20")
    full = generate(capsys, tiny_model.gguf_llama, prompt, *args).removesuffix("\n")
    continuation = full[len(prompt) :]
    assert len(continuation) >= 6, f"greedy continuation too short to cut: {continuation!r}"
    stop = continuation[3:6]
    cut = generate(capsys, tiny_model.gguf_llama, prompt, *args, "--stop", stop)
    cut = cut.removesuffix("\n")
    expected = prompt + continuation[: continuation.index(stop)]
    assert cut == expected, f"stop {stop!r}: got {cut!r}, expected {expected!r}"


def test_generate_timing_goes_to_stderr(capsys, tiny_model):
    code, out, err = run(
        capsys, "generate", "Hello", "--model", tiny_model.gguf_llama, *T1,
        "--max-new-tokens", "5", "--timing", "--temperature", "0",
    )  # fmt: skip
    assert code == 0
    assert "ms/token" in err and "tokens/s" in err and "prefill" in err
    assert "timing" not in out


# -- logits + parity compare against the Ruby dumps -------------------------------------------


def test_logits_out_then_parity_compare(capsys, tmp_path, ruby_outputs):
    ids = (ruby_outputs / "model_a_prompt_ids.txt").read_text().strip()
    ours = tmp_path / "ours.txt"
    code, out, err = run(
        capsys, "logits", "--model", ruby_outputs / "model_a.gguf", "--ids", ids,
        "--engine", "full", "--device", "cpu", *T1, "--out", ours,
    )  # fmt: skip
    assert code == 0, err
    assert "argmax 234" in out  # the Ruby table: argmax 234 for model_a
    ref = ruby_outputs / "model_a_native.txt"
    code, out, _ = run(
        capsys, "parity", "compare", "--ours", ours, "--ref", ref, "--max-abs", "1e-3"
    )
    assert code == 0, out
    assert "PASS" in out
    code, out, _ = run(
        capsys, "parity", "compare", "--ours", ours, "--ref", ref, "--max-abs", "1e-9"
    )
    assert code == 1, out
    assert "FAIL" in out


@pytest.mark.parametrize("model", ["model_a", "model_b"])
@pytest.mark.parametrize(
    "engine,dump,max_abs", [("full", "ffi_full", "0"), ("kv", "ffi_kv", "5e-5")]
)
def test_ruby_dumps_through_the_cli(capsys, tmp_path, ruby_outputs, model, engine, dump, max_abs):
    """The port built as the Ruby graph, dumped and compared file to file:
    full-forward bit for bit, KV within 5e-5 (SPEC.md; see test_engines.py)."""
    ids = (ruby_outputs / f"{model}_prompt_ids.txt").read_text().strip()
    out = tmp_path / f"{model}_{engine}.txt"
    code, _, err = run(
        capsys, "logits", "--model", ruby_outputs / f"{model}.gguf", "--ids", ids,
        "--engine", engine, "--gelu", "ggml", "--device", "cpu", *T1, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    ref = ruby_outputs / f"{model}_{dump}.txt"
    code, report, _ = run(
        capsys, "parity", "compare", "--ours", out, "--ref", ref, "--max-abs", max_abs
    )
    assert code == 0, report


def test_logits_all_positions_npy_matches_reference(capsys, tmp_path, ruby_outputs):
    ids = (ruby_outputs / "model_a_prompt_ids.txt").read_text().strip()
    model = ruby_outputs / "model_a.gguf"
    files = {}
    for engine in ("reference", "fast", "kv"):
        files[engine] = tmp_path / f"{engine}.npy"
        code, _, err = run(
            capsys, "logits", "--model", model, "--ids", ids, "--engine", engine,
            "--device", "cpu", *T1, "--out", files[engine], "--all-positions",
        )  # fmt: skip
        assert code == 0, err
    ref = np.load(files["reference"])
    assert ref.shape == (8, 1000) and ref.dtype == np.float64
    for engine in ("fast", "kv"):
        got = np.load(files[engine])
        diff = np.abs(got - ref)
        where = np.unravel_index(diff.argmax(), diff.shape)
        assert diff.max() < 1e-4, f"{engine}: max-abs {diff.max():.3g} at {where} (tol 1e-4)"
        code, out, _ = run(
            capsys, "parity", "compare", "--ours", files[engine], "--ref", files["reference"],
            "--max-abs", "1e-4",
        )  # fmt: skip
        assert code == 0, out


def test_logits_text_uses_the_tokenizer(capsys, tiny_model):
    code, out, err = run(
        capsys, "logits", "--model", tiny_model.gguf_llama, "--text", "The quick brown fox",
        "--engine", "fast", "--device", "cpu", *T1,
    )  # fmt: skip
    assert code == 0, err
    n = len(tiny_model.tokenizer.encode("The quick brown fox"))
    assert f"shape ({n}, {tiny_model.config.vocab_size})" in out
    assert "top-5" in out


def test_parity_compare_unreadable_or_mismatched_exits_2(capsys, tmp_path, ruby_outputs):
    code, _, err = run(
        capsys, "parity", "compare", "--ours", tmp_path / "missing.txt",
        "--ref", ruby_outputs / "model_a_native.txt",
    )  # fmt: skip
    assert code == 2
    assert "gpt2: error:" in err and "missing.txt" in err
    code, _, err = run(
        capsys, "parity", "compare", "--ours", ruby_outputs / "model_a_native.txt",
        "--ref", ruby_outputs / "model_b_native.txt",
    )  # fmt: skip
    assert code == 2
    assert "shape mismatch" in err
    assert "Traceback" not in err


# -- parity hf ---------------------------------------------------------------------------------


def test_parity_hf_passes_on_tiny_model(capsys, tmp_path, tiny_model):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    rows_file = tmp_path / "rows.json"
    code, out, err = run(
        capsys, "parity", "hf", "--model", tiny_model.hf_dir, "--device", "cpu", *T1,
        "--prompts", "2", "--json", rows_file,
    )  # fmt: skip
    assert code == 0, out + err
    rows = json.loads(rows_file.read_text())["rows"]
    assert [r["engine"] for r in rows] == ["hf_f32", "reference", "fast_f32", "full", "kv"]
    assert all(r["passed"] for r in rows), out
    for r in rows:
        assert r["argmax_equal"] == r["positions"] == 2 * 16
    ref_row = rows[1]
    assert ref_row["max_abs"] < 1e-4, f"reference vs HF f64: {ref_row['max_abs']:.3g} (tol 1e-4)"
    assert out.count("PASS") == 5


# -- convert, inspect --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_convert_then_inspect(capsys, tmp_path, tiny_model, dtype):
    out_file = tmp_path / f"tiny_{dtype}.gguf"
    code, out, err = run(capsys, "convert", tiny_model.hf_dir, out_file, "--dtype", dtype)
    assert code == 0, err
    assert out_file.is_file()
    assert "F32" in out and dtype.upper() in out

    code, out, err = run(capsys, "inspect", out_file, "--json")
    assert code == 0, err
    d = json.loads(out)
    cfg = tiny_model.config
    assert d["layout"] == "gguf-llama"
    assert d["architecture"]["n_layer"] == cfg.n_layer
    assert d["architecture"]["n_embd"] == cfg.n_embd
    assert d["architecture"]["d_head"] == cfg.d_head
    assert d["parameters"] == sum(t.size for t in tiny_model.weights.tensors.values())
    assert set(d["tensors"]["by_dtype"]) == {"F32", dtype.upper()}
    assert d["tensors"]["bytes"] < out_file.stat().st_size == d["file_size"]
    assert d["tokenizer"] == {
        "present": True,
        "vocab_size": cfg.vocab_size,
        "eos_id": tiny_model.tokenizer.eos_id,
    }

    code, text, _ = run(capsys, "inspect", out_file)
    assert code == 0
    assert "gguf-llama" in text and f"n_layer={cfg.n_layer}" in text


def test_inspect_hf_folder_and_ruby_gguf(capsys, tiny_model, ruby_outputs):
    code, out, err = run(capsys, "inspect", tiny_model.hf_dir, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["layout"] == "hf" and d["tensor_prefix"] == "transformer."
    assert set(d["tensors"]["by_dtype"]) == {"F32"}
    code, out, err = run(capsys, "inspect", ruby_outputs / "model_a.gguf", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["layout"] == "gguf-ruby"
    assert d["architecture"]["vocab_size"] == 1000
    assert d["tokenizer"]["present"] is False


# -- errors ------------------------------------------------------------------------------------


def clean_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("gpt2: error: "), err
    assert "Traceback" not in err


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "hi", "--model", tmp_path / "nope.gguf")
    clean_error(code, err)
    assert "nope.gguf" in err


def test_empty_prompt(capsys, tiny_model):
    code, out, err = run(capsys, "generate", "", "--model", tiny_model.gguf_llama, *T1)
    clean_error(code, err)
    assert "empty" in err
    assert out == ""


def test_device_cuda_without_cuda(capsys, tiny_model):
    if tinynn.cuda_available():
        pytest.skip("CUDA is available here: this test is about its absence")
    code, _, err = run(
        capsys, "generate", "hi", "--model", tiny_model.gguf_llama, "--device", "cuda"
    )
    clean_error(code, err)
    assert "CUDA" in err


def test_hub_id_offline_says_how_to_fetch(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:  # huggingface_hub reads the variable at import; it may be imported already
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass
    code, _, err = run(capsys, "generate", "hi", "--model", "nonexistent-org/nonexistent-model")
    clean_error(code, err)
    assert "nonexistent-org/nonexistent-model" in err
    assert "download" in err


def test_text_without_tokenizer(capsys, ruby_outputs):
    code, _, err = run(
        capsys, "logits", "--model", ruby_outputs / "model_a.gguf", "--text", "hi", *T1
    )
    clean_error(code, err)
    assert "--ids" in err


def test_bench_is_delegated(capsys):
    pytest.importorskip("gpt2.bench")
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0
    assert "gpt2 bench" in out


def test_ctrl_c_exits_130_quietly(capsys, monkeypatch, ruby_outputs):
    import gpt2.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpt2.cli, "cmd_inspect", interrupted)
    code, out, err = run(capsys, "inspect", ruby_outputs / "model_a.gguf")
    assert code == 130
    assert out == "" and err == ""
