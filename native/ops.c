/* ops.c - the op builders. Each checks what ggml would assert on (handles,
 * types, shapes, strides, capacities) and only then adds its node to the
 * session's compute context. */
#include <limits.h>
#include <math.h>

#include "tinynn_internal.h"

tnn_tensor *tnn_get_rows(tnn_session *sess, tnn_tensor *table, tnn_tensor *idx) {
    OP_PREAMBLE(1);
    CHECK_T(table, NULL);
    CHECK_T(idx, NULL);
    if (table->type != GGML_TYPE_F32 && table->type != GGML_TYPE_F16 &&
        table->type != GGML_TYPE_Q8_0) {
        return FAIL_NULL("table is %s, expected f32, f16 or q8_0", SHAPE(table));
    }
    if (!want_type(idx, GGML_TYPE_I32, __func__, "idx")) return NULL;
    if (idx->ne[2] != 1 || idx->ne[3] != 1 || table->ne[2] != idx->ne[1] ||
        table->ne[3] != 1) {
        return FAIL_NULL("table %s and idx %s do not fit: expected idx [n] or [n, table.ne2]",
                         SHAPE(table), SHAPE(idx));
    }
    if (!want_dense_rows(table, __func__, "table") || !want_contiguous(idx, __func__, "idx")) {
        return NULL;
    }
    if (!note_index_input(sess, idx, table->ne[1], __func__)) return NULL;
    int64_t out[4] = {table->ne[0], idx->ne[0], idx->ne[1], idx->ne[2]};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    return ggml_get_rows(sess->ctx, table, idx);
}

static tnn_tensor *binary(tnn_session *sess, tnn_tensor *a, tnn_tensor *b, bool is_add,
                          const char *func) {
    CHECK_SESS(sess, NULL);
    if (!not_realized(sess, func) || !room_for(sess, 1, func)) return NULL;
    if (!check_tensor(sess, a, func, "a") || !check_tensor(sess, b, func, "b")) return NULL;
    if (!want_type(a, GGML_TYPE_F32, func, "a") || !want_type(b, GGML_TYPE_F32, func, "b") ||
        !want_dense_rows(a, func, "a") || !want_dense_rows(b, func, "b")) {
        return NULL;
    }
    if (!ggml_can_repeat(b, a)) {
        return fail(TNN_ESHAPE, func,
                    "b %s cannot be broadcast to a %s: each a.ne[i] must be a multiple of b.ne[i]",
                    SHAPE(b), SHAPE(a)),
               NULL;
    }
    return is_add ? ggml_add(sess->ctx, a, b) : ggml_mul(sess->ctx, a, b);
}

tnn_tensor *tnn_add(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    return binary(sess, a, b, true, __func__);
}

tnn_tensor *tnn_mul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    return binary(sess, a, b, false, __func__);
}

tnn_tensor *tnn_matmul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (a->type != GGML_TYPE_F32 && a->type != GGML_TYPE_F16 && a->type != GGML_TYPE_Q8_0) {
        return FAIL_NULL("a is %s, expected f32, f16 or q8_0", SHAPE(a));
    }
    if (!want_type(b, GGML_TYPE_F32, __func__, "b")) return NULL;
    if (a->ne[0] != b->ne[0] || b->ne[2] % a->ne[2] != 0 || b->ne[3] % a->ne[3] != 0) {
        return FAIL_NULL("a %s and b %s do not fit: need a.ne0 == b.ne0 and b.ne2, b.ne3 "
                         "multiples of a.ne2, a.ne3",
                         SHAPE(a), SHAPE(b));
    }
    if (ggml_is_transposed(a)) return FAIL_NULL("a %s must not be transposed", SHAPE(a));
    if (!want_dense_rows(a, __func__, "a") || !want_dense_rows(b, __func__, "b")) return NULL;
    int64_t out[4] = {a->ne[1], b->ne[1], b->ne[2], b->ne[3]};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    return ggml_mul_mat(sess->ctx, a, b);
}

tnn_tensor *tnn_scale(tnn_session *sess, tnn_tensor *a, double s) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (!isfinite(s)) return FAIL_NULL("scale %g is not finite", s);
    /* ggml_scale asserts rows evenly strided, stricter than ggml_is_contiguous,
     * which skips axes of size 1 (a transposed [1, n] passes it and fails this). */
    if (a->nb[2] != a->nb[1] * a->ne[1] || a->nb[3] != a->nb[2] * a->ne[2]) {
        return FAIL_NULL("a %s has uneven strides (use tnn_cont)", SHAPE(a));
    }
    return ggml_scale(sess->ctx, a, (float)s);
}

