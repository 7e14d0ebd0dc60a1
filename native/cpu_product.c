/* cpu_product.c - our own product of weights and activations on the CPU:
 * tnn_pack_rows, tnn_packed_matmul, tnn_packed_get_rows.
 *
 * Why: ggml-cpu multiplies one column in vec_dot and two or more in tinyBLAS,
 * which sum in different orders, so a sequence's logits would move with its
 * batch; the engine kept decode batches on vec_dot ([k, 1, N]), where eight
 * columns cost 4-5x one (bench/NOTES.md, eighth session). Here every output
 * element is summed in ONE order whatever the number of columns, the thread
 * count or the instruction set:
 *   16 partial sums, lane j adding w[k] x[k] for k = j, j+16, j+32, ... in
 *   order with a fused multiply-add; then a fixed tree: lane j + lane j+8,
 *   then + 4, + 2, + 1.
 * The AVX-512, AVX2 and scalar kernels below all do exactly that, so they give
 * the same bits (the tests compare them). x stays f32 (ggml rounds it to f16
 * for f16 weights).
 *
 * The layout (what tnn_pack_rows does, in place). Reading four or eight rows of
 * the file's row-major matrix side by side gets about half the bandwidth of one
 * row stream on the 2-core machines here (bench/NOTES.md), so the rows are
 * repacked in tiles of TILE_ROWS: tile t holds rows 8t .. 8t+h-1 (h = 8, or
 * fewer in the last tile) in the same bytes as before, ordered by group of 16
 * values, then row:
 *   element (row 8t + r, k) at  8t K + ((k / 16) h + r) 16 + k % 16
 * (packed_offset, packed_layout.h: the one definition, which a read that packs
 * as it goes, file_reads.c, writes by too)
 * so a tile is one sequential stream whatever the kernel reads of it. A tile
 * occupies the same bytes in both layouts: packing is a permutation inside each
 * tile, done with one tile of scratch, and memory is not doubled. A packed
 * tensor can only be read by the two ops here (and downloaded, which unpacks);
 * every other op and transfer refuses it (check_tensor). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TNN_X86 1
#endif

#include "cpu_level.h"
#include "packed_layout.h"
#include "tinynn_internal.h"

#define TILE_ROWS TNN_PACK_TILE_ROWS
#define GROUP TNN_PACK_GROUP

/* ---- the fixed order, in scalar code ------------------------------------------------ */

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13); /* inf, NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int shift = 0;
        while (!(man & 0x400)) {
            man <<= 1;
            shift++;
        }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The tree every kernel ends with. */
static float sum_lanes(const float a[GROUP]) {
    float s8[8], s4[4];
    for (int j = 0; j < 8; j++) s8[j] = a[j] + a[j + 8];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    float s2a = s4[0] + s4[2], s2b = s4[1] + s4[3];
    return s2a + s2b;
}

/* One row of a tile (its groups `stride` values apart) times one column. */
static float dot_scalar(const void *row, bool f16, int64_t stride, int64_t k, const float *x) {
    float acc[GROUP] = {0};
    for (int64_t g = 0; g < k / GROUP; g++) {
        for (int j = 0; j < GROUP; j++) {
            float w = f16 ? f16_to_f32(((const uint16_t *)row)[g * stride + j])
                          : ((const float *)row)[g * stride + j];
            acc[j] = fmaf(w, x[g * GROUP + j], acc[j]);
        }
    }
    return sum_lanes(acc);
}

/* ---- AVX2 + FMA + F16C: 16 lanes as two registers of 8 -------------------------------- */
#ifdef TNN_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static inline __m256 load8(const void *p, bool f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p))
               : _mm256_loadu_ps((const float *)p);
}

AVX2_TARGET static inline float sum_lanes_avx2(__m256 lo, __m256 hi) {
    __m256 s8 = _mm256_add_ps(lo, hi);                                             /* j + j+8 */
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1)); /* + 4 */
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                              /* + 2 */
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));                      /* + 1 */
}

