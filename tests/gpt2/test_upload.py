"""The fast engine's weights on the device are the file's (gpt2.engine.upload).

Read back from the device (the CPU backend; CUDA too where there is one) and compared with
the bytes the file stores:
- a q8_0 GGUF's linear weights and token embedding: its q8_0 blocks byte for byte (and the
  tensors it keeps in f16 or f32, where a row does not fill q8_0 blocks, as stored); f16 and
  f32 GGUFs likewise; LayerNorm gains and biases as the file's f32 vectors, never folded;
  no output head beside wte (tied);
- the same bytes through the staging buffers a device's weights take (forced on the CPU,
  buffers far smaller than a tensor: many rounds);
- files that store the linear weights [in, out] (the Ruby GGUF, an HF folder): the file's
  values, transposed (a permutation; f32 exactly);
- a type the user asks for (dtype): the file's values converted, exactly where the type
  holds them (f16 -> f32, q8_0 -> f32);
- on the CPU, straight from the file into ggml's buffer (no host array), in one read of
  the file; a non-finite value or a file cut mid-load refused by name, staged or not.
Tolerance: exact, everywhere. The logits of these engines against the float64 reference
and HF are checked in test_engines.py and test_reference.py.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import pytest

from gpt2.convert import convert_hf_to_gguf
from gpt2.engine import FastGPT2
from gpt2.engine import upload as upload_mod
from gpt2.names import LAYOUT_GGUF_LLAMA, from_canonical
from gpt2.weights import FileTensors, load_model, to_f32
from tests.devices import DEVICES, use_device

IDS = [1, 5, 9, 2, 7, 3, 11, 4]
_KINDS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


@pytest.fixture(scope="module")
def sources(tiny_models, tmp_path_factory):
    """Per tiny model: the HF folder, the Ruby GGUF, and llama.cpp GGUFs in f32, f16, q8_0."""
    out = {}
    for model in tiny_models:
        d = tmp_path_factory.mktemp(f"upload-{model.name}")
        files = {"hf": model.hf_dir, "ruby": model.gguf_ruby, "f32": model.gguf_llama}
        for dtype in ("f16", "q8_0"):
            files[dtype] = d / f"{dtype}.gguf"
            convert_hf_to_gguf(model.hf_dir, files[dtype], dtype)
        out[model.name] = files
    return out


def stage_small(monkeypatch, staged: bool = True) -> None:
    """Uploads after this go through 2 staging buffers of 4 KiB (on the CPU too), or as
    they would by default (staged False)."""
    monkeypatch.setattr(upload_mod, "STAGE_HOST_MEMORY", staged)
    monkeypatch.setattr(upload_mod, "STAGING_BYTES", 4096 if staged else 16 << 20)
    monkeypatch.setattr(upload_mod, "N_STAGING", 2 if staged else 4)


def device_tensors(fast: FastGPT2) -> dict[str, tuple]:
    """Canonical name -> the engine's device tensor (read back later)."""
    w = fast.weights
    out = {"wte": w.wte, "wpe": w.wpe, "ln_f.weight": w.ln_f_g, "ln_f.bias": w.ln_f_b}
    for i, lw in enumerate(w.layers):
        p = f"h.{i}."
        out |= {
            p + "ln_1.weight": lw.ln_1_g,
            p + "ln_1.bias": lw.ln_1_b,
            p + "attn.c_attn.weight": lw.w_qkv,
            p + "attn.c_attn.bias": lw.b_qkv,
            p + "attn.c_proj.weight": lw.w_o,
            p + "attn.c_proj.bias": lw.b_o,
            p + "ln_2.weight": lw.ln_2_g,
            p + "ln_2.bias": lw.ln_2_b,
            p + "mlp.c_fc.weight": lw.w_fc,
            p + "mlp.c_fc.bias": lw.b_fc,
            p + "mlp.c_proj.weight": lw.w_proj,
            p + "mlp.c_proj.bias": lw.b_proj,
        }
    return out


def _bytes_of(t) -> np.ndarray:
    return t.download().reshape(-1).view(np.uint8)


