/*
 * tinynn.h - a small C shim over ggml, made to be driven through an FFI.
 *
 * This header is the source of truth: the ctypes table in tinynn/_lib.py is
 * checked against it by a test (tests/tinynn/test_abi.py).
 *
 * Conventions
 * - Shapes follow ggml: ne[0] is the fastest-varying axis. A row-major host
 *   matrix (rows, cols) is a tensor with ne = [cols, rows]; every
 *   `..._2d(rows, cols)` constructor below makes ne = [cols, rows].
 * - tnn_matmul(a, b) is ggml_mul_mat: a.ne0 == b.ne0 (the contracted axis),
 *   the result has ne = [a.ne1, b.ne1]; r[i, j] = sum_k a[k, i] * b[k, j].
 * - Handles are opaque. Functions returning a handle return NULL on failure;
 *   functions returning int return 0 (or a count) on success and a negative
 *   TNN_E* code on failure. Either way tnn_last_error() (per thread) says
 *   which function failed, with which values, and what was expected.
 * - No call aborts the process, whatever its arguments: everything ggml would
 *   assert on is checked first.
 *
 * Lifecycle of a session
 *   1. tnn_session_new(prefer_cuda)
 *   2. persistent tensors (weights, KV caches): tnn_input_*_persistent
 *   3. tnn_finalize_weights: one buffer for them all, zero-filled; upload data
 *   4. compute inputs (tnn_input_*) and ops; tnn_set_output on tensors to read
 *   5. tnn_realize(result): build and allocate the graph
 *   6. upload inputs, tnn_compute, download; repeat 6 as often as wanted: the
 *      realized graph is computed again with the new input values, with no
 *      rebuild (what lets ggml-cuda replay it as a CUDA graph)
 *   7. tnn_reset_for_rebuild to build another graph on the same weights; all
 *      compute tensors of the old graph become invalid
 *   8. tnn_session_free
 * A session is not thread-safe: use one session per thread, or lock.
 */
#ifndef TINYNN_H
#define TINYNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define TNN_API __declspec(dllexport)
#else
#define TNN_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or a meaning below changes. */
#define TNN_ABI_VERSION 13

/* Status codes (negative). */
#define TNN_OK 0
#define TNN_EINVAL -1 /* a NULL, foreign or stale handle, or a bad argument */
#define TNN_ESTATE -2 /* wrong state: not finalized, already realized, ... */
#define TNN_ESHAPE -3 /* shapes, types, views or byte counts do not fit */
#define TNN_ENOMEM -4 /* an allocation failed, or a capacity is exhausted */
#define TNN_EBACKEND -5 /* a backend is missing or failed (CUDA absent, compute error) */

/* ggml types accepted by the typed constructors (ggml's own numbering). */
#define TNN_TYPE_F32 0
#define TNN_TYPE_F16 1
#define TNN_TYPE_Q8_0 8
#define TNN_TYPE_I32 26

typedef struct tnn_session tnn_session;
typedef struct ggml_tensor tnn_tensor;

/* ---- library ----------------------------------------------------------- */

/* TNN_ABI_VERSION of the compiled library. */
TNN_API int tnn_abi_version(void);

/* Message of the last failed call on this thread ("" if none). Owned by the
 * library; valid until the next failing call on this thread. */
TNN_API const char *tnn_last_error(void);

/* ggml's log (and the shim's own) goes to this callback; NULL restores
 * stderr. level is ggml's: 1 debug, 2 info, 3 warn, 4 error, 5 cont. */
typedef void (*tnn_log_callback)(int level, const char *text, void *user_data);
TNN_API void tnn_set_log_callback(tnn_log_callback callback, void *user_data);

/* 1 if a CUDA device can be used, 0 if not (tnn_last_error says why). */
TNN_API int tnn_cuda_available(void);

/* ggml's byte size of n elements of type (a multiple of the block size);
 * negative if type is unknown or n is not a multiple of its block size. */
TNN_API int64_t tnn_type_row_size(int type, int64_t n);

/* Always NULL: a typed null for FFI callers that need one. */
TNN_API void *tnn_null_ptr(void);

/* ---- sessions ---------------------------------------------------------- */

/* A new session on the CPU (prefer_cuda == 0) or on CUDA device 0
 * (prefer_cuda != 0). Asking for CUDA where there is none is an error (NULL),
 * never a silent fallback. Free with tnn_session_free. */
TNN_API tnn_session *tnn_session_new(int prefer_cuda);

