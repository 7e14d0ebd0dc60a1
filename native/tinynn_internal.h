/*
 * tinynn_internal.h - what the shim's .c files share; not installed, not ABI.
 *
 * The rule that shapes the shim: ggml answers bad input with GGML_ASSERT,
 * which calls abort() and takes the Python process with it. So every public
 * function checks its handles, shapes, types, offsets, states and capacities
 * before it calls ggml, and reports a failure through tnn_last_error().
 *
 * Where things live:
 *   errors.c          last-error string, log routing, ABI version
 *   backends.c        loading ggml's backend modules, CUDA availability
 *   session.c         the session registry, new / fork / free, threads
 *   tensors.c         tensor ownership, shape and type checks, constructors
 *   ops.c             the op builders
 *   index_bounds.c    index tensors: registration and the one bound check
 *   graph.c           graph building, scheduler, realize, compute
 *   transfers.c       upload, download, tnn_compute_io
 *   file_reads.c      a file's bytes into tensors: parallel preads, staging
 *                     through page-locked memory for device memory
 *   cuda_specifics.c  what a CUDA session does differently, and why
 *   decoder.c         tnn_decoder_*: our fused CUDA decode step (cuda/decode.h)
 *   device_sampler.c  tnn_compute_io_sample: a step, then token choice on the
 *                     device over the graph's logits (cuda/sample_logits.h)
 *   free_blocks.c     a bound on ggml's allocator fragmentation
 *   host_weights.c    a CPU session's persistent memory, zeroed and lazy
 *   cpu_level.c       which instruction level (scalar, AVX2, AVX-512) our own
 *                     CPU kernels run: TINYNN_CPU_KERNELS (cpu_level.h)
 *   cpu_product.c     our own CPU product over weights packed in tiles, one
 *                     summation order whatever the batch (tnn_pack_rows)
 *   port_dot.c        tnn_port_matmul: the port engines' products in one
 *                     fixed summation order on every x86-64 CPU
 *   port_rows.c       tnn_port_norm, tnn_port_softmax: their row reductions,
 *                     likewise
 * Every function here is hidden (C_VISIBILITY_PRESET hidden); only tinynn.h's
 * TNN_API functions leave the library.
 */
#ifndef TINYNN_INTERNAL_H
#define TINYNN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "tinynn.h"

/* Capacities. A graph can never hold more tensors than both contexts, so a
 * graph sized to their sum never overflows (ggml asserts on overflow). */
#define TNN_MAX_COMPUTE_TENSORS 32768
#define TNN_MAX_PERSISTENT_TENSORS 16384
#define TNN_GRAPH_SIZE (TNN_MAX_COMPUTE_TENSORS + TNN_MAX_PERSISTENT_TENSORS)
#define TNN_MAX_INDEX_INPUTS 4096
#define TNN_MAX_GRAPH_EXTRAS 4096 /* tnn_add_to_graph calls per graph */
/* Free blocks in compute memory (see avoid_fragmentation); ggml aborts past 256. */
#define TNN_MAX_FREE_BLOCKS 224

/* ---- the session ----------------------------------------------------------- */

/* An i32 tensor (or part of one) whose values index rows: index_bounds.c
 * checks every value that reaches it against bound. */
struct tnn_index_input {
    struct ggml_tensor *base; /* the input (or persistent) tensor that holds the indices */
    int64_t first, count;     /* which int32 elements of base are indices */
    int64_t bound;            /* their values must lie in [0, bound) */
};

struct tnn_session {
    struct tnn_session *root; /* owner of the persistent tensors (self or parent) */
    int n_forks;              /* live forks of this root */
    bool free_requested;      /* freed by the caller; memory kept for forks */
    bool is_cuda;
    ggml_backend_t backend;
    ggml_backend_t cpu_backend; /* the scheduler's fallback (== backend on CPU) */
    ggml_backend_sched_t sched; /* made by tnn_realize, sized to the graph */
    int sched_graph_size;
    int n_threads;       /* threads a compute may use at most */
    bool threads_fixed;  /* set by tnn_set_n_threads: exactly n_threads, always */
    int threads_applied; /* what the CPU backend was last given */

