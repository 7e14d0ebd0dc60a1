"""Model files as a hostile user would hand them over: renamed over while they load,
written big-endian, torch checkpoints holding what a plain state dict does not. Each loads
as the file says, or is a ValueError naming the file and the tensor; never a crash, never a
silent wrong model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2
import gpt2.torch_bin as torch_bin_mod
import gpt2.weights as weights_mod
from gpt2.config import GPT2Config
from gpt2.convert import write_gguf_llama_layout
from gpt2.random_weights import random_weights
from gpt2.weights import GPT2Weights, load_model
from tests.tiny_models import write_hf_folder

CONFIG = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=96)


def two_models() -> tuple[GPT2Weights, GPT2Weights]:
    """Two models of one shape whose every tensor differs."""
    return random_weights(CONFIG, 1), random_weights(CONFIG, 2)


def assert_weights_of(loaded: GPT2Weights, want: GPT2Weights, what: str) -> None:
    """Every tensor bit-identical to `want`'s (tolerance 0); names the first that is not."""
    for name in want.tensors:
        got, ref = loaded[name], want[name]
        diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
        assert np.array_equal(got, ref), f"{what}: tensor {name} differs (max-abs {diff:.3g})"


def replace_after(monkeypatch, module, attr: str, src: Path, dst: Path) -> list[int]:
    """Wraps module.attr so that its first call, once done, renames `src` over `dst`:
    the race made deterministic. Returns a list that counts the renames."""
    real, done = getattr(module, attr), []

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if not done:
            os.replace(src, dst)
            done.append(1)
        return out

    monkeypatch.setattr(module, attr, wrapped)
    return done


# --- one descriptor -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_gguf_renamed_over_after_its_header_is_read(tmp_path, monkeypatch, dtype):
    """The header read from one file, the tensors re-opened by path from another gave a
    model mixing the two. A load reads both through the one descriptor it opened."""
    a, b = two_models()
    path, other = tmp_path / "model.gguf", tmp_path / "other.gguf"
    write_gguf_llama_layout(a, path, dtype, None)
    write_gguf_llama_layout(b, other, dtype, None)
    want = load_model(path).weights.to_memory()  # what the file held, read alone
    done = replace_after(monkeypatch, weights_mod, "read_gguf_header", other, path)
    loaded = load_model(path)
    assert done and not other.exists()  # the race happened
    assert_weights_of(loaded.weights, want, f"{dtype} GGUF renamed over")


def test_gpt2_load_of_a_file_renamed_over_uploads_the_first(tmp_path, monkeypatch):
    """Through gpt2.load (the tensors are read while they are uploaded): the logits are
    the first file's, bit for bit (the same engine and weights give the same numbers)."""
    a, b = two_models()
    path, other, copy = tmp_path / "model.gguf", tmp_path / "other.gguf", tmp_path / "a.gguf"
    write_gguf_llama_layout(a, path, "f32", None)
    write_gguf_llama_layout(b, other, "f32", None)
    shutil.copy(path, copy)
    ids = [1, 5, 9, 2]
    with gpt2.load(str(copy), device="cpu") as m:
        want = m.logits(ids)
    done = replace_after(monkeypatch, weights_mod, "read_gguf_header", other, path)
    with gpt2.load(str(path), device="cpu") as m:
        got = m.logits(ids)
    assert done
    diff = float(np.max(np.abs(got - want)))
    assert np.array_equal(got, want), f"logits differ from the first file's (max-abs {diff:.3g})"


def test_safetensors_renamed_over_after_its_header_is_read(tmp_path, monkeypatch):
    a, b = two_models()
    folder = write_hf_folder(a, tmp_path / "a", None)
    other = write_hf_folder(b, tmp_path / "b", None) / "model.safetensors"
    done = replace_after(
        monkeypatch, weights_mod, "safetensors_infos", other, folder / "model.safetensors"
    )
    loaded = load_model(folder)
    assert done
    assert_weights_of(loaded.weights, a, "safetensors renamed over")


# --- big-endian GGUF ----------------------------------------------------------------------


def to_big_endian(path: Path) -> None:
    """gguf's own byte-order converter (gguf_convert_endian, as llama.cpp ships it), in
    place: it swaps every number of the header and of the tensors (q8_0: each block's f16
    scale), which is what a big-endian host writes."""
    run = subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_convert_endian", str(path), "big"],
        input="YES\n",
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert path.read_bytes()[4:8] == b"\x00\x00\x00\x03", "not converted to big-endian"


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_big_endian_gguf_loads_the_same_weights(tmp_path, dtype):
    """A big-endian GGUF gives the weights of its little-endian twin, bit for bit, both as
    float32 and in the file's own type (what the engine uploads)."""
    a, _ = two_models()
    little, big = tmp_path / "little.gguf", tmp_path / "big.gguf"
    write_gguf_llama_layout(a, little, dtype, None)
    shutil.copy(little, big)
    to_big_endian(big)
    want, got = load_model(little).weights, load_model(big).weights
    assert_weights_of(got, want.to_memory(), f"big-endian {dtype}")
    for name in ("wte", "h.0.mlp.c_fc.weight"):
        r_want, r_got = want.rows(name, True), got.rows(name, True)
        assert r_got.kind == r_want.kind
        assert np.array_equal(r_got.read(0, 7), r_want.read(0, 7)), name