/* A session that shares parent's persistent tensors (read and write) but has
 * its own compute graph, allocator and backend: several graphs (prefill,
 * decode) over one set of weights. The child may not declare persistent
 * tensors. parent must be finalized; it stays alive until its last fork is
 * freed. Free with tnn_session_free. */
TNN_API tnn_session *tnn_session_fork(tnn_session *parent);

/* Frees the session's graph, compute memory, backend and (when no fork still
 * uses them) its persistent tensors. NULL is ignored. Handles of its tensors
 * are invalid afterwards. */
TNN_API void tnn_session_free(tnn_session *sess);

/* "cpu" or "cuda": the backend that computes this session's graphs. */
TNN_API const char *tnn_backend_name(tnn_session *sess);

/* Threads used by the CPU backend. Default: the machine's cores, at most 8, and
 * at each compute no more than the cores other runnable tasks leave free (ggml's
 * threads spin at every op's barrier, so a busy neighbour would stall them).
 * tnn_set_n_threads fixes the count (forks made later inherit it); get returns the
 * most a compute uses. */
TNN_API int tnn_set_n_threads(tnn_session *sess, int n_threads);
TNN_API int tnn_get_n_threads(tnn_session *sess);

/* Free and total memory of the session's device in bytes (for the CPU: the
 * host's). */
TNN_API int tnn_device_memory(tnn_session *sess, int64_t *free_bytes, int64_t *total_bytes);

/* ---- persistent tensors (weights, caches) ------------------------------ */

/* F32 ne = [cols, rows]. NULL after tnn_finalize_weights. */
TNN_API tnn_tensor *tnn_input_2d_f32_persistent(tnn_session *sess, int64_t rows, int64_t cols);
/* F32 ne = [n]. */
TNN_API tnn_tensor *tnn_input_1d_f32_persistent(tnn_session *sess, int64_t n);
/* Any TNN_TYPE_*, ne = [ne0, ne1, ne2, ne3] (use 1 for unused axes); ne0
 * must be a multiple of the type's block size (32 for q8_0). */
TNN_API tnn_tensor *tnn_input_typed_persistent(tnn_session *sess, int type, int64_t ne0,
                                               int64_t ne1, int64_t ne2, int64_t ne3);

/* Allocates one backend buffer for every persistent tensor declared so far
 * and fills it with zeros. Once per session; at least one tensor needed. */
TNN_API int tnn_finalize_weights(tnn_session *sess);

/* Bytes of the persistent buffer (0 before finalize). */
TNN_API int64_t tnn_weights_nbytes(tnn_session *sess);

/* The memory of these persistent tensors (a CPU session's weights, written:
 * only read from now on) moved onto huge pages by a thread of the session's
 * root, in the background (Linux's MADV_COLLAPSE; the whole 2 MiB pages inside
 * the tensors' adjacent runs, never a page of another tensor). Returns at once;
 * the thread ends by itself, or is stopped and joined when the root is freed.
 * Decode streams its weights about 1.6x faster from huge pages than from small
 * fresh ones (host_weights.c). Nothing happens for a CUDA session, with
 * TINYNN_HUGE_PAGES=0, or where the kernel cannot (then the pages stay small).
 * Once a session; after tnn_finalize_weights. */
TNN_API int tnn_move_to_huge_pages(tnn_session *sess, tnn_tensor *const *tensors, int n_tensors);

/* ---- compute inputs (values uploaded after tnn_realize) ---------------- */
/* An input keeps the value last uploaded for every later compute: upload only
 * the inputs that change between computes. */

/* I32 ne = [n]. */
TNN_API tnn_tensor *tnn_input_1d_i32(tnn_session *sess, int64_t n);
/* F32 ne = [cols, rows]. */
TNN_API tnn_tensor *tnn_input_2d_f32(tnn_session *sess, int64_t rows, int64_t cols);
/* Any TNN_TYPE_*, ne = [ne0, ne1, ne2, ne3]. */
TNN_API tnn_tensor *tnn_input_typed(tnn_session *sess, int type, int64_t ne0, int64_t ne1,
                                    int64_t ne2, int64_t ne3);

/* Shape of t: ne[4], nb[4] (byte strides) and type, each optional (NULL). */
TNN_API int tnn_tensor_info(tnn_session *sess, tnn_tensor *t, int64_t *ne, int64_t *nb,
                            int *type);

/* Names t (at most 63 bytes are kept); shows in ggml's logs and errors. */
TNN_API int tnn_set_name(tnn_session *sess, tnn_tensor *t, const char *name);

/* ---- ops: each returns a new compute tensor, or NULL ------------------- */

