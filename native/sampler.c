/*
 * sampler.c - tnn_sample_rows: token choice by THE SAMPLING RULE (cuda/sampling.h)
 * and log-probabilities, on the host, for a batch of logits rows.
 *
 * The rule and the arithmetic are those of gpt2/sampling.py's choose(): float64
 * weights and sums, the same float32 bound before the weights, the same comparisons,
 * and the draw's sums in numpy's own order (cumsum; above 1024 tokens, numpy's
 * pairwise sums of blocks of 256). What differs is rounding: exp (numpy's and ours
 * are both within an ulp or so, not always the same one) and the order of the top-p
 * sums. So the two choose the same id wherever u * W and top_p * W do not fall within
 * ~1e-15 (relative) of a running sum.
 *
 * One row costs a few passes over its V logits, written so that the compiler
 * vectorizes them (integer keys for the maximum, a branch-free exp, block tests that
 * skip 64 logits at a time), and no sort of the vocabulary:
 *   1. check and maximum: a NaN or +inf logit is refused; m = the largest logit,
 *      i_max its lowest id (greedy rows stop here)
 *   2. candidates: the ids whose weight can reach 2^-40, ascending (l >= a float32
 *      floor of m + t ln 2^-40, rounded down, as choose() bounds them); for top-k up
 *      to 1024 a heap of the k largest raises that bound as the pass goes
 *   3. top-k: the k-th largest logit (the heap's least, or a selection over the
 *      candidates for a larger k); the candidates below it are dropped
 *   4. weights exp((l - m) / t), 0 below 2^-40; top-p: the threshold by a selection
 *      by mass over the candidates heavy enough to matter
 *   5. draw: the first kept id (ascending) whose running weight exceeds u * W
 * Log-probabilities: one pass of exp for log-sum-exp, one for the n most likely.
 * Selections bucket values by a monotone linear map (ties share a bucket), sum each
 * bucket's mass, and finish inside the one bucket where the mass crosses the target.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tinynn_internal.h"

#include "cuda/sampling.h"

_Static_assert(sizeof(tnn_sampling_params) == 16, "tnn_sample_rows documents 16-byte records");

#define W_MIN 0x1p-40      /* weights below this are 0 (rule 2) */
#define TOPK_HEAP_MAX 1024 /* top-k up to this: a heap in the candidate pass */
#define SCAN_BLOCK 64      /* logits a vectorized test skips at once */
#define N_BUCKETS 2048     /* a selection's buckets */
#define SMALL_RANGE 32     /* a selection sorts ranges this short */
#define DRAW_BLOCK 256     /* gpt2/sampling.py's _DRAW_BLOCK */

/* Working memory for one call, O(V), shared by its rows. */
struct scratch {
    double *w;     /* candidate weights; a row's exp(l - m) for log-sum-exp */
    double *sel_w; /* a copy that a selection permutes; the draw's block sums */
    int32_t *ids;  /* candidate ids, ascending */
    float *vals;   /* their logits */
    float *sel_v;  /* a copy that a selection permutes; the top-k heap */
};

/* An entry of a row's top-n list. */
struct ranked {
    double lp;
    int32_t id;
};

/* ---- arithmetic ---------------------------------------------------------------- */

/* The largest float32 <= bound (-inf below float32's range), as _float32_floor. */
static float float32_floor(double bound) {
    if (bound < -3.4e38) return -INFINITY;
    float low = (float)bound;
    return (double)low > bound ? nextafterf(low, -INFINITY) : low;
}

/* A signed integer in the order of the floats: -inf < ... < -0 < +0 < ... < +inf; a
 * NaN lies above +inf (sign clear) or below -inf (sign set). */
static inline int32_t order_key(float v) {
    int32_t b;
    memcpy(&b, &v, sizeof b);
    return b ^ ((b >> 31) & 0x7fffffff);
}