def _first_difference(got: np.ndarray, want: np.ndarray) -> str:
    if got.size != want.size:
        return f"{got.size} bytes, the file has {want.size}"
    at = int(np.flatnonzero(got != want)[0])
    return f"first differing byte {at} of {got.size}: {got[at]} != {want[at]}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("source", ["q8_0", "f16", "f32"])
def test_device_weights_are_the_files_bytes(tiny_models, sources, source, device, monkeypatch):
    """dtype auto from a llama.cpp GGUF: every tensor on the device holds the bytes its
    file stores (wpe: its first n_rows rows), the same through 4 KiB staging buffers; the
    output head is wte itself and no tensor has a LayerNorm folded in."""
    use_device(device)
    checked_q8 = 0
    for model in tiny_models:
        loaded = load_model(sources[model.name][source])
        assert loaded.layout == LAYOUT_GGUF_LLAMA
        infos = loaded.weights.tensors.infos
        for staged in (False, True):
            stage_small(monkeypatch, staged)
            dtype = loaded.weights.dtype_for("auto")
            with FastGPT2(loaded.weights, device, dtype, n_threads=1) as fast:
                assert not hasattr(fast.weights, "lm_head")  # tied: the head is wte
                for name, t in device_tensors(fast).items():
                    (stored,) = from_canonical(name, LAYOUT_GGUF_LLAMA)
                    info = infos[stored]
                    want = info.read().reshape(-1).view(np.uint8)
                    if name == "wpe":
                        want = want[: t.nbytes]
                    assert _KINDS.get(t.dtype) == info.kind, (name, t.dtype, info.kind)
                    got = _bytes_of(t)
                    if not np.array_equal(got, want):
                        pytest.fail(
                            f"{model.name} {source}: {name} ({stored}, {info.kind}) on the "
                            f"device is not the file's: {_first_difference(got, want)}"
                        )
                    checked_q8 += info.kind == "Q8_0"
    if source == "q8_0":  # the q8_0 blocks really were compared (not all fell back to f16)
        assert checked_q8 > 0


@pytest.mark.parametrize("source", ["ruby", "hf"])
def test_transposed_files_keep_their_values(tiny_models, sources, source):
    """Files that store the linear weights [in, out]: the device holds the file's f32
    values, transposed to the [out, in] rows ggml's products read, exactly."""
    for model in tiny_models:
        weights = load_model(sources[model.name][source]).weights
        canonical = weights.to_memory()
        with FastGPT2(weights, "cpu", "f32", n_threads=1) as fast:
            for name, t in device_tensors(fast).items():
                want = canonical[name]
                if name == "wpe":
                    want = want[: fast.n_rows]
                elif want.ndim == 2 and name != "wte":
                    want = want.T
                got = t.download().reshape(want.shape)
                assert got.dtype == np.float32
                assert np.array_equal(got, want), (model.name, source, name)