/* Rows of table (F32, F16 or Q8_0 [n_embd, n_rows]) picked by idx (I32
 * [n]): F32 [n_embd, n]. */
TNN_API tnn_tensor *tnn_get_rows(tnn_session *sess, tnn_tensor *table, tnn_tensor *idx);
/* a + b, a * b (F32); b is repeated along each axis where a.ne[i] is a
 * multiple of b.ne[i]. Result has a's shape. */
TNN_API tnn_tensor *tnn_add(tnn_session *sess, tnn_tensor *a, tnn_tensor *b);
TNN_API tnn_tensor *tnn_mul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b);
/* ggml_mul_mat: a [K, M, ...] (F32, F16 or Q8_0, not transposed), b F32
 * [K, N, ...], broadcast over axes 2 and 3: result F32 [M, N, ...]. */
TNN_API tnn_tensor *tnn_matmul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b);
/* The port engines' product (port_dot.c): a [K, M] and b [K, N] (F32, 2-D,
 * elements adjacent along ne0) give F32 [M, N], each element one dot product
 * summed in a fixed order of our own (that of ggml-cpu's AVX-512 build, which
 * the Ruby engine's dumps were made with), the same bits on every x86-64 CPU.
 * CPU sessions only. The code that computes it (scalar, AVX2, AVX-512: all
 * the same bits) is the CPU level of our kernels at the op's build (see
 * tnn_cpu_kernels_supported; TINYNN_CPU_KERNELS forces one). */
TNN_API tnn_tensor *tnn_port_matmul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b);
/* The port engines' row reductions (port_rows.c), in the order of ggml-cpu's
 * AVX-512 build on every x86-64 CPU, like tnn_port_matmul; CPU sessions only;
 * x F32 2-D [n, rows] with adjacent elements along ne0. tnn_port_norm: (x -
 * mean) / sqrt(var + eps) along ne0 (biased variance; eps in [0, 1]); the
 * normalization of tnn_layer_norm. tnn_port_softmax: softmax along ne0. */
TNN_API tnn_tensor *tnn_port_norm(tnn_session *sess, tnn_tensor *x, double eps);
TNN_API tnn_tensor *tnn_port_softmax(tnn_session *sess, tnn_tensor *x);
/* a * s. */
TNN_API tnn_tensor *tnn_scale(tnn_session *sess, tnn_tensor *a, double s);
/* a[i, j] = -inf where i > j + n_past (i along ne0); ggml-cuda writes -FLT_MAX
 * instead, which softmax turns into 0 all the same. */
TNN_API tnn_tensor *tnn_diag_mask_inf(tnn_session *sess, tnn_tensor *a, int64_t n_past);
/* Softmax along ne0. */
TNN_API tnn_tensor *tnn_softmax(tnn_session *sess, tnn_tensor *a);
/* softmax(a * scale + mask) along ne0. mask (F32 or F16, or NULL) has
 * ne0 == a.ne0, ne1 >= a.ne1, and is repeated over axes 2 and 3. */
TNN_API tnn_tensor *tnn_soft_max_ext(tnn_session *sess, tnn_tensor *a, tnn_tensor *mask,
                                     double scale, double max_bias);
/* (x - mean) / sqrt(var + eps) along ne0 (biased variance), then * gamma
 * + beta when given (each [ne0] or NULL). */
TNN_API tnn_tensor *tnn_layer_norm(tnn_session *sess, tnn_tensor *x, tnn_tensor *gamma,
                                   tnn_tensor *beta, double eps);
/* Tanh GELU (on the CPU through ggml's f16 table: about 1e-3 relative). */
TNN_API tnn_tensor *tnn_gelu(tnn_session *sess, tnn_tensor *a);
/* Tanh GELU in f32 on every backend, to about 1e-7: on the CPU composed of
 * f32 ops (6 nodes) instead of the f16 table; on CUDA ggml's gelu (one
 * node, already f32). */
TNN_API tnn_tensor *tnn_gelu_exact(tnn_session *sess, tnn_tensor *a);
/* a and b joined along dim (0..3); other axes equal, same type. */
TNN_API tnn_tensor *tnn_concat(tnn_session *sess, tnn_tensor *a, tnn_tensor *b, int dim);
/* Views into a's memory; offsets and strides in bytes. The view must lie
 * inside a. */
TNN_API tnn_tensor *tnn_view_1d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t offset);
TNN_API tnn_tensor *tnn_view_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                                int64_t nb1, int64_t offset);
TNN_API tnn_tensor *tnn_view_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                                int64_t ne2, int64_t nb1, int64_t nb2, int64_t offset);
TNN_API tnn_tensor *tnn_view_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                                int64_t ne2, int64_t ne3, int64_t nb1, int64_t nb2, int64_t nb3,
                                int64_t offset);
