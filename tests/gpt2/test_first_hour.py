"""What a new user meets first: model(prompt), complete()'s positional arguments, the
stream object, repr(model), model.tokenizer, the py.typed marker, mistyped paths,
the offline hint, `gpt2 bench` with no options on a CPU, a first text that does not
loop (the CLI's and the README's first examples), the embedded model's own id,
`gpt2 serve`'s start-up line and busy port, and ggml built once and quietly
(issue "The first hour")."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import gpt2
import gpt2.api
import gpt2.cli
import gpt2.resolve
from gpt2 import bench
from gpt2.api import EMBEDDED_MODEL_ID, TextStream, model_id
from gpt2.cli import GENERATE_DEFAULTS, main
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


# -- a first text worth reading ------------------------------------------------------------
# Looping, made precise: some run of LOOP_N tokens occurs LOOP_TIMES times or more in the
# generated ids (overlaps counted). The embedded model's greedy text does this within 100
# tokens for 6 of 7 ordinary prompts ("# the current time" four times).
LOOP_N, LOOP_TIMES = 6, 3
FIRST_PROMPT = "Once upon a time"


def loop_in(ids: list[int]) -> tuple[int, ...] | None:
    """The most repeated LOOP_N-token run when it occurs LOOP_TIMES times or more."""
    runs = Counter(tuple(ids[i : i + LOOP_N]) for i in range(len(ids) - LOOP_N + 1))
    run, times = max(runs.items(), key=lambda kv: kv[1], default=((), 0))
    return run if times >= LOOP_TIMES else None


def test_the_loop_check():
    assert loop_in(list(range(40))) is None
    assert loop_in([1, 2, 3, 4, 5, 6] * 3) == (1, 2, 3, 4, 5, 6)
    assert loop_in([1, 2, 3, 4, 5, 6] * 2 + [7]) is None  # twice is not a loop
    assert loop_in([9] * 8) == (9,) * 6  # one token over and over


@pytest.fixture(scope="module")
def embedded():
    with gpt2.load(device="cpu", n_threads=1) as m:
        yield m


def test_the_embedded_models_greedy_text_loops(embedded):
    # what the first example would print under the library's greedy defaults: the check
    # below catches it, so its passing means something
    c = embedded.complete(FIRST_PROMPT, 100)
    assert loop_in(c.token_ids) is not None, c.text


def test_cli_generate_samples_with_a_printed_seed(embedded, monkeypatch, capsys):
    # `gpt2 generate "Once upon a time"`, as the README's first command gives it
    monkeypatch.setattr(gpt2.cli.secrets, "randbelow", lambda n: 1234)
    assert main(["generate", FIRST_PROMPT]) == 0
    out, err = capsys.readouterr()
    assert "seed 1234 (--seed 1234 repeats this text)" in err
    assert out.startswith(FIRST_PROMPT)
    text = out.removesuffix("\n")[len(FIRST_PROMPT) :]
    ids = embedded.tokenizer.encode(text)
    assert len(ids) >= 20 and loop_in(ids) is None, text
    # the defaults are what the CLI says they are, and the printed seed repeats the text
    d = GENERATE_DEFAULTS
    assert d == GenerationParams(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1)
    assert text == embedded.generate(FIRST_PROMPT, params=d, seed=1234)
    assert main(["generate", FIRST_PROMPT, "--seed", "1234"]) == 0
    out, err = capsys.readouterr()
    assert out == FIRST_PROMPT + text + "\n" and "seed" not in err  # a given seed is not echoed


def test_cli_generate_defaults_do_not_loop(embedded):
    # the CLI's defaults over ten seeds (its seed is drawn afresh each run), 50 tokens
    for seed in range(10):
        c = embedded.complete(FIRST_PROMPT, params=GENERATE_DEFAULTS, seed=seed)
        assert loop_in(c.token_ids) is None, (seed, c.text)


def test_cli_generate_greedy_is_the_librarys(embedded, capsys):
    argv = ["generate", FIRST_PROMPT, "--temperature", "0", "--repetition-penalty", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == FIRST_PROMPT + embedded.generate(FIRST_PROMPT) + "\n" and "seed" not in err


def _readme_python_blocks() -> list[str]:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Python\n", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run_block(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    return out.getvalue()


def test_readme_first_python_example_does_not_loop(embedded):
    first = _readme_python_blocks()[0]
    assert "gpt2.load()" in first  # the embedded model: it runs as pasted
    text = _run_block(first)
    ids = embedded.tokenizer.encode(text)
    assert len(ids) >= 40 and loop_in(ids) is None, text


def test_readme_tour_runs_as_pasted(embedded):
    # the second block: every call as written, on the embedded model, no loop in its prints
    text = _run_block(_readme_python_blocks()[1])
    assert "GPT2Model(" in text
    for line in text.split("\n\n"):
        ids = embedded.tokenizer.encode(line)
        assert loop_in(ids) is None, line


def test_generate_of_ids_takes_every_parameter(model):
    ids = model.tokenizer.encode(PROMPT)
    kw = {"repetition_penalty": 1.5, "presence_penalty": 1.0, **SAMPLED}
    want = model.complete(PROMPT, 8, **kw)
    got = model.generate(ids, 8, **kw)
    eos = [model.tokenizer.eos_id] if want.finish_reason == "eos" else []
    assert got == want.token_ids + eos
    assert got != model.generate(ids, 8, **SAMPLED) or want.finish_reason == "eos"


# -- the embedded model's own id; gpt2 serve's first lines ------------------------------------
def test_model_ids(tiny_model, tmp_path, monkeypatch):
    assert model_id(None) == EMBEDDED_MODEL_ID != "gpt2"
    assert model_id(tiny_model.gguf_llama) == Path(tiny_model.gguf_llama).stem
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_id("my-model") == model_id(folder) == "my-model"
    assert model_id("openai-community/gpt2") == "openai-community/gpt2"  # a hub id as given


@pytest.fixture
def fake_serve(monkeypatch):
    """gpt2.serve.app.serve recording its call instead of serving."""
    import gpt2.serve.app

    calls = []

    def serve(model, host, port, **kw):
        calls.append({"model": model, "host": host, "port": port, **kw})
        return 0

    monkeypatch.setattr(gpt2.serve.app, "serve", serve)
    return calls


def test_serve_prints_its_start_up_line(fake_serve, tiny_model, capsys):
    assert main(["serve", "--device", "cpu", "--threads", "1", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    (call,) = fake_serve
    assert call["model_name"] == EMBEDDED_MODEL_ID
    line = f"gpt2 serve: model '{EMBEDDED_MODEL_ID}' ("
    assert line in err and "default.gguf, f16) on cpu, http://127.0.0.1:8123/v1" in err, err
    argv = ["serve", "--model", str(tiny_model.gguf_llama), "--device", "cpu", "--port", "8124"]
    assert main([*argv, "--threads", "1"]) == 0
    assert fake_serve[1]["model_name"] == Path(tiny_model.gguf_llama).stem
    assert f"model '{Path(tiny_model.gguf_llama).stem}'" in capsys.readouterr().err


def test_serve_finds_a_busy_port_before_loading(fake_serve, monkeypatch, capsys):
    def no_load(*args, **kw):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(gpt2, "load", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--device", "cpu", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on http://127.0.0.1:{port}: Address already in use" in err, err
    assert "--port picks another" in err and "Traceback" not in err and not fake_serve


# -- make test: ggml built once, quietly ------------------------------------------------------
def test_make_test_compiles_ggml_once():
    # the package is installed from the build folder `make native` builds, after it
    make = shutil.which("make")
    assert make, "make is the developers' front door (README): it is needed here"
    run = subprocess.run(
        [make, "-n", "-W", "pyproject.toml", "test", "VENV=/nonexistent/venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = run.stdout.splitlines()
    build = next(i for i, line in enumerate(lines) if line.startswith("cmake --build build/native"))
    install = next(i for i, line in enumerate(lines) if "pip install" in line and "[test]" in line)
    assert build < install, run.stdout
    assert f"-C build-dir={REPO / 'build' / 'native'}" in lines[install], lines[install]


def test_ggml_compiles_without_warnings_and_ours_with_them(tmp_path):
    # configure native/ (no build): ggml's sources get -w, ours keep -Wall -Wextra, and
    # ggml's generated version header names the pin rather than this repository's HEAD
    # (which would recompile ggml-base at every commit)
    cmake = shutil.which("cmake")
    assert cmake, "cmake builds the native library: it is needed here"
    configure = [cmake, "-S", str(REPO / "native"), "-B", str(tmp_path), "-G", "Ninja"]
    subprocess.run(
        [*configure, "-DTINYNN_CPU_ALL_VARIANTS=OFF", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"],
        check=True,
        capture_output=True,
        text=True,
    )
    commands = json.loads((tmp_path / "compile_commands.json").read_text())
    ggml = [c for c in commands if "/third_party/ggml/" in c["file"]]
    ours = [c for c in commands if "/native/" in c["file"] and "/third_party/" not in c["file"]]
    assert len(ggml) > 20 and ours
    quiet = [c["file"] for c in ggml if " -w " not in c["command"]]
    assert not quiet, f"ggml sources compiled with warnings on: {quiet[:3]}"
    assert all(" -w " not in c["command"] and "-Wall" in c["command"] for c in ours)
    pin = dict(
        line.split("=", 1) for line in (REPO / "native" / "ggml.pin").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )  # fmt: skip
    header = (tmp_path / "ggml" / "src" / "ggml-version.h").read_text()
    stamp = f'#define GGML_COMMIT  "{pin["package"]}-{pin["version"]}"'
    assert stamp in header, header