static inline float key_value(int32_t key) {
    int32_t b = key < 0 ? key ^ 0x7fffffff : key;
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* e^a for a <= 0 (-inf included), within about an ulp; 0 below -708 (e^-708 is
 * 3e-308: nothing here adds up so little). Branch-free, so loops over it vectorize:
 * a = k ln 2 + r with |r| <= ln 2 / 2 (Cody-Waite), e^r by its Taylor series to r^13
 * (the rest is below 4e-18), times 2^k made from k's bits. */
static inline double exp_nonpos(double a) {
    const double log2e = 1.44269504088896338700e+00;
    const double ln2_hi = 6.93147180369123816490e-01; /* k * ln2_hi is exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shift = 0x1.8p52; /* adding it rounds to an integer in the low bits */
    double c = a < -708.0 ? -708.0 : a;
    double kd = c * log2e + shift;
    uint64_t kbits;
    memcpy(&kbits, &kd, sizeof kbits);
    kd -= shift;
    double r = (c - kd * ln2_hi) - kd * ln2_lo;
    double p = 1.0 / 6227020800.0; /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t k = (int64_t)(kbits - 0x4338000000000000ull); /* the bits of shift */
    uint64_t sbits = (uint64_t)(k + 1023) << 52;           /* 2^k, k in [-1022, 0] */
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    double e = p * scale;
    return a < -708.0 ? 0.0 : e;
}

/* The loops that carry the work are compiled for AVX-512 and AVX2 (+FMA) too, and
 * the processor picks one at load time: the library itself is built for baseline
 * x86-64, whose SSE2 is half as wide. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && \
    defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

/* w[j] = exp((v[j] - m) / t), or 0 where that is below w_min: a row's weights (w_min
 * 2^-40), or with t = 1 and w_min 0 the terms of its log-sum-exp. */
VECTOR_CLONES static void exp_terms(const float *v, int64_t n, double m, double t, double w_min,
                                    double *w) {
    for (int64_t j = 0; j < n; j++) {
        double e = exp_nonpos(((double)v[j] - m) / t);
        w[j] = e < w_min ? 0.0 : e;
    }
}

/* The least and largest order_key of x[0..n). */
VECTOR_CLONES static void key_range(const float *x, int64_t n, int32_t *kmin, int32_t *kmax) {
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    for (int64_t i = 0; i < n; i++) {
        int32_t k = order_key(x[i]);
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    *kmin = lo;
    *kmax = hi;
}

/* numpy's pairwise sum (np.add.reduce on a contiguous float64 array), so a sum here
 * rounds as the same sum in gpt2/sampling.py does. */
static double pairwise_sum(const double *a, int64_t n) {
    if (n < 8) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += a[i];
        return s;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - n % 8; i += 8) {
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        }
        double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += a[i];
        return s;
    }
    int64_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

/* The first index in [from, to) whose x equals v (to if none), 64 at a time. */
static int64_t find_equal(const float *x, int64_t from, int64_t to, float v) {
    for (int64_t b = from; b < to; b += SCAN_BLOCK) {
        int64_t e = b + SCAN_BLOCK < to ? b + SCAN_BLOCK : to;
        int hit = 0;
        for (int64_t i = b; i < e; i++) hit |= x[i] == v;
        if (!hit) continue;
        for (int64_t i = b; i < e; i++) {
            if (x[i] == v) return i;
        }
    }
    return to;
}

/* True when some x in [b, e) is >= bar (vectorized). */
static inline bool any_at_least(const float *x, int64_t b, int64_t e, float bar) {
    int hit = 0;
    for (int64_t i = b; i < e; i++) hit |= x[i] >= bar;
    return hit != 0;
}

/* ---- selection: a threshold by mass, without sorting ------------------------- */

static inline void swap_at(float *v, double *w, int64_t i, int64_t j) {
    float tv = v[i];
    v[i] = v[j];
    v[j] = tv;
    if (w) {
        double tw = w[i];
        w[i] = w[j];
        w[j] = tw;
    }
}

/* Sift v[i] down in a min-heap of [0, end) (w alongside). */
static void sift_down_min(float *v, double *w, int64_t i, int64_t end) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= end) return;
        if (c + 1 < end && v[c + 1] < v[c]) c++;
        if (!(v[c] < v[i])) return;
        swap_at(v, w, i, c);
        i = c;
    }
}

/* Heapsort of v (and w alongside), descending: O(n log n) whatever the input. */
static void sort_descending(float *v, double *w, int64_t n) {
    for (int64_t i = n / 2 - 1; i >= 0; i--) sift_down_min(v, w, i, n);
    for (int64_t end = n - 1; end > 0; end--) {
        swap_at(v, w, 0, end); /* the least of [0, end] goes to its end */
        sift_down_min(v, w, 0, end);
    }
}