def test_a_dtype_asked_for_converts_the_files_values(tiny_model, sources):
    """q8_0 and f16 files loaded as f32: the file's values, widened exactly."""
    for source in ("q8_0", "f16"):
        loaded = load_model(sources[tiny_model.name][source])
        infos = loaded.weights.tensors.infos
        with FastGPT2(loaded.weights, "cpu", "f32", n_threads=1) as fast:
            for name in ("wte", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight"):
                (stored,) = from_canonical(name, LAYOUT_GGUF_LLAMA)
                info = infos[stored]
                want = to_f32(info.kind, info.read(), info.shape)
                got = device_tensors(fast)[name].download().reshape(want.shape)
                assert np.array_equal(got, want), (source, name)


def test_layer_norms_are_applied_on_the_device(tiny_model):
    """The logits follow a LayerNorm's gain and bias as they are on the device: changing
    ln_f's bias there by c moves every logit by c . wte[v] (the head reads ln_f(x) through
    wte itself)."""
    with FastGPT2(tiny_model.weights, "cpu", "f32", n_threads=1) as fast:
        before = fast.logits(IDS)
        beta = fast.weights.ln_f_b.download()
        shift = np.random.default_rng(0).standard_normal(beta.shape).astype(np.float32)
        fast.weights.ln_f_b.upload(beta + shift)
        after = fast.logits(IDS)
        wte = fast.weights.wte.download().reshape(tiny_model.config.vocab_size, -1)
    want = (wte.astype(np.float64) @ shift)[None, :]
    d = np.abs((after.astype(np.float64) - before) - want)
    assert d.max() <= 1e-3, f"max-abs {d.max():.3e} at {np.unravel_index(d.argmax(), d.shape)}"


@pytest.mark.parametrize("source", ["q8_0", "f16", "f32"])
def test_cpu_reads_the_file_straight_into_ggmls_buffer(tiny_model, sources, source, monkeypatch):
    """On the CPU every tensor of a llama.cpp GGUF in its own type goes from the file into
    ggml's buffer in one read_file_ranges call (vectors included): no tensor is read into
    a host array first."""
    calls = _one_read_no_host_copy(monkeypatch)
    loaded = load_model(sources[tiny_model.name][source])
    dtype = loaded.weights.dtype_for("auto")
    with FastGPT2(loaded.weights, "cpu", dtype, n_threads=1) as fast:
        assert fast.logits(IDS).shape == (len(IDS), tiny_model.config.vocab_size)
    assert calls == [4 + 12 * tiny_model.config.n_layer]


def _one_read_no_host_copy(monkeypatch) -> list[int]:
    """From here on a tensor read into a host array fails the test; returns the list that
    gets the number of ranges of each read_file_ranges call."""

    def no_host_copy(*args):
        raise AssertionError("a tensor was read into a host array")

    calls = []
    real = upload_mod.read_file_ranges

    def counted(session, fd, ranges, **kw):
        calls.append(len(ranges))
        return real(session, fd, ranges, **kw)

    monkeypatch.setattr(FileTensors, "read_rows", no_host_copy)
    monkeypatch.setattr(FileTensors, "read_stored", no_host_copy)
    monkeypatch.setattr(upload_mod, "read_file_ranges", counted)
    return calls


def _bf16_folder(hf_dir, folder):
    """A copy of an HF folder with its tensors as bf16 (rounded by torch)."""
    import shutil

    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    shutil.copytree(hf_dir, folder)
    state = load_file(hf_dir / "model.safetensors")
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}
    save_file(bf16, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("kind, dtype", [("F32", "f32"), ("F32", "f16"), ("BF16", "f32")])
def test_an_hf_folder_is_read_transposed_from_the_file(
    tiny_models, kind, dtype, staged, device, tmp_path, monkeypatch
):
    """An HF folder's Conv1D weights ([in, out] in the file) go from the file to the device
    transposed (and converted where dtype asks: f32 -> f16, bf16 -> f32) in one
    read_file_ranges call with every other tensor, a tile at a time: no tensor is read
    into a host array. On CUDA they travel through the page-locked staging buffers (the
    CPU takes that path when staged, through 4 KiB buffers: rows of t cut across rounds).
    The device holds numpy's transpose and cast of the file's values, bit for bit."""
    use_device(device)
    if device == "cpu":
        stage_small(monkeypatch, staged)
    elif staged:
        pytest.skip("on CUDA every read is staged: the unstaged case is the same test")
    for model in tiny_models:
        folder = model.hf_dir
        if kind == "BF16":
            folder = _bf16_folder(model.hf_dir, tmp_path / f"{model.name}_bf16")
        loaded = load_model(folder)
        canonical = loaded.weights.to_memory()  # read before the host copies are refused
        with monkeypatch.context() as mp:
            calls = _one_read_no_host_copy(mp)
            fast = FastGPT2(loaded.weights, device, dtype, n_threads=1)
        with fast:
            for name, t in device_tensors(fast).items():
                want = canonical[name]
                if name == "wpe":
                    want = want[: fast.n_rows]
                elif want.ndim == 2 and name != "wte":
                    want = np.ascontiguousarray(want.T)  # the device's rows: outputs
                want = want.astype(np.float16 if t.dtype == "f16" else np.float32)
                got = _bytes_of(t)
                if not np.array_equal(got, want.reshape(-1).view(np.uint8)):
                    why = _first_difference(got, want.reshape(-1).view(np.uint8))
                    pytest.fail(f"{model.name} {kind} as {dtype} on {device}: {name}: {why}")
            assert fast.logits(IDS).shape == (len(IDS), model.config.vocab_size)
        assert calls == [4 + 12 * model.config.n_layer], calls


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_hf_logits_equal_the_streamed_paths(tiny_models, dtype, monkeypatch):
    """gpt2.load of an HF folder (read transposed from the file) gives the logits the
    slice-by-slice path gives (numpy's transposes and casts, what main did), bit for bit."""
    import gpt2

    for model in tiny_models:
        with gpt2.load(model.hf_dir, device="cpu", dtype=dtype, n_threads=1) as m:
            ours = m.engine.logits(IDS)
        with monkeypatch.context() as mp:
            mp.setattr(upload_mod, "_read_from_file", lambda t, rows: False)
            with gpt2.load(model.hf_dir, device="cpu", dtype=dtype, n_threads=1) as m:
                streamed = m.engine.logits(IDS)
        if not np.array_equal(ours, streamed):
            d = np.abs(ours.astype(np.float64) - streamed)
            at = np.unravel_index(int(d.argmax()), d.shape)
            pytest.fail(f"{model.name} {dtype}: logits differ, max-abs {d.max():.3e} at {at}")


def test_an_hf_value_past_f16_names_the_tensor(tiny_model, tmp_path):
    """A finite f32 value that f16 cannot hold, found as it is converted on the way in:
    a ValueError naming the tensor and the value (not 'non-finite', which the file is
    not), the same staged."""
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "big"
    shutil.copytree(tiny_model.hf_dir, folder)
    state = load_file(folder / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 5] = 7e4
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight: values such as 70000 do not"):
        FastGPT2(load_model(folder).weights, "cpu", "f16", n_threads=1)
    state["transformer.h.1.mlp.c_fc.weight"][3, 5] = np.nan
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"non-finite values in tensor h\.1\.mlp\.c_fc\.weight"):
        FastGPT2(load_model(folder).weights, "cpu", "f16", n_threads=1)