/* Same data, new shape (a contiguous, element counts equal). */
TNN_API tnn_tensor *tnn_reshape_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1);
TNN_API tnn_tensor *tnn_reshape_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                                   int64_t ne2);
TNN_API tnn_tensor *tnn_reshape_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                                   int64_t ne2, int64_t ne3);
/* Axis i of a becomes axis ax_i of the result (a permutation of 0..3). */
TNN_API tnn_tensor *tnn_permute(tnn_session *sess, tnn_tensor *a, int ax0, int ax1, int ax2,
                                int ax3);
/* Transpose of the first two axes (a view). */
TNN_API tnn_tensor *tnn_transpose(tnn_session *sess, tnn_tensor *a);
/* A contiguous copy of a. */
TNN_API tnn_tensor *tnn_cont(tnn_session *sess, tnn_tensor *a);
/* Copies a into b (same element count; F32 or F16); the result is a view of
 * b. Unless it feeds the result, pass it to tnn_add_to_graph. */
TNN_API tnn_tensor *tnn_cpy(tnn_session *sess, tnn_tensor *a, tnn_tensor *b);
/* a converted to type (TNN_TYPE_F32 or TNN_TYPE_F16): a new tensor. */
TNN_API tnn_tensor *tnn_cast(tnn_session *sess, tnn_tensor *a, int type);
/* dst[:, idx[i], ...] = src[:, i, ...]: dst [n, rows, ne2, ne3] (F32 or
 * F16), src F32 [n, len(idx), ne2, ne3], idx I32 [len] with values in
 * [0, rows), checked when uploaded (or, for a persistent idx, before each
 * compute). The result is a view of dst. */
TNN_API tnn_tensor *tnn_set_rows(tnn_session *sess, tnn_tensor *dst, tnn_tensor *src,
                                 tnn_tensor *idx);
/* Attention: q F32 [d, n_q, n_head, B], k and v (F32 or F16)
 * [d, n_kv, n_head, B], mask F16 [n_kv, >= n_q] or NULL. Result F32
 * [d, n_head, n_q, B] (heads before positions). */
TNN_API tnn_tensor *tnn_flash_attn_ext(tnn_session *sess, tnn_tensor *q, tnn_tensor *k,
                                       tnn_tensor *v, tnn_tensor *mask, double scale);
/* Index of the largest value of each row: a F32 [n, rows] -> I32 [rows]. */
TNN_API tnn_tensor *tnn_argmax(tnn_session *sess, tnn_tensor *a);
/* Indices of the k largest values of each row (in no order): I32 [k, rows]. */
TNN_API tnn_tensor *tnn_top_k(tnn_session *sess, tnn_tensor *a, int64_t k);

/* ---- our product on the CPU over weights packed in tiles (cpu_product.c) -- */
/* Each element of a packed product is summed in one order whatever the number
 * of columns, the thread count or the instruction set: 16 lanes of fused
 * multiply-adds along k, then a fixed tree (cpu_product.c). */

/* The CPU levels of our own kernels (the packed product here and
 * tnn_port_matmul) this CPU runs, a bit per level: 1 scalar, 2 AVX2 (with FMA
 * and F16C), 4 AVX-512F. An op runs the best of them, or the one that the
 * environment variable TINYNN_CPU_KERNELS=scalar|avx2|avx512 names when the op
 * is built ("auto" or unset: the best); every level gives the same bits. An
 * unknown name, or a level this CPU lacks, fails the op's build. */
TNN_API int tnn_cpu_kernels_supported(void);

/* Lays w (a persistent F32 or F16 [k, n] tensor of a CPU session, k a multiple
 * of 16, after tnn_finalize_weights, its values uploaded) out in tiles of 8 rows
 * for tnn_packed_matmul, in place (the same bytes, memory not doubled). Once a
 * tensor; before the session has forks or a realized graph (which could read
 * the old layout). Afterwards only tnn_packed_matmul and tnn_packed_get_rows
 * read w; a download unpacks it (whole tensors only); any other op, view,
 * upload or read into it is refused. */
TNN_API int tnn_pack_rows(tnn_session *sess, tnn_tensor *w);

/* x W for a packed w [k, n] and x F32 [k, N] (rows dense): F32 [n, N], what
 * tnn_matmul(w, x) computes, in the order above. */
