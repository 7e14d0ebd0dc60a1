/* gemv.cuh - y = W x + b for 1..32 vectors at once (decode), W f16 or q8_0,
 * with the prologue of embed_norm.cuh and one fused epilogue:
 *   EPI_STORE  out[b][row] = y                         (logits)
 *   EPI_QKV    rows < d: q[b][row] = y; rows d..3d: the f16 K | V cache row
 *              slot*n_rows + position of sequence b   (layer's QKV)
 *   EPI_GELU   out[b][row] = gelu(y)                   (c_fc)
 *   EPI_RESID  x[b][row] += y                          (attn.c_proj, mlp.c_proj)
 *
 * Work split. A block of 8 warps owns a tile of RB rows (8 warps x R rows),
 * one of `splits` slices of the input (split-K) and a group of up to NB <= 8
 * vectors (TNN_GEMV_GROUP): blockIdx.x = split * tiles + tile, blockIdx.y =
 * group. A step of more than 8 vectors runs the NB = 8 kernel over groups of
 * 8 (the last one partly empty); the groups' blocks of a tile read the same
 * weights at about the same time, so L2 serves all but the first. gemv_plan splits the input until the grid has one
 * block per SM (TNN_GEMV_BLOCKS_PER_SM below) or the input vectors fit shared
 * memory. With splits > 1, each block writes its partial sums, and
 * the block that finishes a tile last (a counter per tile) adds the slices in
 * slice order, so results do not depend on timing, and applies the epilogue.
 *
 * Latency. Each block issues its first weight loads, then waits for the
 * previous kernel (PDL) and builds its input in shared memory while those
 * loads are in flight. */
#pragma once

#include <algorithm>

#include "embed_norm.cuh"

enum { EPI_STORE = 0, EPI_QKV = 1, EPI_GELU = 2, EPI_RESID = 3 };

struct GemvArgs {
    const void *w;      /* n_out rows of n_in, 16-byte aligned */
    const float *bias;  /* n_out or NULL */
    int n_out;
    int tiles, splits;  /* grid = (tiles * splits, groups) blocks */
    int nb;             /* vectors of the step: groups of NB, the last maybe partial */
    int slice;          /* input elements per slice, a multiple of 32 */
    int epi;            /* EPI_* */
    float *out;         /* see above: [NB][n_out]; EPI_QKV: q [NB][d] */
    __half *kv;         /* EPI_QKV: the layer's cache */
    int d, n_rows;      /* EPI_QKV: n_embd, cache rows per slot */
    float *partial;     /* splits > 1: [splits][nb][n_out] */
    int *counters;      /* splits > 1: [groups][tiles], zero between launches */
    InputArgs x;        /* the prologue */
};

__device__ __forceinline__ void gemv_epilogue(const GemvArgs &a, int b, int row, float v) {
    if (a.bias) v += a.bias[row];
    const int64_t o = static_cast<int64_t>(b) * a.n_out + row;
    switch (a.epi) {
    case EPI_STORE: a.out[o] = v; break;
    case EPI_GELU: a.out[o] = gelu_tanh(v); break;
    case EPI_RESID: a.out[o] += v; break;
    default: /* EPI_QKV */
        if (row < a.d) {
            a.out[static_cast<int64_t>(b) * a.d + row] = v;
        } else {
            const int64_t r = static_cast<int64_t>(a.x.io->slots[b]) * a.n_rows + a.x.io->positions[b];
            a.kv[r * 2 * a.d + (row - a.d)] = __float2half_rn(v);
        }
    }
}

/* The end of a GEMV block: acc[r][b] of each lane summed over the warp;
 * then either the epilogue, or this slice's partial sums and, in the block
 * that completes the tile, the sum over slices and the epilogue. Its vectors
 * are the step's base .. base + nv - 1. */
