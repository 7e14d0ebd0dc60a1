"""Finds libtinynn and declares every function of native/tinynn.h, once.

Which libtinynn.so is loaded, in order (the first that exists):

1. ``TINYNN_LIB``, when set: that file and no other. A library asked for by
   name (an ASan build, a CUDA build kept elsewhere) is loaded or reported,
   never silently replaced by another one.
2. In a source checkout (the package folder sits beside ``native/tinynn.h``):
   ``build/native/lib/libtinynn.so``, what ``make native`` or ``make cuda``
   built last (``make test`` installs the package from this same build); then
   ``build/wheel/lib/libtinynn.so``, what a plain ``pip install .`` in the
   checkout built (scikit-build-core's ``build-dir`` in pyproject.toml), so
   that ``python -m gpt2`` inside the clone, which imports the checkout's
   code, finds a library after ``pip install .`` alone; then
   ``tinynn/libtinynn.so`` (an in-place build). A developer running the
   checkout's code gets the checkout's build.
3. Installed (``pip install .``): ``libtinynn.so`` beside the package, the
   one its own build put there, with the ggml libraries and backend modules
   in the same folder. ``CMAKE_ARGS="-DGGML_CUDA=ON" pip install .`` puts
   ggml's CUDA backend there too. An installed package never looks at a
   checkout's ``build/``; point ``TINYNN_LIB`` at one to use it.

``candidate_paths()`` gives the list; ``library_path()`` the one loaded.

The table below is the binding: each entry is the C prototype (as a comment),
then argument and result types. tests/tinynn/test_abi.py parses the header and
fails if this table and the header disagree.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from ctypes import CFUNCTYPE, c_char_p, c_double, c_int, c_int64, c_void_p
from pathlib import Path

from .errors import TinyNNError

ABI_VERSION = 13
LIB_NAME = "libtinynn.so"
CUDA_MODULE = "libggml-cuda.so"  # ggml's CUDA backend, beside libtinynn.so when built
PACKAGE_DIR = Path(__file__).resolve().parent
# A checkout's build folders under build/, in the order they are tried: `make native`
# (and `make cuda`, `make test`), then a plain `pip install .` (pyproject.toml's build-dir).
CHECKOUT_BUILDS = ("native", "wheel")
# How to get a library with CUDA, for the errors of a CPU-only one.
HOW_TO_GET_CUDA = (
    "for CUDA (needs the CUDA toolkit: nvcc and cuBLAS), reinstall from the source folder with "
    '`CMAKE_ARGS="-DGGML_CUDA=ON" pip install --force-reinstall --no-cache-dir .`, '
    "or in a checkout run `make cuda`; TINYNN_LIB may name a CUDA build's libtinynn.so"
)

LOG_CALLBACK = CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# Result kinds, each with its own error check.
HANDLE = "handle"  # c_void_p; NULL is a failure
STATUS = "status"  # c_int; negative is a failure
COUNT64 = "count64"  # c_int64; negative is a failure
STRING = "string"  # c_char_p; NULL is a failure
PLAIN = "plain"  # no check

# name: (argtypes, restype, kind)
FUNCTIONS: dict[str, tuple[list, object, str]] = {
    # int tnn_abi_version(void);
    "tnn_abi_version": ([], c_int, PLAIN),
    # const char *tnn_last_error(void);
    "tnn_last_error": ([], c_char_p, PLAIN),
    # void tnn_set_log_callback(tnn_log_callback callback, void *user_data);
    "tnn_set_log_callback": ([LOG_CALLBACK, c_void_p], None, PLAIN),
    # int tnn_cuda_available(void);
    "tnn_cuda_available": ([], c_int, PLAIN),
    # int64_t tnn_type_row_size(int type, int64_t n);
    "tnn_type_row_size": ([c_int, c_int64], c_int64, COUNT64),
    # void *tnn_null_ptr(void);
    "tnn_null_ptr": ([], c_void_p, PLAIN),
    # tnn_session *tnn_session_new(int prefer_cuda);
    "tnn_session_new": ([c_int], c_void_p, HANDLE),
    # tnn_session *tnn_session_fork(tnn_session *parent);
    "tnn_session_fork": ([c_void_p], c_void_p, HANDLE),
    # void tnn_session_free(tnn_session *sess);
    "tnn_session_free": ([c_void_p], None, PLAIN),
    # const char *tnn_backend_name(tnn_session *sess);
    "tnn_backend_name": ([c_void_p], c_char_p, STRING),
    # int tnn_set_n_threads(tnn_session *sess, int n_threads);
    "tnn_set_n_threads": ([c_void_p, c_int], c_int, STATUS),
    # int tnn_get_n_threads(tnn_session *sess);
    "tnn_get_n_threads": ([c_void_p], c_int, STATUS),
    # int tnn_device_memory(tnn_session *sess, int64_t *free_bytes, int64_t *total_bytes);
    "tnn_device_memory": ([c_void_p, c_void_p, c_void_p], c_int, STATUS),
    # tnn_tensor *tnn_input_2d_f32_persistent(tnn_session *sess, int64_t rows, int64_t cols);
    "tnn_input_2d_f32_persistent": ([c_void_p, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_input_1d_f32_persistent(tnn_session *sess, int64_t n);
    "tnn_input_1d_f32_persistent": ([c_void_p, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_input_typed_persistent(sess, int type, int64_t ne0..ne3);
    "tnn_input_typed_persistent": (
        [c_void_p, c_int, c_int64, c_int64, c_int64, c_int64],
        c_void_p,
        HANDLE,
    ),
    # int tnn_finalize_weights(tnn_session *sess);
    "tnn_finalize_weights": ([c_void_p], c_int, STATUS),
    # int64_t tnn_weights_nbytes(tnn_session *sess);
    "tnn_weights_nbytes": ([c_void_p], c_int64, COUNT64),
    # tnn_tensor *tnn_input_1d_i32(tnn_session *sess, int64_t n);
    "tnn_input_1d_i32": ([c_void_p, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_input_2d_f32(tnn_session *sess, int64_t rows, int64_t cols);
    "tnn_input_2d_f32": ([c_void_p, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_input_typed(sess, int type, int64_t ne0..ne3);
    "tnn_input_typed": ([c_void_p, c_int, c_int64, c_int64, c_int64, c_int64], c_void_p, HANDLE),
    # int tnn_tensor_info(sess, t, int64_t *ne, int64_t *nb, int *type);
    "tnn_tensor_info": ([c_void_p, c_void_p, c_void_p, c_void_p, c_void_p], c_int, STATUS),
    # int tnn_set_name(tnn_session *sess, tnn_tensor *t, const char *name);
    "tnn_set_name": ([c_void_p, c_void_p, c_char_p], c_int, STATUS),
    # tnn_tensor *tnn_get_rows(sess, table, idx);
    "tnn_get_rows": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # int tnn_move_to_huge_pages(tnn_session *sess, tnn_tensor *const *tensors, int n_tensors);
    "tnn_move_to_huge_pages": ([c_void_p, c_void_p, c_int], c_int, STATUS),
    # int tnn_cpu_kernels_supported(void);
    "tnn_cpu_kernels_supported": ([], c_int, PLAIN),
    # int tnn_pack_rows(tnn_session *sess, tnn_tensor *w);
    "tnn_pack_rows": ([c_void_p, c_void_p], c_int, STATUS),
    # tnn_tensor *tnn_packed_matmul(sess, w, x);
    "tnn_packed_matmul": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_packed_get_rows(sess, w, idx);
    "tnn_packed_get_rows": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_add(sess, a, b);
    "tnn_add": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_mul(sess, a, b);
    "tnn_mul": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_matmul(sess, a, b);
    "tnn_matmul": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_port_matmul(sess, a, b);
    "tnn_port_matmul": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_port_norm(sess, x, double eps);
    "tnn_port_norm": ([c_void_p, c_void_p, c_double], c_void_p, HANDLE),
    # tnn_tensor *tnn_port_softmax(sess, x);
    "tnn_port_softmax": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_scale(sess, a, double s);
    "tnn_scale": ([c_void_p, c_void_p, c_double], c_void_p, HANDLE),
    # tnn_tensor *tnn_diag_mask_inf(sess, a, int64_t n_past);
    "tnn_diag_mask_inf": ([c_void_p, c_void_p, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_softmax(sess, a);
    "tnn_softmax": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_soft_max_ext(sess, a, mask, double scale, double max_bias);
    "tnn_soft_max_ext": ([c_void_p, c_void_p, c_void_p, c_double, c_double], c_void_p, HANDLE),
    # tnn_tensor *tnn_layer_norm(sess, x, gamma, beta, double eps);
    "tnn_layer_norm": ([c_void_p, c_void_p, c_void_p, c_void_p, c_double], c_void_p, HANDLE),
    # tnn_tensor *tnn_gelu(sess, a);
    "tnn_gelu": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_gelu_exact(sess, a);
    "tnn_gelu_exact": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_concat(sess, a, b, int dim);
    "tnn_concat": ([c_void_p, c_void_p, c_void_p, c_int], c_void_p, HANDLE),
    # tnn_tensor *tnn_view_1d(sess, a, int64_t ne0, int64_t offset);
    "tnn_view_1d": ([c_void_p, c_void_p, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_view_2d(sess, a, int64_t ne0, ne1, nb1, offset);
    "tnn_view_2d": ([c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_view_3d(sess, a, int64_t ne0, ne1, ne2, nb1, nb2, offset);
    "tnn_view_3d": (
        [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64, c_int64],
        c_void_p,
        HANDLE,
    ),
    # tnn_tensor *tnn_view_4d(sess, a, int64_t ne0, ne1, ne2, ne3, nb1, nb2, nb3, offset);
    "tnn_view_4d": ([c_void_p, c_void_p] + [c_int64] * 8, c_void_p, HANDLE),
    # tnn_tensor *tnn_reshape_2d(sess, a, int64_t ne0, ne1);
    "tnn_reshape_2d": ([c_void_p, c_void_p, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_reshape_3d(sess, a, int64_t ne0, ne1, ne2);
    "tnn_reshape_3d": ([c_void_p, c_void_p, c_int64, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_reshape_4d(sess, a, int64_t ne0, ne1, ne2, ne3);
    "tnn_reshape_4d": ([c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64], c_void_p, HANDLE),
    # tnn_tensor *tnn_permute(sess, a, int ax0, ax1, ax2, ax3);
    "tnn_permute": ([c_void_p, c_void_p, c_int, c_int, c_int, c_int], c_void_p, HANDLE),
    # tnn_tensor *tnn_transpose(sess, a);
    "tnn_transpose": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_cont(sess, a);
    "tnn_cont": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_cpy(sess, a, b);
    "tnn_cpy": ([c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_cast(sess, a, int type);
    "tnn_cast": ([c_void_p, c_void_p, c_int], c_void_p, HANDLE),
    # tnn_tensor *tnn_set_rows(sess, dst, src, idx);
    "tnn_set_rows": ([c_void_p, c_void_p, c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_flash_attn_ext(sess, q, k, v, mask, double scale);
    "tnn_flash_attn_ext": (
        [c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_double],
        c_void_p,
        HANDLE,
    ),
    # tnn_tensor *tnn_argmax(sess, a);
    "tnn_argmax": ([c_void_p, c_void_p], c_void_p, HANDLE),
    # tnn_tensor *tnn_top_k(sess, a, int64_t k);
    "tnn_top_k": ([c_void_p, c_void_p, c_int64], c_void_p, HANDLE),
    # int tnn_set_output(sess, t);
    "tnn_set_output": ([c_void_p, c_void_p], c_int, STATUS),
    # int tnn_add_to_graph(sess, t);
    "tnn_add_to_graph": ([c_void_p, c_void_p], c_int, STATUS),
    # int tnn_realize(sess, result);
    "tnn_realize": ([c_void_p, c_void_p], c_int, STATUS),
    # int tnn_compute(sess);
    "tnn_compute": ([c_void_p], c_int, STATUS),
    # int tnn_compute_io(sess, in, const void *in_data, int64_t in_nbytes,
    #                    out, void *out_data, int64_t out_nbytes);
    "tnn_compute_io": (
        [c_void_p, c_void_p, c_void_p, c_int64, c_void_p, c_void_p, c_int64],
        c_int,
        STATUS,
    ),
    # int tnn_can_sample_on_device(tnn_session *sess);
    "tnn_can_sample_on_device": ([c_void_p], c_int, STATUS),
    # int tnn_compute_io_sample(sess, in, const void *in_data, int64_t in_nbytes, logits,
    #                           const void *sampling, int64_t sampling_nbytes,
    #                           int32_t *out_ids, int64_t out_ids_nbytes);
    "tnn_compute_io_sample": (
        [c_void_p, c_void_p, c_void_p, c_int64, c_void_p, c_void_p, c_int64, c_void_p, c_int64],
        c_int,
        STATUS,
    ),
    # tnn_decoder *tnn_decoder_new(sess, int n_head, double eps, int max_batch, wte, wpe,
    #                              ln_f_g, ln_f_b, tnn_tensor *const *layers, int n_layer);
    "tnn_decoder_new": (
        [c_void_p, c_int, c_double, c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int],
        c_void_p,
        HANDLE,
    ),
    # int tnn_decoder_step(dec, int n_seq, const int32_t *tokens, const int32_t *positions,
    #                      const int32_t *slots, const void *sampling, int32_t *out_ids,
    #                      float *out_logits);
    "tnn_decoder_step": (
        [c_void_p, c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p],
        c_int,
        STATUS,
    ),
    # int tnn_sample_rows(const float *logits, int64_t logits_nbytes, int64_t n_rows,
    #                     int64_t n_vocab, const void *params, int64_t params_nbytes,
    #                     int32_t *out_ids, int64_t ids_nbytes, float *out_logprobs,
    #                     int64_t logprobs_nbytes, int64_t n_top, int32_t *out_top_ids,
    #                     int64_t top_ids_nbytes, float *out_top_logprobs,
    #                     int64_t top_logprobs_nbytes);
    "tnn_sample_rows": (
        [c_void_p, c_int64, c_int64, c_int64, c_void_p, c_int64, c_void_p, c_int64]
        + [c_void_p, c_int64, c_int64, c_void_p, c_int64, c_void_p, c_int64],
        c_int,
        STATUS,
    ),
    # int tnn_penalize_rows(float *logits, int64_t logits_nbytes, int64_t n_rows,
    #                       int64_t n_vocab, const int32_t *ids, int64_t ids_nbytes,
    #                       const int32_t *counts, int64_t counts_nbytes,
    #                       const int64_t *row_starts, int64_t starts_nbytes,
    #                       const float *params, int64_t params_nbytes);
    "tnn_penalize_rows": (
        [c_void_p, c_int64, c_int64, c_int64, c_void_p, c_int64, c_void_p, c_int64]
        + [c_void_p, c_int64, c_void_p, c_int64],
        c_int,
        STATUS,
    ),
    # void tnn_decoder_free(tnn_decoder *dec);
    "tnn_decoder_free": ([c_void_p], None, PLAIN),
    # int tnn_read_file_ranges(sess, int fd, const tnn_file_range *ranges, int64_t n_ranges,
    #                          int64_t ranges_nbytes, int n_threads, int64_t staging_bytes,
    #                          int n_staging, int flags, int64_t *bad_range,
    #                          int64_t *nonfinite_at);
    "tnn_read_file_ranges": (
        [c_void_p, c_int, c_void_p, c_int64, c_int64, c_int, c_int64, c_int, c_int]
        + [c_void_p, c_void_p],
        c_int,
        STATUS,
    ),
    # int tnn_reset_for_rebuild(sess);
    "tnn_reset_for_rebuild": ([c_void_p], c_int, STATUS),
    # int tnn_graph_n_nodes(sess);
    "tnn_graph_n_nodes": ([c_void_p], c_int, STATUS),
    # int tnn_graph_n_splits(sess);
    "tnn_graph_n_splits": ([c_void_p], c_int, STATUS),
}

# int tnn_upload_<kind>(sess, t, const T *data, int64_t nbytes, int64_t offset);
# int tnn_download_<kind>(sess, t, T *data, int64_t nbytes, int64_t offset);
for _kind in ("f32", "i32", "f16", "raw"):
    for _verb in ("upload", "download"):
        FUNCTIONS[f"tnn_{_verb}_{_kind}"] = (
            [c_void_p, c_void_p, c_void_p, c_int64, c_int64],
            c_int,
            STATUS,
        )

_log = logging.getLogger("tinynn.ggml")
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = logging.INFO


@LOG_CALLBACK
def _forward_log(level: int, text: bytes, _user_data: object) -> None:
    # ggml splits some messages; level 5 ("cont") continues the previous one.
    global _last_level
    py_level = _GGML_LEVELS.get(level, _last_level)
    _last_level = py_level
    message = text.decode("utf-8", "replace").rstrip("\n")
    if message:
        _log.log(py_level, "%s", message)


def is_source_checkout(package_dir: Path = PACKAGE_DIR) -> bool:
    """True when the package runs from a source checkout, not an installation."""
    return (package_dir.parent / "native" / "tinynn.h").is_file()


def candidate_paths(
    env: Mapping[str, str] | None = None, package_dir: Path = PACKAGE_DIR
) -> list[Path]:
    """Where the library is looked for, in order (see the module docstring).
    ``env`` and ``package_dir`` default to this process and this package."""
    env = os.environ if env is None else env
    if env.get("TINYNN_LIB"):
        return [Path(env["TINYNN_LIB"])]
    beside = package_dir / LIB_NAME
    if is_source_checkout(package_dir):
        build = package_dir.parent / "build"
        return [build / folder / "lib" / LIB_NAME for folder in CHECKOUT_BUILDS] + [beside]
    return [beside]


def cuda_build_hint() -> str:
    """How to get CUDA when the loaded library was built without it, else ""."""
    if (Path(library_path()).parent / CUDA_MODULE).is_file():
        return ""  # built with CUDA: the reason is the machine (driver, device)
    return f"; this library was built without CUDA: {HOW_TO_GET_CUDA}"


def _errcheck_for(kind: str, name: str):
    def check(result, func, args):
        if kind == HANDLE and not result or kind == STRING and result is None:
            raise TinyNNError(_message())
        if kind in (STATUS, COUNT64) and result < 0:
            raise TinyNNError(_message(), code=result)
        return result

    return check


def _message() -> str:
    raw = _lib.tnn_last_error() if _lib is not None else None
    return raw.decode("utf-8", "replace") if raw else "unknown libtinynn error"


_lib: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """The loaded and declared library (loaded on first call)."""
    global _lib
    if _lib is not None:
        return _lib
    tried = []
    for path in candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            continue
        # the version first: a stale library lacks the newer functions _declare names
        abi = getattr(lib, "tnn_abi_version", None)
        version = abi() if abi is not None else "unknown"
        if version != ABI_VERSION:
            raise TinyNNError(
                f"{path} has ABI version {version}, this package needs {ABI_VERSION}: "
                "rebuild it with `make native`"
            )
        _declare(lib)
        lib.tnn_set_log_callback(_forward_log, None)
        _lib = lib
        return lib
    if os.environ.get("TINYNN_LIB"):
        how = "Build it, or unset TINYNN_LIB (it names the only library tried)."
    elif is_source_checkout():
        how = (
            "Build it with `make native` or `pip install .` (this is a source checkout's "
            "tinynn; run from outside the checkout to use an installed package), or set "
            "TINYNN_LIB."
        )
    else:
        how = "Build it again: `pip install --force-reinstall .` from the source folder."
    raise TinyNNError("libtinynn.so not found. Tried:\n  " + "\n  ".join(tried) + "\n" + how)


def _declare(lib: ctypes.CDLL) -> None:
    for name, (argtypes, restype, kind) in FUNCTIONS.items():
        func = getattr(lib, name)
        func.argtypes = argtypes
        func.restype = restype
        if kind != PLAIN:
            func.errcheck = _errcheck_for(kind, name)


def library_path() -> str:
    """File name of the loaded library."""
    return load()._name
