/* tensors.c - which tensors are ours, the checks every op makes on its
 * operands, and the tensors a caller declares: persistent ones (weights,
 * caches) and compute inputs. */
#include <stdio.h>

#include "tinynn_internal.h"

/* ---- ownership ---------------------------------------------------------------- */

/* Tensor objects of a no_alloc context sit at a fixed stride from its start;
 * measured once, it lets us tell a tensor of ours from any other pointer. */
static size_t tensor_first_offset = 0, tensor_stride = 0;

void measure_tensor_layout(void) {
    if (tensor_stride) return;
    struct ggml_init_params p = {3 * ggml_tensor_overhead(), NULL, true};
    struct ggml_context *c = ggml_init(p);
    struct ggml_tensor *a = ggml_new_tensor_1d(c, GGML_TYPE_F32, 1);
    struct ggml_tensor *b = ggml_new_tensor_1d(c, GGML_TYPE_F32, 1);
    tensor_first_offset = (size_t)((char *)a - (char *)ggml_get_mem_buffer(c));
    tensor_stride = (size_t)((char *)b - (char *)a);
    ggml_free(c);
}

static bool ctx_owns(struct ggml_context *c, const struct ggml_tensor *t) {
    if (!c) return false;
    const char *base = ggml_get_mem_buffer(c);
    const char *p = (const char *)t;
    size_t used = ggml_used_mem(c);
    if (p < base + tensor_first_offset || p >= base + used) return false;
    return ((size_t)(p - base) - tensor_first_offset) % tensor_stride == 0;
}

bool is_persistent(const tnn_session *s, const struct ggml_tensor *t) {
    return ctx_owns(s->root->ctx_w, t);
}

int64_t persistent_index(const tnn_session *s, const struct ggml_tensor *t) {
    if (!is_persistent(s, t)) return -1;
    const char *base = ggml_get_mem_buffer(s->root->ctx_w);
    return (int64_t)(((size_t)((const char *)t - base) - tensor_first_offset) / tensor_stride);
}

static bool owns(const tnn_session *s, const struct ggml_tensor *t) {
    return ctx_owns(s->ctx, t) || is_persistent(s, t);
}

bool check_tensor(const tnn_session *s, const struct ggml_tensor *t, const char *func,
                  const char *what) {
    if (!t) return fail(TNN_EINVAL, func, "%s is NULL", what), false;
    if (!owns(s, t)) {
        return fail(TNN_EINVAL, func,
                    "%s (%p) is not a live tensor of this session (freed, from another session, "
                    "or from before tnn_reset_for_rebuild)",
                    what, (const void *)t),
               false;
    }
    if (is_packed(s, t)) { /* its bytes are in our tile order (cpu_product.c) */
        return fail(TNN_EINVAL, func,
                    "%s %s is packed by tnn_pack_rows: only tnn_packed_matmul and "
                    "tnn_packed_get_rows read it, and a download unpacks it whole",
                    what, SHAPE(t)),
               false;
    }
    return true;
}

/* ---- session state -------------------------------------------------------------- */

bool room_for(tnn_session *s, int n_tensors, const char *func) {
    size_t free_bytes = ggml_get_mem_size(s->ctx) - ggml_used_mem(s->ctx);
    if (free_bytes < (size_t)n_tensors * ggml_tensor_overhead()) {
        return fail(TNN_ENOMEM, func,
                    "the compute context is full (%d tensors at most per graph); call "
                    "tnn_reset_for_rebuild",
                    TNN_MAX_COMPUTE_TENSORS),
               false;
    }
    return true;
}

bool not_realized(tnn_session *s, const char *func) {
    if (s->realized) {
        return fail(TNN_ESTATE, func,
                    "the graph is already realized: call tnn_reset_for_rebuild to build another"),
               false;
    }
    return true;
}

/* ---- types and shapes ------------------------------------------------------------ */

static bool check_type(int type, const char *func) {
    if (type != TNN_TYPE_F32 && type != TNN_TYPE_F16 && type != TNN_TYPE_Q8_0 &&
        type != TNN_TYPE_I32) {
        return fail(TNN_EINVAL, func, "unsupported type %d (expected 0 f32, 1 f16, 8 q8_0, 26 i32)",
                    type),
               false;
    }
    return true;
}

int64_t tnn_type_row_size(int type, int64_t n) {
    if (!check_type(type, __func__)) return TNN_EINVAL;
    int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (n < 0 || n % blck != 0) {
        return fail(TNN_ESHAPE, __func__, "n=%lld is not a non-negative multiple of %lld",
                    (long long)n, (long long)blck);
    }
    return (int64_t)ggml_row_size((enum ggml_type)type, n);
}

