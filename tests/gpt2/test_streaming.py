"""Streaming load: tensors go from the file to the engine one at a time, in their own type.

Oracle for "the same numbers as before": the same file read whole into float32 arrays
(`GPT2Weights.to_memory`, what the loader returned before) and uploaded through the same
engine. Tolerance: exact (bit-identical logits).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gpt2.convert import convert_hf_to_gguf
from gpt2.engine import FastGPT2
from gpt2.engine import upload as upload_mod
from gpt2.weights import FileTensors, load_model, validate

IDS = [1, 5, 9, 2, 7, 3, 11, 4]


def assert_bit_identical(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if not np.array_equal(a, b):
        d = np.abs(a.astype(np.float64) - b)
        at = np.unravel_index(int(d.argmax()), d.shape)
        pytest.fail(f"{what}: logits differ, max-abs {d.max():.3e} at {at}")


def logits(weights, dtype: str) -> np.ndarray:
    with FastGPT2(weights, "cpu", dtype, n_threads=1) as m:
        return m.logits(IDS)


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    """The tiny model as HF folder, and GGUF in f32, f16 and q8_0."""
    d = tmp_path_factory.mktemp("stream")
    out = {"hf": tiny_model.hf_dir, "f32": tiny_model.gguf_llama}
    for dtype in ("f16", "q8_0"):
        out[dtype] = d / f"{dtype}.gguf"
        convert_hf_to_gguf(tiny_model.hf_dir, out[dtype], dtype)
    return out


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("source", ["hf", "f32", "f16", "q8_0"])
def test_streamed_logits_equal_eager(files, source, dtype, monkeypatch):
    loaded = load_model(files[source])
    assert isinstance(loaded.weights.tensors, FileTensors)  # nothing read yet
    eager = logits(loaded.weights.to_memory(), dtype)
    monkeypatch.setattr(upload_mod, "SLICE_VALUES", 7)  # the file read a row at a time
    assert_bit_identical(logits(loaded.weights, dtype), eager, f"{source} as {dtype}")


def test_auto_dtype_is_the_files(files):
    kinds = {k: load_model(p).weights.dtype_for("auto") for k, p in files.items()}
    assert kinds == {"hf": "f32", "f32": "f32", "f16": "f16", "q8_0": "q8_0"}
    assert load_model(files["q8_0"]).weights.dtype_for("auto", engine="kv") == "f32"


def test_bf16_safetensors(tiny_model, tmp_path):
    """bf16 -> f32 exactly (the bits shifted); auto keeps f32 (f16 would clip bf16's range)."""
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_model.hf_dir, folder)
    state = load_file(tiny_model.hf_dir / "model.safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    save_torch(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()},
        folder / "model.safetensors",
    )
    w = load_model(folder).weights
    assert w.dtype_for("auto") == "f32"
    want = torch.from_numpy(state["transformer.h.0.mlp.c_fc.weight"]).to(torch.bfloat16).float()
    assert np.array_equal(w["h.0.mlp.c_fc.weight"], want.numpy())
    assert logits(w, "f32").shape == (len(IDS), tiny_model.config.vocab_size)


def test_pytorch_bin_and_sharded_from_transformers(tiny_model, tmp_path):
    """Checkpoints written by transformers (sharded safetensors) and torch (the
    pytorch_model.bin of older transformers: its state dict, torch.save'd)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(tiny_model.hf_dir)
    want = logits(load_model(tiny_model.hf_dir).weights, "f32")
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    for name in ("bin", "shards"):
        for f in ("tokenizer.json",):
            shutil.copy(tiny_model.hf_dir / f, tmp_path / name / f)
        assert_bit_identical(logits(load_model(tmp_path / name).weights, "f32"), want, name)


def test_cut_while_loading_is_a_value_error(files, tmp_path):
    """The file is cut between indexing and reading (another process truncates it)."""
    path = tmp_path / "cut.gguf"
    shutil.copy(files["f32"], path)
    loaded = load_model(path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(ValueError, match="truncated"):
        validate(loaded.weights, path)


def test_fifo_refused_before_reading(tmp_path):
    """Issue 15 item 2: a FIFO as the GGUF hung the loader; now refused at once."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_model(fifo)