/* Rows r0 .. r0+nr-1 (nr <= 4) of a tile of height h, one column. */
AVX2_TARGET static void rows_avx2(const char *tile, bool f16, int h, int r0, int nr, int64_t k,
                                  const float *x, float *y) {
    size_t esize = f16 ? 2 : 4;
    __m256 lo[4], hi[4];
    for (int r = 0; r < 4; r++) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < k / GROUP; g++) {
        __m256 xl = _mm256_loadu_ps(x + g * GROUP), xh = _mm256_loadu_ps(x + g * GROUP + 8);
        const char *p = tile + ((size_t)g * h + r0) * GROUP * esize;
        for (int r = 0; r < nr; r++) {
            const char *row = p + (size_t)r * GROUP * esize;
            lo[r] = _mm256_fmadd_ps(load8(row, f16), xl, lo[r]);
            hi[r] = _mm256_fmadd_ps(load8(row + 8 * esize, f16), xh, hi[r]);
        }
    }
    for (int r = 0; r < nr; r++) y[r0 + r] = sum_lanes_avx2(lo[r], hi[r]);
}

AVX2_TARGET static void tile_avx2(const char *tile, bool f16, int h, int64_t k, const float *x,
                                  int64_t x_stride, int64_t n_cols, float *y, int64_t y_stride) {
    for (int64_t c = 0; c < n_cols; c++) {
        for (int r0 = 0; r0 < h; r0 += 4) {
            rows_avx2(tile, f16, h, r0, h - r0 < 4 ? h - r0 : 4, k, x + c * x_stride,
                      y + c * y_stride);
        }
    }
}

/* ---- AVX-512: one register of 16 lanes; a full tile's 8 rows by 1 or 2 columns ------- */
#define AVX512_TARGET __attribute__((target("avx512f")))

AVX512_TARGET static inline __m512 load16(const void *p, bool f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p))
               : _mm512_loadu_ps((const float *)p);
}

AVX512_TARGET static inline float sum_lanes_avx512(__m512 a) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a),
                              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* A whole tile (8 rows) by columns c and c+1 (two: the weights' conversion
 * shared by both), the groups read in stream order. */
AVX512_TARGET static void tile8_pair_avx512(const char *tile, bool f16, int64_t k, const float *x0,
                                            const float *x1, float *y0, float *y1) {
    size_t esize = f16 ? 2 : 4;
    __m512 a0[TILE_ROWS], a1[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < k / GROUP; g++) {
        __m512 v0 = _mm512_loadu_ps(x0 + g * GROUP), v1 = _mm512_loadu_ps(x1 + g * GROUP);
        const char *p = tile + (size_t)g * TILE_ROWS * GROUP * esize;
        for (int r = 0; r < TILE_ROWS; r++) {
            __m512 w = load16(p + (size_t)r * GROUP * esize, f16);
            a0[r] = _mm512_fmadd_ps(w, v0, a0[r]);
            a1[r] = _mm512_fmadd_ps(w, v1, a1[r]);
        }
    }
    for (int r = 0; r < TILE_ROWS; r++) {
        y0[r] = sum_lanes_avx512(a0[r]);
        y1[r] = sum_lanes_avx512(a1[r]);
    }
}

/* Any tile (h rows, h <= 8) by one column. */
AVX512_TARGET static void tile_one_avx512(const char *tile, bool f16, int h, int64_t k,
                                          const float *x, float *y) {
    size_t esize = f16 ? 2 : 4;
    __m512 a[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) a[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < k / GROUP; g++) {
        __m512 v = _mm512_loadu_ps(x + g * GROUP);
        const char *p = tile + (size_t)g * h * GROUP * esize;
        for (int r = 0; r < h; r++) {
            a[r] = _mm512_fmadd_ps(load16(p + (size_t)r * GROUP * esize, f16), v, a[r]);
        }
    }
    for (int r = 0; r < h; r++) y[r] = sum_lanes_avx512(a[r]);
}

AVX512_TARGET static void tile_avx512(const char *tile, bool f16, int h, int64_t k, const float *x,
                                      int64_t x_stride, int64_t n_cols, float *y,
                                      int64_t y_stride) {
    int64_t c = 0;
    if (h == TILE_ROWS) {
        for (; c + 2 <= n_cols; c += 2) {
            tile8_pair_avx512(tile, f16, k, x + c * x_stride, x + (c + 1) * x_stride,
                              y + c * y_stride, y + (c + 1) * y_stride);
        }
    }
    for (; c < n_cols; c++) tile_one_avx512(tile, f16, h, k, x + c * x_stride, y + c * y_stride);
}
#endif /* TNN_X86 */

