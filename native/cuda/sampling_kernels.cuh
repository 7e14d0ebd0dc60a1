/* Token choice on the device: THE SAMPLING RULE of sampling.h, for n_seq rows
 * of logits at once, one launch, capturable in a CUDA graph (no host sync, no
 * allocation; every decision is taken on the device from params_dev).
 *
 * Header only (kernels in an anonymous namespace, host functions inline), so
 * the decode step and the standalone test each compile their own copy.
 *
 * Two kernels of the same family:
 * - fast: a cluster of 8 blocks per sequence (sm_90 thread block clusters,
 *   the blocks exchange partial results through distributed shared memory),
 *   the row held in registers; top-k and top-p thresholds by radix search over
 *   the logits' order-preserving bit patterns, 8 bits a pass, with histograms
 *   of counts (top-k) or of fixed-point mass (top-p); the draw by a block-wide
 *   prefix scan in id order. Rows of up to 65536 logits.
 * - reference: one block per sequence, thresholds by bisection over the bit
 *   patterns (32 full passes), the draw by one thread walking the row. Any
 *   n_vocab; the fast path's fallback above 65536 logits and the test's oracle.
 * Both use the same per-logit arithmetic and exact integer sums, so they pick
 * the same id for every input.
 */
#ifndef TNN_CUDA_SAMPLING_KERNELS_CUH
#define TNN_CUDA_SAMPLING_KERNELS_CUH

#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "sampling.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "sampling_kernels.cuh: the fast kernel uses thread block clusters (sm_90 or newer)"
#endif