tnn_tensor *tnn_diag_mask_inf(tnn_session *sess, tnn_tensor *a, int64_t n_past) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (n_past < 0 || n_past > INT_MAX) return FAIL_NULL("n_past=%lld must be >= 0", (long long)n_past);
    return ggml_diag_mask_inf(sess->ctx, a, (int)n_past);
}

tnn_tensor *tnn_softmax(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    return ggml_soft_max(sess->ctx, a);
}

tnn_tensor *tnn_soft_max_ext(tnn_session *sess, tnn_tensor *a, tnn_tensor *mask, double scale,
                             double max_bias) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (!isfinite(scale) || !isfinite(max_bias) || max_bias < 0) {
        return FAIL_NULL("scale=%g and max_bias=%g must be finite, max_bias >= 0", scale, max_bias);
    }
    if (max_bias > 0 && !mask) return FAIL_NULL("max_bias=%g needs a mask", max_bias);
    if (mask) {
        CHECK_T(mask, NULL);
        if (!want_float(mask, __func__, "mask") || !want_contiguous(mask, __func__, "mask")) {
            return NULL;
        }
        if (mask->ne[0] != a->ne[0] || mask->ne[1] < a->ne[1] || a->ne[2] % mask->ne[2] != 0 ||
            a->ne[3] % mask->ne[3] != 0) {
            return FAIL_NULL("mask %s does not fit a %s: need mask.ne0 == a.ne0, mask.ne1 >= "
                             "a.ne1, a.ne2 and a.ne3 multiples of mask.ne2 and mask.ne3",
                             SHAPE(mask), SHAPE(a));
        }
    }
    return ggml_soft_max_ext(sess->ctx, a, mask, (float)scale, (float)max_bias);
}

tnn_tensor *tnn_layer_norm(tnn_session *sess, tnn_tensor *x, tnn_tensor *gamma, tnn_tensor *beta,
                           double eps) {
    OP_PREAMBLE(3);
    CHECK_T(x, NULL);
    if (!want_type(x, GGML_TYPE_F32, __func__, "x") || !want_dense_rows(x, __func__, "x")) {
        return NULL;
    }
    if (!(eps >= 0) || !isfinite(eps)) return FAIL_NULL("eps=%g must be finite and >= 0", eps);
    tnn_tensor *params[2] = {gamma, beta};
    const char *names[2] = {"gamma", "beta"};
    for (int i = 0; i < 2; i++) {
        if (!params[i]) continue;
        if (!check_tensor(sess, params[i], __func__, names[i]) ||
            !want_type(params[i], GGML_TYPE_F32, __func__, names[i]) ||
            !want_dense_rows(params[i], __func__, names[i])) {
            return NULL;
        }
        if (params[i]->ne[0] != x->ne[0] || !ggml_can_repeat(params[i], x)) {
            return FAIL_NULL("%s %s does not fit x %s: expected [%lld]", names[i],
                             SHAPE(params[i]), SHAPE(x), (long long)x->ne[0]);
        }
    }
    struct ggml_tensor *y = ggml_norm(sess->ctx, x, (float)eps);
    if (gamma) y = ggml_mul(sess->ctx, y, gamma);
    if (beta) y = ggml_add(sess->ctx, y, beta);
    return y;
}

tnn_tensor *tnn_gelu(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    return ggml_gelu(sess->ctx, a);
}

tnn_tensor *tnn_gelu_exact(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(6);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (native_gelu_is_f32(sess)) return ggml_gelu(sess->ctx, a);
    /* 0.5 x (1 + tanh(c x (1 + 0.044715 x^2))), c = sqrt(2 / pi) */
    const float c = 0.7978845608028654f;
    struct ggml_context *ctx = sess->ctx;
    struct ggml_tensor *inner = ggml_scale_bias(ctx, ggml_sqr(ctx, a), 0.044715f * c, c);
    struct ggml_tensor *t = ggml_tanh(ctx, ggml_mul(ctx, a, inner));
    return ggml_mul(ctx, a, ggml_scale_bias(ctx, t, 0.5f, 0.5f));
}

