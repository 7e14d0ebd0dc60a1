"""Misuse of libtinynn that must raise, never abort the process.

Each case misuses the binding or the raw C functions and names the exception
it expects and a key phrase of its message. ``tests/tinynn/test_errors.py``
runs every case in a child process (``python -m tests.tinynn.misuse_cases``:
exit code 0 means each case raised as expected, a negative code means a
signal, i.e. the no-abort contract is broken) and then in-process.

The child prints one line per case so a crash can be pinned on the case
that was running: ``START name``, then ``OK name``, ``SKIP name: why`` or
``FAIL name: why``. ``--skip NAME`` (repeatable) leaves a case out.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import tinynn
from tinynn import Session, TinyNNError


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[], None]
    raises: type[BaseException]
    phrase: str  # must appear in the exception's message


class CaseSkipped(Exception):
    """The case does not apply on this machine (e.g. CUDA is present)."""


CASES: list[Case] = []


def case(raises: type[BaseException], phrase: str):
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        CASES.append(Case(fn.__name__, fn, raises, phrase))
        return fn

    return register


def lib() -> ctypes.CDLL:
    return tinynn._lib.load()


def realized(s: Session, rows: int = 2, cols: int = 3):
    """A realized graph y = 2 x on s: returns (x, y)."""
    x = s.input_2d_f32(rows, cols)
    y = s.set_output(s.scale(x, 2.0))
    s.realize(y)
    return x, y


def f32_1d(s: Session, n: int):
    return s.input_typed("f32", [n])


# ---- shapes -----------------------------------------------------------------


@case(TinyNNError, "do not fit")
def matmul_mismatched_k():
    with Session() as s:
        s.matmul(s.input_2d_f32(3, 4), s.input_2d_f32(2, 5))


@case(TinyNNError, "cannot be broadcast")
def add_impossible_broadcast():
    with Session() as s:
        s.add(s.input_typed("f32", [6, 4]), s.input_typed("f32", [4, 4]))


@case(TinyNNError, "cannot be broadcast")
def mul_larger_b_than_a():
    with Session() as s:
        s.mul(s.input_typed("f32", [4]), s.input_typed("f32", [4, 2]))


@case(TinyNNError, "reaches byte")
def view_1d_past_the_end():
    with Session() as s:
        s.view_1d(f32_1d(s, 10), 8, 12)  # 32 bytes at 12 in a 40-byte tensor


@case(TinyNNError, "reaches byte")
def view_2d_strided_past_the_end():
    # 4 rows of 1 float, 48 bytes apart: dense size 16 fits, the real extent
    # (4 + 3 * 48 = 148 bytes) does not fit the 128-byte tensor.
    with Session() as s:
        s.view_2d(s.input_typed("f32", [8, 4]), 1, 4, 48, 0)


@case(TinyNNError, "reaches byte")
def view_3d_past_the_end():
    with Session() as s:
        s.view_3d(s.input_typed("f32", [4, 3, 2]), 4, 3, 2, 16, 48, 4)


@case(TinyNNError, "reaches byte")
def view_2d_stride_product_past_int64():
    """nb1 * ne1 (the stride of the unused axes) overflowed int64 before the check:
    undefined behaviour, reported by UBSan (the integer-ranges fuzz family found it)."""
    with Session() as s:
        s.view_2d(s.input_typed("f32", [8, 4]), 4, 2**62, 2**62, 0)


@case(TinyNNError, "reaches byte")
def view_3d_stride_product_past_int64():
    with Session() as s:
        s.view_3d(s.input_typed("f32", [4, 3, 2]), 4, 3, 2**62, 16, 2**62, 0)


@case(TinyNNError, "offset=-4 is negative")
def view_negative_offset():
    with Session() as s:
        s.view_1d(f32_1d(s, 10), 2, -4)


@case(TinyNNError, "must be positive")
def view_zero_elements():
    with Session() as s:
        s.view_2d(s.input_typed("f32", [8, 4]), 0, 4, 32, 0)


@case(TinyNNError, "cannot reshape")
def reshape_wrong_element_count():
    with Session() as s:
        s.reshape(s.input_2d_f32(3, 4), 5, 2)


@case(TinyNNError, "must be positive")
def reshape_negative_axis():
    with Session() as s:
        s.reshape(s.input_2d_f32(3, 4), -12, -1)


@case(TinyNNError, "must be contiguous")
def reshape_non_contiguous():
    with Session() as s:
        s.reshape(s.transpose(s.input_2d_f32(3, 4)), 12)


@case(TinyNNError, "not a permutation")
def permute_repeated_axis():
    with Session() as s:
        s.permute(s.input_2d_f32(3, 4), 0, 0, 1, 2)


@case(TinyNNError, "not a permutation")
def permute_axis_out_of_range():
    with Session() as s:
        s.permute(s.input_2d_f32(3, 4), 0, 1, 2, 4)


@case(TinyNNError, "differ on axis")
def concat_mismatched_axes():
    with Session() as s:
        s.concat(s.input_2d_f32(3, 4), s.input_2d_f32(2, 5), 0)


@case(TinyNNError, "dim=4")
def concat_bad_dim():
    with Session() as s:
        a = s.input_2d_f32(3, 4)
        s.concat(a, a, 4)


@case(TinyNNError, "different element counts")
def cpy_mismatched_counts():
    with Session() as s:
        s.cpy(s.input_2d_f32(3, 4), s.input_2d_f32(2, 4))


@case(TinyNNError, "does not fit")
def soft_max_ext_mask_wrong_shape():
    with Session() as s:
        scores = s.input_typed("f32", [9, 4, 2])
        s.soft_max_ext(scores, s.input_typed("f32", [8, 4]), 0.5)  # ne0 != 9


@case(TinyNNError, "does not fit")
def soft_max_ext_mask_too_few_rows():
    with Session() as s:
        scores = s.input_typed("f32", [9, 4])
        s.soft_max_ext(scores, s.input_typed("f16", [9, 3]), 0.5)


@case(TinyNNError, "mask")
def soft_max_ext_max_bias_without_mask():
    # ggml_soft_max_ext asserts a mask whenever max_bias > 0 (ALiBi).
    with Session() as s:
        s.soft_max_ext(s.input_2d_f32(2, 4), None, 1.0, 0.5)


@case(TinyNNError, "max_bias")
def soft_max_ext_negative_max_bias():
    with Session() as s:
        s.soft_max_ext(s.input_2d_f32(2, 4), None, 1.0, -1.0)


@case(TinyNNError, "do not fit")
def flash_attn_ext_mismatched_head_size():
    with Session() as s:
        q = s.input_typed("f32", [32, 3, 4])
        k = s.input_typed("f16", [16, 10, 4])
        v = s.input_typed("f16", [16, 10, 4])
        s.flash_attn_ext(q, k, v, None, 0.25)


@case(TinyNNError, "do not fit")
def flash_attn_ext_k_v_lengths_differ():
    with Session() as s:
        q = s.input_typed("f32", [32, 3, 4])
        k = s.input_typed("f16", [32, 10, 4])
        v = s.input_typed("f16", [32, 9, 4])
        s.flash_attn_ext(q, k, v, None, 0.25)


@case(TinyNNError, "does not fit")
def flash_attn_ext_mask_wrong_shape():
    with Session() as s:
        q = s.input_typed("f32", [32, 3, 4])
        k = s.input_typed("f16", [32, 10, 4])
        v = s.input_typed("f16", [32, 10, 4])
        s.flash_attn_ext(q, k, v, s.input_typed("f16", [3, 10]), 0.25)  # transposed


@case(TinyNNError, "expected f16")
def flash_attn_ext_f32_mask():
    with Session() as s:
        q = s.input_typed("f32", [32, 3, 4])
        k = s.input_typed("f16", [32, 10, 4])
        v = s.input_typed("f16", [32, 10, 4])
        s.flash_attn_ext(q, k, v, s.input_typed("f32", [10, 3]), 0.25)


@case(TinyNNError, "does not fit")
def layer_norm_wrong_gamma_shape():
    with Session() as s:
        x = s.input_2d_f32(5, 48)
        s.layer_norm(x, s.input_typed("f32", [47]), None)


@case(TinyNNError, "does not fit")
def layer_norm_wrong_beta_shape():
    with Session() as s:
        x = s.input_2d_f32(5, 48)
        s.layer_norm(x, None, s.input_typed("f32", [48, 2]))


@case(TinyNNError, "expected 1..")
def top_k_larger_than_row():
    with Session() as s:
        s.top_k(s.input_2d_f32(2, 5), 6)


@case(TinyNNError, "not finite")
def scale_by_nan():
    with Session() as s:
        s.scale(s.input_2d_f32(2, 5), float("nan"))


@case(TinyNNError, "must be >= 0")
def diag_mask_negative_past():
    with Session() as s:
        s.diag_mask_inf(s.input_2d_f32(2, 5), -1)


@case(TinyNNError, "expected i32")
def get_rows_float_index():
    with Session() as s:
        s.get_rows(s.input_2d_f32(10, 4), f32_1d(s, 3))


@case(TinyNNError, "expected f32 or f16")
def cont_of_q8_0():
    with Session() as s:
        s.cont(s.input_typed("q8_0", [32, 2]))


# ---- sizes and types of new tensors --------------------------------------------


@case(TinyNNError, "must be positive")
def input_zero_rows():
    with Session() as s:
        s.input_2d_f32(0, 3)


@case(TinyNNError, "must be positive")
def persistent_negative_size():
    with Session() as s:
        s.input_1d_f32_persistent(-1)


@case(TinyNNError, "unsupported type 7")
def bad_dtype_id():
    with Session() as s:
        lib().tnn_input_typed(s._ptr(), 7, 4, 1, 1, 1)


@case(TinyNNError, "unsupported type 99")
def type_row_size_bad_type():
    lib().tnn_type_row_size(99, 32)


@case(TinyNNError, "multiple of 32")
def q8_0_row_not_whole_blocks():
    with Session() as s:
        s.input_typed_persistent("q8_0", [48, 2])


@case(TinyNNError, "too large")
def absurd_size():
    with Session() as s:
        s.input_typed("f32", [1 << 40, 1 << 20])


@case(ValueError, "dtype must be one of")
def unknown_dtype_name():
    with Session() as s:
        s.input_typed("bf16", [4])


@case(ValueError, "device must be")
def unknown_device():
    Session("tpu")


# ---- uploads and downloads --------------------------------------------------------


@case(TinyNNError, "do not fit")
def upload_more_bytes_than_the_tensor():
    with Session() as s:
        x, _ = realized(s)
        x.upload(np.ones((3, 3), np.float32))


@case(TinyNNError, "do not fit")
def upload_past_the_end_at_offset():
    with Session() as s:
        x, _ = realized(s)
        x.upload(np.ones(2, np.float32), offset=20)


@case(TinyNNError, "do not fit")
def upload_negative_offset():
    with Session() as s:
        x, _ = realized(s)
        x.upload(np.ones(2, np.float32), offset=-4)


@case(TinyNNError, "do not fit")
def raw_download_too_many_bytes():
    with Session() as s:
        _, y = realized(s)  # 24 bytes
        buf = np.empty(1000, np.uint8)
        lib().tnn_download_f32(s._ptr(), y.handle, buf.ctypes.data, buf.nbytes, 0)


@case(TinyNNError, "do not fit")
def raw_download_negative_bytes():
    with Session() as s:
        _, y = realized(s)
        buf = np.empty(24, np.uint8)
        lib().tnn_download_raw(s._ptr(), y.handle, buf.ctypes.data, -8, 0)


@case(TinyNNError, "do not fit")
def download_into_past_the_end():
    with Session() as s:
        _, y = realized(s)
        y.download_into(np.empty(4, np.float32), offset=16)


@case(TinyNNError, "not realized")
def compute_io_before_realize():
    with Session() as s:
        x = s.input_2d_f32(2, 3)
        s.scale(x, 2.0)
        s.compute_io(x, np.ones((2, 3), np.float32))


@case(TinyNNError, "do not fit")
def raw_compute_io_input_too_large():
    with Session() as s:
        x, y = realized(s)
        buf = np.ones(100, np.float32)
        out = np.empty(6, np.float32)
        lib().tnn_compute_io(
            s._ptr(), x.handle, buf.ctypes.data, buf.nbytes, y.handle, out.ctypes.data, 24
        )


@case(TinyNNError, "data is NULL")
def raw_compute_io_null_output_data():
    with Session() as s:
        x, y = realized(s)
        buf = np.ones(6, np.float32)
        lib().tnn_compute_io(s._ptr(), x.handle, buf.ctypes.data, 24, y.handle, None, 24)


@case(TinyNNError, "data is NULL")
def raw_upload_null_data():
    with Session() as s:
        x, _ = realized(s)
        lib().tnn_upload_f32(s._ptr(), x.handle, None, 8, 0)


@case(TypeError, "expected a float32")
def upload_wrong_numpy_dtype():
    with Session() as s:
        x, _ = realized(s)
        x.upload(np.ones((2, 3), np.float64))


@case(TypeError, "expected a int32")
def upload_float_to_index():
    with Session() as s:
        table = s.input_2d_f32_persistent(10, 4)
        s.finalize_weights()
        idx = s.input_1d_i32(2)
        s.realize(s.set_output(s.get_rows(table, idx)))
        idx.upload(np.array([1.0, 2.0]))


@case(TinyNNError, "expected f16")
def raw_upload_typed_to_wrong_type():
    with Session() as s:
        x, _ = realized(s)
        buf = np.zeros(6, np.float16)
        lib().tnn_upload_f16(s._ptr(), x.handle, buf.ctypes.data, buf.nbytes, 0)


@case(TinyNNError, "realize a graph that uses it first")
def upload_before_realize():
    with Session() as s:
        x = s.input_2d_f32(2, 3)
        x.upload(np.ones((2, 3), np.float32))


@case(TinyNNError, "realize a graph that uses it first")
def upload_to_an_input_outside_the_graph():
    with Session() as s:
        unused = s.input_2d_f32(2, 3)
        realized(s)
        unused.upload(np.ones((2, 3), np.float32))


@case(TinyNNError, "call tnn_finalize_weights")
def upload_persistent_before_finalize():
    with Session() as s:
        w = s.input_2d_f32_persistent(2, 3)
        w.upload(np.ones((2, 3), np.float32))


@case(TinyNNError, "not contiguous")
def download_a_transposed_view():
    with Session() as s:
        x = s.input_2d_f32(2, 3)
        t = s.set_output(s.transpose(x))
        s.add_to_graph(t)
        s.realize(s.set_output(s.scale(x, 1.0)))
        t.download()


@case(TinyNNError, "outside [0, 10)")
def get_rows_index_out_of_range():
    with Session() as s:
        table = s.input_2d_f32_persistent(10, 4)
        s.finalize_weights()
        idx = s.input_1d_i32(3)
        s.realize(s.set_output(s.get_rows(table, idx)))
        idx.upload(np.array([1, 10, 2], np.int32))


@case(TinyNNError, "outside [0, 10)")
def get_rows_negative_index():
    with Session() as s:
        table = s.input_typed_persistent("q8_0", [32, 10])
        s.finalize_weights()
        idx = s.input_1d_i32(1)
        s.realize(s.set_output(s.get_rows(table, idx)))
        idx.upload(np.array([-1], np.int32))


@case(TinyNNError, "outside [0, 6)")
def set_rows_index_out_of_range():
    with Session() as s:
        cache = s.input_typed_persistent("f16", [8, 6])
        s.finalize_weights()
        src = s.input_2d_f32(1, 8)
        idx = s.input_1d_i32(1)
        s.add_to_graph(s.set_rows(cache, src, idx))
        s.realize(s.set_output(s.scale(src, 1.0)))
        idx.upload(np.array([6], np.int32))


@case(TinyNNError, "index")
def get_rows_index_through_a_view():
    # The index reaches get_rows through a view of the input, so the upload
    # to the input is the host's last chance to see the bad value: it must be
    # refused (or the op, or the compute), never reach ggml's assert.
    with Session() as s:
        table = s.input_2d_f32_persistent(10, 4)
        s.finalize_weights()
        idx = s.input_1d_i32(4)
        rows = s.set_output(s.get_rows(table, s.view_1d(idx, 2, 0)))
        s.realize(rows)
        idx.upload(np.array([50, 50, 50, 50], np.int32))
        s.compute()


@case(TinyNNError, "index")
def persistent_index_written_before_the_graph():
    # A persistent index holds a bad value written while no graph used it;
    # a graph that gathers with it must fail in realize or compute, not abort.
    with Session() as s:
        table = s.input_2d_f32_persistent(10, 4)
        idx = s.input_typed_persistent("i32", [2])
        s.finalize_weights()
        idx.upload(np.array([3, 99], np.int32))
        s.realize(s.set_output(s.get_rows(table, idx)))
        s.compute()


@case(TinyNNError, "index")
def persistent_index_written_by_a_fork():
    # The parent's realized graph gathers with a persistent index; its fork
    # (same persistent buffer, own graph) writes a bad value into it. The
    # write or the parent's next compute must fail, not abort.
    with Session() as s:
        table = s.input_2d_f32_persistent(10, 4)
        idx = s.input_typed_persistent("i32", [2])
        s.finalize_weights()
        s.realize(s.set_output(s.get_rows(table, idx)))
        with s.fork() as child:
            child._new(idx.handle, persistent=True).upload(np.array([1, 99], np.int32))
            s.compute()


@case(TinyNNError, "expected 0 (f32) or 1 (f16)")
def cast_to_q8_0():
    with Session() as s:
        s.cast(s.input_2d_f32(2, 32), "q8_0")


@case(TinyNNError, "reaches byte")
def view_4d_past_the_end():
    with Session() as s:
        a = s.input_typed("f32", [4, 3, 2, 2])
        s.view_4d(a, (4, 3, 2, 2), (16, 48, 100), 0)


# ---- states ---------------------------------------------------------------------------


@case(TinyNNError, "not realized")
def compute_before_realize():
    with Session() as s:
        s.scale(s.input_2d_f32(2, 3), 1.0)
        s.compute()


@case(TinyNNError, "already realized")
def realize_twice():
    with Session() as s:
        _, y = realized(s)
        s.realize(y)


@case(TinyNNError, "already realized")
def op_after_realize():
    with Session() as s:
        x, _ = realized(s)
        s.scale(x, 3.0)


@case(TinyNNError, "already realized")
def input_after_realize():
    with Session() as s:
        realized(s)
        s.input_1d_i32(3)


@case(TinyNNError, "already realized")
def add_to_graph_after_realize():
    with Session() as s:
        x, y = realized(s)
        s.add_to_graph(y)


@case(TinyNNError, "no operation")
def realize_an_input():
    with Session() as s:
        s.realize(s.input_2d_f32(2, 3))


@case(TinyNNError, "already finalized")
def persistent_after_finalize():
    with Session() as s:
        s.input_2d_f32_persistent(2, 3)
        s.finalize_weights()
        s.input_2d_f32_persistent(2, 3)


@case(TinyNNError, "already finalized")
def finalize_twice():
    with Session() as s:
        s.input_2d_f32_persistent(2, 3)
        s.finalize_weights()
        s.finalize_weights()


@case(TinyNNError, "no persistent tensor")
def finalize_with_nothing_declared():
    with Session() as s:
        s.finalize_weights()


@case(TinyNNError, "finalize_weights was not called")
def realize_with_persistent_not_finalized():
    with Session() as s:
        w = s.input_2d_f32_persistent(3, 4)
        s.realize(s.set_output(s.matmul(w, s.input_2d_f32(2, 4))))


@case(TinyNNError, "not finalized")
def fork_before_finalize():
    with Session() as s:
        s.input_2d_f32_persistent(3, 4)
        s.fork()


@case(TinyNNError, "forked session cannot declare")
def fork_declares_persistent():
    with Session() as s:
        s.input_2d_f32_persistent(3, 4)
        s.finalize_weights()
        with s.fork() as child:
            child.input_2d_f32_persistent(3, 4)


@case(TinyNNError, "n_threads=0")
def zero_threads():
    with Session() as s:
        s.n_threads = 0


@case(TinyNNError, "CUDA")
def cuda_where_there_is_none():
    reason = tinynn.cuda_unavailable_reason()
    if reason is None:
        raise CaseSkipped("CUDA is available here")
    Session("cuda")


# ---- dead and foreign handles -----------------------------------------------------------


@case(ValueError, "session is closed")
def op_after_close():
    s = Session()
    x = s.input_2d_f32(2, 3)
    s.close()
    s.scale(x, 1.0)


@case(ValueError, "session is closed")
def upload_after_close():
    s = Session()
    x, _ = realized(s)
    s.close()
    x.upload(np.ones((2, 3), np.float32))


@case(ValueError, "session is closed")
def property_after_close():
    s = Session()
    s.close()
    _ = s.n_threads


@case(ValueError, "reset_for_rebuild")
def tensor_from_before_reset():
    with Session() as s:
        x, _ = realized(s)
        s.reset_for_rebuild()
        s.scale(x, 1.0)


@case(TinyNNError, "not a live tensor of this session")
def raw_tensor_from_before_reset():
    with Session() as s:
        x, _ = realized(s)
        stale = x.handle
        s.reset_for_rebuild()  # no new tensor yet: the old slot is free
        lib().tnn_scale(s._ptr(), stale, 1.0)


@case(TinyNNError, "not a live tensor of this session")
def tensor_of_another_session():
    with Session() as a, Session() as b:
        tb = b.input_2d_f32(2, 3)
        a.scale(tb, 1.0)  # Python passes b's handle to a's session


@case(TinyNNError, "not a live tensor of this session")
def raw_tensor_of_another_session():
    with Session() as a, Session() as b:
        ta = a.input_2d_f32(2, 3)
        tb = b.input_2d_f32(2, 3)
        lib().tnn_add(a._ptr(), ta.handle, tb.handle)


@case(TinyNNError, "not a live tensor of this session")
def raw_persistent_of_another_session():
    with Session() as a, Session() as b:
        w = b.input_2d_f32_persistent(2, 3)
        b.finalize_weights()
        buf = np.zeros(6, np.float32)
        lib().tnn_upload_f32(a._ptr(), w.handle, buf.ctypes.data, buf.nbytes, 0)


@case(TinyNNError, "not a live tensor of this session")
def raw_garbage_tensor_pointer():
    with Session() as s:
        buf = np.zeros(64, np.uint8)  # not a tensor at all
        lib().tnn_tensor_info(s._ptr(), buf.ctypes.data, None, None, None)


@case(TinyNNError, "is not live")
def raw_freed_session():
    s = Session()
    ptr = s._ptr()
    s.close()
    lib().tnn_compute(ptr)


@case(TinyNNError, "is not live")
def raw_freed_session_new_tensor():
    s = Session()
    ptr = s._ptr()
    s.close()
    lib().tnn_input_2d_f32(ptr, 2, 3)


@case(TinyNNError, "is not live")
def raw_garbage_session_pointer():
    buf = np.zeros(4096, np.uint8)
    lib().tnn_finalize_weights(buf.ctypes.data)


@case(TinyNNError, "session is NULL")
def raw_null_session():
    lib().tnn_realize(None, None)


@case(TinyNNError, "a is NULL")
def raw_null_tensor():
    with Session() as s:
        lib().tnn_add(s._ptr(), None, None)


@case(TinyNNError, "name is NULL")
def raw_null_name():
    with Session() as s:
        lib().tnn_set_name(s._ptr(), s.input_2d_f32(2, 3).handle, None)


@case(TinyNNError, "session is NULL")
def raw_null_backend_name():
    lib().tnn_backend_name(None)


@case(TinyNNError, "multiples of")
def index_view_between_elements():
    # a view 2 bytes into an i32 input mixes two values: every uploaded value
    # could be in range while the gathered one is not
    with Session() as s:
        s.view_1d(s.input_1d_i32(4), 2, 2)


@case(TinyNNError, "reaches byte")
def view_one_element_past_a_huge_tensor():
    # 2^60 bytes (no memory before realize): the end is 2^60 + 4, which a double
    # would round back to 2^60
    with Session() as s:
        s.view_1d(s.input_typed("f32", [2**58]), 2**58 - 16, 68)


@case(TinyNNError, "cannot reshape")
def reshape_one_element_more_of_a_huge_tensor():
    with Session() as s:
        s.reshape(s.input_typed("f32", [2**58]), 2**58 + 1, 1)


@case(TinyNNError, "too large")
def matmul_result_past_int64():
    # [1, 2^31] x [1, 2^31]: a 2^31 x 2^31 f32 result, 2^64 bytes
    with Session() as s:
        a = s.input_typed("f32", [1, 2**31])
        s.matmul(a, s.input_typed("f32", [1, 2**31]))


# ---- runner ------------------------------------------------------------------------------


def check(c: Case) -> str | None:
    """None if the case raised as expected, else what went wrong.
    CaseSkipped propagates."""
    try:
        c.run()
    except CaseSkipped:
        raise
    except c.raises as exc:
        if c.phrase.lower() not in str(exc).lower():
            return f"{type(exc).__name__} without {c.phrase!r} in its message: {exc}"
        return None
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        return f"expected {c.raises.__name__} ({c.phrase!r}), got {type(exc).__name__}: {exc}"
    return f"expected {c.raises.__name__} ({c.phrase!r}), nothing was raised"


def main(argv: list[str]) -> int:
    skip = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--skip"}
    failed = 0
    for c in CASES:
        if c.name in skip:
            continue
        print(f"START {c.name}", flush=True)
        try:
            why = check(c)
        except CaseSkipped as exc:
            print(f"SKIP {c.name}: {exc}", flush=True)
            continue
        if why is None:
            print(f"OK {c.name}", flush=True)
        else:
            failed += 1
            print(f"FAIL {c.name}: {why}", flush=True)
    print(f"DONE {len(CASES) - len(skip)} cases, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