def test_sparse_file_reads_only_what_the_header_declares(files, tmp_path):
    """Issue 15 item 9: a model followed by a 3 GiB hole was copied whole into memory.

    The peak is the child's VmHWM, its own image's high-water mark: `ru_maxrss` carries the
    parent's resident size over fork and exec, so under a full pytest run (torch loaded) it
    measured pytest, not the loader."""
    import subprocess
    import sys

    path = tmp_path / "sparse.gguf"
    shutil.copy(files["f32"], path)
    os.truncate(path, path.stat().st_size + 3 * 2**30)
    code = (
        "import sys; from gpt2.weights import load_model, validate; "
        "w = load_model(sys.argv[1]).weights; validate(w, 'x'); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    peak_mib = int(out.stdout.split()[-1]) / 1024
    assert peak_mib < 256, f"peak RSS {peak_mib:.0f} MiB for a tiny model with a 3 GiB hole"


@pytest.mark.parametrize(("dtype", "value"), [("f16", 1e5), ("q8_0", 1e7)])
def test_overflow_is_refused_by_name(tiny_model, tmp_path, dtype, value):
    """Issue 15 item 4: 1e5 as f16 (1e7 as q8_0) gave inf/NaN logits silently."""
    folder = tmp_path / "big"
    shutil.copytree(tiny_model.hf_dir, folder)
    state = load_file(folder / "model.safetensors")
    state["transformer.h.1.mlp.c_proj.weight"][3, 5] = value
    save_file(state, folder / "model.safetensors")
    w = load_model(folder).weights
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_proj\.weight.*do not fit"):
        logits(w, dtype)
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_down\.weight.*do not fit"):
        convert_hf_to_gguf(folder, tmp_path / "out.gguf", dtype)
    assert not (tmp_path / "out.gguf").exists()
    assert np.isfinite(logits(w, "f32")).all()  # f32 holds it


def test_unknown_config_key_loads(tiny_model, tmp_path):
    folder = tmp_path / "extra"
    shutil.copytree(tiny_model.hf_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["some_new_key"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    assert load_model(folder).config == tiny_model.config


# --- issue 15: hostile files (each failed on the code before streaming) --------------------


def _gguf_with(tiny_model, tmp_path, **meta):
    """The tiny model's Ruby-layout GGUF rewritten with metadata values replaced."""
    import gguf

    from tests.gpt2.test_weights import gguf_tensors, write_gguf

    path = write_gguf(tmp_path / "m.gguf", gguf_tensors(tiny_model.gguf_ruby), tiny_model.config)
    if not meta:
        return path
    w = gguf.GGUFWriter(str(tmp_path / "meta.gguf"), "gpt2")
    r = gguf.GGUFReader(path)
    c = tiny_model.config
    w.add_context_length(c.n_positions)
    w.add_embedding_length(c.n_embd)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_head)
    w.add_layer_norm_eps(c.layer_norm_epsilon)
    for key, (kind, value) in meta.items():
        getattr(w, f"add_{kind}")(key.replace("__", "."), value)
    if "gpt2__block_count" not in meta:
        w.add_block_count(c.n_layer)
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "meta.gguf"


def test_merges_as_ints_is_a_value_error(tiny_model, tmp_path):
    """Item 5: merges stored as ints raised AttributeError."""
    path = _gguf_with(
        tiny_model,
        tmp_path,
        tokenizer__ggml__tokens=("array", ["a", "b"]),
        tokenizer__ggml__merges=("array", [1, 2]),
    )
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.merges is ARRAY/INT"):
        load_model(path)


def test_infinite_hyperparameter_names_file_and_key(tiny_model, tmp_path):
    """Item 5: an infinite hyperparameter raised OverflowError with no file name."""
    path = _gguf_with(tiny_model, tmp_path, gpt2__block_count=("float32", float("inf")))
    with pytest.raises(ValueError, match=r"gpt2\.block_count must be an integer") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_inspect_list_valued_shard_index_and_dotdot(tiny_model, tmp_path):
    """Items 5 and 6: a list-valued weight_map raised AttributeError in inspect, and inspect
    followed ../ shard names that load refuses."""
    from gpt2.inspect_model import describe

    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    index = folder / "model.safetensors.index.json"
    for weight_map in (["x"], {"wte.weight": "../outside.safetensors"}):
        index.write_text(json.dumps({"weight_map": weight_map}))
        for fn in (describe, load_model):
            with pytest.raises(ValueError, match="weight_map") as err:
                fn(folder)
            assert str(index) in str(err.value)


def test_inspect_does_not_map_the_file(files, tmp_path, monkeypatch):
    """Item 6: inspect memory-mapped the GGUF (a cut while reading was SIGBUS); now it parses
    the header from plain reads (gpt2.gguf_header), so nothing is mapped."""
    import mmap

    from gpt2.inspect_model import describe

    path = tmp_path / "m.gguf"
    shutil.copy(files["q8_0"], path)
    mapped = []
    real = np.memmap.__new__

    def spy(cls, filename, *a, **k):
        mapped.append(str(filename))
        return real(cls, filename, *a, **k)

    monkeypatch.setattr(np.memmap, "__new__", spy)
    assert describe(path)["tensors"]["by_dtype"]["Q8_0"]["count"] > 0
    assert mapped == []
    del mmap


def test_inspect_fifo_refused(tmp_path):
    """Item 2: a FIFO given to `gpt2 inspect` hung it."""
    from gpt2.inspect_model import describe

    fifo = tmp_path / "m.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        describe(fifo)