static void tile_scalar(const char *tile, bool f16, int h, int64_t k, const float *x,
                        int64_t x_stride, int64_t n_cols, float *y, int64_t y_stride) {
    size_t esize = f16 ? 2 : 4;
    for (int64_t c = 0; c < n_cols; c++) {
        for (int r = 0; r < h; r++) {
            y[c * y_stride + r] = dot_scalar(tile + (size_t)r * GROUP * esize, f16,
                                             (int64_t)h * GROUP, k, x + c * x_stride);
        }
    }
}

/* ---- the layout ----------------------------------------------------------------------- */

static int tile_height(int64_t n_rows, int64_t tile) { return packed_tile_height(n_rows, tile); }

/* One tile between the layouts: row-major (h rows of k) <-> packed. */
static void repack_tile(char *dst, const char *src, int h, int64_t k, size_t esize, bool pack) {
    size_t group_bytes = GROUP * esize;
    for (int64_t g = 0; g < k / GROUP; g++) {
        for (int r = 0; r < h; r++) {
            size_t row_major = ((size_t)r * k + (size_t)g * GROUP) * esize;
            size_t packed = (size_t)packed_offset(r, g * GROUP, k, h) * esize;
            if (pack) memcpy(dst + packed, src + row_major, group_bytes);
            else memcpy(dst + row_major, src + packed, group_bytes);
        }
    }
}

/* Tiles first .. end of w's data (n rows of k), in place or into out, through one
 * tile of scratch. */
struct repack_part {
    const struct ggml_tensor *w;
    const char *src;
    char *out;
    bool pack, ok;
    int64_t first, end;
    pthread_t thread;
};

static void *repack_tiles(void *arg) {
    struct repack_part *p = arg;
    size_t esize = ggml_type_size(p->w->type);
    int64_t k = p->w->ne[0], n = p->w->ne[1];
    size_t tile_bytes = (size_t)TILE_ROWS * k * esize;
    char *scratch = malloc(tile_bytes);
    p->ok = scratch != NULL;
    for (int64_t t = p->first; p->ok && t < p->end; t++) {
        int h = tile_height(n, t);
        size_t at = (size_t)t * tile_bytes, bytes = (size_t)h * k * esize;
        memcpy(scratch, p->src + at, bytes);
        repack_tile(p->out + at, scratch, h, k, esize, p->pack);
    }
    free(scratch);
    return NULL;
}

#define REPACK_MAX_THREADS 8
#define REPACK_MIN_BYTES_A_THREAD (4 << 20) /* below this a thread costs more than it saves */

/* Every tile of w's data, by up to n_threads threads (the calling one included), each
 * a run of whole tiles: a load packs a model's matrices at memory speed, not one core's. */
static bool repack_all(const struct ggml_tensor *w, const char *src, char *out, bool pack,
                       int n_threads) {
    int64_t n_tiles = (w->ne[1] + TILE_ROWS - 1) / TILE_ROWS;
    int64_t by_size = (int64_t)(ggml_nbytes(w) / REPACK_MIN_BYTES_A_THREAD);
    int64_t n = n_threads < REPACK_MAX_THREADS ? n_threads : REPACK_MAX_THREADS;
    if (n > by_size) n = by_size;
    if (n > n_tiles) n = n_tiles;
    if (n < 1) n = 1;
    struct repack_part parts[REPACK_MAX_THREADS];
    int started = 0;
    for (int64_t i = 0; i < n; i++) {
        parts[i] = (struct repack_part){
            .w = w, .src = src, .out = out, .pack = pack, .first = n_tiles * i / n,
            .end = n_tiles * (i + 1) / n};
        if (i == 0) continue;
        if (pthread_create(&parts[i].thread, NULL, repack_tiles, &parts[i]) != 0) break;
        started++;
    }
    /* the calling thread takes part 0, and the parts of any thread that did not start */
    repack_tiles(&parts[0]);
    bool ok = parts[0].ok;
    for (int64_t i = 1; i < n; i++) {
        if (i <= started) {
            pthread_join(parts[i].thread, NULL);
        } else {
            repack_tiles(&parts[i]);
        }
        ok = ok && parts[i].ok;
    }
    return ok;
}

/* ---- which tensors are packed (a flag per persistent tensor of the root) -------------- */

bool is_packed(const tnn_session *s, const struct ggml_tensor *t) {
    if (!s->root->packed) return false;
    int64_t i = persistent_index(s, storage_of(t));
    return i >= 0 && s->root->packed[i];
}