def test_big_endian_gguf_through_gpt2_load(tmp_path):
    a, _ = two_models()
    little, big = tmp_path / "little.gguf", tmp_path / "big.gguf"
    write_gguf_llama_layout(a, little, "f16", None)
    shutil.copy(little, big)
    to_big_endian(big)
    with gpt2.load(str(little), device="cpu") as m:
        want = m.logits([3, 1, 4])
    with gpt2.load(str(big), device="cpu") as m:
        got = m.logits([3, 1, 4])
    assert np.array_equal(got, want), float(np.max(np.abs(got - want)))


def test_big_endian_quantized_type_we_cannot_swap_is_refused(tmp_path):
    """Q5_1 blocks (two f16 numbers and a u32 of high bits): refused by name, not read
    with the wrong byte order."""
    import gguf

    a, _ = two_models()
    path = tmp_path / "big_q5.gguf"
    write_gguf_llama_layout(a, path, "f32", None)
    reader = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(str(tmp_path / "big_q5.gguf.new"), "gpt2", endianess=gguf.GGUFEndian.BIG)
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "general.architecture")):
            continue
        w.add_key_value(field.name, field.contents(), field.types[0], field.types[-1])
    for t in reader.tensors:
        data = np.array(t.data).reshape(tuple(reversed([int(x) for x in t.shape])))
        if t.name == "blk.0.ffn_up.weight":
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q5_1)
            w.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q5_1)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp_path / "big_q5.gguf.new", path)
    with pytest.raises(ValueError, match=r"big_q5\.gguf.*blk\.0\.ffn_up\.weight.*big-endian"):
        load_model(path)


# --- pytorch_model.bin --------------------------------------------------------------------


def write_torch_folder(weights: GPT2Weights, folder: Path, convert) -> Path:
    """An HF folder whose pytorch_model.bin holds convert(tensor) for each tensor."""
    torch = pytest.importorskip("torch")
    write_hf_folder(weights, folder, None)
    (folder / "model.safetensors").unlink()
    state = {}
    for name, t in weights.tensors.items():
        key = "transformer." + (f"{name}.weight" if name in ("wte", "wpe") else name)
        state[key] = convert(key, torch.from_numpy(np.array(t)))
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_torch_bin_of_parameters_loads(tmp_path):
    """A state dict of nn.Parameter (requires_grad, as model.state_dict(keep_vars=True)
    and many training scripts save it) is a valid checkpoint."""
    torch = pytest.importorskip("torch")
    a, _ = two_models()
    folder = write_torch_folder(a, tmp_path / "m", lambda k, t: torch.nn.Parameter(t))
    assert_weights_of(load_model(folder).weights, a, "pytorch_model.bin of nn.Parameter")


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_torch_bin_sparse_tensor_is_refused_by_name(tmp_path, layout):
    pytest.importorskip("torch")
    a, _ = two_models()
    bad = "transformer.h.0.mlp.c_fc.weight"

    def convert(key, t):
        if key != bad:
            return t
        return t.to_sparse() if layout == "sparse_coo" else t.to_sparse_csr()

    folder = write_torch_folder(a, tmp_path / "m", convert)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*h\.0\.mlp\.c_fc\.weight.*sparse"):
        load_model(folder)


def test_torch_bin_renamed_over_while_it_loads(tmp_path, monkeypatch):
    """The checkpoint is read through the descriptor that was checked to be a regular
    file, not re-opened by path."""
    a, b = two_models()
    folder = write_torch_folder(a, tmp_path / "a", lambda k, t: t)
    other = write_torch_folder(b, tmp_path / "b", lambda k, t: t) / "pytorch_model.bin"
    real, done = torch_bin_mod.ModelFile, []  # the torch checkpoint's reader opens it

    class Racing(real):
        def __init__(self, path):
            super().__init__(path)
            if not done and Path(path).name == "pytorch_model.bin":
                os.replace(other, path)
                done.append(1)

    monkeypatch.setattr(torch_bin_mod, "ModelFile", Racing)
    loaded = load_model(folder)
    assert done
    assert_weights_of(loaded.weights, a, "pytorch_model.bin renamed over")


def test_closing_a_model_closes_its_file(tiny_model):
    """A long-running process that loads and closes models keeps no descriptor open."""
    import gpt2

    model = gpt2.load(tiny_model.gguf_llama, device="cpu", n_threads=1)
    files = {id(i.file): i.file for i in model.loaded.weights.tensors.infos.values() if i.file}
    assert files and all(f.fd >= 0 for f in files.values())
    model.close()
    assert all(f.fd == -1 for f in files.values())
    model.close()  # idempotent
