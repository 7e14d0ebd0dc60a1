/* port_dot.c - tnn_port_matmul: the port engines' products, summed in one
 * fixed order on every x86-64 CPU.
 *
 * Why: the ports (gpt2/port/) must reproduce the Ruby engine's logit dumps
 * bit for bit. Those dumps were made by ggml-cpu's f32 dot product in its
 * AVX-512 build, and ggml sums in another order in each of its builds (8
 * lanes with AVX2, 4 with SSE, in double without SIMD), so ggml's own
 * product matches the dumps only where ggml loads its AVX-512 variant. Here
 * the order is ours and the CPU only decides how fast it is computed.
 *
 * The order (the arithmetic of ggml-cpu's AVX-512 dot product as GCC
 * compiled it: read in its source and its machine code, written anew here),
 * for x . y of length k:
 *   - the first k & ~63 elements go through 64 float accumulators: four
 *     accumulators of 16 lanes; element e = 64 c + 16 j + l of chunk c is
 *     added to accumulator j, lane l, with one fused multiply-add
 *     (acc = x*y + acc, rounded once), accumulators starting at +0;
 *   - the four are folded lane by lane: (acc0 + acc2) + (acc1 + acc3);
 *   - the 16 lanes are folded in halves: lane l += lane l + 8 (8 left),
 *     l += l + 4 (4 left), then (l0 + l2) + (l1 + l3);
 *   - the remaining k % 64 elements are added one at a time, in order: those
 *     of whole groups of 8 as products rounded to float, then added; the
 *     last k % 8 with a fused multiply-add each (sum = x*y + sum).
 * Every value is a float; every operation rounds to nearest. Three codes
 * compute it: AVX-512 (the order's own registers), AVX2 with FMA (each
 * 16-lane accumulator as two 8-lane halves) and scalar C (port_fmaf per lane).
 * They give the same bits; tests/tinynn/test_port_ops.py checks that. Which
 * one runs is cpu_level.c's choice, as for the packed product.
 *
 * This file is compiled with -ffp-contract=off (native/CMakeLists.txt): a
 * compiler that fused a multiply and an add of its own accord would change
 * the sums; every fused one here is written as such.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86_LEVELS 1 /* elsewhere only the scalar code is built */
#else
#define HAVE_X86_LEVELS 0
#endif
#include <math.h>
#include <string.h>

#include "cpu_level.h"
#include "tinynn_internal.h"

#define LANES 16  /* lanes of one accumulator */
#define CHUNK 64  /* elements per round: 4 accumulators x 16 lanes */
#define BLOCK 16  /* rows and columns per tile, so a tile's rows stay in cache */

/* out[r] = a_r . y for the n_rows rows a_r = a + r * a_stride (bytes). */
typedef void dot_rows_fn(int64_t k, const char *a, size_t a_stride, int64_t n_rows,
                         const float *y, float *out);

/* x * y + z rounded once, as fmaf, in double arithmetic, so that every CPU
 * runs the same code (glibc's fmaf takes the FMA instruction where there is
 * one, a slow generic routine elsewhere). The product of two floats is exact
 * in double; the sum is rounded to odd (an inexact result gets an odd last
 * bit, from the error that TwoSum recovers), which a double has enough bits
 * for to round correctly to float afterwards (Boldo and Melquiond). */
float port_fmaf(float x, float y, float z) {
    const double p = (double)x * (double)y, c = (double)z;
    double s = p + c;
    const double back = s - p;
    const double err = (p - (s - back)) + (c - back);
    uint64_t bits;
    memcpy(&bits, &s, sizeof bits);
    if (err != 0.0 && !(bits & 1) && isfinite(s)) {
        /* an even last bit: one ulp toward the lost part (s is not 0 here:
         * a zero sum is exact), which is odd; away from zero when the lost
         * part has s's sign */
        bits += (err > 0) == (s > 0) ? 1 : (uint64_t)-1;
        memcpy(&s, &bits, sizeof s);
    }
    return (float)s;
}

/* The last k % 64 elements, one at a time onto sum, in order: whole groups
 * of 8 with each product rounded before the addition, the last k % 8 with a
 * fused multiply-add. (ggml's source adds x[i]*y[i] one at a time; its
 * compiler computed the products of groups of 16 and 8 in vector registers,
 * then added them one by one, and fused the rest.) */