/* ---- tnn_pack_rows ---------------------------------------------------------------------- */

int check_packable(tnn_session *sess, const struct ggml_tensor *w, const char *func) {
    if (!check_tensor(sess, w, func, "w")) return TNN_EINVAL;
    tnn_session *root = sess->root;
    if (sess->is_cuda) return fail(TNN_EINVAL, func, "packed weights are for CPU sessions");
    if (!is_persistent(sess, w) || w->view_src) {
        return fail(TNN_EINVAL, func, "w %s must be a persistent tensor, not a view", SHAPE(w));
    }
    if (!root->finalized) return fail(TNN_ESTATE, func, "call tnn_finalize_weights first");
    if (root->n_forks > 0 || root->realized) {
        return fail(TNN_ESTATE, func,
                    "the session has forks or a realized graph, which may read w as it is "
                    "laid out now: pack before building graphs");
    }
    if (w->type != GGML_TYPE_F32 && w->type != GGML_TYPE_F16) {
        return fail(TNN_ESHAPE, func, "w is %s, expected f32 or f16", SHAPE(w));
    }
    if (w->ne[2] != 1 || w->ne[3] != 1 || w->ne[0] % GROUP != 0) {
        return fail(TNN_ESHAPE, func, "w %s must be 2-D with ne0 a multiple of %d", SHAPE(w),
                    GROUP);
    }
    if (!root->packed) { /* made here, so that mark_packed cannot fail */
        root->packed = calloc(TNN_MAX_PERSISTENT_TENSORS, 1);
        if (!root->packed) return fail(TNN_ENOMEM, func, "out of host memory");
    }
    return TNN_OK;
}

void mark_packed(tnn_session *sess, const struct ggml_tensor *w) {
    sess->root->packed[persistent_index(sess, w)] = 1;
}

int tnn_pack_rows(tnn_session *sess, tnn_tensor *w) {
    CHECK_SESS(sess, TNN_EINVAL);
    int rc = check_packable(sess, w, __func__); /* not packed yet: check_tensor refuses those */
    if (rc != TNN_OK) return rc;
    if (!repack_all(w, w->data, w->data, true, sess->root->n_threads)) {
        return fail(TNN_ENOMEM, __func__, "out of host memory");
    }
    mark_packed(sess, w);
    return TNN_OK;
}

int download_packed(const struct ggml_tensor *t, void *data, int64_t nbytes, int64_t offset,
                    int want, const char *func) {
    if (want >= 0 && (int)t->type != want) {
        return fail(TNN_ESHAPE, func, "t is %s, expected %s", SHAPE(t),
                    ggml_type_name((enum ggml_type)want));
    }
    if (t->view_src || offset != 0 || nbytes != (int64_t)ggml_nbytes(t)) {
        return fail(TNN_ESHAPE, func,
                    "t %s is packed (tnn_pack_rows): only the whole tensor can be downloaded "
                    "(%lld bytes at offset 0), got %lld at %lld",
                    SHAPE(t), (long long)ggml_nbytes(t), (long long)nbytes, (long long)offset);
    }
    if (!data) return fail(TNN_EINVAL, func, "data is NULL");
    memcpy(data, t->data, (size_t)nbytes);
    if (!repack_all(t, data, data, false, 1)) return fail(TNN_ENOMEM, func, "out of host memory");
    return TNN_OK;
}

/* ---- the ops: ggml custom ops run by ggml's CPU threads -------------------------------- */

/* userdata: the kernel level, chosen when the op was built. */
static void packed_matmul_run(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *w = dst->src[0], *x = dst->src[1];
    int level = (int)(intptr_t)userdata;
    bool f16 = w->type == GGML_TYPE_F16;
    int64_t k = w->ne[0], n = w->ne[1], n_cols = x->ne[1];
    int64_t x_stride = (int64_t)(x->nb[1] / sizeof(float)), y_stride = (int64_t)(dst->nb[1] / sizeof(float));
    size_t tile_bytes = (size_t)TILE_ROWS * k * ggml_type_size(w->type);
    int64_t n_tiles = (n + TILE_ROWS - 1) / TILE_ROWS;
    /* Each thread a run of tiles: the split changes no element's sum. */
    for (int64_t t = n_tiles * ith / nth; t < n_tiles * (ith + 1) / nth; t++) {
        const char *tile = (const char *)w->data + t * tile_bytes;
        int h = tile_height(n, t);
        const float *xs = (const float *)x->data;
        float *y = (float *)dst->data + t * TILE_ROWS;
#ifdef TNN_X86
        if (level == CPU_LEVEL_AVX512) {
            tile_avx512(tile, f16, h, k, xs, x_stride, n_cols, y, y_stride);
            continue;
        }
        if (level == CPU_LEVEL_AVX2) {
            tile_avx2(tile, f16, h, k, xs, x_stride, n_cols, y, y_stride);
            continue;
        }
#endif
        tile_scalar(tile, f16, h, k, xs, x_stride, n_cols, y, y_stride);
    }
}

