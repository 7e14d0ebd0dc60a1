/* port_rows.c - tnn_port_norm and tnn_port_softmax: the port engines' row
 * reductions (LayerNorm's normalization, attention's softmax), computed in
 * one fixed order on every x86-64 CPU.
 *
 * Why: as with the products (port_dot.c), ggml-cpu reduces a row in another
 * order in each of its builds (the variance's squares summed 16, 8 or 4 at a
 * time; softmax's exponentials by a vector approximation over 16, 8 or 4
 * lanes, the C library's expf for the rest), so its results, a few ulps
 * apart, reproduced the Ruby engine's dumps only where ggml loaded its
 * AVX-512 variant. Here both ops follow that variant's arithmetic (read in
 * its source and machine code, written anew) in plain C, the same code on
 * every CPU. The rows are short (d_model, or at most T_SEQ positions), so
 * they get no vector code of their own.
 *
 * Compiled with -ffp-contract=off, as port_dot.c (native/CMakeLists.txt).
 */
#include <math.h>
#include <string.h>

#include "tinynn_internal.h"

#define LANES 16 /* ggml's AVX-512 vectors: the rows go 16 elements at a time */

/* ---- LayerNorm's normalization ---------------------------------------------- */

/* y = (x - mean) / sqrt(var + eps) over one row of n: the mean summed in
 * double, element by element; the squares of (x - mean) 16 at a time, each
 * group folded in float (port_fold16) then added in double, the last n % 16
 * added in double one by one; the variance and the scale rounded to float. */
static void norm_row(int64_t n, const float *x, float *y, float eps) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) total += (double)x[i];
    const float mean = (float)total / (float)n;

    double squares = 0.0;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        float sq[LANES];
        for (int l = 0; l < LANES; l++) {
            y[i + l] = x[i + l] - mean;
            sq[l] = y[i + l] * y[i + l];
        }
        squares += (double)port_fold16(sq);
    }
    for (; i < n; i++) {
        y[i] = x[i] - mean;
        const float sq = y[i] * y[i];
        squares += (double)sq;
    }
    const float variance = (float)(squares / (double)n);
    const float scale = 1.0f / sqrtf(variance + eps);
    for (int64_t j = 0; j < n; j++) y[j] *= scale;
}

/* ---- softmax -------------------------------------------------------------------- */

/* exp(x) for x <= 0 as ggml's 16-lane AVX-512 approximation computes it: x =
 * n ln2 + b (n integral, ln2 in two parts), a degree-5 polynomial in b
 * evaluated with fused multiply-adds, scaled by 2^n exactly (ldexpf rounds
 * once, as the vector scaling instruction does); |n| > 192 gives 0 (or inf
 * for n > 0). The constants are that approximation's. */
static float exp_lane(float x) {
    const float shift = 0x1.8p23f; /* adding it rounds to an integer */
    const float z = port_fmaf(x, 0x1.715476p+0f, shift);
    const float n = z - shift;
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    const float b = port_fmaf(-n, 0x1.7f7d1cp-20f, port_fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float odd = port_fmaf(port_fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                           port_fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f));
    const float j = port_fmaf(odd, u, port_fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n);
}

/* softmax of one row of n: the max; exp(x - max) 16 at a time by exp_lane,
 * each group folded in float (port_fold16) then added in double; the last
 * n % 16 by the C library's expf, added in double one by one; every element
 * times the reciprocal of the sum, rounded to float. */
static void softmax_row(int64_t n, const float *x, float *y) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int l = 0; l < LANES; l++) y[i + l] = exp_lane(x[i + l] - max);
        sum += (double)port_fold16(y + i);
    }
    for (; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += (double)y[i];
    }
    const float inverse = (float)(1.0 / sum);
    for (int64_t j = 0; j < n; j++) y[j] *= inverse;
}

/* ---- the ops -------------------------------------------------------------------- */

/* What a node computes, carried in ggml's userdata pointer itself: softmax,
 * or the normalization with eps's float bits (no memory to own or free). */
#define SOFTMAX_NODE ((uintptr_t)1 << 40)

static uintptr_t norm_node(float eps) {
    uint32_t bits;
    memcpy(&bits, &eps, sizeof bits);
    return bits;
}

/* Each of the nth threads takes every nth row; one row is one thread's. */
static void rows_task(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *x = dst->src[0];
    const uintptr_t node = (uintptr_t)userdata;
    const uint32_t bits = (uint32_t)node;
    float eps;
    memcpy(&eps, &bits, sizeof eps);
    for (int64_t r = ith; r < x->ne[1]; r += nth) {
        const float *in = (const float *)((const char *)x->data + r * x->nb[1]);
        float *out = (float *)((char *)dst->data + r * dst->nb[1]);
        if (node == SOFTMAX_NODE) {
            softmax_row(x->ne[0], in, out);
        } else {
            norm_row(x->ne[0], in, out, eps);
        }
    }
}

static tnn_tensor *row_op(tnn_session *sess, tnn_tensor *x, uintptr_t node, const char *func) {
    CHECK_SESS(sess, NULL);
    if (!not_realized(sess, func) || !room_for(sess, 1, func)) return NULL;
    if (!check_tensor(sess, x, func, "x")) return NULL;
    if (sess->is_cuda) {
        return fail(TNN_EINVAL, func, "runs on CPU sessions only"), NULL;
    }
    if (!want_type(x, GGML_TYPE_F32, func, "x") || !want_dense_rows(x, func, "x")) return NULL;
    if (x->ne[2] != 1 || x->ne[3] != 1 || x->ne[0] < 1) {
        return fail(TNN_ESHAPE, func, "x %s: expected 2-D [n, rows] with n >= 1", SHAPE(x)),
               NULL;
    }
    struct ggml_tensor *args[1] = {x};
    return ggml_custom_4d(sess->ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], 1, 1, args, 1, rows_task,
                          GGML_N_TASKS_MAX, (void *)node);
}

tnn_tensor *tnn_port_norm(tnn_session *sess, tnn_tensor *x, double eps) {
    if (!(eps >= 0) || !isfinite(eps) || eps > 1.0) {
        return fail(TNN_EINVAL, __func__, "eps=%g must be finite, in [0, 1]", eps), NULL;
    }
    return row_op(sess, x, norm_node((float)eps), __func__);
}

tnn_tensor *tnn_port_softmax(tnn_session *sess, tnn_tensor *a) {
    return row_op(sess, a, SOFTMAX_NODE, __func__);
}