static float add_tail(float sum, int64_t from, int64_t k, const float *x, const float *y) {
    const int64_t unfused_end = from + ((k - from) & ~(int64_t)7);
    int64_t i = from;
    for (; i < unfused_end; i++) {
        float p = x[i] * y[i];
        sum += p;
    }
    for (; i < k; i++) sum = port_fmaf(x[i], y[i], sum);
    return sum;
}

float port_fold16(const float s[16]) {
    float h[8], q[4];
    for (int l = 0; l < 8; l++) h[l] = s[l] + s[l + 8];
    for (int l = 0; l < 4; l++) q[l] = h[l] + h[l + 4];
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* ---- scalar ---------------------------------------------------------------- */

static float dot_scalar(int64_t k, const float *x, const float *y) {
    const int64_t whole = k & ~(int64_t)(CHUNK - 1);
    float sum = 0.0f;
    if (whole > 0) {
        float acc[CHUNK] = {0}; /* acc[16 j + l]: accumulator j, lane l */
        for (int64_t i = 0; i < whole; i += CHUNK) {
            for (int e = 0; e < CHUNK; e++) acc[e] = port_fmaf(x[i + e], y[i + e], acc[e]);
        }
        float s[LANES];
        for (int l = 0; l < LANES; l++) {
            s[l] = (acc[l] + acc[2 * LANES + l]) + (acc[LANES + l] + acc[3 * LANES + l]);
        }
        sum = port_fold16(s);
    }
    return add_tail(sum, whole, k, x, y);
}

static void dot_rows_scalar(int64_t k, const char *a, size_t a_stride, int64_t n_rows,
                            const float *y, float *out) {
    for (int64_t r = 0; r < n_rows; r++) {
        out[r] = dot_scalar(k, (const float *)(a + (size_t)r * a_stride), y);
    }
}

#if HAVE_X86_LEVELS
/* ---- AVX2 + FMA: accumulator j is lo[j] (lanes 0-7) and hi[j] (lanes 8-15) -- */

/* Plain AVX additions and shuffles, so the AVX-512 code can call it too. */
__attribute__((target("avx"))) static float fold_halves(__m256 s_lo, __m256 s_hi) {
    __m256 h = _mm256_add_ps(s_lo, s_hi);                                          /* 8 */
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)); /* 4 */
    /* q0 + q2, q1 + q3, then their sum */
    __m128 r = _mm_add_ps(q, _mm_shuffle_ps(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, _MM_SHUFFLE(1, 1, 1, 1))));
}

__attribute__((target("avx2,fma"))) static float dot_avx2(int64_t k, const float *x,
                                                          const float *y) {
    const int64_t whole = k & ~(int64_t)(CHUNK - 1);
    float sum = 0.0f;
    if (whole > 0) {
        __m256 lo[4], hi[4];
        for (int j = 0; j < 4; j++) lo[j] = hi[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < whole; i += CHUNK) {
            for (int j = 0; j < 4; j++) {
                const int64_t e = i + LANES * j;
                lo[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + e), _mm256_loadu_ps(y + e), lo[j]);
                hi[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + e + 8), _mm256_loadu_ps(y + e + 8),
                                        hi[j]);
            }
        }
        __m256 s_lo = _mm256_add_ps(_mm256_add_ps(lo[0], lo[2]), _mm256_add_ps(lo[1], lo[3]));
        __m256 s_hi = _mm256_add_ps(_mm256_add_ps(hi[0], hi[2]), _mm256_add_ps(hi[1], hi[3]));
        sum = fold_halves(s_lo, s_hi);
    }
    return add_tail(sum, whole, k, x, y);
}

__attribute__((target("avx2,fma"))) static void dot_rows_avx2(int64_t k, const char *a,
                                                              size_t a_stride, int64_t n_rows,
                                                              const float *y, float *out) {
    for (int64_t r = 0; r < n_rows; r++) {
        out[r] = dot_avx2(k, (const float *)(a + (size_t)r * a_stride), y);
    }
}

/* ---- AVX-512 ---------------------------------------------------------------- */