TNN_API tnn_tensor *tnn_packed_matmul(tnn_session *sess, tnn_tensor *w, tnn_tensor *x);

/* Rows of a packed w [k, n] picked by idx (I32 [m], values in [0, n), checked
 * when uploaded): F32 [k, m], as tnn_get_rows on the unpacked w. */
TNN_API tnn_tensor *tnn_packed_get_rows(tnn_session *sess, tnn_tensor *w, tnn_tensor *idx);

/* ---- graph ------------------------------------------------------------- */

/* Keeps t's memory its own through compute so it can be read afterwards. */
TNN_API int tnn_set_output(tnn_session *sess, tnn_tensor *t);
/* Adds t (and what it depends on) to the graph before the result: for side
 * effects such as cache writes that the result does not read. */
TNN_API int tnn_add_to_graph(tnn_session *sess, tnn_tensor *t);
/* Builds the graph ending at result (after the tensors given to
 * tnn_add_to_graph) and allocates its compute memory. Once per graph; a call
 * that fails leaves no nodes behind and may be retried. */
TNN_API int tnn_realize(tnn_session *sess, tnn_tensor *result);
/* Computes the realized graph; may be called again and again. */
TNN_API int tnn_compute(tnn_session *sess);
/* Drops the graph and all compute tensors (their handles become invalid);
 * persistent tensors and their data stay. */
TNN_API int tnn_reset_for_rebuild(tnn_session *sess);
/* Nodes in the realized graph (0 before tnn_realize). */
TNN_API int tnn_graph_n_nodes(tnn_session *sess);
/* Parts of the realized graph the scheduler runs one after the other, each
 * on one backend (0 before tnn_realize). One means no copies between
 * backends in the middle of a compute. */
TNN_API int tnn_graph_n_splits(tnn_session *sess);

/* ---- data -------------------------------------------------------------- */

/* Copies nbytes from data into t starting at byte offset; t must have memory
 * (persistent after finalize, compute after realize) and offset + nbytes
 * must fit in t. The typed forms also check t's type. */
TNN_API int tnn_upload_f32(tnn_session *sess, tnn_tensor *t, const float *data, int64_t nbytes,
                           int64_t offset);
TNN_API int tnn_upload_i32(tnn_session *sess, tnn_tensor *t, const int32_t *data, int64_t nbytes,
                           int64_t offset);
TNN_API int tnn_upload_f16(tnn_session *sess, tnn_tensor *t, const uint16_t *data,
                           int64_t nbytes, int64_t offset);
TNN_API int tnn_upload_raw(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                           int64_t offset);
/* Copies nbytes of t from byte offset into data (which holds nbytes). */
TNN_API int tnn_download_f32(tnn_session *sess, tnn_tensor *t, float *data, int64_t nbytes,
                             int64_t offset);
TNN_API int tnn_download_i32(tnn_session *sess, tnn_tensor *t, int32_t *data, int64_t nbytes,
                             int64_t offset);
TNN_API int tnn_download_f16(tnn_session *sess, tnn_tensor *t, uint16_t *data, int64_t nbytes,
                             int64_t offset);
TNN_API int tnn_download_raw(tnn_session *sess, tnn_tensor *t, void *data, int64_t nbytes,
                             int64_t offset);

/* One range of a file for tnn_read_file_ranges (48 bytes): nbytes of tensor t
 * from byte offset, read from the file at file_offset. With file_type
 * TNN_FILE_TYPE_OF_T (or t's own type) and file_rows 0 the file holds those
 * bytes as they are. Otherwise the file holds the range's values another way:
 * - file_type (TNN_TYPE_F32, TNN_TYPE_F16, TNN_TYPE_BF16) other than t's:
 *   converted as they are read, f32 -> f16 (rounded to nearest even), f16 ->
 *   f32 or bf16 -> f32 (exact); the range then spans nbytes / (t's value
 *   size) x (the file's value size) bytes of the file;
 * - file_rows R > 0 (f32, f16 or bf16 values): the file holds them as R rows
 *   of C = (the range's values) / R, and t takes them transposed, C rows of R:
 *   the file's value (r, c) is the range's value c * R + r (HF's Conv1D
 *   weights, [in, out] in the file, into ggml's rows of `in`).
 * layout: TNN_LAYOUT_ROW_MAJOR (t's own rows), or TNN_LAYOUT_PACKED_ROWS: the
 * values (converted and transposed as above) are written where tnn_pack_rows
 * would have put them, by the reading threads, and t is marked packed when the
 * whole call succeeds, as tnn_pack_rows marks it. Such a range is the whole of
 * t (offset 0, nbytes all of it), t a tensor tnn_pack_rows takes now (its
 * checks, made before anything is read), in host memory, not staged, and the
 * only range of t in the call. */