template <int NB, int R>
__device__ __forceinline__ void gemv_finish(const GemvArgs &a, float (&acc)[R][NB], int tile, int split, int base,
                                            int nv) {
    constexpr int RB = 8 * R;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float mine = 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const float s = warp_sum(acc[r][b]);
            if (lane == r * NB + b) mine = s;
        }
    const int row = tile * RB + warp * R + lane / NB, b = lane % NB;
    const bool owner = lane < R * NB && row < a.n_out && b < nv;
    if (a.splits == 1) {
        if (owner) gemv_epilogue(a, base + b, row, mine);
        return;
    }
    if (owner) a.partial[(static_cast<int64_t>(split) * a.nb + base + b) * a.n_out + row] = mine;
    __threadfence();
    __syncthreads();
    __shared__ int last;
    int *counter = &a.counters[blockIdx.y * a.tiles + tile];
    if (threadIdx.x == 0) last = atomicAdd(counter, 1) == a.splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < RB * NB; i += blockDim.x) {
        const int rr = tile * RB + i / NB, bb = base + i % NB;
        if (rr >= a.n_out || i % NB >= nv) continue;
        float s = 0.0f;
        for (int k = 0; k < a.splits; ++k) s += __ldcg(&a.partial[(static_cast<int64_t>(k) * a.nb + bb) * a.n_out + rr]);
        gemv_epilogue(a, bb, rr, s);
    }
    if (threadIdx.x == 0) *counter = 0; /* ready for the next launch */
}

/* f16 weights.
 * Launch: grid tiles * splits, block 256 (8 warps), dynamic shared memory
 * NB * slice * 4 bytes (the input slice). Warp w of tile t owns rows
 * t*8R + w*R .. +R-1; lane l reads the 16-byte chunks l, l+32, ... of each of
 * its R rows within the slice (8 weights each), U = 8/R chunks a row ahead,
 * and keeps R x NB f32 sums.
 * Bytes: the tile's weights once (8R x slice x 2), its input slice from L2
 * (NB x slice x 4, plus NB x n_in x 8 for the norm statistics and the
 * slice of the norm's gamma and beta, 2 x slice x 4), outputs. */
template <int NB, int R>
__global__ void __launch_bounds__(TNN_DEC_THREADS, 2) gemv_f16_kernel(GemvArgs a) {
    constexpr int U = 8 / R;
    pdl_launch_dependents();
    extern __shared__ float4 smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x / a.tiles, tile = blockIdx.x - split * a.tiles;
    const int base = blockIdx.y * TNN_GEMV_GROUP, nv = min(NB, a.nb - base);
    const int n_in = a.x.n_in, k0 = split * a.slice, kn = min(a.slice, n_in - k0);
    const int units = a.slice / 8, nc = kn / 8, row0 = tile * 8 * R + warp * R;
    const uint4 *w = static_cast<const uint4 *>(a.w) + k0 / 8;
    const int64_t row_chunks = n_in / 8;

    float acc[R][NB];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[r][b] = 0.0f;

    for (int j0 = 0; j0 * 32 < units; j0 += U) {
        uint4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int c = lane + 32 * (j0 + u);
                wv[u][r] = (c < nc && row0 + r < a.n_out) ? ld_stream16(w + (row0 + r) * row_chunks + c)
                                                          : make_uint4(0, 0, 0, 0);
            }
        if (j0 == 0)
            stage_input<NB, 2>(a.x, smem, units, k0, kn, tile == 0 && a.x.pro == PRO_EMBED_NORM, base, nv);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = lane + 32 * (j0 + u);
            if (c >= nc) continue;
            float wf[R][8];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const __half2 *h = reinterpret_cast<const __half2 *>(&wv[u][r]);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 f = __half22float2(h[i]);
                    wf[r][2 * i] = f.x;
                    wf[r][2 * i + 1] = f.y;
                }
            }
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                const float4 x0 = smem[(b * 2) * units + c], x1 = smem[(b * 2 + 1) * units + c];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    float s = acc[r][b];
                    s = fmaf(wf[r][0], x0.x, s);
                    s = fmaf(wf[r][1], x0.y, s);
                    s = fmaf(wf[r][2], x0.z, s);
                    s = fmaf(wf[r][3], x0.w, s);
                    s = fmaf(wf[r][4], x1.x, s);
                    s = fmaf(wf[r][5], x1.y, s);
                    s = fmaf(wf[r][6], x1.z, s);
                    s = fmaf(wf[r][7], x1.w, s);
                    acc[r][b] = s;
                }
            }
        }
    }
    gemv_finish<NB, R>(a, acc, tile, split, base, nv);
}

/* q8_0 weights. Their 34-byte blocks sit at 2-byte alignment, so a warp
 * copies the bytes of its 2 rows, 32 q8_0 blocks (1088 bytes) a row at a
 * time, with aligned 16-byte cp.async into shared memory, two stages ahead;
 * lane l then dequantizes block l of each row in registers (int8 -> f32 by
 * the 2^23 exponent trick) and multiplies by the NB inputs.
 * Launch: grid tiles * splits, block 256 (8 warps, 16 rows a tile), dynamic
 * shared memory NB * slice * 4 + 8 warps x 2 stages x 2 rows x 1120 bytes.
 * Bytes: the tile's weights once (16 x slice x 34/32), the input slice from L2
 * (NB x slice x 4 plus the statistics, gamma and beta), outputs. */
