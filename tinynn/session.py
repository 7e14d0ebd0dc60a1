"""Session and Tensor: Python owners of libtinynn's handles.

A Session owns one native session (its backend, scheduler, persistent buffer
and compute graph). A Tensor holds its session and the graph generation it was
made in, so a handle from before ``reset_for_rebuild`` or after ``close`` is
refused in Python instead of reaching C.

Method names follow the C functions (``input_2d_f32_persistent``,
``matmul``, ``realize``...) so code ported from the Ruby engine reads alike.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np

from ._lib import cuda_build_hint, load
from .dtypes import DTYPES, GGML_TYPE_IDS, SAMPLING_DTYPE, dtype_name
from .errors import TinyNNError


class Tensor:
    """A ggml tensor of a session. ``ne`` is ggml's shape (ne0 fastest);
    ``shape`` is the matching row-major numpy shape (ne reversed).

    ggml keeps four axes and no count of them, so the count (``ndim``) is
    kept here: the one a constructor was asked for (an input of (rows, cols)
    is 2-D even when rows is 1), and for an op the one its result takes from
    its operands (see Session). ``shape`` has ``ndim`` axes, more only where
    ggml's ne has a larger axis past them."""

    __slots__ = (
        "_session", "_handle", "_generation", "persistent", "ne", "nb", "dtype", "_nbytes", "ndim",
        "packed",
    )  # fmt: skip

    def __init__(self, session: Session, handle: int, persistent: bool, ndim: int = 1):
        self._session = session
        self._handle = handle
        self._generation = None if persistent else session._generation
        self.persistent = persistent
        lib = session._lib
        ne = (ctypes.c_int64 * 4)()
        nb = (ctypes.c_int64 * 4)()
        type_id = ctypes.c_int()
        lib.tnn_tensor_info(session._ptr(), handle, ne, nb, ctypes.byref(type_id))
        self.ne = tuple(ne)
        self.nb = tuple(nb)
        self.dtype = dtype_name(type_id.value)
        self._nbytes: int | None = None
        used = 4  # axes up to the last one longer than 1
        while used > 1 and self.ne[used - 1] == 1:
            used -= 1
        self.ndim = max(used, min(ndim, 4))
        self.packed = False  # laid out in tiles by Session.pack_rows

    # -- identity ---------------------------------------------------------
    @property
    def handle(self) -> int:
        """The native pointer, after checking this tensor is still valid."""
        s = self._session
        s._ptr()
        if self._generation is not None and self._generation != s._generation:
            raise ValueError(
                "tensor belongs to a graph dropped by reset_for_rebuild; build it again"
            )
        return self._handle

    @property
    def session(self) -> Session:
        return self._session

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne[: self.ndim]))

    @property
    def nbytes(self) -> int:
        if self._nbytes is None:  # asked on every download: once is enough
            rows = self.ne[1] * self.ne[2] * self.ne[3]
            row = self._session._lib.tnn_type_row_size(GGML_TYPE_IDS[self.dtype], self.ne[0])
            self._nbytes = rows * row
        return self._nbytes

    def set_name(self, name: str) -> Tensor:
        self._session._lib.tnn_set_name(self._session._ptr(), self.handle, name.encode())
        return self

    def __repr__(self) -> str:
        kind = "persistent" if self.persistent else "compute"
        return f"Tensor({self.dtype}, ne={list(self.ne)}, {kind})"

    # -- data ---------------------------------------------------------------
    def upload(self, data: np.ndarray | Sequence, offset: int = 0) -> None:
        """Copies ``data`` into the tensor at byte ``offset``. The array's
        dtype must match: float32 for f32, int32 for i32, float16 for f16,
        uint8 (raw blocks) for q8_0. Any byte count up to the tensor's end."""
        array = _as_buffer(data, self.dtype)
        fn = {
            "f32": "tnn_upload_f32",
            "i32": "tnn_upload_i32",
            "f16": "tnn_upload_f16",
        }.get(self.dtype, "tnn_upload_raw")
        lib = self._session._lib
        offset = _i64(offset, "offset")
        getattr(lib, fn)(self._session._ptr(), self.handle, array.ctypes.data, array.nbytes, offset)

    def download(self) -> np.ndarray:
        """A copy of the tensor's data as a numpy array of ``shape``
        (uint8 bytes for q8_0)."""
        out = self._host_array()
        fn = "tnn_download_raw" if self.dtype == "q8_0" else f"tnn_download_{self.dtype}"
        getattr(self._session._lib, fn)(
            self._session._ptr(), self.handle, out.ctypes.data, out.nbytes, 0
        )
        return out

    def download_into(self, out: np.ndarray, offset: int = 0) -> np.ndarray:
        """Fills ``out`` (C-contiguous, the tensor's dtype) with ``out.nbytes``
        bytes of the tensor from byte ``offset``: no allocation per call."""
        self._check_host_array(out, "out")
        offset = _i64(offset, "offset")
        lib = self._session._lib
        lib.tnn_download_raw(self._session._ptr(), self.handle, out.ctypes.data, out.nbytes, offset)
        return out

    def _host_array(self) -> np.ndarray:
        """An uninitialised array for the tensor's data: ``shape`` of its
        dtype, or its bytes (uint8) for q8_0."""
        if self.dtype == "q8_0":
            return np.empty(self.nbytes, dtype=np.uint8)
        return np.empty(self.shape, dtype=DTYPES[self.dtype])

    def _check_host_array(self, array: np.ndarray, name: str) -> None:
        """array can receive the tensor's bytes: writeable, C-contiguous, its dtype."""
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous array")
        if array.dtype != _host_dtype(self.dtype):
            raise TypeError(f"{name} is {array.dtype}, tensor is {self.dtype}")