namespace {

namespace tnn_samp {

namespace cg = cooperative_groups;

constexpr int kCluster = 8;        // blocks per sequence in the fast kernel
constexpr int kThreads = 512;      // threads per block of the fast kernel
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 16;     // logits one thread holds, at most
constexpr int kFastMaxVocab = kCluster * kThreads * kPerThread; // 65536
constexpr int kBins = 256;         // one radix digit: 8 bits
constexpr int kRefThreads = 256;   // threads per block of the reference kernel
constexpr float kFixOne = 1099511627776.0f; // 2^40: a weight of 1 in fixed point

// The order-preserving key of a logit: larger float, larger key. NaN is read
// as -inf and -0 as +0 first, so equal logits have equal keys. Real keys are
// >= kKeyNegInf; 0 marks a padding slot (below every logit).
constexpr uint32_t kKeyNegInf = 0x007FFFFFu;

__device__ __forceinline__ uint32_t key_of(float x) {
    if (x != x) x = -INFINITY;
    if (x == 0.0f) x = 0.0f;
    const uint32_t b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float value_of(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// w = exp((l - m) / t) in fixed point, truncated to a multiple of 2^-40
// (0 for -inf logits and for anything NaN). l <= m, so w <= 1 and a row's sum
// stays below 2^57: integer sums are exact and independent of their order.
__device__ __forceinline__ float weight(float l, float m, float t) {
    const float w = expf((l - m) / t);
    return w > 0.0f ? w : 0.0f;
}
__device__ __forceinline__ uint64_t fix(float w) { return (uint64_t)__float2ull_rz(w * kFixOne); }
__device__ __forceinline__ uint64_t weight_fix(float l, float m, float t) { return fix(weight(l, m, t)); }

// floor(u * total) in [0, total - 1], for total > 0: the chosen id is the
// first kept one whose running sum of weights exceeds it.
__device__ __forceinline__ uint64_t draw_target(float u, uint64_t total) {
    const double x = (double)u * (double)total;
    if (!(x > 0.0)) return 0;
    const uint64_t v = (uint64_t)x;
    return v < total ? v : total - 1;
}

// ceil(p * total) in [1, total]: top-p keeps mass(key >= t) >= this.
__device__ __forceinline__ uint64_t mass_target(float p, uint64_t total) {
    const double x = ceil((double)p * (double)total);
    if (!(x >= 1.0)) return 1;
    if (x >= (double)total) return total;
    return (uint64_t)x;
}

// (key, lowest id) packed so that a max picks the largest key, lowest id first.
__device__ __forceinline__ uint64_t pack_best(uint32_t key, int id) {
    return ((uint64_t)key << 32) | (uint32_t)(0xFFFFFFFFu - (uint32_t)id);
}
__device__ __forceinline__ int32_t best_id(uint64_t pack) {
    return (int32_t)(0xFFFFFFFFu - (uint32_t)pack);
}

__device__ __forceinline__ uint64_t warp_sum(uint64_t v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}
__device__ __forceinline__ uint64_t warp_max(uint64_t v) {
    for (int o = 16; o > 0; o >>= 1) {
        const uint64_t w = __shfl_xor_sync(0xFFFFFFFFu, v, o);
        v = w > v ? w : v;
    }
    return v;
}
__device__ __forceinline__ uint64_t warp_inclusive_scan(uint64_t v) {
    const int lane = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        const uint64_t w = __shfl_up_sync(0xFFFFFFFFu, v, o);
        if (lane >= o) v += w;
    }
    return v;
}

// Block-wide sum or max of one u64 a thread, returned to every thread.
// buf: n_warps u64 of shared memory; two barriers (buf is free again after).
template <bool kMax>
__device__ __forceinline__ uint64_t block_reduce(uint64_t v, uint64_t *buf, int n_warps) {
    v = kMax ? warp_max(v) : warp_sum(v);
    if ((threadIdx.x & 31) == 0) buf[threadIdx.x >> 5] = v;
    __syncthreads();
    uint64_t r = buf[0];
    for (int w = 1; w < n_warps; ++w) r = kMax ? (buf[w] > r ? buf[w] : r) : r + buf[w];
    __syncthreads();
    return r;
}

// Block-wide exclusive prefix sum over threads (kThreads of them); *total
// gets the sum. buf: kWarps u64 of shared memory; two barriers.
__device__ __forceinline__ uint64_t block_exclusive_scan(uint64_t v, uint64_t *buf, uint64_t *total) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint64_t incl = warp_inclusive_scan(v);
    if (lane == 31) buf[warp] = incl;
    __syncthreads();
    uint64_t before = 0, all = 0;
    for (int w = 0; w < kWarps; ++w) {
        before += w < warp ? buf[w] : 0;
        all += buf[w];
    }
    __syncthreads();
    *total = all;
    return before + incl - v;
}

struct FastShared {
    float stage[kThreads * kPerThread];  // the block's logits, staged for a coalesced load
    unsigned long long hist[2][kBins];   // radix histograms, double buffered across passes
    uint64_t warp_buf[kWarps];           // block reductions and scans
    uint64_t pub_best;                   // published to the cluster: the block's (key, id) max
    uint64_t pub_kept_mass;              // ... the block's mass over the top-k survivors
    uint64_t pub_draw_mass;              // ... the block's mass over the final kept set
    uint32_t digit;                      // the crossing bin of a radix pass
    uint64_t above;                      // the value above the crossing bin
};

// One thread's view of its slice of the row.
struct Slice {
    uint32_t key[kPerThread]; // 0 past the slice's end
    float w[kPerThread];      // weight(l, m, t), filled once m is known
    int first;                // id of key[0]
    int n;                    // real entries
};

// hist[digit] += value for every lane with `has`, one atomic per distinct
// digit in the warp: the lanes of a digit sum their values first (a pass's
// first byte is often the same for most of a row, and same-address shared
// atomics serialize). Whole warp, converged. A value is below 2^45 (16
// weights of at most 2^40), so its 20-bit halves sum over 32 lanes in 32 bits.
__device__ __forceinline__ void warp_add_to_bin(unsigned long long *hist, bool has, uint32_t digit,
                                                uint64_t value) {
    const unsigned group = __match_any_sync(0xFFFFFFFFu, has ? digit : 0xFFFFFFFFu);
    if (!has) return;
    const unsigned lo = __reduce_add_sync(group, (unsigned)(value & 0xFFFFFu));
    const unsigned hi = __reduce_add_sync(group, (unsigned)(value >> 20));
    if ((int)(threadIdx.x & 31) == __ffs(group) - 1)
        atomicAdd(&hist[digit], (unsigned long long)(((uint64_t)hi << 20) + lo));
}

// Cluster-wide radix search (the fast kernel's threshold search): the largest
// key t such that the value of the elements with lo <= key, key >= t is >= need,
// where an element's value is 1 (by_mass false: t is the need-th largest key)
// or its fixed-point weight (by_mass true). The caller guarantees that the
// elements with lo <= key <= hi hold at least `need` and none is above hi.
// Leading bytes common to lo and hi are skipped. Each pass: per-block
// histogram (consecutive equal digits of a thread merged before the atomic),
// one cluster barrier, every block sums the 8 histograms through distributed
// shared memory and finds the crossing bin identically (integer sums).
__device__ __forceinline__ uint32_t cluster_radix_search(cg::cluster_group &cluster, FastShared &sh, const Slice &s,
                                         bool by_mass, uint32_t lo, uint32_t hi, uint64_t need,
                                         int &buf) {
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int pass = (lo == hi) ? 4 : __clz(lo ^ hi) / 8;
    uint32_t prefix = pass == 0 ? 0u : hi & (0xFFFFFFFFu << (32 - 8 * pass));
    for (; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        const uint32_t hi_mask = pass == 0 ? 0u : 0xFFFFFFFFu << (32 - 8 * pass);
        uint32_t run_digit = 0xFFFFFFFFu;
        uint64_t run = 0;
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
            const uint32_t k = s.key[e];
            const bool in = e < s.n && k >= lo && (k & hi_mask) == prefix;
            const uint32_t d = (k >> shift) & (kBins - 1);
            const bool ends = in && d != run_digit && run != 0;
            if (__any_sync(0xFFFFFFFFu, ends)) warp_add_to_bin(sh.hist[buf], ends, run_digit, run);
            if (in) {
                if (d != run_digit) {
                    run_digit = d;
                    run = 0;
                }
                run += by_mass ? fix(s.w[e]) : 1ull;
            }
        }
        warp_add_to_bin(sh.hist[buf], run != 0, run_digit, run);
        cluster.sync();
        // Thread i < kBins handles bin kBins-1-i, so an inclusive scan over
        // threads sums the bins from the top down.
        uint64_t c = 0;
        if (tid < kBins) {
            const int b = kBins - 1 - tid;
            for (int r = 0; r < kCluster; ++r)
                c += *cluster.map_shared_rank(&sh.hist[buf][b], r);
        }
        uint64_t incl = warp_inclusive_scan(c);
        if (lane == 31) sh.warp_buf[warp] = incl;
        __syncthreads();
        if (tid < kBins) {
            for (int w = 0; w < warp; ++w) incl += sh.warp_buf[w];
            const uint64_t above = incl - c;
            if (above < need && incl >= need) {
                sh.digit = (uint32_t)(kBins - 1 - tid);
                sh.above = above;
            }
            sh.hist[buf ^ 1][tid] = 0; // read by the cluster one pass ago, before this pass's barrier
        }
        __syncthreads();
        prefix |= sh.digit << shift;
        need -= sh.above;
        buf ^= 1;
        // sh.digit, sh.above and warp_buf are next written after the next
        // pass's cluster barrier, when every thread here has read them.
    }
    return prefix;
}

/* Fast kernel.
 * Launch: grid (8, n_seq), clusters of (8, 1, 1), block 512 threads.
 * Block r of a sequence owns ids [r*C, (r+1)*C), C = ceil(n_vocab / 8); thread
 * i owns E = ceil(C / 512) <= 16 consecutive of them, in registers (its key and
 * weight), so the draw's order is thread order.
 * Bytes: reads n_vocab * 4 of logits (once, coalesced) and 16 bytes of params a
 * sequence; writes 4. Distributed shared memory: a radix pass reads 8 x 256 x 8
 * bytes a block. Passes: greedy 0; top-k 4; top-p 1 to 4 (the bytes shared by
 * the top-k threshold and the max are skipped); each pass one cluster barrier.
 * Prediction (V = 50257): greedy ~2 us (load + one cluster barrier); with
 * top-k and top-p ~5-8 us, bound by barriers and histogram atomics, not bytes.
 */
__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads, 1)
    fast_kernel(const float *__restrict__ logits, int n_vocab,
                const tnn_sampling_params *__restrict__ params, int32_t *__restrict__ ids) {
    __shared__ FastShared sh;
    cg::cluster_group cluster = cg::this_cluster();
    const int rank = (int)cluster.block_rank();
    const int seq = blockIdx.y;
    const int tid = threadIdx.x;
    const tnn_sampling_params prm = params[seq];
    const float *row = logits + (size_t)seq * (size_t)n_vocab;

    // Stage the block's ids [base, base + count) and take the thread's slice.
    const int chunk = (n_vocab + kCluster - 1) / kCluster;
    const int base = rank * chunk;
    const int count = max(0, min(chunk, n_vocab - base));
    const int per = (chunk + kThreads - 1) / kThreads;
    for (int j = tid; j < count; j += kThreads) sh.stage[j] = row[base + j];
    if (tid < kBins) {
        sh.hist[0][tid] = 0;
        sh.hist[1][tid] = 0;
    }
    __syncthreads();
    Slice s;
    s.first = base + tid * per;
    s.n = max(0, min(per, count - tid * per));
    uint64_t best = 0;
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
        s.key[e] = e < s.n ? key_of(sh.stage[tid * per + e]) : 0u;
        s.w[e] = 0.0f;
        const uint64_t p = e < s.n ? pack_best(s.key[e], s.first + e) : 0ull;
        best = p > best ? p : best;
    }
    best = block_reduce<true>(best, sh.warp_buf, kWarps);
    if (tid == 0) sh.pub_best = best;
    cluster.sync();
    for (int r = 0; r < kCluster; ++r) {
        const uint64_t b = *cluster.map_shared_rank(&sh.pub_best, r);
        best = b > best ? b : best;
    }
    const int32_t argmax = best_id(best);
    const uint32_t max_key = (uint32_t)(best >> 32);

    if (!(prm.temperature > 0.0f)) {
        if (rank == 0 && tid == 0) ids[seq] = argmax;
    } else {
        const float m = value_of(max_key);
#pragma unroll
        for (int e = 0; e < kPerThread; ++e)
            if (e < s.n) s.w[e] = weight(value_of(s.key[e]), m, prm.temperature);
        int buf = 0;
        uint32_t tau = kKeyNegInf;
        if (prm.top_k > 0 && prm.top_k < n_vocab)
            tau = cluster_radix_search(cluster, sh, s, false, kKeyNegInf, max_key,
                                       (uint64_t)prm.top_k, buf);
        if (prm.top_p < 1.0f) {
            uint64_t mass = 0;
#pragma unroll
            for (int e = 0; e < kPerThread; ++e)
                if (e < s.n && s.key[e] >= tau) mass += fix(s.w[e]);
            mass = block_reduce<false>(mass, sh.warp_buf, kWarps);
            if (tid == 0) sh.pub_kept_mass = mass;
            cluster.sync();
            uint64_t total = 0;
            for (int r = 0; r < kCluster; ++r) total += *cluster.map_shared_rank(&sh.pub_kept_mass, r);
            if (total > 0)
                tau = cluster_radix_search(cluster, sh, s, true, tau, max_key,
                                           mass_target(prm.top_p, total), buf);
        }
        // The draw: running sums in id order = block order, then thread order,
        // then the thread's own entries.
        uint64_t mine = 0;
#pragma unroll
        for (int e = 0; e < kPerThread; ++e)
            if (e < s.n && s.key[e] >= tau) mine += fix(s.w[e]);
        uint64_t block_mass = 0;
        const uint64_t before_me = block_exclusive_scan(mine, sh.warp_buf, &block_mass);
        if (tid == 0) sh.pub_draw_mass = block_mass;
        cluster.sync();
        uint64_t total = 0, before_block = 0;
        for (int r = 0; r < kCluster; ++r) {
            const uint64_t v = *cluster.map_shared_rank(&sh.pub_draw_mass, r);
            before_block += r < rank ? v : 0;
            total += v;
        }
        if (total == 0) {
            if (rank == 0 && tid == 0) ids[seq] = argmax; // nothing has weight: rule 1
        } else {
            const uint64_t x = draw_target(prm.uniform, total);
            uint64_t run = before_block + before_me;
            if (mine > 0 && run <= x && x < run + mine) {
#pragma unroll
                for (int e = 0; e < kPerThread; ++e) {
                    if (e < s.n && s.key[e] >= tau) {
                        const uint64_t w = fix(s.w[e]);
                        if (run <= x && x < run + w) ids[seq] = s.first + e;
                        run += w;
                    }
                }
            }
        }
    }
    cluster.sync(); // no block leaves while another may still read its shared memory
}