constexpr int Q8_STAGE_BYTES = 1120; /* 32 blocks + alignment slack, a multiple of 16 */

template <int NB>
__global__ void __launch_bounds__(TNN_DEC_THREADS, 2) gemv_q8_kernel(GemvArgs a) {
    constexpr int R = 2;
    pdl_launch_dependents();
    extern __shared__ float4 smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int split = blockIdx.x / a.tiles, tile = blockIdx.x - split * a.tiles;
    const int base = blockIdx.y * TNN_GEMV_GROUP, nv = min(NB, a.nb - base);
    const int n_in = a.x.n_in, k0 = split * a.slice, kn = min(a.slice, n_in - k0);
    const int units = a.slice / Q8_BLOCK, row0 = tile * 8 * R + warp * R;
    const int64_t nbr = n_in / Q8_BLOCK; /* q8_0 blocks a row */
    const int kb0 = k0 / Q8_BLOCK, nkb = kn / Q8_BLOCK, n_stages = (nkb + 31) / 32;
    const uint8_t *W = static_cast<const uint8_t *>(a.w);
    const int64_t w_bytes = a.n_out * nbr * Q8_BLOCK_BYTES;
    uint8_t *stage = reinterpret_cast<uint8_t *>(smem + NB * 8 * units) + warp * (2 * R * Q8_STAGE_BYTES);

    auto issue = [&](int s) { /* stage s of both rows into buffer s & 1 */
        if (s < n_stages) {
            const int cnt = min(32, nkb - 32 * s);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                if (row0 + r >= a.n_out) continue;
                const int64_t start = ((row0 + r) * nbr + kb0 + 32 * s) * Q8_BLOCK_BYTES;
                const int64_t base = start & ~int64_t(15);
                const int words = static_cast<int>((start + cnt * Q8_BLOCK_BYTES - base + 15) >> 4);
                uint8_t *dst = stage + ((s & 1) * R + r) * Q8_STAGE_BYTES;
                for (int i = lane; i < words; i += 32) {
                    const int64_t src = base + 16 * i;
                    cp_async16(dst + 16 * i, W + src, static_cast<int>(w_bytes - src < 16 ? w_bytes - src : 16));
                }
            }
        }
        cp_async_commit(); /* an empty group past the end keeps wait_group<1> uniform */
    };

    float acc[R][NB];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int b = 0; b < NB; ++b) acc[r][b] = 0.0f;

    issue(0);
    issue(1);
    stage_input<NB, 8>(a.x, smem, units, k0, kn, tile == 0 && a.x.pro == PRO_EMBED_NORM, base, nv);
    for (int s = 0; s < n_stages; ++s) {
        cp_async_wait<1>();
        __syncwarp();
        const int cnt = min(32, nkb - 32 * s);
        if (lane < cnt) {
            float wf[R][32], scale[R];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                scale[r] = 0.0f;
#pragma unroll
                for (int i = 0; i < 32; ++i) wf[r][i] = 0.0f;
                if (row0 + r >= a.n_out) continue;
                const int64_t start = ((row0 + r) * nbr + kb0 + 32 * s) * Q8_BLOCK_BYTES;
                const uint8_t *p =
                    stage + ((s & 1) * R + r) * Q8_STAGE_BYTES + (start & 15) + lane * Q8_BLOCK_BYTES;
                scale[r] = __half2float(*reinterpret_cast<const __half *>(p));
                /* the 32 quants start 2-byte aligned: aligned words, then byte_perm */
                const uintptr_t qa = reinterpret_cast<uintptr_t>(p + 2);
                const uint32_t *q = reinterpret_cast<const uint32_t *>(qa & ~uintptr_t(3));
                const uint32_t sel = (qa & 2) ? 0x5432u : 0x3210u;
                uint32_t wq[9];
#pragma unroll
                for (int j = 0; j < 9; ++j) wq[j] = q[j];
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const uint32_t word = __byte_perm(wq[j], wq[j + 1], sel) ^ 0x80808080u;
#pragma unroll
                    for (int i = 0; i < 4; ++i) /* 2^23 + (q + 128), exact, minus 2^23 + 128 */
                        wf[r][4 * j + i] = __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7540u + i)) - 8388736.0f;
                }
            }
            const int unit = 32 * s + lane;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                float part[R];
#pragma unroll
                for (int r = 0; r < R; ++r) part[r] = 0.0f;