typedef struct tnn_file_range {
    tnn_tensor *t;
    int64_t file_offset;
    int64_t nbytes;
    int64_t offset;
    int64_t file_rows;
    int32_t file_type;
    int32_t layout;
} tnn_file_range;

/* tnn_file_range.file_type: the file stores t's own type. */
#define TNN_FILE_TYPE_OF_T (-1)
#define TNN_TYPE_BF16 30 /* a file's values only: no tensor has this type */

/* tnn_file_range.layout: t's rows as every op reads them, or our CPU
 * product's tiles (tnn_pack_rows). */
#define TNN_LAYOUT_ROW_MAJOR 0
#define TNN_LAYOUT_PACKED_ROWS 1

/* tnn_read_file_ranges' flags: stage host memory too (the path device memory
 * takes, for tests on machines without a device). */
#define TNN_READ_STAGED 1

/* Reads n_ranges ranges of the open file fd into tensors (the caller knows the
 * file's types, and that its byte order is the host's). Each range is checked
 * before anything is read: t a live tensor with memory, contiguous, not i32;
 * offset and nbytes inside it and whole values or q8_0 blocks of its type;
 * file_offset >= 0; file_type and file_rows as tnn_file_range says. pread is
 * used (no file position), by n_threads threads (1..64, the calling one
 * included) reading pieces at once, each checking its piece as it lands:
 * - a tensor in host memory: straight into it (pread, one copy); a converted
 *   or transposed range a tile at a time (at most 1 MiB of the file) into a
 *   buffer of the reading thread, then converted and written transposed into
 *   the tensor by the same thread;
 * - a tensor in device memory (or any, with TNN_READ_STAGED): into n_staging
 *   (1..16) staging buffers of staging_bytes (4096..2^30) each, the device's
 *   page-locked host memory where it has some, else plain memory (a converted
 *   or transposed range is converted and transposed into them, as above); a
 *   round of pieces fills one buffer, then goes to the device asynchronously
 *   on the session's stream while the next rounds are read, each range's
 *   bytes in the round in one copy; a buffer is read into again only when its
 *   own copies are done (an event, or a synchronize where the device has
 *   none). One synchronize at the end: when this returns, every byte is in
 *   place and the staging buffers are freed.
 * ranges_nbytes must be n_ranges * sizeof(tnn_file_range). Returns TNN_OK
 * when every byte was read and none is a value that is not finite (f32, f16,
 * bf16; q8_0: a block's scale; a value converted to f16 that became inf, one
 * past 65504, counts too); else *bad_range (-1 when none) is the range that
 * failed to read (an error naming it and the offsets; TNN_ESHAPE where the
 * file ended early) or that holds a value that is not finite (TNN_OK,
 * *nonfinite_at the byte offset of that value in the range's bytes of the
 * file; -1 otherwise; the first such value in the ranges' order, within a
 * transposed range one of them; host-memory ranges are read, and so checked,
 * before staged ones). After either, reading stops: the tensors hold part of
 * the file. Memory of its own: the staging buffers (only for staged ranges),
 * and a buffer per thread of at most 3 MiB (only for converted or transposed
 * ranges). */
TNN_API int tnn_read_file_ranges(tnn_session *sess, int fd, const tnn_file_range *ranges,
                                 int64_t n_ranges, int64_t ranges_nbytes, int n_threads,
                                 int64_t staging_bytes, int n_staging, int flags,
                                 int64_t *bad_range, int64_t *nonfinite_at);

/* One step of a realized graph: uploads in_nbytes of in_data into in (from
 * byte 0), computes, and downloads out_nbytes of out (from byte 0) into
 * out_data, waiting for the device once instead of once per call. in or out
 * may be NULL (nothing uploaded or downloaded); the checks are those of
 * tnn_upload_raw, tnn_compute and tnn_download_raw, all made before anything
 * is copied. */
TNN_API int tnn_compute_io(tnn_session *sess, tnn_tensor *in, const void *in_data,
                           int64_t in_nbytes, tnn_tensor *out, void *out_data,
                           int64_t out_nbytes);

/* ---- token choice and log-probabilities on the host (sampler.c) ---------- */

/* The most log-probabilities tnn_sample_rows ranks a row. */
#define TNN_SAMPLE_MAX_TOP 100