static void packed_get_rows_run(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *w = dst->src[0], *idx = dst->src[1];
    bool f16 = w->type == GGML_TYPE_F16;
    size_t esize = ggml_type_size(w->type);
    int64_t k = w->ne[0], n = w->ne[1], m = idx->ne[0];
    for (int64_t i = m * ith / nth; i < m * (ith + 1) / nth; i++) {
        int64_t row = ((const int32_t *)idx->data)[i]; /* checked in [0, n) at upload */
        int64_t t = row / TILE_ROWS;
        int h = tile_height(n, t), r = (int)(row % TILE_ROWS);
        const char *tile = (const char *)w->data + (size_t)t * TILE_ROWS * k * esize;
        float *out = (float *)((char *)dst->data + i * dst->nb[1]);
        for (int64_t g = 0; g < k / GROUP; g++) {
            const char *p = tile + ((size_t)g * h + r) * GROUP * esize;
            for (int j = 0; j < GROUP; j++) {
                out[g * GROUP + j] = f16 ? f16_to_f32(((const uint16_t *)p)[j]) : ((const float *)p)[j];
            }
        }
    }
}

/* w: a packed tensor of this session's root. */
static bool check_packed_weight(tnn_session *sess, const struct ggml_tensor *w, const char *func) {
    if (!w) return fail(TNN_EINVAL, func, "w is NULL"), false;
    if (!is_persistent(sess, w) || w->view_src || !is_packed(sess, w)) {
        return fail(TNN_EINVAL, func, "w must be a tensor packed by tnn_pack_rows"), false;
    }
    return true;
}

tnn_tensor *tnn_packed_matmul(tnn_session *sess, tnn_tensor *w, tnn_tensor *x) {
    OP_PREAMBLE(1);
    if (!check_packed_weight(sess, w, __func__)) return NULL;
    CHECK_T(x, NULL);
    if (!want_type(x, GGML_TYPE_F32, __func__, "x") || !want_dense_rows(x, __func__, "x")) {
        return NULL;
    }
    if (x->ne[0] != w->ne[0] || x->ne[2] != 1 || x->ne[3] != 1) {
        return FAIL_NULL("w %s and x %s do not fit: expected x [w.ne0, N]", SHAPE(w), SHAPE(x));
    }
    int level = cpu_level_for_op(__func__);
    if (level < 0) return NULL;
    int64_t out[4] = {w->ne[1], x->ne[1], 1, 1};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    struct ggml_tensor *args[2] = {w, x};
    return ggml_custom_4d(sess->ctx, GGML_TYPE_F32, out[0], out[1], 1, 1, args, 2,
                          packed_matmul_run, GGML_N_TASKS_MAX, (void *)(intptr_t)level);
}

tnn_tensor *tnn_packed_get_rows(tnn_session *sess, tnn_tensor *w, tnn_tensor *idx) {
    OP_PREAMBLE(1);
    if (!check_packed_weight(sess, w, __func__)) return NULL;
    CHECK_T(idx, NULL);
    if (!want_type(idx, GGML_TYPE_I32, __func__, "idx")) return NULL;
    if (idx->ne[1] != 1 || idx->ne[2] != 1 || idx->ne[3] != 1 ||
        !want_contiguous(idx, __func__, "idx")) {
        return FAIL_NULL("idx %s must be a contiguous vector", SHAPE(idx));
    }
    if (!note_index_input(sess, idx, w->ne[1], __func__)) return NULL;
    int64_t out[4] = {w->ne[0], idx->ne[0], 1, 1};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    struct ggml_tensor *args[2] = {w, idx};
    return ggml_custom_4d(sess->ctx, GGML_TYPE_F32, out[0], out[1], 1, 1, args, 2,
                          packed_get_rows_run, GGML_N_TASKS_MAX, NULL);
}