# a value that is not finite, as each type stores it (q8_0: a block's f16 scale)
_NOT_FINITE = {"F32": np.float32(np.nan).tobytes(), "F16": b"\x00\x7c", "Q8_0": b"\x00\x7e"}


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("source", ["q8_0", "f16", "f32"])
def test_a_non_finite_value_read_into_the_buffer_is_refused(
    tiny_model, sources, source, staged, tmp_path, monkeypatch
):
    """A NaN or inf read straight into ggml's buffer (or staged on its way to a device) is a
    ValueError naming the tensor and the file, as one read through a host array is
    (FileTensors)."""
    stage_small(monkeypatch, staged)
    path = tmp_path / "bad.gguf"
    data = bytearray(sources[tiny_model.name][source].read_bytes())
    info = load_model(sources[tiny_model.name][source]).weights.tensors.infos["blk.1.ffn_up.weight"]
    at = info.offset + 3 * info.row_bytes  # the first value (or block) of row 3
    bad = _NOT_FINITE[info.kind]
    data[at : at + len(bad)] = bad
    path.write_bytes(bytes(data))
    loaded = load_model(path)
    with pytest.raises(
        ValueError, match=f"non-finite values in tensor h.1.mlp.c_fc.weight of {path}"
    ):
        FastGPT2(loaded.weights, "cpu", loaded.weights.dtype_for("auto"), n_threads=1)