// Reference helpers: one block, a pass over the row from global memory.
__device__ uint64_t ref_count_ge(const float *row, int n, uint32_t t, uint64_t *buf) {
    uint64_t c = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) c += key_of(row[i]) >= t;
    return block_reduce<false>(c, buf, kRefThreads / 32);
}
__device__ uint64_t ref_mass_ge(const float *row, int n, uint32_t t, float m, float temp,
                                uint64_t *buf) {
    uint64_t c = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t k = key_of(row[i]);
        if (k >= t) c += weight_fix(value_of(k), m, temp);
    }
    return block_reduce<false>(c, buf, kRefThreads / 32);
}

/* Reference kernel.
 * Launch: grid n_seq, block 256 threads; one block a sequence, any n_vocab.
 * Bytes: the row (n_vocab * 4) is read once for the max, 32 more times for
 * top-k and 32 + 1 for top-p (bisection over the 32-bit keys), and once by one
 * thread for the draw: ~66 x n_vocab * 4 bytes a sequence, mostly from L2.
 */
__global__ void __launch_bounds__(kRefThreads)
    reference_kernel(const float *__restrict__ logits, int n_vocab,
                     const tnn_sampling_params *__restrict__ params, int32_t *__restrict__ ids) {
    __shared__ uint64_t buf[kRefThreads / 32];
    const int seq = blockIdx.x;
    const tnn_sampling_params prm = params[seq];
    const float *row = logits + (size_t)seq * (size_t)n_vocab;
    uint64_t best = 0;
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x) {
        const uint64_t p = pack_best(key_of(row[i]), i);
        best = p > best ? p : best;
    }
    best = block_reduce<true>(best, buf, kRefThreads / 32);
    const int32_t argmax = best_id(best);
    if (!(prm.temperature > 0.0f)) {
        if (threadIdx.x == 0) ids[seq] = argmax;
        return;
    }
    const float m = value_of((uint32_t)(best >> 32));
    const float temp = prm.temperature;
    uint32_t tau = kKeyNegInf;
    if (prm.top_k > 0 && prm.top_k < n_vocab) {
        // The largest t with count(key >= t) >= k: the k-th largest key.
        uint64_t lo = kKeyNegInf, hi = 0xFFFFFFFFull;
        while (lo < hi) {
            const uint64_t mid = (lo + hi + 1) / 2;
            if (ref_count_ge(row, n_vocab, (uint32_t)mid, buf) >= (uint64_t)prm.top_k) lo = mid;
            else hi = mid - 1;
        }
        tau = (uint32_t)lo;
    }
    if (prm.top_p < 1.0f) {
        const uint64_t total = ref_mass_ge(row, n_vocab, tau, m, temp, buf);
        if (total > 0) {
            const uint64_t need = mass_target(prm.top_p, total);
            uint64_t lo = tau, hi = 0xFFFFFFFFull;
            while (lo < hi) {
                const uint64_t mid = (lo + hi + 1) / 2;
                if (ref_mass_ge(row, n_vocab, (uint32_t)mid, m, temp, buf) >= need) lo = mid;
                else hi = mid - 1;
            }
            tau = (uint32_t)lo;
        }
    }
    if (threadIdx.x != 0) return;
    uint64_t total = 0;
    for (int i = 0; i < n_vocab; ++i) {
        const uint32_t k = key_of(row[i]);
        if (k >= tau) total += weight_fix(value_of(k), m, temp);
    }
    if (total == 0) {
        ids[seq] = argmax;
        return;
    }
    const uint64_t x = draw_target(prm.uniform, total);
    uint64_t run = 0;
    for (int i = 0; i < n_vocab; ++i) {
        const uint32_t k = key_of(row[i]);
        if (k < tau) continue;
        run += weight_fix(value_of(k), m, temp);
        if (run > x) {
            ids[seq] = i;
            return;
        }
    }
}

} // namespace tnn_samp

} // namespace

