"""Odd arguments from issue 15 (items 1, 10, 11, 12): each was a silent wrong result.

- a stop string given as a str (not a list) was split into characters;
- the full-forward engine asked for one position returned shape (1,), not (1, vocab);
- integers past the C types wrapped (ctypes converts modulo 2**bits), floats and bools
  passed where an int is meant;
- a NaN max-abs threshold passed any difference.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpt2
import tinynn
from gpt2.cli import main
from gpt2.parity import compare, write_dump
from tinynn.session import INT32, INT64, c_integer

T1 = ["--threads", "1"]


# -- item 1: stop as a str ------------------------------------------------------------


def test_stop_given_as_a_str_is_one_stop_string():
    with gpt2.load(device="cpu", n_threads=1) as model:
        kw = {"max_new_tokens": 30, "temperature": 0}
        full = model.generate("The Python", **kw)
        stop = full.strip().split()[3]
        as_str = model.generate("The Python", stop=stop, **kw)
        as_list = model.generate("The Python", stop=[stop], **kw)
    assert as_str == as_list and full.startswith(as_str) and len(as_str) > 1


# -- item 10: one position through the full-forward engine ----------------------------


@pytest.mark.parametrize("engine", ["full", "kv", "fast"])
def test_logits_of_one_position_keep_the_vocab_axis(tiny_model, engine):
    v = tiny_model.config.vocab_size
    with gpt2.load(tiny_model.gguf_llama, device="cpu", engine=engine, n_ctx=1) as model:
        assert model.logits([5]).shape == (1, v)


def test_cli_logits_full_engine_one_id(tiny_model, capsys, tmp_path):
    out = tmp_path / "l.txt"
    argv = ["logits", "--model", tiny_model.gguf_llama, "--engine", "full", "--device", "cpu"]
    code = main([str(a) for a in [*argv, "--ids", "5", "--out", out, *T1]])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.read_text().split()) == tiny_model.config.vocab_size


def test_tensor_shapes_keep_the_axes_asked_for():
    with tinynn.Session("cpu", n_threads=1) as s:
        w = s.input_2d_f32_persistent(3, 4)  # (3, 4)
        s.finalize_weights()
        x = s.input_2d_f32(1, 4)  # one row: still 2-D
        assert x.shape == (1, 4) and s.input_typed("f32", (4, 1, 1)).shape == (1, 1, 4)
        assert s.input_1d_i32(1).shape == (1,) and s.view_1d(x, 1, 0).shape == (1,)
        y = s.set_output(s.matmul(w, x))  # x @ w.T: (1, 3)
        best = s.set_output(s.argmax(y))  # (1,)
        s.realize(best)
        w.upload(np.arange(12, dtype=np.float32).reshape(3, 4))
        x.upload(np.ones((1, 4), np.float32))
        s.compute()
        assert y.download().shape == (1, 3) and best.download().shape == (1,)


# -- item 11: integers that do not fit the C types ----------------------------------------


def test_c_integer_bounds_and_types():
    assert c_integer(2**63 - 1, "n") == 2**63 - 1 and c_integer(np.int32(-3), "n") == -3
    for bad in (2**63, -(2**63) - 1, 2**64 + 4):
        with pytest.raises(ValueError, match="int64"):
            c_integer(bad, "n", INT64)
    with pytest.raises(ValueError, match="int32"):
        c_integer(2**31, "n", INT32)
    for bad in (True, 1.0, 1.9, "1", None, np.float32(1)):
        with pytest.raises(TypeError, match="must be an integer"):
            c_integer(bad, "n")


@pytest.mark.parametrize(
    "case",
    [
        "upload_offset",
        "download_offset",
        "concat_dim",
        "view_1d",
        "view_2d_stride",
        "view_4d",
        "n_threads",
        "float_ids",
        "bool_ids",
        "wide_ids",
        "float_shape",
        "permute_axis",
        "top_k",
    ],
)
def test_integers_past_the_c_types_are_refused(case):
    with tinynn.Session("cpu", n_threads=1) as s:
        w = s.input_typed_persistent("f32", (4, 2))
        s.finalize_weights()
        ids = s.input_1d_i32(2)
        calls = {
            "upload_offset": lambda: w.upload(np.ones(1, np.float32), offset=2**64 + 4),
            "download_offset": lambda: w.download_into(np.empty(1, np.float32), 2**64),
            "concat_dim": lambda: s.concat(w, w, 2**32 + 1),
            "view_1d": lambda: s.view_1d(w, 2**64 + 1, 0),
            "view_2d_stride": lambda: s.view_2d(w, 4, 1, 2**64 + 16, 0),
            "view_4d": lambda: s.view_4d(w, (4, 1, 1, 2**64 + 1), (16, 16, 16), 0),
            "n_threads": lambda: setattr(s, "n_threads", 2**32 + 1),
            "float_ids": lambda: ids.upload([1.9, 0]),
            "bool_ids": lambda: ids.upload([True, False]),
            "wide_ids": lambda: ids.upload([2**32 + 1, 0]),
            "float_shape": lambda: s.input_typed("f32", (4.0, 2)),
            "permute_axis": lambda: s.permute(w, 2**32, 1, 2, 3),
            "top_k": lambda: s.top_k(w, 2**64 + 1),
        }
        with pytest.raises((ValueError, TypeError)):
            calls[case]()
        assert s.n_threads == 1  # nothing wrapped into a call that succeeded
        w.upload(np.arange(8, dtype=np.float32).reshape(2, 4))
        assert np.array_equal(w.download(), np.arange(8, dtype=np.float32).reshape(2, 4))


# -- item 12: a NaN threshold ---------------------------------------------------------------


def test_nan_max_abs_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_dump(a, np.array([0.0, 1.0, 2.0]))
    write_dump(b, np.array([0.0, 1.0, 900.0]))
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="max_abs"):
            compare(np.zeros(3), np.zeros(3), max_abs=bad)
    assert compare(np.zeros(3), np.zeros(3), max_abs=float("inf")).passed
    for threshold in ("nan", "NaN", "-1"):
        argv = ["parity", "compare", "--ours", str(a), "--ref", str(b)]
        code = main([*argv, "--max-abs", threshold])
        _, err = capsys.readouterr()
        assert code == 2 and "max_abs" in err, (threshold, code, err)