/* The largest value t of v[0..n) such that above plus the mass (w[i], or 1 each when
 * w is NULL) of the entries >= t reaches target; the smallest value if the whole mass
 * falls short (rounding). n >= 1, above < target. Permutes v and w: each round splits
 * the range around a pivot into > | == | < and keeps the part where the mass crosses
 * target; a short range, or one that resists 64 rounds, is sorted. */
static float select_partition(float *v, double *w, int64_t n, double above, double target) {
    int64_t lo = 0, hi = n;
    int rounds_left = 64;
    while (hi - lo > SMALL_RANGE && rounds_left-- > 0) {
        int64_t mid = lo + (hi - lo) / 2;
        float a = v[lo], b = v[mid], c = v[hi - 1]; /* pivot: the median of three */
        float pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        int64_t gt = lo, i = lo, lt = hi; /* [lo, gt) > pivot, [gt, i) == pivot, [lt, hi) < */
        double gt_mass = 0.0, eq_mass = 0.0;
        while (i < lt) {
            if (v[i] > pivot) {
                swap_at(v, w, gt, i);
                gt_mass += w ? w[gt] : 1.0;
                gt++;
                i++;
            } else if (v[i] < pivot) {
                swap_at(v, w, i, --lt);
            } else {
                eq_mass += w ? w[i] : 1.0;
                i++;
            }
        }
        double upto = above + gt_mass, through = upto + eq_mass;
        if (upto >= target) {
            hi = gt; /* not empty: above < target */
        } else if (through >= target || lt == hi) {
            return pivot;
        } else {
            above = through;
            lo = lt;
        }
    }
    sort_descending(v + lo, w ? w + lo : NULL, hi - lo);
    double mass = above;
    for (int64_t i = lo; i < hi;) {
        float t = v[i];
        for (; i < hi && v[i] == t; i++) mass += w ? w[i] : 1.0;
        if (mass >= target) return t;
    }
    return v[hi - 1];
}

/* select_partition's answer for above = 0, found by buckets first: a monotone map
 * of the values to N_BUCKETS buckets (larger values to lower buckets, ties to one),
 * the mass of each, and select_partition inside the one where the mass crosses. */
static float select_by_mass(float *v, double *w, int64_t n, double target) {
    if (n <= 4 * SMALL_RANGE) return select_partition(v, w, n, 0.0, target);
    int32_t kmin, kmax;
    key_range(v, n, &kmin, &kmax);
    double top = key_value(kmax), span = top - (double)key_value(kmin);
    if (!(span > 0.0 && span < INFINITY)) return select_partition(v, w, n, 0.0, target);
    double scale = (N_BUCKETS - 1) / span;
    double mass[N_BUCKETS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t b = (int64_t)((top - (double)v[i]) * scale);
        mass[b < N_BUCKETS - 1 ? b : N_BUCKETS - 1] += w ? w[i] : 1.0;
    }
    /* pick: the bucket where the mass crosses target, or (rounding) the last one
     * with mass; above: the mass of the buckets before it */
    int64_t pick = 0;
    double above = 0.0, through = 0.0;
    for (int64_t b = 0; b < N_BUCKETS && through < target; b++) {
        if (mass[b] == 0.0) continue;
        pick = b;
        above = through;
        through += mass[b];
    }
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) { /* branch-free: write each, keep those in pick */
        int64_t b = (int64_t)((top - (double)v[i]) * scale);
        v[m] = v[i];
        if (w) w[m] = w[i];
        m += (b < N_BUCKETS - 1 ? b : N_BUCKETS - 1) == pick;
    }
    return select_partition(v, w, m, above, target);
}

/* ---- the top-k heap: the k largest values seen, least at the root ------------- */