__attribute__((target("avx512f"))) static float dot_avx512(int64_t k, const float *x,
                                                           const float *y) {
    const int64_t whole = k & ~(int64_t)(CHUNK - 1);
    float sum = 0.0f;
    if (whole > 0) {
        __m512 acc[4];
        for (int j = 0; j < 4; j++) acc[j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < whole; i += CHUNK) {
            for (int j = 0; j < 4; j++) {
                const int64_t e = i + LANES * j;
                acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + e), _mm512_loadu_ps(y + e), acc[j]);
            }
        }
        __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        /* lanes 0-7 and 8-15 as two 8-lane halves, folded as in the AVX2 code */
        __m256 s_lo = _mm512_castps512_ps256(s);
        __m256 s_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1));
        sum = fold_halves(s_lo, s_hi);
    }
    return add_tail(sum, whole, k, x, y);
}

__attribute__((target("avx512f"))) static void dot_rows_avx512(int64_t k, const char *a,
                                                               size_t a_stride, int64_t n_rows,
                                                               const float *y, float *out) {
    for (int64_t r = 0; r < n_rows; r++) {
        out[r] = dot_avx512(k, (const float *)(a + (size_t)r * a_stride), y);
    }
}

#endif /* HAVE_X86_LEVELS */

/* ---- which code runs -------------------------------------------------------- */

/* The op's userdata: a pointer to one of these (ggml passes a void *), by
 * cpu_level.c's level, chosen when the op is built. */
struct port_code {
    dot_rows_fn *dot_rows;
};
static const struct port_code LEVEL_CODE[CPU_LEVEL_COUNT] = {
    [CPU_LEVEL_SCALAR] = {dot_rows_scalar},
#if HAVE_X86_LEVELS
    [CPU_LEVEL_AVX2] = {dot_rows_avx2},
    [CPU_LEVEL_AVX512] = {dot_rows_avx512},
#else
    [CPU_LEVEL_AVX2] = {dot_rows_scalar}, /* never chosen: no such CPU here */
    [CPU_LEVEL_AVX512] = {dot_rows_scalar},
#endif
};

/* ---- the op -------------------------------------------------------------------- */

/* dst [M, N] = a [k, M] x b [k, N] (dst->src[0], src[1]): thread ith of nth
 * takes every nth tile of BLOCK rows by BLOCK columns. Each element is one
 * whole dot product, so the thread count never changes a bit. */
static void port_matmul_task(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    dot_rows_fn *dot_rows = ((const struct port_code *)userdata)->dot_rows;
    const struct ggml_tensor *a = dst->src[0], *b = dst->src[1];
    const int64_t k = a->ne[0], m = a->ne[1], n = b->ne[1];
    const int64_t row_tiles = (m + BLOCK - 1) / BLOCK, col_tiles = (n + BLOCK - 1) / BLOCK;
    for (int64_t t = ith; t < row_tiles * col_tiles; t += nth) {
        const int64_t r0 = (t % row_tiles) * BLOCK, c0 = (t / row_tiles) * BLOCK;
        const int64_t rows = m - r0 < BLOCK ? m - r0 : BLOCK;
        const int64_t c1 = n - c0 < BLOCK ? n : c0 + BLOCK;
        for (int64_t c = c0; c < c1; c++) {
            const float *y = (const float *)((const char *)b->data + c * b->nb[1]);
            float *out = (float *)((char *)dst->data + c * dst->nb[1]) + r0;
            dot_rows(k, (const char *)a->data + r0 * a->nb[1], a->nb[1], rows, y, out);
        }
    }
}

tnn_tensor *tnn_port_matmul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (sess->is_cuda) {
        return FAIL_NULL("runs on CPU sessions only (a CUDA session takes tnn_matmul)");
    }
    if (!want_type(a, GGML_TYPE_F32, __func__, "a") ||
        !want_type(b, GGML_TYPE_F32, __func__, "b") || !want_dense_rows(a, __func__, "a") ||
        !want_dense_rows(b, __func__, "b")) {
        return NULL;
    }
    if (a->ne[0] != b->ne[0] || a->ne[2] != 1 || a->ne[3] != 1 || b->ne[2] != 1 || b->ne[3] != 1) {
        return FAIL_NULL("a %s and b %s do not fit: need 2-D a [k, M] and b [k, N]", SHAPE(a),
                         SHAPE(b));
    }
    int64_t out[4] = {a->ne[1], b->ne[1], 1, 1};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    const int level = cpu_level_for_op(__func__);
    if (level < 0) return NULL;
    struct ggml_tensor *args[2] = {a, b};
    return ggml_custom_4d(sess->ctx, GGML_TYPE_F32, out[0], out[1], 1, 1, args, 2,
                          port_matmul_task, GGML_N_TASKS_MAX, (void *)&LEVEL_CODE[level]);
}