    struct ggml_context *ctx_w; /* persistent tensors (root only) */
    /* root only: a flag per persistent tensor (persistent_index), set when
     * tnn_pack_rows has laid it out in tiles; NULL until the first one */
    uint8_t *packed;
    ggml_backend_buffer_t weights_buf;
    void *host_weights; /* the mapping under weights_buf on CPU (host_weights.c) */
    struct huge_page_mover *huge_page_mover; /* tnn_move_to_huge_pages' thread, or NULL */
    bool huge_pages_asked;                   /* tnn_move_to_huge_pages was called */
    size_t host_weights_size;
    bool finalized;

    struct ggml_context *ctx;       /* compute tensors */
    struct ggml_context *ctx_graph; /* the cgraph object */
    struct ggml_cgraph *graph;
    bool realized;

    struct tnn_index_input index_inputs[TNN_MAX_INDEX_INPUTS];
    /* Tensors given to tnn_add_to_graph, expanded into a fresh graph by each
     * tnn_realize attempt, so a failed attempt leaves no nodes behind. */
    struct ggml_tensor *graph_extras[TNN_MAX_GRAPH_EXTRAS];
    int n_graph_extras;
    int n_index_inputs;

    /* Page-locked host memory for tnn_compute_io's copies (CUDA only, made
     * on first use): copies from pageable memory make the driver wait. */
    ggml_backend_buffer_t staging;

    /* Our fused decode steps over this root's tensors (decoder.c), freed
     * before the memory they read. */
    struct tnn_decoder *decoders;

    /* Token choice on the device over this session's logits (device_sampler.c):
     * a stream and buffers of its own, made on first use, freed with the
     * session. NULL until then, and always without our CUDA kernels. */
    struct tnn_cuda_logits_sampler *logits_sampler;
};

/* ---- errors.c -------------------------------------------------------------- */