@pytest.mark.parametrize("staged", [False, True])
def test_a_file_cut_while_loading_is_a_value_error(
    tiny_model, sources, staged, tmp_path, monkeypatch
):
    """The file is cut after its header was read, before the engine reads the tensors."""
    stage_small(monkeypatch, staged)
    path = tmp_path / "cut.gguf"
    path.write_bytes(sources[tiny_model.name]["f16"].read_bytes())
    loaded = load_model(path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(ValueError, match=f"{path}: cannot read tensor .*file ended"):
        FastGPT2(loaded.weights, "cpu", "f16", n_threads=1)
    loaded.close()


def test_bounded_slices_in_flight(tiny_model, monkeypatch):
    """At most 2 x WORKERS slices are read or converted ahead of the uploads."""
    weights = load_model(tiny_model.gguf_llama).weights
    monkeypatch.setattr(upload_mod, "SLICE_VALUES", tiny_model.config.n_embd)  # 1-row slices
    ahead, most = [0], [0]
    real = upload_mod._in_order

    def counting(pool, steps, depth):
        def counted():
            for job, then in steps:
                ahead[0] += 1
                most[0] = max(most[0], ahead[0])
                yield job, then

        for bound in real(pool, counted(), depth):
            ahead[0] -= 1
            yield bound

    monkeypatch.setattr(upload_mod, "_in_order", counting)
    with FastGPT2(weights, "cpu", "q8_0", n_threads=1) as fast:  # quantized: streamed
        fast.logits(IDS)
    assert 0 < most[0] <= 2 * upload_mod.WORKERS, most[0]


def test_a_transposed_file_holds_a_few_tensors_at_once(tiny_model, monkeypatch):
    """An HF folder's [in, out] weights quantized as they load (streamed, not read by
    read_file_ranges) are read whole to be transposed, each by the job of its first slice,
    and let go once uploaded: at most 2 x WORKERS (the steps in flight) and the one being
    cut into steps are alive at once, never the model."""
    alive, most = [0], [0]
    real = FileTensors.read_stored

    def counted(self, stored_name):
        data = real(self, stored_name)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        owner = data if data.base is None else data.base  # what the transposed view holds
        weakref.finalize(owner, lambda: alive.__setitem__(0, alive[0] - 1))
        return data

    monkeypatch.setattr(FileTensors, "read_stored", counted)
    weights = load_model(tiny_model.hf_dir).weights
    with FastGPT2(weights, "cpu", "q8_0", n_threads=1) as fast:
        fast.logits(IDS)
    n_transposed = 4 * tiny_model.config.n_layer
    assert 0 < most[0] <= 2 * upload_mod.WORKERS + 1 < n_transposed, (most[0], n_transposed)


_READ_FILES = upload_mod._read_files


@pytest.mark.parametrize(
    "source, dtype", [("hf", "f32"), ("hf", "f16"), ("f32", "f32"), ("f16", "f16"), ("f16", "f32")]
)
def test_matrices_read_packed_give_the_logits_of_packing_after(
    tiny_models, sources, source, dtype, monkeypatch
):
    """On the CPU the product's matrices are written in its tiles by the read itself (no
    pack_rows after it); the logits are those of reading t's rows and packing after (what
    main did), bit for bit: as stored, transposed (HF) and converted."""
    import gpt2
    import tinynn

    packs, n_read_packed = [], 0
    pack_rows = tinynn.Session.pack_rows
    monkeypatch.setattr(
        tinynn.Session, "pack_rows", lambda s, w: packs.append(w) or pack_rows(s, w)
    )
    for model in tiny_models:
        path = sources[model.name][source]
        with gpt2.load(path, device="cpu", dtype=dtype, n_threads=1) as m:
            assert packs == [], "the read left matrices to pack_rows"
            matrices = upload_mod.cpu_product_matrices(m.engine.weights)
            assert all(t.packed for t in matrices)
            n_read_packed += len(matrices)
            ours = m.engine.logits(IDS)
        with monkeypatch.context() as mp:  # read as t's rows; pack_for_cpu packs them after
            mp.setattr(upload_mod, "_read_files", lambda reads, packed: _READ_FILES(reads, set()))
            with gpt2.load(path, device="cpu", dtype=dtype, n_threads=1) as m:
                after = m.engine.logits(IDS)
        assert len(packs) == len(matrices), "packing after the read did not run"
        packs.clear()
        if not np.array_equal(ours, after):
            d = np.abs(ours.astype(np.float64) - after)
            at = np.unravel_index(int(d.argmax()), d.shape)
            pytest.fail(f"{model.name} {source}: logits differ, max-abs {d.max():.3e} at {at}")
    assert n_read_packed > 0, "no tiny model has a matrix the product takes"
