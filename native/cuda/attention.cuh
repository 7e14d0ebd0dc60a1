/* attention.cuh - one new query per sequence and head over that sequence's
 * cache rows 0..p (p = its position; row p was written by the QKV GEMV just
 * before), split along the context in chunks of 64 positions, then combined.
 *
 * Launch: grid (n_split, n_head, NB) with n_split = context bucket / 64,
 * block 128 (4 warps). A block takes positions t0 = 64*split .. t0+63 (those
 * <= p; blocks past p only check in). A group of 8 lanes owns one position
 * at a time: lane j of the group loads 16 bytes of its K row (dims 8j..8j+7)
 * and of its V row, 4 positions a lane, all 8 loads in flight at once; K.q is
 * summed over the group by shuffles. Softmax in base 2 within the chunk, then
 * the weighted V rows summed over the 16 groups through shared memory.
 * n_split == 1: the block writes out directly. Otherwise it writes
 * (max, sum, 64 sums) to part, and the last block of its (sequence, head)
 * (a counter) combines the chunks in chunk order and resets the counter.
 * Bytes: K and V rows 0..p of each (sequence, head): 256 (p + 1) bytes, plus
 * 264 bytes a chunk of partial results. */
#pragma once

#include "common.cuh"

struct AttnArgs {
    const float *q;        /* [NB][d] */
    const __half *kv;      /* the layer's cache: rows of 2d */
    float *out;            /* [NB][d] */
    float *part;           /* [NB][n_head][n_split][2 + 64] */
    int *counters;         /* [NB][n_head], zero between launches */
    const tnn_step_io *io; /* positions, slots */
    int d, n_head, n_rows, n_split;
};

constexpr int ATTN_CHUNK = 64;
constexpr int ATTN_THREADS = 128;

__global__ void __launch_bounds__(ATTN_THREADS) attention_kernel(AttnArgs a) {
    pdl_launch_dependents();
    __shared__ float score[ATTN_CHUNK];
    __shared__ float4 red[4][2][8]; /* per warp: 64 sums as 16 float4 */
    __shared__ int last;
    const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, grp = lane >> 3, sub = lane & 7;
    pdl_wait();
    const int p = a.io->positions[b];
    const int64_t slot_row = static_cast<int64_t>(a.io->slots[b]) * a.n_rows;
    const int t0 = split * ATTN_CHUNK;
    const int64_t head = static_cast<int64_t>(b) * a.n_head + h;
    float *part = a.part + (head * a.n_split + split) * (2 + TNN_DEC_HEAD_DIM);

    if (t0 <= p) {
        const int n_t = min(ATTN_CHUNK, p - t0 + 1);
        /* q, pre-scaled by log2(e) / sqrt(64) */
        const float qs = 0.125f * 1.4426950408889634f;
        const float4 *qp = reinterpret_cast<const float4 *>(a.q + static_cast<int64_t>(b) * a.d + h * 64 + sub * 8);
        const float4 qa = qp[0], qb = qp[1];
        const float qf[8] = {qa.x * qs, qa.y * qs, qa.z * qs, qa.w * qs, qb.x * qs, qb.y * qs, qb.z * qs, qb.w * qs};
        uint4 kr[4], vr[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int t = i * 16 + warp * 4 + grp;
            kr[i] = vr[i] = make_uint4(0, 0, 0, 0);
            if (t < n_t) {
                const __half *row = a.kv + (slot_row + t0 + t) * 2 * a.d + h * 64 + sub * 8;
                kr[i] = *reinterpret_cast<const uint4 *>(row);
                vr[i] = *reinterpret_cast<const uint4 *>(row + a.d);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const __half2 *k2 = reinterpret_cast<const __half2 *>(&kr[i]);
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 f = __half22float2(k2[j]);
                s = fmaf(f.x, qf[2 * j], s);
                s = fmaf(f.y, qf[2 * j + 1], s);
            }
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            const int t = i * 16 + warp * 4 + grp;
            if (sub == 0) score[t] = t < n_t ? s : -INFINITY;
        }
        __syncthreads();
        /* every warp finds the chunk's max and sum itself (64 values) */
        const float m = warp_max(fmaxf(score[lane], score[lane + 32]));
        const float l = warp_sum(exp2f(score[lane] - m) + exp2f(score[lane + 32] - m));
        float o[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int t = i * 16 + warp * 4 + grp;
            const float w = exp2f(score[t] - m); /* 0 past n_t */
            const __half2 *v2 = reinterpret_cast<const __half2 *>(&vr[i]);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 f = __half22float2(v2[j]);
                o[2 * j] = fmaf(w, f.x, o[2 * j]);
                o[2 * j + 1] = fmaf(w, f.y, o[2 * j + 1]);
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) { /* sum over the 4 groups of the warp */
            o[j] += __shfl_xor_sync(0xffffffffu, o[j], 8);
            o[j] += __shfl_xor_sync(0xffffffffu, o[j], 16);
        }
        if (grp == 0) {
            red[warp][0][sub] = make_float4(o[0], o[1], o[2], o[3]);
            red[warp][1][sub] = make_float4(o[4], o[5], o[6], o[7]);
        }
        __syncthreads();
        if (threadIdx.x < TNN_DEC_HEAD_DIM) {
            const int dim = threadIdx.x, j = dim >> 3, half = (dim >> 2) & 1, c = dim & 3;
            float s = 0.0f;
#pragma unroll
            for (int w = 0; w < 4; ++w) s += reinterpret_cast<const float *>(&red[w][half][j])[c];
            if (a.n_split == 1) {
                a.out[static_cast<int64_t>(b) * a.d + h * 64 + dim] = s / l;
            } else {
                part[2 + dim] = s;
                if (dim == 0) {
                    part[0] = m;
                    part[1] = l;
                }
            }
        }
    }
    if (a.n_split == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&a.counters[head], 1) == a.n_split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int n_active = p / ATTN_CHUNK + 1;
    const float *parts = a.part + head * a.n_split * (2 + TNN_DEC_HEAD_DIM);
    if (threadIdx.x < TNN_DEC_HEAD_DIM) {
        const int dim = threadIdx.x;
        float M = -INFINITY;
        for (int s = 0; s < n_active; ++s) M = fmaxf(M, __ldcg(&parts[s * (2 + TNN_DEC_HEAD_DIM)]));
        float L = 0.0f, acc = 0.0f;
        for (int s = 0; s < n_active; ++s) {
            const float *ps = parts + s * (2 + TNN_DEC_HEAD_DIM);
            const float f = exp2f(__ldcg(&ps[0]) - M);
            L = fmaf(__ldcg(&ps[1]), f, L);
            acc = fmaf(__ldcg(&ps[2 + dim]), f, acc);
        }
        a.out[static_cast<int64_t>(b) * a.d + h * 64 + dim] = acc / L;
    }
    if (threadIdx.x == 0) a.counters[head] = 0;
}