/* Sets this thread's last error to "func: <fmt ...>" and returns code. */
int fail(int code, const char *func, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define FAIL_NULL(...) (fail(0, __func__, __VA_ARGS__), (tnn_tensor *)NULL)

/* Routes ggml's log through the shim (stderr from warnings up) unless a
 * callback was already set. */
void route_ggml_log(void);

/* Around code that holds a shim lock and may make ggml log: log_hold() after
 * locking, log_release() after unlocking. Lines logged in between wait (per
 * thread) and are delivered by the outermost log_release(), so the log
 * callback never runs while a lock is held and may call back into the shim. */
void log_hold(void);
void log_release(void);

/* ---- backends.c ------------------------------------------------------------ */

/* Load the backend modules once; false / NULL with the reason in
 * tnn_last_error() (under func's name). */
bool ensure_cpu_backend(const char *func);
ggml_backend_dev_t ensure_cuda_backend(const char *func);

/* ---- session.c ------------------------------------------------------------- */

/* Whether s is a live session (freed or foreign pointers are not). */
bool registry_has(const tnn_session *s);

/* Before a compute: the CPU threads it may use (see session.c, "a busy machine"). */
void adapt_threads(tnn_session *s);
/* A thread of ours that runs at idle priority (SCHED_IDLE or nice 19), from
 * its start to its end: the busy-machine probe does not count it as a
 * neighbour (session.c). */
void idle_thread_started(void);
void idle_thread_stopped(void);
/* Around every graph compute of this process (graph.c, transfers.c), so that
 * background work can keep out of its way (host_weights.c). */
void compute_started(void);
void compute_finished(void);
/* Whether a compute of this process is running now. */
bool computing_now(void);

#define CHECK_SESS(sess, ret)                                                                  \
    do {                                                                                       \
        if (!(sess)) return (fail(TNN_EINVAL, __func__, "session is NULL"), ret);              \
        if (!registry_has(sess))                                                               \
            return (fail(TNN_EINVAL, __func__, "session %p is not live (freed or foreign)",    \
                         (void *)(sess)),                                                      \
                    ret);                                                                      \
    } while (0)

/* ---- host_weights.c ------------------------------------------------------------- */

/* The persistent tensors of a CPU session placed in one anonymous mapping:
 * zeroed by the kernel, resident only where touched. NULL where the backend
 * cannot wrap host memory (the caller allocates as ggml does, and clears). */
ggml_backend_buffer_t alloc_host_weights(tnn_session *sess);
/* Stops tnn_move_to_huge_pages' thread, then unmaps; after the buffer over it is freed. */
void free_host_weights(tnn_session *sess);
/* n bytes from start, about to be written whole (weights read from a file):
 * asks for huge pages where they lie in root's mapping (see host_weights.c). */
void advise_huge_pages(tnn_session *root, const void *start, size_t n);
/* Faults in the pages of n bytes from start where they lie in root's mapping,
 * their contents unchanged (see file_reads.c: transposed reads). */
void prefault_host_weights(tnn_session *root, const void *start, size_t n);

/* ---- value_layouts.c ------------------------------------------------------- */

/* Writes the h x w values at src (row-major, w a row, size 2 or 4 bytes each)
 * transposed: value (r, c) goes to dst + (c * pitch + r) * size. */
void transpose_values(const void *src, int64_t h, int64_t w, void *dst, int64_t pitch,
                      size_t size);
/* transpose_values into a packed [K, n_rows] matrix (packed_layout.h) at dst:
 * value (r, c) of src is element (row row0 + c, k k0 + r). */
void transpose_values_packed(const void *src, int64_t h, int64_t w, int64_t k0, int64_t row0,
                             int64_t K, int64_t n_rows, void *dst, size_t size);
/* Values first .. first + n of a row-major [K, n_rows] matrix (first and n
 * multiples of 16; K too), at src, into the packed matrix at dst. */
void pack_values(const void *src, int64_t first, int64_t n, int64_t K, int64_t n_rows, void *dst,
                 size_t size);
/* Whether convert_values converts from -> to: f32 -> f16, f16 -> f32, bf16 -> f32. */
bool can_convert_values(enum ggml_type from, enum ggml_type to);
/* n values of type from at src, as type to at dst (a pair can_convert_values takes). */
void convert_values(const void *src, enum ggml_type from, void *dst, enum ggml_type to,
                    int64_t n);

/* ---- tensors.c: ownership and the checks every op makes -------------------- */

/* Measures where a context keeps its tensor objects (once, before the first
 * session), so ctx_owns can tell a tensor of ours from any other pointer. */
void measure_tensor_layout(void);
bool is_persistent(const tnn_session *s, const struct ggml_tensor *t);
/* t's place among the root's persistent tensors (0, 1, ...), or -1 if it is not one. */
int64_t persistent_index(const tnn_session *s, const struct ggml_tensor *t);

/* The tensor that owns t's memory: t itself, or what t is a view of. */
static inline struct ggml_tensor *storage_of(const struct ggml_tensor *t) {
    return t->view_src ? t->view_src : (struct ggml_tensor *)t;
}

/* Each check sets the error (under func's name) and returns false. */
bool check_tensor(const tnn_session *s, const struct ggml_tensor *t, const char *func,
                  const char *what);
bool room_for(tnn_session *s, int n_tensors, const char *func);
bool not_realized(tnn_session *s, const char *func);
bool check_new_shape(int type, const int64_t ne[4], const char *func);
/* Bytes of a dense tensor of this type and shape, exactly; false when that
 * overflows int64 (size_t products inside ggml would wrap silently). */
bool dense_bytes(int type, const int64_t ne[4], int64_t *bytes);
bool want_type(const struct ggml_tensor *t, enum ggml_type type, const char *func,
               const char *what);
bool want_float(const struct ggml_tensor *t, const char *func, const char *what);
bool want_dense_rows(const struct ggml_tensor *t, const char *func, const char *what);
bool want_contiguous(const struct ggml_tensor *t, const char *func, const char *what);
bool want_contiguous_f32(const struct ggml_tensor *t, const char *func, const char *what);

/* "f32 [ne0, ne1, ne2, ne3]" into buf; SHAPE(t) gives each use its own buffer. */
const char *shape_str(const struct ggml_tensor *t, char *buf, size_t size);
#define SHAPE(t) shape_str((t), (char[96]){0}, 96)

#define CHECK_T(t, ret)                                         \
    do {                                                        \
        if (!check_tensor(sess, (t), __func__, #t)) return ret; \
    } while (0)

/* Shared preamble of every op builder. */
#define OP_PREAMBLE(n_new)                                                   \
    CHECK_SESS(sess, NULL);                                                  \
    if (!not_realized(sess, __func__) || !room_for(sess, (n_new), __func__)) \
    return NULL

/* ---- index_bounds.c -------------------------------------------------------- */

/* Registers idx (an i32 tensor or contiguous view of one) as indexing rows
 * of something of size bound; false with the error set if its values cannot
 * be checked. */
bool note_index_input(tnn_session *s, struct ggml_tensor *idx, int64_t bound, const char *func);
/* Zeros the index inputs' memory after realize (persistent ones excepted). */
void zero_index_inputs(tnn_session *s);
/* TNN_OK, or TNN_ESHAPE if the nbytes at data, about to be written into t at
 * byte offset, hold an index outside its bound. */
int check_index_upload(tnn_session *s, const struct ggml_tensor *t, const void *data,
                       int64_t nbytes, int64_t offset, const char *func);
/* TNN_OK, or TNN_ESHAPE if a persistent index tensor now holds a bad index. */
int check_persistent_indices(tnn_session *s, const char *func);

/* ---- graph.c --------------------------------------------------------------- */

/* A fresh, empty graph object in s->ctx_graph; false when out of memory. */
bool new_graph(tnn_session *s);
/* TNN_OK, or TNN_ESTATE (error set) when the session has no realized graph. */
int check_realized(tnn_session *s, const char *func);
/* The error for a failed compute: TNN_EBACKEND. */
int compute_failed(enum ggml_status status, const char *func);

/* ---- transfers.c ------------------------------------------------------------ */

/* tnn_compute_io in two parts, under func's name: every check (sess already
 * live), then the upload, compute and download, one wait (checks done). */
int compute_io_check(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                     tnn_tensor *out, void *out_data, int64_t out_nbytes, const char *func);
int compute_io_run(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                   tnn_tensor *out, void *out_data, int64_t out_nbytes, const char *func);

/* ---- cpu_product.c ---------------------------------------------------------- */

/* Whether t (or what it views) is a persistent tensor packed by tnn_pack_rows. */
bool is_packed(const tnn_session *s, const struct ggml_tensor *t);
/* TNN_OK when w may be packed now (tnn_pack_rows' preconditions: a live,
 * persistent, unpacked f32 or f16 [K, n] tensor, K a multiple of 16, of a CPU
 * session finalized and without forks or a realized graph); else the error,
 * set with func's name. */
int check_packable(tnn_session *sess, const struct ggml_tensor *w, const char *func);
/* Marks w, which check_packable accepted, packed (its bytes are now in the
 * packed layout, packed_layout.h). */
void mark_packed(tnn_session *sess, const struct ggml_tensor *w);
/* A download of a packed tensor (t live and packed), unpacked into data: the
 * whole tensor only, of type want (< 0: any). */
int download_packed(const struct ggml_tensor *t, void *data, int64_t nbytes, int64_t offset,
                    int want, const char *func);

/* ---- decoder.c -------------------------------------------------------------- */

/* Frees every decoder of a root session. */
void free_session_decoders(tnn_session *root);

/* ---- device_sampler.c -------------------------------------------------------- */

/* Frees the session's device sampler, if it has one (any session, fork or root). */
void free_session_logits_sampler(tnn_session *s);

/* ---- port_dot.c ---------------------------------------------------------------- */

/* 16 float lanes folded as ggml's AVX-512 build folds a vector: lane l +=
 * lane l + 8, then l += l + 4, then (l0 + l2) + (l1 + l3). */
float port_fold16(const float s[16]);
/* fmaf(x, y, z) (rounded once) by the same code on every CPU. */
float port_fmaf(float x, float y, float z);

/* ---- cuda_specifics.c ------------------------------------------------------ */

void prefer_strict_f32_gemm(void);
bool native_gelu_is_f32(const tnn_session *s);
int sched_backends(tnn_session *s, ggml_backend_t backends[2]);
void place_inputs_on_device(tnn_session *s);
int cpu_fallback_sources(tnn_session *s);

#endif /* TINYNN_INTERNAL_H */
