"""The streaming upload (gpt2.engine.upload: slices of rows, in the file's own type, converted
by worker threads) against the whole-tensor upload it replaced.

Oracle: `whole_tensor_upload` below, the upload as it was before it streamed (commit 0a7a7a2):
every LayerNorm folded into a whole float64 copy of the next weight by `fold_layer_norm`, the
head folded 4096 rows at a time, tensors stored in the engine's type uploaded as stored.
Tolerance: exact (bit-identical logits), for f32, f16 and q8_0 engines, from the HF folder
(f32 safetensors), the Ruby GGUF (split q, k, v) and llama.cpp GGUFs in f32, f16 and q8_0.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpt2.convert import convert_hf_to_gguf
from gpt2.engine import FastGPT2, fold_layer_norm
from gpt2.engine import fast as fast_mod
from gpt2.engine import upload as upload_mod
from gpt2.weights import load_model

IDS = [1, 5, 9, 2, 7, 3, 11, 4]
_STORED_AS = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}


def whole_tensor_upload(fw, weights, n_rows, device):
    """The upload before streaming, kept here as the oracle (same arithmetic, same calls)."""
    put = upload_mod.put

    def put_stored(t, name, transposed=False):
        rows = weights.rows(name, transposed)  # the stored data, whole, where it is one tensor
        if rows.kind == _STORED_AS[t.dtype]:
            data = rows.read(0, rows.shape[0])
            t.upload(np.ascontiguousarray(data).reshape(-1) if t.dtype == "q8_0" else data)
            return
        x = weights[name]
        put(t, x.T if transposed else x, name)

    def folded(norm, linear):
        return fold_layer_norm(
            weights[norm + ".weight"],
            weights[norm + ".bias"],
            weights[linear + ".weight"],
            weights[linear + ".bias"],
        )

    put_stored(fw.wte, "wte")
    gamma, beta = weights["ln_f.weight"], weights["ln_f.bias"]
    wte = weights["wte"]
    vocab = len(wte)
    row_bytes = fw.lm_head.nbytes // vocab
    bias = np.empty(vocab, np.float64)
    for r0 in range(0, vocab, 4096):
        rows = wte[r0 : r0 + 4096]
        w, b = fold_layer_norm(gamma, beta, rows.T, np.zeros(len(rows)))
        put(fw.lm_head, w.T, "head", offset=r0 * row_bytes)
        bias[r0 : r0 + len(rows)] = b
    put(fw.lm_bias, bias, "head bias")
    put(fw.wpe, weights["wpe"][:n_rows], "wpe")
    for i, layer in enumerate(fw.layers):
        p = f"h.{i}."
        w, b = folded(p + "ln_1", p + "attn.c_attn")
        put(layer.w_qkv, w.T, "qkv")
        put(layer.b_qkv, b, "qkv bias")
        put_stored(layer.w_o, p + "attn.c_proj.weight", transposed=True)
        put(layer.b_o, weights[p + "attn.c_proj.bias"], "o bias")
        w, b = folded(p + "ln_2", p + "mlp.c_fc")
        put(layer.w_fc, w.T, "fc")
        put(layer.b_fc, b, "fc bias")
        put_stored(layer.w_proj, p + "mlp.c_proj.weight", transposed=True)
        put(layer.b_proj, weights[p + "mlp.c_proj.bias"], "proj bias")


def logits(weights, dtype: str) -> np.ndarray:
    with FastGPT2(weights, "cpu", dtype, n_threads=1) as m:
        return m.logits(IDS)


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


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("source", ["hf", "ruby", "f32", "f16", "q8_0"])
def test_streamed_upload_equals_whole_tensor_upload(
    tiny_models, sources, source, dtype, monkeypatch
):
    for model in tiny_models:
        weights = load_model(sources[model.name][source]).weights
        with monkeypatch.context() as m:
            m.setattr(fast_mod, "upload_weights", whole_tensor_upload)
            want = logits(weights, dtype)
        with monkeypatch.context() as m:
            m.setattr(upload_mod, "SLICE_VALUES", 3 * model.config.n_embd)  # 3-row slices
            got = logits(weights, dtype)
        if not np.array_equal(got, want):
            d = np.abs(got.astype(np.float64) - want)
            at = np.unravel_index(int(d.argmax()), d.shape)
            pytest.fail(f"{model.name} {source} as {dtype}: max-abs {d.max():.3e} at {at}")


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
    logits(weights, "f16")
    assert most[0] <= 2 * upload_mod.WORKERS, most[0]
