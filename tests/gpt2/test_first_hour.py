"""What a new user meets first: model(prompt), complete()'s positional arguments, the
stream object, repr(model), model.tokenizer, the py.typed marker, mistyped paths,
the offline hint and `gpt2 bench` with no options on a CPU (issue "The first hour")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import gpt2
import gpt2.api
import gpt2.resolve
from gpt2 import bench
from gpt2.api import TextStream
from gpt2.cli import main
from gpt2.config import GPT2Config
from gpt2.params import GenerationParams
from gpt2.resolve import resolve_model

REPO = Path(__file__).resolve().parents[2]
PROMPT = "the cat"
SAMPLED = {"temperature": 0.9, "top_k": 20, "seed": 3}


@pytest.fixture(scope="module")
def model(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=2) as m:
        yield m


# -- the model object -----------------------------------------------------------------
def test_call_is_complete(model):
    c = model(PROMPT, 6, **SAMPLED)
    assert isinstance(c, gpt2.api.Completion)
    assert c == model.complete(PROMPT, max_new_tokens=6, **SAMPLED)
    assert c.usage.completion_tokens == len(c.token_ids) <= 6


def test_complete_takes_generates_positional_arguments(model):
    # the same positional arguments as generate(prompt, max_new_tokens)
    assert model.complete(PROMPT, 5).text == model.generate(PROMPT, 5)
    assert model.complete(PROMPT, 5).token_ids == model.complete(PROMPT, max_new_tokens=5).token_ids
    # the older complete(prompt, params) still works, and params= as a keyword
    p = GenerationParams(max_new_tokens=4, **SAMPLED)
    assert model.complete(PROMPT, p) == model.complete(PROMPT, params=p)
    assert model.complete(PROMPT, p).token_ids == model.complete(PROMPT, 4, **SAMPLED).token_ids


def test_stream_holds_the_completion_once_exhausted(model):
    want = model.complete(PROMPT, 8, logprobs=2, **SAMPLED)
    stream = model.stream(PROMPT, 8, logprobs=2, **SAMPLED)
    assert isinstance(stream, TextStream)
    assert stream.completion is None  # nothing run yet
    pieces = list(stream)
    assert "".join(pieces) == want.text
    c = stream.completion
    assert c == want  # text, token ids, finish_reason, usage, log-probabilities
    assert c.finish_reason in ("stop", "length", "eos", "context")
    assert len(c.logprobs) == len(c.token_ids) and len(c.logprobs[0].top) == 2
    assert list(stream) == []  # exhausted stays exhausted
    assert stream.completion == want


def test_stream_iterates_as_before(model):
    # `for piece in model.stream(...)`, next(), and pieces as plain strings
    kw = {"max_new_tokens": 6, **SAMPLED}
    text = ""
    for piece in model.stream(PROMPT, **kw):
        assert isinstance(piece, str) and piece
        text += piece
    assert text == model.generate(PROMPT, **kw)
    stream = model.stream(PROMPT, **kw)
    assert next(stream) + "".join(stream) == text


def test_stream_close_frees_its_slot(tiny_model):
    with gpt2.load(tiny_model.gguf_llama, device="cpu", n_slots=1) as one:
        stream = one.stream(PROMPT, 20)
        next(stream)  # takes the only slot
        stream.close()
        assert stream.completion is None  # closed before its end
        assert list(stream) == []
        # the slot is free again: with it still taken, this would raise NoFreeSlotError
        assert one.complete(PROMPT, 3).usage.completion_tokens >= 1
        with one.stream(PROMPT, 20) as s:
            next(s)
        assert one.complete(PROMPT, 3).usage.completion_tokens >= 1


def test_repr_names_file_engine_device_dtype_and_decode_path(tiny_model, model):
    r = repr(model)
    assert str(tiny_model.gguf_llama) in r
    for part in ("engine='fast'", "device='cpu'", f"dtype='{model.engine.dtype}'"):
        assert part in r, r
    assert "decode='graphs'" in r and "decode_mode='auto'" in r  # no fused CUDA step on the CPU
    with gpt2.load(tiny_model.gguf_llama, device="cpu", engine="kv") as port:
        r = repr(port)
    assert "engine='kv'" in r and "dtype='f32'" in r and "decode=" not in r
    assert repr(port).endswith(", closed)")


def test_tokenizer_is_the_models(model):
    ids = model.tokenizer.encode(PROMPT)
    assert ids and model.tokenizer.decode(ids) == PROMPT
    assert model.generate(ids, 4) == model.complete(PROMPT, 4).token_ids


def test_py_typed_is_shipped():
    marker = REPO / "gpt2" / "py.typed"
    assert marker.is_file()
    # scikit-build-core packs every file of wheel.packages that git does not ignore
    try:
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", "-q", str(marker)], check=False
        ).returncode
    except FileNotFoundError:
        pytest.skip("no git here to ask whether py.typed is ignored")
    assert ignored == 1, "gpt2/py.typed is git-ignored: the wheel would leave it out"
    assert '"gpt2"' in (REPO / "pyproject.toml").read_text()


# -- where a model comes from -----------------------------------------------------------
@pytest.fixture
def no_hub(monkeypatch):
    def refuse(repo_id):
        raise AssertionError(f"{repo_id!r} was looked up on the hub")

    monkeypatch.setattr(gpt2.resolve, "_from_hub", refuse)


@pytest.mark.parametrize(
    "name",
    ["models/gpt2-f16", "gpt2-f16.gguf", "gpt2/model.safetensors", "a\\b", "../m", "my model"],
)
def test_a_mistyped_local_path_is_no_such_file(tmp_path, monkeypatch, no_hub, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # "models/gpt2-f16": its folder exists, the model not
    with pytest.raises(FileNotFoundError, match="no such file or folder") as e:
        resolve_model(name)
    assert "not looked up on the Hugging Face hub" in str(e.value)


def test_a_hub_id_is_still_looked_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    asked = []
    monkeypatch.setattr(gpt2.resolve, "_from_hub", lambda repo_id: asked.append(repo_id))
    resolve_model("openai-community/gpt2")
    resolve_model("distilgpt2")
    assert asked == ["openai-community/gpt2", "distilgpt2"]


def test_the_offline_hint_names_the_tokenizer_files(monkeypatch):
    import huggingface_hub

    def offline(*args, **kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError) as e:
        resolve_model("someone/some-model")
    msg = str(e.value)
    assert "hf download someone/some-model --include" in msg
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"):
        assert name in msg, msg
    assert "'model-*-of-*.safetensors'" in msg  # quoted for the shell


def test_cli_mistyped_model_path(tmp_path, monkeypatch, capsys, no_hub):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "hi", "--model", "gpt2-f16.gguf"]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder: gpt2-f16.gguf" in err and "Traceback" not in err


# -- gpt2 bench --------------------------------------------------------------------------
def _bench_args(argv, monkeypatch, cuda: bool):
    monkeypatch.setattr(gpt2.api, "cuda_available", lambda: cuda)
    p = bench.argparse.ArgumentParser()
    bench.add_arguments(p)
    return bench.resolve_defaults(p.parse_args(argv))


def test_bench_defaults_follow_the_device(monkeypatch):
    args = _bench_args([], monkeypatch, cuda=False)
    assert args.device == "cpu"
    assert (args.shapes, args.dtypes, args.workloads) == (["gpt2"], ["f32", "q8_0"], ["decode"])
    args = _bench_args([], monkeypatch, cuda=True)
    assert args.device == "cuda" and args.shapes == ["gpt2", "gpt2-xl"]
    assert args.workloads == ["decode", "prefill", "batch"]
    args = _bench_args(["--device", "cpu", "--workloads", "prefill"], monkeypatch, cuda=True)
    assert args.device == "cpu" and args.workloads == ["prefill"] and args.shapes == ["gpt2"]


def test_bench_with_no_options_runs_on_a_cpu(monkeypatch, capsys, tmp_path):
    pytest.importorskip("torch")
    # GPT-2 small's shape takes 25 s here: the CPU defaults, on a tiny shape
    monkeypatch.setitem(bench.SHAPES, "tiny", GPT2Config(n_layer=1, n_embd=32, n_head=2))
    monkeypatch.setitem(bench.DEVICE_DEFAULTS["cpu"], "shapes", ["tiny"])
    monkeypatch.setattr(gpt2.api, "cuda_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    assert "| tiny | f32 | decode b1 | ours |" in out
    assert "| tiny | q8_0 | decode b1 | ours |" in out


def test_bench_help_shows_every_default(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    options = out.split("options:")[1].split("\n  -")[2:]  # each option's block, --help left out
    assert len(options) >= 14
    for block in options:
        assert "(default:" in " ".join(block.split()), block