bool dense_bytes(int type, const int64_t ne[4], int64_t *bytes) {
    int64_t n = (int64_t)ggml_type_size((enum ggml_type)type);
    if (__builtin_mul_overflow(n, ne[0] / ggml_blck_size((enum ggml_type)type), &n)) return false;
    for (int i = 1; i < 4; i++) {
        if (__builtin_mul_overflow(n, ne[i], &n)) return false;
    }
    *bytes = n;
    return true;
}

/* A shape for a new tensor: positive axes, ne0 a multiple of the type's
 * block, and a byte size that cannot overflow. */
bool check_new_shape(int type, const int64_t ne[4], const char *func) {
    if (!check_type(type, func)) return false;
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) {
            return fail(TNN_ESHAPE, func, "ne[%d]=%lld must be positive", i, (long long)ne[i]),
                   false;
        }
    }
    int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (ne[0] % blck != 0) {
        return fail(TNN_ESHAPE, func, "ne0=%lld must be a multiple of %lld for type %s",
                    (long long)ne[0], (long long)blck, ggml_type_name((enum ggml_type)type)),
               false;
    }
    /* Exact: ggml_row_size is a size_t product that wraps (ne0 = 2^62 f32 gives
     * 0 bytes, and a tensor that claims 2^62 elements in no memory). */
    int64_t bytes;
    if (!dense_bytes(type, ne, &bytes) || bytes > INT64_MAX / 4) {
        return fail(TNN_ESHAPE, func, "shape [%lld, %lld, %lld, %lld] is too large",
                    (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]),
               false;
    }
    return true;
}

/* ---- what ops ask of their operands ------------------------------------------------ */

const char *shape_str(const struct ggml_tensor *t, char *buf, size_t size) {
    snprintf(buf, size, "%s [%lld, %lld, %lld, %lld]", ggml_type_name(t->type), (long long)t->ne[0],
             (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    return buf;
}

bool want_type(const struct ggml_tensor *t, enum ggml_type type, const char *func,
               const char *what) {
    if (t->type != type) {
        return fail(TNN_ESHAPE, func, "%s is %s, expected %s", what, SHAPE(t),
                    ggml_type_name(type)),
               false;
    }
    return true;
}

bool want_float(const struct ggml_tensor *t, const char *func, const char *what) {
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) {
        return fail(TNN_ESHAPE, func, "%s is %s, expected f32 or f16", what, SHAPE(t)), false;
    }
    return true;
}

/* Elements of each row adjacent in memory (what most CPU kernels need). */
bool want_dense_rows(const struct ggml_tensor *t, const char *func, const char *what) {
    if (t->nb[0] != ggml_type_size(t->type)) {
        return fail(TNN_ESHAPE, func, "%s must have adjacent elements along ne0 (nb0=%zu)", what,
                    t->nb[0]),
               false;
    }
    return true;
}

bool want_contiguous(const struct ggml_tensor *t, const char *func, const char *what) {
    if (!ggml_is_contiguous(t)) {
        return fail(TNN_ESHAPE, func, "%s %s must be contiguous (use tnn_cont)", what, SHAPE(t)),
               false;
    }
    return true;
}

/* What most ops on f32 data need of an operand. */
bool want_contiguous_f32(const struct ggml_tensor *t, const char *func, const char *what) {
    return want_type(t, GGML_TYPE_F32, func, what) && want_contiguous(t, func, what);
}

/* ---- declared tensors -------------------------------------------------------------- */

static struct ggml_tensor *new_tensor(struct ggml_context *c, int type, const int64_t ne[4]) {
    int n_dims = 4;
    while (n_dims > 1 && ne[n_dims - 1] == 1) n_dims--;
    return ggml_new_tensor(c, (enum ggml_type)type, n_dims, ne);
}

static tnn_tensor *persistent(tnn_session *sess, int type, int64_t ne0, int64_t ne1, int64_t ne2,
                              int64_t ne3, const char *func) {
    CHECK_SESS(sess, NULL);
    if (sess->root != sess) {
        return fail(TNN_ESTATE, func, "a forked session cannot declare persistent tensors"), NULL;
    }
    if (sess->finalized) {
        return fail(TNN_ESTATE, func, "weights are already finalized: declare persistent tensors "
                                      "before tnn_finalize_weights"),
               NULL;
    }
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    if (!check_new_shape(type, ne, func)) return NULL;
    if (ggml_get_mem_size(sess->ctx_w) - ggml_used_mem(sess->ctx_w) < ggml_tensor_overhead()) {
        return fail(TNN_ENOMEM, func, "at most %d persistent tensors per session",
                    TNN_MAX_PERSISTENT_TENSORS),
               NULL;
    }
    return new_tensor(sess->ctx_w, type, ne);
}

tnn_tensor *tnn_input_2d_f32_persistent(tnn_session *sess, int64_t rows, int64_t cols) {
    return persistent(sess, TNN_TYPE_F32, cols, rows, 1, 1, __func__);
}

tnn_tensor *tnn_input_1d_f32_persistent(tnn_session *sess, int64_t n) {
    return persistent(sess, TNN_TYPE_F32, n, 1, 1, 1, __func__);
}

tnn_tensor *tnn_input_typed_persistent(tnn_session *sess, int type, int64_t ne0, int64_t ne1,
                                       int64_t ne2, int64_t ne3) {
    return persistent(sess, type, ne0, ne1, ne2, ne3, __func__);
}

int tnn_finalize_weights(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (sess->root != sess) return fail(TNN_ESTATE, __func__, "a forked session has no weights");
    if (sess->finalized) return fail(TNN_ESTATE, __func__, "weights are already finalized");
    if (!ggml_get_first_tensor(sess->ctx_w)) {
        return fail(TNN_ESTATE, __func__, "no persistent tensor was declared");
    }
    if (!sess->is_cuda && (sess->weights_buf = alloc_host_weights(sess))) {
        sess->finalized = true; /* zeroed already, pages untouched */
        return TNN_OK;
    }
    sess->weights_buf = ggml_backend_alloc_ctx_tensors(sess->ctx_w, sess->backend);
    if (!sess->weights_buf) {
        size_t total = 0;
        for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx_w); t;
             t = ggml_get_next_tensor(sess->ctx_w, t)) {
            total += ggml_nbytes(t);
        }
        return fail(TNN_ENOMEM, __func__, "could not allocate %.1f MiB of %s memory for the weights",
                    (double)total / (1 << 20), sess->is_cuda ? "CUDA device" : "host");
    }
    /* Caches must start defined; the original assumed zeros it never wrote. */
    ggml_backend_buffer_clear(sess->weights_buf, 0);
    sess->finalized = true;
    return TNN_OK;
}