/* For each of n_rows rows of logits (f32, row-major [n_rows, n_vocab]; n_vocab
 * 1..INT32_MAX), the token chosen by THE SAMPLING RULE of cuda/sampling.h in
 * float64, the same id as gpt2/sampling.py's choose() for the same uniform:
 *   params  n_rows records of {float temperature; int32 top_k; float top_p;
 *           float uniform} (tnn_sampling_params, 16 bytes), or NULL (with
 *           params_nbytes 0) for greedy rows. temperature finite and >= 0 (0:
 *           greedy, the lowest id of the largest logit), top_k >= 0 (0 or >=
 *           n_vocab: off), top_p in (0, 1] (1: off), uniform in [0, 1).
 *   out_ids             int32 [n_rows]: the chosen ids.
 *   out_logprobs        f32 [n_rows] or NULL: the chosen id's log_softmax of
 *                       the raw logits (temperature 1), computed in float64.
 *   out_top_ids,        int32 and f32 [n_rows, n_top], when n_top > 0 (0..
 *   out_top_logprobs    min(n_vocab, TNN_SAMPLE_MAX_TOP)): each row's n_top most
 *                       likely ids, most likely first (ties: the lower id first),
 *                       and their log-probabilities; NULL when n_top is 0.
 * Each *_nbytes is its buffer's size in bytes and must equal what the shapes
 * give (an optional buffer left out: NULL and 0). A NaN or +inf logit, a row of
 * -inf only, or a parameter out of range fails with the row (and index) named;
 * the outputs of the rows before it are written, the others are not. Uses
 * O(n_vocab) memory of its own, freed before it returns. Thread-safe. */
TNN_API int tnn_sample_rows(const float *logits, int64_t logits_nbytes, int64_t n_rows,
                            int64_t n_vocab, const void *params, int64_t params_nbytes,
                            int32_t *out_ids, int64_t ids_nbytes, float *out_logprobs,
                            int64_t logprobs_nbytes, int64_t n_top, int32_t *out_top_ids,
                            int64_t top_ids_nbytes, float *out_top_logprobs,
                            int64_t top_logprobs_nbytes);

/* Penalties on n_rows rows of logits (f32, row-major [n_rows, n_vocab], n_vocab
 * 1..INT32_MAX), in place, before token choice (tnn_sample_rows). Row r's history
 * is a CSR list: ids[row_starts[r] .. row_starts[r + 1]) (int32, distinct within a
 * row, each in 0..n_vocab-1) are the tokens it has seen (its prompt and what it
 * generated), counts[j] (int32 >= 0) how often ids[j] was generated (0: prompt
 * only). row_starts: int64 [n_rows + 1], row_starts[0] = 0, ascending, the last
 * the number of ids. params: f32 [n_rows, 3], each row {repetition (finite, > 0;
 * 1: off), frequency, presence (finite; 0: off)}. For each listed id i, in order:
 *   l_i = l_i > 0 ? l_i / repetition : l_i * repetition   (HF, llama.cpp)
 *   l_i -= frequency * counts[i] + presence              when counts[i] > 0 (OpenAI)
 * in float32. Each *_nbytes must equal what the shapes give (ids and counts
 * 4 * n_ids, NULL allowed when n_ids is 0). Every size, start, id, count and
 * parameter is checked, naming the row at fault, before any logit is written: a
 * failure leaves logits unchanged. Uses O(n_vocab) bytes of its own, freed
 * before it returns. Thread-safe. */
TNN_API int tnn_penalize_rows(float *logits, int64_t logits_nbytes, int64_t n_rows,
                              int64_t n_vocab, const int32_t *ids, int64_t ids_nbytes,
                              const int32_t *counts, int64_t counts_nbytes,
                              const int64_t *row_starts, int64_t starts_nbytes,
                              const float *params, int64_t params_nbytes);

/* ---- token choice on the device over a graph's logits (device_sampler.c) - */

/* 1 when tnn_compute_io_sample can run for this session: a CUDA session, a
 * library built with our CUDA kernels and a device they run on (compute
 * capability 9.0 or newer); 0 when not, with tnn_last_error saying why;
 * negative for a NULL or stale session. Answering 1 the first time makes the
 * session's sampler (a CUDA stream). */
TNN_API int tnn_can_sample_on_device(tnn_session *sess);