/* Scratch the launch needs in device memory, in bytes: 0, both kernels keep
 * their state in shared memory (scratch may be NULL). */
inline size_t tnn_sampling_scratch_bytes(int max_batch, int n_vocab) {
    (void)max_batch;
    (void)n_vocab;
    return 0;
}

/* Picks ids_dev[i] for each row i < n_seq of logits [n_seq][n_vocab] (f32,
 * device) by THE SAMPLING RULE with params_dev[i] (device). One launch on
 * stream, no sync, no allocation: capturable in a CUDA graph. Rows of up to
 * 65536 logits take the fast kernel (sm_90), longer ones the reference kernel.
 * Returns cudaErrorInvalidValue for bad arguments (nothing launched), else
 * the launch's error. */
inline cudaError_t tnn_sampling_launch(const float *logits, int n_seq, int n_vocab,
                                       const tnn_sampling_params *params_dev, int32_t *ids_dev,
                                       void *scratch, cudaStream_t stream) {
    (void)scratch;
    if (n_seq < 0 || n_seq > 65535 || n_vocab <= 0 || !logits || !params_dev || !ids_dev)
        return cudaErrorInvalidValue;
    if (n_seq == 0) return cudaSuccess;
    if (n_vocab <= tnn_samp::kFastMaxVocab)
        tnn_samp::fast_kernel<<<dim3(tnn_samp::kCluster, n_seq), tnn_samp::kThreads, 0, stream>>>(
            logits, n_vocab, params_dev, ids_dev);
    else
        tnn_samp::reference_kernel<<<n_seq, tnn_samp::kRefThreads, 0, stream>>>(logits, n_vocab,
                                                                               params_dev, ids_dev);
    return cudaGetLastError();
}

/* The reference kernel alone, same contract (for tests). */
inline cudaError_t tnn_sampling_launch_reference(const float *logits, int n_seq, int n_vocab,
                                                 const tnn_sampling_params *params_dev,
                                                 int32_t *ids_dev, cudaStream_t stream) {
    if (n_seq < 0 || n_seq > 65535 || n_vocab <= 0 || !logits || !params_dev || !ids_dev)
        return cudaErrorInvalidValue;
    if (n_seq == 0) return cudaSuccess;
    tnn_samp::reference_kernel<<<n_seq, tnn_samp::kRefThreads, 0, stream>>>(logits, n_vocab,
                                                                           params_dev, ids_dev);
    return cudaGetLastError();
}

#endif