int64_t tnn_weights_nbytes(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    tnn_session *r = sess->root;
    return r->weights_buf ? (int64_t)ggml_backend_buffer_get_size(r->weights_buf) : 0;
}

static tnn_tensor *compute_input(tnn_session *sess, int type, int64_t ne0, int64_t ne1,
                                 int64_t ne2, int64_t ne3, const char *func) {
    CHECK_SESS(sess, NULL);
    if (!not_realized(sess, func) || !room_for(sess, 1, func)) return NULL;
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    if (!check_new_shape(type, ne, func)) return NULL;
    struct ggml_tensor *t = new_tensor(sess->ctx, type, ne);
    ggml_set_input(t);
    /* ggml's allocator frees an input after its last reader and hands the memory
     * to later nodes: an input not uploaded again would then feed the next compute
     * whatever landed there. Outputs are never reused, so inputs keep their values. */
    ggml_set_output(t);
    return t;
}

tnn_tensor *tnn_input_1d_i32(tnn_session *sess, int64_t n) {
    return compute_input(sess, TNN_TYPE_I32, n, 1, 1, 1, __func__);
}

tnn_tensor *tnn_input_2d_f32(tnn_session *sess, int64_t rows, int64_t cols) {
    return compute_input(sess, TNN_TYPE_F32, cols, rows, 1, 1, __func__);
}

tnn_tensor *tnn_input_typed(tnn_session *sess, int type, int64_t ne0, int64_t ne1, int64_t ne2,
                            int64_t ne3) {
    return compute_input(sess, type, ne0, ne1, ne2, ne3, __func__);
}

int tnn_tensor_info(tnn_session *sess, tnn_tensor *t, int64_t *ne, int64_t *nb, int *type) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    for (int i = 0; i < 4; i++) {
        if (ne) ne[i] = t->ne[i];
        if (nb) nb[i] = (int64_t)t->nb[i];
    }
    if (type) *type = (int)t->type;
    return TNN_OK;
}

int tnn_set_name(tnn_session *sess, tnn_tensor *t, const char *name) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    if (!name) return fail(TNN_EINVAL, __func__, "name is NULL");
    ggml_set_name(t, name);
    return TNN_OK;
}