tnn_tensor *tnn_concat(tnn_session *sess, tnn_tensor *a, tnn_tensor *b, int dim) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (dim < 0 || dim > 3) return FAIL_NULL("dim=%d, expected 0..3", dim);
    if (!want_type(a, GGML_TYPE_F32, __func__, "a") || !want_type(b, GGML_TYPE_F32, __func__, "b")) {
        return NULL;
    }
    for (int d = 0; d < 4; d++) {
        if (d != dim && a->ne[d] != b->ne[d]) {
            return FAIL_NULL("a %s and b %s differ on axis %d (only axis %d may differ)", SHAPE(a),
                             SHAPE(b), d, dim);
        }
    }
    int64_t out[4] = {a->ne[0], a->ne[1], a->ne[2], a->ne[3]};
    out[dim] += b->ne[dim];
    if (!check_new_shape(a->type, out, __func__)) return NULL;
    return ggml_concat(sess->ctx, a, b, dim);
}

/* A view [ne0..ne3] with byte strides nb1..nb3 at offset must lie inside a:
 * both ggml's own rule (dense size + offset) and the real strided extent. */
static bool check_view(const struct ggml_tensor *a, const int64_t ne[4], const int64_t nb[4],
                       int64_t offset, const char *func) {
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) {
            return fail(TNN_ESHAPE, func, "view ne[%d]=%lld must be positive", i, (long long)ne[i]),
                   false;
        }
        if (nb[i] <= 0) {
            return fail(TNN_ESHAPE, func, "view nb[%d]=%lld must be positive", i, (long long)nb[i]),
                   false;
        }
    }
    if (offset < 0) return fail(TNN_ESHAPE, func, "offset=%lld is negative", (long long)offset), false;
    int64_t blck = ggml_blck_size(a->type);
    if (ne[0] % blck != 0) {
        return fail(TNN_ESHAPE, func, "view ne0=%lld is not a multiple of the block size %lld",
                    (long long)ne[0], (long long)blck),
               false;
    }
    /* Element-aligned: a view between elements mixes bytes of two values (an
     * index made that way escapes the upload checks) and misaligns CUDA loads. */
    int64_t esize = (int64_t)ggml_type_size(a->type);
    bool misaligned = offset % esize != 0;
    for (int i = 1; i < 4; i++) misaligned = misaligned || (ne[i] > 1 && nb[i] % esize != 0);
    if (misaligned) {
        return fail(TNN_ESHAPE, func,
                    "view offset %lld and strides [%lld, %lld, %lld] must be multiples of the "
                    "%lld-byte element of %s",
                    (long long)offset, (long long)nb[1], (long long)nb[2], (long long)nb[3],
                    (long long)esize, ggml_type_name(a->type)),
               false;
    }
    /* Exact integers: the last byte the view reaches, densely and by its strides. */
    int64_t dense, extent = esize * (ne[0] / blck), end;
    bool overflow = !dense_bytes(a->type, ne, &dense);
    for (int i = 1; i < 4 && !overflow; i++) {
        int64_t step;
        overflow = __builtin_mul_overflow(ne[i] - 1, nb[i], &step) ||
                   __builtin_add_overflow(extent, step, &extent);
    }
    overflow = overflow || __builtin_add_overflow(offset, dense > extent ? dense : extent, &end);
    int64_t size = (int64_t)ggml_nbytes(a);
    if (overflow || end > size) {
        return fail(TNN_ESHAPE, func,
                    "view [%lld, %lld, %lld, %lld] with strides [%lld, %lld, %lld] at offset %lld "
                    "reaches byte %s%lld of a tensor of %lld bytes",
                    (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3],
                    (long long)nb[1], (long long)nb[2], (long long)nb[3], (long long)offset,
                    overflow ? "> " : "", (long long)(overflow ? INT64_MAX : end),
                    (long long)size),
               false;
    }
    return true;
}

/* nb1 * ne1 (the strides of the axes a 2-d or 3-d view leaves at size 1) without signed
 * overflow, which is undefined: a product past int64 is INT64_MAX. check_view multiplies
 * such a stride by (size - 1) = 0, and refuses a view whose own strides overflow. */
static int64_t stride_product(int64_t nb, int64_t ne) {
    int64_t r;
    return __builtin_mul_overflow(nb, ne, &r) ? INT64_MAX : r;
}