static void heap_sift_down(float *h, int64_t n, int64_t i) {
    float x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (!(h[c] < x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void heap_push(float *h, int64_t n, float x) { /* h holds n; room for one more */
    int64_t i = n;
    while (i > 0 && h[(i - 1) / 2] > x) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

/* ---- one row ------------------------------------------------------------------- */

/* Pass 1: m = the largest logit, *i_max its lowest id. A NaN or +inf logit (the
 * first NaN, else the first +inf, as gpt2/sampling.py reports) or a row of -inf
 * only is an error naming the row. */
static int row_max(const float *x, int64_t V, int64_t row, float *m_out, int64_t *i_max) {
    const int32_t key_inf = 0x7f800000, key_neg_inf = order_key(-INFINITY);
    int32_t kmin, kmax;
    key_range(x, V, &kmin, &kmax);
    if (kmax >= key_inf || kmin < key_neg_inf) { /* a NaN or +inf somewhere */
        for (int64_t i = 0; i < V; i++) {
            if (isnan(x[i])) {
                return fail(TNN_EINVAL, "tnn_sample_rows", "row %lld: logit %lld is NaN",
                            (long long)row, (long long)i);
            }
        }
        return fail(TNN_EINVAL, "tnn_sample_rows", "row %lld: logit %lld is +inf",
                    (long long)row, (long long)find_equal(x, 0, V, INFINITY));
    }
    if (kmax == key_neg_inf) {
        return fail(TNN_EINVAL, "tnn_sample_rows",
                    "row %lld: every logit is -inf, no token can be chosen", (long long)row);
    }
    *i_max = find_equal(x, 0, V, key_value(kmax)); /* -0 and +0 are equal, as in argmax */
    *m_out = x[*i_max];
    return TNN_OK;
}

/* The first index whose running sum of w[0..n) (all > 0) exceeds u * W, the last if
 * rounding leaves none: gpt2/sampling.py's _draw, in its order of sums (a cumsum;
 * above 4 blocks, numpy's pairwise sum of each block of 256, zero-padded, then a
 * cumsum of those). block_sums holds n / 256 + 1. */
static int64_t draw_index(const double *w, int64_t n, double u, double *block_sums) {
    if (n <= 4 * DRAW_BLOCK) {
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) total += w[i];
        double x = u * total, run = 0.0;
        for (int64_t i = 0; i < n; i++) {
            run += w[i];
            if (run > x) return i;
        }
        return n - 1;
    }
    int64_t n_blocks = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
    double cum = 0.0;
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t start = b * DRAW_BLOCK;
        if (start + DRAW_BLOCK <= n) {
            cum += pairwise_sum(w + start, DRAW_BLOCK);
        } else {
            double padded[DRAW_BLOCK] = {0};
            memcpy(padded, w + start, (size_t)(n - start) * sizeof(double));
            cum += pairwise_sum(padded, DRAW_BLOCK);
        }
        block_sums[b] = cum;
    }
    double x = u * cum;
    int64_t b = 0;
    while (b < n_blocks - 1 && !(block_sums[b] > x)) b++;
    int64_t start = b * DRAW_BLOCK, end = start + DRAW_BLOCK < n ? start + DRAW_BLOCK : n;
    double rest = x - (b > 0 ? block_sums[b - 1] : 0.0), run = 0.0;
    for (int64_t i = start; i < end; i++) {
        run += w[i];
        if (run > rest) return i;
    }
    return end - 1;
}

/* Steps 2-5 of the rule for a row that samples (temperature > 0). */
static int32_t row_draw(const float *x, int64_t V, float m, const tnn_sampling_params *p,
                        struct scratch *s) {
    const double t = p->temperature;
    const double log_w_min = log(W_MIN);
    /* the least logit whose weight can reach 2^-40, rounded down to a float32 */
    float floor_l = float32_floor((double)m + t * log_w_min * (1.0 + 1e-6));

    /* 2, 3: candidates, ascending; a top-k up to TOPK_HEAP_MAX keeps a heap of the k
     * largest, whose least bounds the candidates once it is full */
    int64_t k = p->top_k > 0 && p->top_k < V ? p->top_k : 0;
    bool heap = k > 0 && k <= TOPK_HEAP_MAX;
    int64_t c = 0, n_heap = 0;
    float bar = floor_l;
    for (int64_t b = 0; b < V; b += SCAN_BLOCK) {
        int64_t e = b + SCAN_BLOCK < V ? b + SCAN_BLOCK : V;
        if (!any_at_least(x, b, e, bar)) continue;
        if (!heap) { /* branch-free: write each, advance past those kept */
            for (int64_t i = b; i < e; i++) {
                s->ids[c] = (int32_t)i;
                s->vals[c] = x[i];
                c += x[i] >= bar;
            }
            continue;
        }
        for (int64_t i = b; i < e; i++) {
            float v = x[i];
            if (!(v >= bar)) continue;
            s->ids[c] = (int32_t)i;
            s->vals[c] = v;
            c++;
            if (n_heap < k) {
                heap_push(s->sel_v, n_heap++, v);
            } else if (v > s->sel_v[0]) {
                s->sel_v[0] = v;
                heap_sift_down(s->sel_v, n_heap, 0);
            }
            if (n_heap == k && s->sel_v[0] > bar) bar = s->sel_v[0];
        }
    }
    /* with k or fewer candidates the k-th largest is their least or lies below
     * floor_l: no cut */
    float tau_k = -INFINITY;
    if (heap && n_heap == k) {
        tau_k = s->sel_v[0];
    } else if (k > 0 && !heap && c > k) {
        memcpy(s->sel_v, s->vals, (size_t)c * sizeof(float));
        tau_k = select_by_mass(s->sel_v, NULL, c, (double)k);
    }

    /* 4: weights of the candidates at or above tau_k, compacted in order */
    int64_t n = c;
    if (tau_k > -INFINITY) {
        n = 0;
        for (int64_t j = 0; j < c; j++) { /* branch-free compactions, here and below */
            s->ids[n] = s->ids[j];
            s->vals[n] = s->vals[j];
            n += s->vals[j] >= tau_k;
        }
    }
    exp_terms(s->vals, n, (double)m, t, W_MIN, s->w);
    float tau_p = -INFINITY;
    if (p->top_p < 1.0f) {
        double total = pairwise_sum(s->w, n);
        /* the entries lighter than this weigh less than (1 - top_p) / 2 of the total
         * together and lie below all heavier ones: the mass crosses among the heavy */
        double heavy = 0.5 * (1.0 - (double)p->top_p) * total / (double)n;
        int64_t nb = 0;
        for (int64_t j = 0; j < n; j++) {
            s->sel_v[nb] = s->vals[j];
            s->sel_w[nb] = s->w[j];
            nb += s->w[j] > 0.0 && s->w[j] >= heavy;
        }
        tau_p = select_by_mass(s->sel_v, s->sel_w, nb, (double)p->top_p * total);
    }

    /* 5: the kept ids (weight > 0, logit >= tau_p), ascending, and the draw */
    int64_t kept = 0;
    for (int64_t j = 0; j < n; j++) {
        s->ids[kept] = s->ids[j];
        s->w[kept] = s->w[j];
        kept += s->w[j] > 0.0 && s->vals[j] >= tau_p;
    }
    /* kept >= 1: the largest logit weighs 1 and passes every cut */
    return s->ids[draw_index(s->w, kept, (double)p->uniform, s->sel_w)];
}

/* log-sum-exp (float64) of the raw logits, as gpt2/completion.py's _log_softmax
 * (exp(l - m) summed pairwise); e holds V. */
static double row_log_sum_exp(const float *x, int64_t V, float m, double *e) {
    exp_terms(x, V, (double)m, 1.0, 0.0, e);
    return (double)m + log(pairwise_sum(e, V));
}

/* The n_top largest log-probabilities, most likely first, ties to the lower id. */
static void row_top(const float *x, int64_t V, double lse, struct ranked *top, int64_t n_top) {
    int64_t n = 0;
    for (int64_t b = 0; b < V; b += SCAN_BLOCK) {
        int64_t e = b + SCAN_BLOCK < V ? b + SCAN_BLOCK : V;
        /* once full, only a logit >= the last one's can rank (lp is monotone in l) */
        if (n == n_top && !any_at_least(x, b, e, x[top[n - 1].id])) continue;
        for (int64_t i = b; i < e; i++) {
            double lp = (double)x[i] - lse;
            /* ids come in ascending order: a tie never displaces an earlier id */
            if (n == n_top && !(lp > top[n - 1].lp)) continue;
            int64_t at = n < n_top ? n++ : n - 1;
            while (at > 0 && lp > top[at - 1].lp) {
                top[at] = top[at - 1];
                at--;
            }
            top[at].lp = lp;
            top[at].id = (int32_t)i;
        }
    }
}

/* ---- the call ------------------------------------------------------------------ */

/* a * b * elem as a byte count, false if it overflows int64 (a, b >= 0). */
/* The row count and vocabulary size both entry points take: rows >= 0, ids int32. */
static int check_rows(const char *func, int64_t n_rows, int64_t n_vocab) {
    if (n_rows < 0) {
        return fail(TNN_EINVAL, func, "n_rows is %lld, expected >= 0", (long long)n_rows);
    }
    if (n_vocab < 1 || n_vocab > INT32_MAX) {
        return fail(TNN_EINVAL, func, "n_vocab is %lld, expected 1..%d (ids are int32)",
                    (long long)n_vocab, INT32_MAX);
    }
    return TNN_OK;
}

static bool bytes_of(int64_t a, int64_t b, int64_t elem, int64_t *out) {
    if (a < 0 || b < 0) return false;
    if (b > 0 && a > INT64_MAX / elem / b) return false;
    *out = a * b * elem;
    return true;
}

/* A caller's buffer: when required (or given), data is not NULL and nbytes is want;
 * an optional buffer left out is NULL with nbytes 0. */
static int check_buffer(const void *data, int64_t nbytes, int64_t want, bool required,
                        const char *name) {
    if (!data && !required) {
        if (nbytes != 0) {
            return fail(TNN_EINVAL, "tnn_sample_rows", "%s is NULL but %s_nbytes is %lld, not 0",
                        name, name, (long long)nbytes);
        }
        return TNN_OK;
    }
    if (nbytes != want) {
        return fail(TNN_ESHAPE, "tnn_sample_rows", "%s_nbytes is %lld, expected %lld", name,
                    (long long)nbytes, (long long)want);
    }
    if (!data && want > 0) return fail(TNN_EINVAL, "tnn_sample_rows", "%s is NULL", name);
    return TNN_OK;
}

static int check_params(const tnn_sampling_params *p, int64_t row) {
    if (!(isfinite(p->temperature) && p->temperature >= 0.0f)) {
        return fail(TNN_EINVAL, "tnn_sample_rows",
                    "row %lld: temperature %g, expected a finite value >= 0 (0: greedy)",
                    (long long)row, (double)p->temperature);
    }
    if (p->top_k < 0) {
        return fail(TNN_EINVAL, "tnn_sample_rows", "row %lld: top_k %d, expected >= 0 (0: off)",
                    (long long)row, (int)p->top_k);
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        return fail(TNN_EINVAL, "tnn_sample_rows",
                    "row %lld: top_p %g, expected a value in (0, 1] (1: off)", (long long)row,
                    (double)p->top_p);
    }
    if (!(p->uniform >= 0.0f && p->uniform < 1.0f)) {
        return fail(TNN_EINVAL, "tnn_sample_rows", "row %lld: uniform %g, expected [0, 1)",
                    (long long)row, (double)p->uniform);
    }
    return TNN_OK;
}

int tnn_sample_rows(const float *logits, int64_t logits_nbytes, int64_t n_rows, int64_t n_vocab,
                    const void *params, int64_t params_nbytes, int32_t *out_ids,
                    int64_t ids_nbytes, float *out_logprobs, int64_t logprobs_nbytes,
                    int64_t n_top, int32_t *out_top_ids, int64_t top_ids_nbytes,
                    float *out_top_logprobs, int64_t top_logprobs_nbytes) {
    const char *func = __func__;
    int st = check_rows(func, n_rows, n_vocab);
    if (st != TNN_OK) return st;
    int64_t max_top = n_vocab < TNN_SAMPLE_MAX_TOP ? n_vocab : TNN_SAMPLE_MAX_TOP;
    if (n_top < 0 || n_top > max_top) {
        return fail(TNN_EINVAL, func, "n_top is %lld, expected 0..%lld (n_vocab %lld, at most %d)",
                    (long long)n_top, (long long)max_top, (long long)n_vocab, TNN_SAMPLE_MAX_TOP);
    }
    int64_t want_logits, want_params, want_top;
    if (!bytes_of(n_rows, n_vocab, sizeof(float), &want_logits) ||
        !bytes_of(n_rows, 1, sizeof(tnn_sampling_params), &want_params) ||
        !bytes_of(n_rows, n_top, sizeof(int32_t), &want_top)) {
        return fail(TNN_ESHAPE, func, "%lld rows of %lld logits do not fit in int64 bytes",
                    (long long)n_rows, (long long)n_vocab);
    }
    int64_t want_rows = n_rows * (int64_t)sizeof(int32_t); /* < want_params: no overflow */
    int rc = check_buffer(logits, logits_nbytes, want_logits, true, "logits");
    if (rc == TNN_OK) rc = check_buffer(params, params_nbytes, want_params, false, "params");
    if (rc == TNN_OK) rc = check_buffer(out_ids, ids_nbytes, want_rows, true, "out_ids");
    if (rc == TNN_OK) {
        rc = check_buffer(out_logprobs, logprobs_nbytes, want_rows, false, "out_logprobs");
    }
    if (rc == TNN_OK) {
        rc = check_buffer(out_top_ids, top_ids_nbytes, want_top, n_top > 0, "out_top_ids");
    }
    if (rc == TNN_OK) {
        rc = check_buffer(out_top_logprobs, top_logprobs_nbytes, want_top, n_top > 0,
                          "out_top_logprobs");
    }
    if (rc != TNN_OK) return rc;

    const tnn_sampling_params *ps = params;
    bool any_draw = false, want_lp = out_logprobs != NULL || n_top > 0;
    for (int64_t r = 0; ps && r < n_rows; r++) {
        rc = check_params(&ps[r], r);
        if (rc != TNN_OK) return rc;
        any_draw |= ps[r].temperature > 0.0f;
    }

    struct scratch s = {0};
    void *block = NULL;
    if (n_rows > 0 && (any_draw || want_lp)) {
        size_t V = (size_t)n_vocab;
        block = malloc(V * (2 * sizeof(double) + sizeof(int32_t) + 2 * sizeof(float)));
        if (!block) {
            return fail(TNN_ENOMEM, func, "no memory for the scratch of %lld logits",
                        (long long)n_vocab);
        }
        s.w = block;
        s.sel_w = s.w + V;
        s.ids = (int32_t *)(s.sel_w + V);
        s.vals = (float *)(s.ids + V);
        s.sel_v = s.vals + V;
    }
    struct ranked top[TNN_SAMPLE_MAX_TOP];
    for (int64_t r = 0; r < n_rows; r++) {
        const float *x = logits + r * n_vocab;
        float m = 0.0f;
        int64_t i_max = 0;
        rc = row_max(x, n_vocab, r, &m, &i_max);
        if (rc != TNN_OK) break;
        bool draw = ps && ps[r].temperature > 0.0f;
        int32_t id = draw ? row_draw(x, n_vocab, m, &ps[r], &s) : (int32_t)i_max;
        out_ids[r] = id;
        if (!want_lp) continue;
        double lse = row_log_sum_exp(x, n_vocab, m, s.w);
        if (out_logprobs) out_logprobs[r] = (float)((double)x[id] - lse);
        if (n_top > 0) {
            row_top(x, n_vocab, lse, top, n_top);
            for (int64_t j = 0; j < n_top; j++) {
                out_top_ids[r * n_top + j] = top[j].id;
                out_top_logprobs[r * n_top + j] = (float)top[j].lp;
            }
        }
    }
    free(block);
    return rc;
}

/* ---- penalties ----------------------------------------------------------------- */

/* A row's penalty parameters, checked: repetition finite and > 0, the others finite. */
static int check_penalty(const float *p, int64_t row) {
    if (!(isfinite(p[0]) && p[0] > 0.0f)) {
        return fail(TNN_EINVAL, "tnn_penalize_rows",
                    "row %lld: repetition penalty %g, expected a finite value > 0 (1: off)",
                    (long long)row, (double)p[0]);
    }
    if (!isfinite(p[1]) || !isfinite(p[2])) {
        return fail(TNN_EINVAL, "tnn_penalize_rows",
                    "row %lld: frequency penalty %g, presence penalty %g: expected finite values",
                    (long long)row, (double)p[1], (double)p[2]);
    }
    return TNN_OK;
}

int tnn_penalize_rows(float *logits, int64_t logits_nbytes, int64_t n_rows, int64_t n_vocab,
                      const int32_t *ids, int64_t ids_nbytes, const int32_t *counts,
                      int64_t counts_nbytes, const int64_t *row_starts, int64_t starts_nbytes,
                      const float *params, int64_t params_nbytes) {
    const char *func = __func__;
    int st = check_rows(func, n_rows, n_vocab);
    if (st != TNN_OK) return st;
    int64_t want_logits, want_params, want_starts;
    if (!bytes_of(n_rows, n_vocab, sizeof(float), &want_logits) ||
        !bytes_of(n_rows, 3, sizeof(float), &want_params) ||
        !bytes_of(n_rows + 1, 1, sizeof(int64_t), &want_starts)) {
        return fail(TNN_ESHAPE, func, "%lld rows of %lld logits do not fit in int64 bytes",
                    (long long)n_rows, (long long)n_vocab);
    }
    if (logits_nbytes != want_logits || (!logits && want_logits > 0)) {
        return fail(TNN_ESHAPE, func, "logits: %s with logits_nbytes %lld, expected %lld bytes",
                    logits ? "given" : "NULL", (long long)logits_nbytes, (long long)want_logits);
    }
    if (params_nbytes != want_params || (!params && want_params > 0)) {
        return fail(TNN_ESHAPE, func, "params: %s with params_nbytes %lld, expected %lld bytes",
                    params ? "given" : "NULL", (long long)params_nbytes, (long long)want_params);
    }
    if (starts_nbytes != want_starts || !row_starts) {
        return fail(TNN_ESHAPE, func,
                    "row_starts: %s with starts_nbytes %lld, expected %lld bytes (n_rows + 1)",
                    row_starts ? "given" : "NULL", (long long)starts_nbytes,
                    (long long)want_starts);
    }
    int64_t n_ids = row_starts[n_rows];
    if (row_starts[0] != 0 || n_ids < 0 || n_ids > INT64_MAX / (int64_t)sizeof(int32_t)) {
        return fail(TNN_EINVAL, func, "row_starts[0] is %lld and row_starts[%lld] is %lld: "
                    "expected 0 and a count >= 0", (long long)row_starts[0], (long long)n_rows,
                    (long long)n_ids);
    }
    int64_t want_ids = n_ids * (int64_t)sizeof(int32_t);
    if (ids_nbytes != want_ids || (!ids && want_ids > 0)) {
        return fail(TNN_ESHAPE, func, "ids: %s with ids_nbytes %lld, expected %lld bytes",
                    ids ? "given" : "NULL", (long long)ids_nbytes, (long long)want_ids);
    }
    if (counts_nbytes != want_ids || (!counts && want_ids > 0)) {
        return fail(TNN_ESHAPE, func, "counts: %s with counts_nbytes %lld, expected %lld bytes",
                    counts ? "given" : "NULL", (long long)counts_nbytes, (long long)want_ids);
    }
    /* every check before any logit changes: a failure leaves logits as they were */
    uint8_t *seen = NULL;
    if (n_ids > 0) {
        seen = calloc((size_t)n_vocab, 1);
        if (!seen) {
            return fail(TNN_ENOMEM, func, "no memory for a mark of %lld ids", (long long)n_vocab);
        }
    }
    int rc = TNN_OK;
    for (int64_t r = 0; r < n_rows && rc == TNN_OK; r++) {
        int64_t b = row_starts[r], e = row_starts[r + 1];
        if (b < 0 || e < b || e > n_ids) {
            rc = fail(TNN_EINVAL, func,
                      "row %lld: ids %lld..%lld, expected ascending starts within 0..%lld",
                      (long long)r, (long long)b, (long long)e, (long long)n_ids);
            break;
        }
        rc = check_penalty(params + 3 * r, r);
        for (int64_t j = b; j < e && rc == TNN_OK; j++) {
            if (ids[j] < 0 || ids[j] >= n_vocab) {
                rc = fail(TNN_EINVAL, func, "row %lld: id %d (entry %lld), expected 0..%lld",
                          (long long)r, (int)ids[j], (long long)(j - b), (long long)n_vocab - 1);
            } else if (counts[j] < 0) {
                rc = fail(TNN_EINVAL, func, "row %lld: id %d has count %d, expected >= 0",
                          (long long)r, (int)ids[j], (int)counts[j]);
            } else if (seen[ids[j]]) {
                rc = fail(TNN_EINVAL, func, "row %lld: id %d is listed twice", (long long)r,
                          (int)ids[j]);
            } else {
                seen[ids[j]] = 1;
            }
        }
        for (int64_t j = b; j < e; j++) {
            if (ids[j] >= 0 && ids[j] < n_vocab) seen[ids[j]] = 0;
        }
    }
    free(seen);
    if (rc != TNN_OK) return rc;
    for (int64_t r = 0; r < n_rows; r++) {
        float *x = logits + r * n_vocab;
        float rep = params[3 * r], freq = params[3 * r + 1], pres = params[3 * r + 2];
        for (int64_t j = row_starts[r]; j < row_starts[r + 1]; j++) {
            float l = x[ids[j]];
            if (rep != 1.0f) l = l > 0.0f ? l / rep : l * rep;
            if (counts[j] > 0) l = l - (freq * (float)counts[j] + pres);
            x[ids[j]] = l;
        }
    }
    return TNN_OK;
}