def _host_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a tensor's bytes: uint8 for block-quantized types."""
    return np.dtype(DTYPES.get(dtype, np.uint8))


def _as_buffer(data, dtype: str) -> np.ndarray:
    want = _host_dtype(dtype)
    array = np.asarray(data)
    if array.dtype != want:
        # Lossless widening of Python ints/floats is fine; silent narrowing
        # of an array of another dtype is not.
        if isinstance(data, np.ndarray):
            raise TypeError(f"expected a {want} array for a {dtype} tensor, got {array.dtype}")
        integers = want.kind in "iu"
        ok = "iuO" if integers else "iuf"  # O: Python ints past int64, checked below
        if array.size and array.dtype.kind not in ok:
            # [1.9] for an i32 tensor would be row 1, [True] a 1
            what = "integers" if integers else "numbers"
            raise TypeError(f"expected {what} for a {dtype} tensor, got {array.dtype}")
        if array.size and integers:
            info = np.iinfo(want)
            lo, hi = int(array.min()), int(array.max())
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise ValueError(f"{bad} does not fit the {dtype} tensor ({info.min}..{info.max})")
        array = np.asarray(data, dtype=want)
    return np.ascontiguousarray(array)


def _t(x: Tensor | None) -> int | None:
    return None if x is None else x.handle


def _input_buffer(inp: Tensor | None, data) -> np.ndarray | None:
    """The bytes a step uploads into ``inp`` (None without an input tensor)."""
    if inp is not None:
        return _as_buffer(data, inp.dtype)
    if data is not None:
        raise ValueError("data given without an input tensor")
    return None