/* tnn_compute_io without a download (in may be NULL), then THE SAMPLING RULE of
 * cuda/sampling.h on the device over logits: f32 ne = [n_vocab, n_rows],
 * contiguous, n_rows 1..65535, an output of the realized graph (tnn_set_output
 * on it, or on the tensor it views; or the graph's result) in device memory.
 *   sampling  n_rows records of {float temperature; int32 top_k; float top_p;
 *             float uniform} (16 bytes), sampling_nbytes = 16 * n_rows, in the
 *             ranges of tnn_sample_rows: temperature finite and >= 0 (0: greedy,
 *             the lowest id of the largest logit), top_k >= 0 (0 or >= n_vocab:
 *             off), top_p in (0, 1] (1: off), uniform in [0, 1).
 *   out_ids   int32 [n_rows], out_ids_nbytes = 4 * n_rows: the chosen ids.
 * Every argument, and every record (a bad one named by its row), is checked
 * before ggml or the device does anything; the step's checks are those of
 * tnn_compute_io. The rows are sampled on a stream of the session's own after
 * ggml's compute has finished; the call returns when the ids are on the host.
 * The ids equal tnn_sample_rows' wherever u * W and top_p * W do not fall
 * within rounding (~1e-6 relative) of a running sum (sampling.h); the device
 * reads a NaN logit as -inf, where the host refuses it. Where
 * tnn_can_sample_on_device answers 0 (a CPU session, a build without our
 * kernels) or the logits are in host memory (an op ggml-cuda lacks ran on the
 * CPU): TNN_EBACKEND saying why, nothing computed; download the logits and use
 * tnn_sample_rows. The session owns the sampler's device memory (grown to the
 * most rows asked) and frees it with itself. */
TNN_API int tnn_compute_io_sample(tnn_session *sess, tnn_tensor *in, const void *in_data,
                                  int64_t in_nbytes, tnn_tensor *logits, const void *sampling,
                                  int64_t sampling_nbytes, int32_t *out_ids,
                                  int64_t out_ids_nbytes);

/* ---- our fused CUDA decode step (native/cuda/decode.h) ------------------- */

typedef struct tnn_decoder tnn_decoder;
#define TNN_DECODER_MAX_BATCH 32 /* sequences a step: native/cuda/common.cuh's TNN_DEC_MAX_BATCH */

/* A fused GPT-2 decode step over a CUDA session's persistent tensors, after
 * tnn_finalize_weights (weights may be uploaded later; they are read at each
 * step). Layouts are those of decode.h, d = n_embd; the weights are the file's
 * (no LayerNorm folded in): each norm's gain and bias are applied by the kernels.
 *   wte     f16 or q8_0 [d, vocab]: the embedding, and the tied output head
 *   wpe     f32 [d, n_rows]            ln_f_g, ln_f_b  f32 [d]: the final norm
 *   layers  n_layer * 13 handles: ln_1_g [d], ln_1_b [d], w_qkv [d, 3d], b_qkv [3d],
 *           w_o [d, d], b_o [d], ln_2_g [d], ln_2_b [d], w_fc [d, d_ff], b_fc [d_ff],
 *           w_proj [d_ff, d], b_proj [d] (weights f16 or q8_0, the rest f32),
 *           kv f16 [2d, n_rows * n_slots].
 * max_batch (1..TNN_DECODER_MAX_BATCH): the most sequences one step decodes.
 * NULL with the reason when the session is not CUDA, the library was built
 * without our kernels, or a handle, type or shape is off. The root session owns
 * it: tnn_decoder_free, or freeing the root, frees it. */
TNN_API tnn_decoder *tnn_decoder_new(tnn_session *sess, int n_head, double eps, int max_batch,
                                     tnn_tensor *wte, tnn_tensor *wpe, tnn_tensor *ln_f_g,
                                     tnn_tensor *ln_f_b, tnn_tensor *const *layers,
                                     int n_layer);

/* One token for each of n_seq sequences: tokens[i] at positions[i] (0..n_rows-1)
 * in cache slot slots[i] (distinct, 0..n_slots-1). sampling: n_seq records of
 * {float temperature; int32 top_k; float top_p; float uniform} (sampling.h), or
 * NULL for greedy. Writes out_ids[n_seq], and out_logits[n_seq * vocab] (f32)
 * when not NULL. Every argument is checked before the device runs; blocks until
 * the ids are on the host. */
TNN_API int tnn_decoder_step(tnn_decoder *dec, int n_seq, const int32_t *tokens,
                             const int32_t *positions, const int32_t *slots,
                             const void *sampling, int32_t *out_ids, float *out_logits);

/* Frees a decoder (NULL, freed or foreign pointers are ignored). */
TNN_API void tnn_decoder_free(tnn_decoder *dec);

#ifdef __cplusplus
}
#endif

#endif /* TINYNN_H */