#pragma unroll
                for (int g = 0; g < 8; ++g) {
                    const float4 xv = smem[(b * 8 + g) * units + unit];
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        part[r] = fmaf(wf[r][4 * g], xv.x, part[r]);
                        part[r] = fmaf(wf[r][4 * g + 1], xv.y, part[r]);
                        part[r] = fmaf(wf[r][4 * g + 2], xv.z, part[r]);
                        part[r] = fmaf(wf[r][4 * g + 3], xv.w, part[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r][b] = fmaf(scale[r], part[r], acc[r][b]);
            }
        }
        __syncwarp();
        issue(s + 2);
    }
    cp_async_wait<0>();
    gemv_finish<NB, R>(a, acc, tile, split, base, nv);
}

/* Launch policy knobs; native/cuda/tests/variants.sh compiles other values
 * to time them against each other.
 * TNN_GEMV_BLOCKS_PER_SM: the grid the input is split to reach (split-K).
 *   A split costs a round of partial sums through L2 and a counter per tile;
 *   the decode step is bound by such dependent round trips more than by
 *   bytes. On an H100 (bench/h100_2026-12-07_session5), one block per SM
 *   with one row a warp: gpt2 f16 0.326 ms a step against 0.444 with two
 *   (the first design), q8_0 0.358 against 0.523, gpt2-xl f16 2.554 against
 *   2.766. (0, split only where shared memory requires, failed a launch.)
 * TNN_GEMV_F16_SMALL_R: rows a warp for f16 at one or two vectors (1: more
 *   tiles, so small products still spread over the SMs without a split). */
#ifndef TNN_GEMV_BLOCKS_PER_SM
#define TNN_GEMV_BLOCKS_PER_SM 1
#endif
#ifndef TNN_GEMV_F16_SMALL_R
#define TNN_GEMV_F16_SMALL_R 1
#endif

/* Rows a GEMV block owns, by weight type and batch: TNN_GEMV_F16_SMALL_R rows
 * a warp for one or two vectors, 4 above (the input slice is then read from
 * shared memory once for 4 rows, which keeps shared-memory traffic under the
 * weights' rate); q8_0: 2. */
__host__ __device__ constexpr int gemv_rows_per_warp(int type, int nb) {
    return type == TNN_CUDA_W_Q8_0 ? 2 : (nb <= 2 ? TNN_GEMV_F16_SMALL_R : 4);
}

struct GemvPlan {
    int tiles, splits, slice, groups;
    size_t smem; /* dynamic shared memory bytes */
};

/* The launch shape of one product. The slices of the input fix the order in
 * which a row's products are summed (lanes within a slice, then slices in
 * order), and nothing else does: so they are chosen once for every batch size,
 * and a sequence gets the same bits whatever shares its step (batch
 * invariance). They are one vector's: enough blocks for
 * TNN_GEMV_BLOCKS_PER_SM per SM where the input can be split (slices of at
 * least 256 inputs), and small enough that TNN_GEMV_GROUP vectors of a
 * slice fit in 64 KiB of shared memory. Only the tiles and the groups of 8
 * vectors follow the batch. */
static inline GemvPlan gemv_plan(int type, int nb, int n_in, int n_out, int n_sm) {
    GemvPlan p;
    const int rb1 = 8 * gemv_rows_per_warp(type, 1), rb = 8 * gemv_rows_per_warp(type, nb);
    const int tiles1 = (n_out + rb1 - 1) / rb1;
    p.tiles = (n_out + rb - 1) / rb;
    const int target = TNN_GEMV_BLOCKS_PER_SM * n_sm;
    int splits = std::max(1, (target + tiles1 - 1) / tiles1);
    splits = std::min(splits, std::max(1, n_in / 256));
    const int by_smem = static_cast<int>((static_cast<int64_t>(TNN_GEMV_GROUP) * n_in * 4 + 65535) / 65536);
    splits = std::max(std::max(splits, by_smem), 1);
    p.slice = ((n_in + splits - 1) / splits + 31) / 32 * 32;
    p.splits = (n_in + p.slice - 1) / p.slice;
    p.groups = (nb + TNN_GEMV_GROUP - 1) / TNN_GEMV_GROUP;
    p.smem = static_cast<size_t>(std::min(nb, static_cast<int>(TNN_GEMV_GROUP))) * p.slice * 4;
    if (type == TNN_CUDA_W_Q8_0) p.smem += 8 * 2 * 2 * Q8_STAGE_BYTES;
    return p;
}