class Session:
    """One libtinynn session: ``Session("cpu")`` or ``Session("cuda")``.

    CUDA asked for where there is none raises TinyNNError with the reason.
    Use as a context manager, or call ``close()`` (idempotent).
    """

    def __init__(self, device: str = "cpu", *, n_threads: int | None = None, _parent=None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self._lib = load()
        self._generation = 0
        self._handle = None
        self._parent = _parent
        if _parent is not None:
            self._handle = self._lib.tnn_session_fork(_parent._ptr())
        elif device == "cuda":
            try:
                self._handle = self._lib.tnn_session_new(1)
            except TinyNNError as exc:
                raise TinyNNError(f"{exc}{cuda_build_hint()}", exc.code) from None
        else:
            self._handle = self._lib.tnn_session_new(0)
        self.device = device
        if n_threads is not None:
            self.n_threads = n_threads

    def fork(self) -> Session:
        """A session sharing this one's persistent tensors, with its own
        graph (see tnn_session_fork)."""
        return Session(self.device, _parent=self)

    # -- lifetime ---------------------------------------------------------
    def _ptr(self) -> int:
        if self._handle is None:
            raise ValueError("session is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._lib.tnn_session_free(handle)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- properties -------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self._lib.tnn_backend_name(self._ptr()).decode()

    @property
    def n_threads(self) -> int:
        return self._lib.tnn_get_n_threads(self._ptr())

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        self._lib.tnn_set_n_threads(self._ptr(), _i32(n, "n_threads"))

    def device_memory(self) -> tuple[int, int]:
        """(free, total) bytes of the session's device."""
        free, total = ctypes.c_int64(), ctypes.c_int64()
        self._lib.tnn_device_memory(self._ptr(), ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    @property
    def weights_nbytes(self) -> int:
        return self._lib.tnn_weights_nbytes(self._ptr())

    @property
    def n_nodes(self) -> int:
        return self._lib.tnn_graph_n_nodes(self._ptr())

    @property
    def n_splits(self) -> int:
        """Backend-sized parts of the realized graph (1: no mid-graph copies)."""
        return self._lib.tnn_graph_n_splits(self._ptr())

    # -- tensor constructors ------------------------------------------------
    def _new(self, handle: int, persistent: bool = False, ndim: int = 1) -> Tensor:
        return Tensor(self, handle, persistent, ndim)

    def input_2d_f32_persistent(self, rows: int, cols: int) -> Tensor:
        return self._new(
            self._lib.tnn_input_2d_f32_persistent(self._ptr(), *_i64s(rows=rows, cols=cols)),
            True,
            2,
        )

    def input_1d_f32_persistent(self, n: int) -> Tensor:
        return self._new(self._lib.tnn_input_1d_f32_persistent(self._ptr(), _i64(n, "n")), True, 1)

    def input_typed_persistent(self, dtype: str, ne: Sequence[int]) -> Tensor:
        ne4 = _ne4(ne)
        handle = self._lib.tnn_input_typed_persistent(self._ptr(), _type_id(dtype), *ne4)
        return self._new(handle, True, len(ne))

    def finalize_weights(self) -> None:
        self._lib.tnn_finalize_weights(self._ptr())

    def move_to_huge_pages(self, tensors: Sequence[Tensor]) -> None:
        """Has a background thread move these persistent tensors' memory (weights,
        written) onto huge pages (tnn_move_to_huge_pages); returns at once."""
        handles = (ctypes.c_void_p * max(len(tensors), 1))(*(t.handle for t in tensors))
        self._lib.tnn_move_to_huge_pages(self._ptr(), handles, _i32(len(tensors), "n_tensors"))

    def input_1d_i32(self, n: int) -> Tensor:
        return self._new(self._lib.tnn_input_1d_i32(self._ptr(), _i64(n, "n")), ndim=1)

    def input_2d_f32(self, rows: int, cols: int) -> Tensor:
        return self._new(
            self._lib.tnn_input_2d_f32(self._ptr(), *_i64s(rows=rows, cols=cols)), ndim=2
        )

    def input_typed(self, dtype: str, ne: Sequence[int]) -> Tensor:
        return self._new(
            self._lib.tnn_input_typed(self._ptr(), _type_id(dtype), *_ne4(ne)), ndim=len(ne)
        )

    # -- ops ------------------------------------------------------------------
    def get_rows(self, table: Tensor, idx: Tensor) -> Tensor:
        return self._new(
            self._lib.tnn_get_rows(self._ptr(), table.handle, idx.handle), ndim=idx.ndim + 1
        )

    def pack_rows(self, w: Tensor) -> Tensor:
        """Lays the persistent f32/f16 weight ``w`` [k, n] out in tiles for
        ``packed_matmul`` (CPU sessions, in place, before any fork or graph;
        see tnn_pack_rows). Returns w, now readable only by the packed ops
        (``download`` unpacks it)."""
        self._lib.tnn_pack_rows(self._ptr(), w.handle)
        w.packed = True
        return w

    def packed_matmul(self, w: Tensor, x: Tensor) -> Tensor:
        """x W for a packed w [k, n], x f32 [k, N]: f32 [n, N], each element
        summed in one order whatever N (tnn_packed_matmul)."""
        return self._new(self._lib.tnn_packed_matmul(self._ptr(), w.handle, x.handle), ndim=2)

    def packed_get_rows(self, w: Tensor, idx: Tensor) -> Tensor:
        """Rows of a packed w [k, n] picked by idx (i32 [m]): f32 [k, m]."""
        return self._new(self._lib.tnn_packed_get_rows(self._ptr(), w.handle, idx.handle), ndim=2)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(
            self._lib.tnn_add(self._ptr(), a.handle, b.handle), ndim=max(a.ndim, b.ndim)
        )

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(
            self._lib.tnn_mul(self._ptr(), a.handle, b.handle), ndim=max(a.ndim, b.ndim)
        )

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(self._lib.tnn_matmul(self._ptr(), a.handle, b.handle), ndim=b.ndim)

    def port_matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """matmul(a, b) of 2-D f32 a [k, M] and b [k, N] -> [M, N], each element
        summed in the port engines' fixed order (native/port_dot.c): the same
        bits on every x86-64 CPU, whichever CPU level computes it (CPU_KERNELS).
        CPU sessions only."""
        return self._new(self._lib.tnn_port_matmul(self._ptr(), a.handle, b.handle), ndim=2)

    def port_norm(self, x: Tensor, eps: float = 1e-5) -> Tensor:
        """(x - mean) / sqrt(var + eps) along ne0 of a 2-D f32 x, in the port
        engines' fixed order (native/port_rows.c); CPU sessions only."""
        return self._new(self._lib.tnn_port_norm(self._ptr(), x.handle, eps), ndim=2)

    def port_softmax(self, x: Tensor) -> Tensor:
        """Softmax along ne0 of a 2-D f32 x, in the port engines' fixed order
        (native/port_rows.c); CPU sessions only."""
        return self._new(self._lib.tnn_port_softmax(self._ptr(), x.handle), ndim=2)

    def scale(self, a: Tensor, s: float) -> Tensor:
        return self._new(self._lib.tnn_scale(self._ptr(), a.handle, s), ndim=a.ndim)

    def diag_mask_inf(self, a: Tensor, n_past: int) -> Tensor:
        return self._new(
            self._lib.tnn_diag_mask_inf(self._ptr(), a.handle, _i64(n_past, "n_past")), ndim=a.ndim
        )

    def softmax(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_softmax(self._ptr(), a.handle), ndim=a.ndim)

    def soft_max_ext(
        self, a: Tensor, mask: Tensor | None, scale: float, max_bias: float = 0.0
    ) -> Tensor:
        return self._new(
            self._lib.tnn_soft_max_ext(self._ptr(), a.handle, _t(mask), scale, max_bias),
            ndim=a.ndim,
        )

    def layer_norm(
        self, x: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float = 1e-5
    ) -> Tensor:
        return self._new(
            self._lib.tnn_layer_norm(self._ptr(), x.handle, _t(gamma), _t(beta), eps), ndim=x.ndim
        )

    def gelu(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_gelu(self._ptr(), a.handle), ndim=a.ndim)

    def gelu_exact(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_gelu_exact(self._ptr(), a.handle), ndim=a.ndim)

    def concat(self, a: Tensor, b: Tensor, dim: int) -> Tensor:
        return self._new(
            self._lib.tnn_concat(self._ptr(), a.handle, b.handle, _i32(dim, "dim")),
            ndim=max(a.ndim, b.ndim, dim + 1),
        )

    def view_1d(self, a: Tensor, ne0: int, offset: int) -> Tensor:
        return self._new(
            self._lib.tnn_view_1d(self._ptr(), a.handle, *_i64s(ne0=ne0, offset=offset)), ndim=1
        )

    def view_2d(self, a: Tensor, ne0: int, ne1: int, nb1: int, offset: int) -> Tensor:
        return self._new(
            self._lib.tnn_view_2d(
                self._ptr(), a.handle, *_i64s(ne0=ne0, ne1=ne1, nb1=nb1, offset=offset)
            ),
            ndim=2,
        )

    def view_3d(
        self, a: Tensor, ne0: int, ne1: int, ne2: int, nb1: int, nb2: int, offset: int
    ) -> Tensor:
        return self._new(
            self._lib.tnn_view_3d(
                self._ptr(),
                a.handle,
                *_i64s(ne0=ne0, ne1=ne1, ne2=ne2, nb1=nb1, nb2=nb2, offset=offset),
            ),
            ndim=3,
        )

    def view_4d(self, a: Tensor, ne: Sequence[int], nb: Sequence[int], offset: int) -> Tensor:
        """4-D view: ne = (ne0..ne3), nb = (nb1, nb2, nb3) byte strides."""
        ne, nb = _i64_list(ne, "ne", 4), _i64_list(nb, "nb", 3)
        offset = _i64(offset, "offset")
        return self._new(self._lib.tnn_view_4d(self._ptr(), a.handle, *ne, *nb, offset), ndim=4)

    def cast(self, a: Tensor, dtype: str) -> Tensor:
        return self._new(self._lib.tnn_cast(self._ptr(), a.handle, _type_id(dtype)), ndim=a.ndim)

    def reshape(self, a: Tensor, *ne: int) -> Tensor:
        """New shape in ggml order (ne0 first), 1 to 4 axes."""
        ne4 = _ne4(ne)
        return self._new(self._lib.tnn_reshape_4d(self._ptr(), a.handle, *ne4), ndim=len(ne))

    def permute(self, a: Tensor, ax0: int, ax1: int, ax2: int, ax3: int) -> Tensor:
        return self._new(
            self._lib.tnn_permute(
                self._ptr(), a.handle, *_i32_list((ax0, ax1, ax2, ax3), "axis", 4)
            ),
            ndim=4,
        )

    def transpose(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_transpose(self._ptr(), a.handle), ndim=max(a.ndim, 2))

    def cont(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_cont(self._ptr(), a.handle), ndim=a.ndim)

    def cpy(self, a: Tensor, b: Tensor) -> Tensor:
        return self._new(self._lib.tnn_cpy(self._ptr(), a.handle, b.handle), ndim=b.ndim)

    def set_rows(self, dst: Tensor, src: Tensor, idx: Tensor) -> Tensor:
        return self._new(
            self._lib.tnn_set_rows(self._ptr(), dst.handle, src.handle, idx.handle), ndim=dst.ndim
        )

    def flash_attn_ext(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
    ) -> Tensor:
        return self._new(
            self._lib.tnn_flash_attn_ext(
                self._ptr(), q.handle, k.handle, v.handle, _t(mask), scale
            ),
            ndim=q.ndim,
        )

    def argmax(self, a: Tensor) -> Tensor:
        return self._new(self._lib.tnn_argmax(self._ptr(), a.handle), ndim=max(a.ndim - 1, 1))

    def top_k(self, a: Tensor, k: int) -> Tensor:
        return self._new(self._lib.tnn_top_k(self._ptr(), a.handle, _i64(k, "k")), ndim=a.ndim)

    # -- graph ------------------------------------------------------------------
    def set_output(self, t: Tensor) -> Tensor:
        self._lib.tnn_set_output(self._ptr(), t.handle)
        return t

    def add_to_graph(self, t: Tensor) -> None:
        self._lib.tnn_add_to_graph(self._ptr(), t.handle)

    def realize(self, result: Tensor) -> None:
        self._lib.tnn_realize(self._ptr(), result.handle)

    def compute(self) -> None:
        self._lib.tnn_compute(self._ptr())

    def compute_io(
        self,
        inp: Tensor | None = None,
        data: np.ndarray | Sequence | None = None,
        out: Tensor | None = None,
        into: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """One step: uploads ``data`` into ``inp`` (from byte 0), computes,
        and returns ``out``'s data (into ``into`` when given, else a new array
        of out's shape), waiting for the device once where ``upload``,
        ``compute`` and ``download`` wait three times: a decode step's host
        overhead on CUDA. Checks as those three calls do, before any copy."""
        keep = _input_buffer(inp, data)
        in_ptr, in_nbytes = (None, 0) if keep is None else (keep.ctypes.data, keep.nbytes)
        if out is None:
            if into is not None:
                raise ValueError("into given without an output tensor")
            self._lib.tnn_compute_io(self._ptr(), _t(inp), in_ptr, in_nbytes, None, None, 0)
            return None
        if into is None:
            into = out._host_array()
        else:
            out._check_host_array(into, "into")
        self._lib.tnn_compute_io(
            self._ptr(), _t(inp), in_ptr, in_nbytes, out.handle, into.ctypes.data, into.nbytes
        )
        return into

    @property
    def can_sample_on_device(self) -> bool:
        """True when ``compute_io_sample`` runs here: a CUDA session of a library
        built with our CUDA kernels, on a device they run on (compute capability
        9.0 or newer). Elsewhere download the logits and choose on the host
        (``tinynn.sample_rows``)."""
        return self._lib.tnn_can_sample_on_device(self._ptr()) == 1

    def device_sampling_unavailable_reason(self) -> str | None:
        """Why ``compute_io_sample`` cannot run for this session; None when it can."""
        if self._lib.tnn_can_sample_on_device(self._ptr()) == 1:
            return None
        return self._lib.tnn_last_error().decode("utf-8", "replace")

    def compute_io_sample(
        self,
        inp: Tensor | None,
        data: np.ndarray | Sequence | None,
        logits: Tensor,
        records: np.ndarray,
        into: np.ndarray | None = None,
    ) -> np.ndarray:
        """One step (as ``compute_io``, without a download), then the token of
        each row of ``logits`` chosen on the device by THE SAMPLING RULE
        (native/cuda/sampling.h): int32 ids [rows], into ``into`` when given.

        logits: f32 ne = [vocab, rows] (numpy shape (rows, vocab)), an output of
        the realized graph (``set_output``) computed on the device. records: rows
        records of ``SAMPLING_DTYPE`` (temperature, top_k, top_p, uniform; the
        ranges of ``tinynn.sample_rows``), record i for row i. Only the ids come
        back (4 bytes a row), not the logits. Every argument is checked before
        anything runs: TinyNNError for a record out of range (naming its row), a
        tensor or byte count that does not fit, and where ``can_sample_on_device``
        is False (a CPU session, a library without our kernels)."""
        keep = _input_buffer(inp, data)
        in_ptr, in_nbytes = (None, 0) if keep is None else (keep.ctypes.data, keep.nbytes)
        # records with SAMPLING_DTYPE's fields (numpy would turn plain numbers into
        # records with every field set to the number)
        names = getattr(getattr(records, "dtype", None), "names", None)
        if names != SAMPLING_DTYPE.names:
            raise ValueError(
                f"records must be an array of SAMPLING_DTYPE {SAMPLING_DTYPE.names}, "
                f"got {getattr(records, 'dtype', type(records).__name__)}"
            )
        records = np.ascontiguousarray(records, dtype=SAMPLING_DTYPE)
        if records.ndim != 1:
            raise ValueError(f"records must be 1-D (one a row), got shape {records.shape}")
        if into is None:
            into = np.empty(logits.ne[1], np.int32)
        elif into.dtype != np.int32 or not into.flags.c_contiguous or not into.flags.writeable:
            raise ValueError("into must be a writeable C-contiguous int32 array")
        self._lib.tnn_compute_io_sample(
            self._ptr(),
            _t(inp),
            in_ptr,
            in_nbytes,
            logits.handle,
            records.ctypes.data,
            records.nbytes,
            into.ctypes.data,
            into.nbytes,
        )
        return into

    def reset_for_rebuild(self) -> None:
        self._lib.tnn_reset_for_rebuild(self._ptr())
        self._generation += 1


def _ne4(ne: Sequence[int]) -> list[int]:
    ne = _i64_list(ne, "ne")
    if not 1 <= len(ne) <= 4:
        raise ValueError(f"a shape has 1 to 4 axes, got {len(ne)}")
    return ne + [1] * (4 - len(ne))


# -- integers for C: checked here, because ctypes wraps them silently ----------
# (c_int64(2**64 + 4) is 4). A bool or a float where an int is meant is refused
# too: True is not a size, and 1.9 is not a row.
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)


def c_integer(value: object, name: str, bounds: tuple[int, int] = INT64) -> int:
    """value as a Python int that the C type with ``bounds`` holds exactly;
    TypeError for a non-integer (bool, float, str...), ValueError out of range."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    v = int(value)
    lo, hi = bounds
    if not lo <= v <= hi:
        bits = 32 if bounds == INT32 else 64
        raise ValueError(f"{name}={v} does not fit a C int{bits} ({lo}..{hi})")
    return v


def _i64(value: object, name: str) -> int:
    return c_integer(value, name, INT64)


def _i32(value: object, name: str) -> int:
    return c_integer(value, name, INT32)


def _i64s(**values: object) -> list[int]:
    return [_i64(v, k) for k, v in values.items()]


def _i64_list(values: Sequence, name: str, n: int | None = None) -> list[int]:
    return _int_list(values, name, n, INT64)


def _i32_list(values: Sequence, name: str, n: int | None = None) -> list[int]:
    return _int_list(values, name, n, INT32)


def _int_list(values: Sequence, name: str, n: int | None, bounds: tuple[int, int]) -> list[int]:
    values = list(values)
    if n is not None and len(values) != n:
        raise ValueError(f"{name} has {n} values, got {len(values)}")
    return [c_integer(v, f"{name}[{i}]", bounds) for i, v in enumerate(values)]


def _type_id(dtype: str) -> int:
    try:
        return GGML_TYPE_IDS[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(GGML_TYPE_IDS)}, got {dtype!r}") from None


# The CPU levels of our own kernels (the packed product, the ports' products),
# slowest first; TINYNN_CPU_KERNELS names one of them (or "auto", the best this
# CPU runs) and every op built while it is set runs that level. All give the same bits.
CPU_KERNELS = ("scalar", "avx2", "avx512")


def cpu_kernels_supported() -> tuple[str, ...]:
    """The levels of CPU_KERNELS this CPU runs ("avx2" means AVX2, FMA and F16C)."""
    mask = load().tnn_cpu_kernels_supported()
    return tuple(name for bit, name in enumerate(CPU_KERNELS) if mask & (1 << bit))


def cuda_available() -> bool:
    """True when a CUDA device can be used (see cuda_unavailable_reason)."""
    return bool(load().tnn_cuda_available())


def cuda_unavailable_reason() -> str | None:
    """Why CUDA cannot be used (and, for a CPU-only build, how to get it); None
    when it can."""
    lib = load()
    if lib.tnn_cuda_available():
        return None
    return lib.tnn_last_error().decode() + cuda_build_hint()


__all__ = [
    "CPU_KERNELS",
    "Session",
    "Tensor",
    "TinyNNError",
    "cpu_kernels_supported",
    "cuda_available",
    "cuda_unavailable_reason",
]