tnn_tensor *tnn_view_1d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, 1, 1, 1};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), 1, 1, 1};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_1d(sess->ctx, a, ne0, (size_t)offset);
}

tnn_tensor *tnn_view_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t nb1,
                        int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, 1, 1};
    int64_t nb12 = stride_product(nb1, ne1);
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb12, nb12};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_2d(sess->ctx, a, ne0, ne1, (size_t)nb1, (size_t)offset);
}

tnn_tensor *tnn_view_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                        int64_t nb1, int64_t nb2, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, ne2, 1};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb2, stride_product(nb2, ne2)};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_3d(sess->ctx, a, ne0, ne1, ne2, (size_t)nb1, (size_t)nb2, (size_t)offset);
}

tnn_tensor *tnn_view_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                        int64_t ne3, int64_t nb1, int64_t nb2, int64_t nb3, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb2, nb3};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_4d(sess->ctx, a, ne0, ne1, ne2, ne3, (size_t)nb1, (size_t)nb2, (size_t)nb3,
                        (size_t)offset);
}

tnn_tensor *tnn_reshape_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                           int64_t ne3) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous(a, __func__, "a")) return NULL;
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) return FAIL_NULL("ne[%d]=%lld must be positive", i, (long long)ne[i]);
    }
    int64_t n = ne0;
    bool overflow = __builtin_mul_overflow(n, ne1, &n) || __builtin_mul_overflow(n, ne2, &n) ||
                    __builtin_mul_overflow(n, ne3, &n);
    if (overflow || n != ggml_nelements(a) || ne0 % ggml_blck_size(a->type) != 0) {
        return FAIL_NULL("cannot reshape %s (%lld elements) to [%lld, %lld, %lld, %lld]", SHAPE(a),
                         (long long)ggml_nelements(a), (long long)ne0, (long long)ne1,
                         (long long)ne2, (long long)ne3);
    }
    return ggml_reshape_4d(sess->ctx, a, ne0, ne1, ne2, ne3);
}

tnn_tensor *tnn_reshape_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                           int64_t ne2) {
    return tnn_reshape_4d(sess, a, ne0, ne1, ne2, 1);
}

tnn_tensor *tnn_reshape_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1) {
    return tnn_reshape_4d(sess, a, ne0, ne1, 1, 1);
}

tnn_tensor *tnn_permute(tnn_session *sess, tnn_tensor *a, int ax0, int ax1, int ax2, int ax3) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int axes[4] = {ax0, ax1, ax2, ax3};
    int seen = 0;
    for (int i = 0; i < 4; i++) {
        if (axes[i] < 0 || axes[i] > 3 || (seen & (1 << axes[i]))) {
            return FAIL_NULL("(%d, %d, %d, %d) is not a permutation of 0..3", ax0, ax1, ax2, ax3);
        }
        seen |= 1 << axes[i];
    }
    return ggml_permute(sess->ctx, a, ax0, ax1, ax2, ax3);
}

tnn_tensor *tnn_transpose(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    return ggml_transpose(sess->ctx, a);
}

tnn_tensor *tnn_cont(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_float(a, __func__, "a")) return NULL;
    return ggml_cont(sess->ctx, a);
}

tnn_tensor *tnn_cpy(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (!want_float(a, __func__, "a") || !want_float(b, __func__, "b")) return NULL;
    if (ggml_nelements(a) != ggml_nelements(b)) {
        return FAIL_NULL("a %s and b %s hold different element counts", SHAPE(a), SHAPE(b));
    }
    return ggml_cpy(sess->ctx, a, b);
}

tnn_tensor *tnn_cast(tnn_session *sess, tnn_tensor *a, int type) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_float(a, __func__, "a")) return NULL;
    if (type != TNN_TYPE_F32 && type != TNN_TYPE_F16) {
        return FAIL_NULL("type %d: expected 0 (f32) or 1 (f16)", type);
    }
    return ggml_cast(sess->ctx, a, (enum ggml_type)type);
}

tnn_tensor *tnn_set_rows(tnn_session *sess, tnn_tensor *dst, tnn_tensor *src, tnn_tensor *idx) {
    OP_PREAMBLE(1);
    CHECK_T(dst, NULL);
    CHECK_T(src, NULL);
    CHECK_T(idx, NULL);
    if (!want_float(dst, __func__, "dst") || !want_type(src, GGML_TYPE_F32, __func__, "src") ||
        !want_type(idx, GGML_TYPE_I32, __func__, "idx") ||
        !want_contiguous(idx, __func__, "idx") || !want_dense_rows(dst, __func__, "dst") ||
        !want_dense_rows(src, __func__, "src")) {
        return NULL;
    }
    if (dst->ne[0] != src->ne[0] || dst->ne[2] != src->ne[2] || dst->ne[3] != src->ne[3] ||
        src->ne[1] != idx->ne[0] || idx->ne[1] != 1 || idx->ne[2] != 1 || idx->ne[3] != 1) {
        return FAIL_NULL("dst %s, src %s and idx %s do not fit: need dst [n, rows, a, b], "
                         "src [n, k, a, b], idx [k]",
                         SHAPE(dst), SHAPE(src), SHAPE(idx));
    }
    if (!note_index_input(sess, idx, dst->ne[1], __func__)) return NULL;
    return ggml_set_rows(sess->ctx, dst, src, idx);
}

tnn_tensor *tnn_flash_attn_ext(tnn_session *sess, tnn_tensor *q, tnn_tensor *k, tnn_tensor *v,
                               tnn_tensor *mask, double scale) {
    OP_PREAMBLE(1);
    CHECK_T(q, NULL);
    CHECK_T(k, NULL);
    CHECK_T(v, NULL);
    if (!want_type(q, GGML_TYPE_F32, __func__, "q") || !want_float(k, __func__, "k") ||
        !want_float(v, __func__, "v") || !want_dense_rows(q, __func__, "q") ||
        !want_dense_rows(k, __func__, "k") || !want_dense_rows(v, __func__, "v")) {
        return NULL;
    }
    if (k->type != v->type) return FAIL_NULL("k %s and v %s must have one type", SHAPE(k), SHAPE(v));
    if (q->ne[0] != k->ne[0] || v->ne[0] != k->ne[0] || k->ne[1] != v->ne[1] ||
        k->ne[2] != v->ne[2] || q->ne[2] % k->ne[2] != 0 || q->ne[3] != k->ne[3] ||
        q->ne[3] != v->ne[3]) {
        return FAIL_NULL("q %s, k %s, v %s do not fit: need q [d, n_q, h, B], k and v "
                         "[d, n_kv, h_kv, B] with h a multiple of h_kv",
                         SHAPE(q), SHAPE(k), SHAPE(v));
    }
    if (!isfinite(scale)) return FAIL_NULL("scale %g is not finite", scale);
    if (mask) {
        CHECK_T(mask, NULL);
        if (!want_type(mask, GGML_TYPE_F16, __func__, "mask") ||
            !want_contiguous(mask, __func__, "mask")) {
            return NULL;
        }
        if (mask->ne[0] != k->ne[1] || mask->ne[1] < q->ne[1] || q->ne[2] % mask->ne[2] != 0 ||
            q->ne[3] % mask->ne[3] != 0) {
            return FAIL_NULL("mask %s does not fit q %s and k %s: need mask [n_kv, >= n_q]",
                             SHAPE(mask), SHAPE(q), SHAPE(k));
        }
    }
    struct ggml_tensor *r = ggml_flash_attn_ext(sess->ctx, q, k, v, mask, (float)scale, 0.0f, 0.0f);
    ggml_prec_set_acc(r, GGML_PREC_F32); /* true for a flash_attn_ext node */
    return r;
}

tnn_tensor *tnn_argmax(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (a->ne[2] != 1 || a->ne[3] != 1) return FAIL_NULL("a %s must be a matrix", SHAPE(a));
    if (a->ne[0] > INT32_MAX) return FAIL_NULL("a %s: rows longer than 2^31-1", SHAPE(a));
    return ggml_argmax(sess->ctx, a);
}

tnn_tensor *tnn_top_k(tnn_session *sess, tnn_tensor *a, int64_t k) {
    OP_PREAMBLE(2);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (k < 1 || k > a->ne[0] || k > INT32_MAX) {
        return FAIL_NULL("k=%lld, expected 1..%lld", (long long)k,
                         (long long)(a->ne[0] < INT32_MAX ? a->ne[0] : INT32_MAX));
    }
    return ggml_top_k(sess->ctx, a, (int)k);
}
