/* embed_norm.cuh - the GEMV prologue: the input vectors of a product, made
 * once per block into shared memory. A GEMV's input is either a plain f32
 * vector (attention output, GELU output), the LayerNorm of the residual x
 * (normalized, then times its gain plus its bias: the file's ln weights, no
 * folding), or, for layer 0's QKV, the LayerNorm of the embedding
 * wte[token] + wpe[position], which the blocks of row tile 0 also write to x.
 * There is no embedding or LayerNorm kernel: those bytes (NB x d floats, and
 * the norm's 2 x d) are read from L2 by each block while its first weight
 * loads are in flight. */
#pragma once

#include "common.cuh"

enum { PRO_PLAIN = 0, PRO_NORM = 1, PRO_EMBED_NORM = 2 };

struct InputArgs {
    int pro;                 /* PRO_* */
    int n_in;                /* elements of one input vector */
    const float *in;         /* PLAIN, NORM: [NB][n_in] */
    float eps;               /* NORM, EMBED_NORM */
    const float *gamma;      /* NORM, EMBED_NORM: [n_in], the norm's gain, 16-byte aligned */
    const float *beta;       /* NORM, EMBED_NORM: [n_in], its bias, 16-byte aligned */
    const void *wte;         /* EMBED_NORM: n_vocab rows of n_in, f16 or q8_0 */
    int wte_type;            /* TNN_CUDA_W_* */
    const float *wpe;        /* EMBED_NORM: n_rows rows of n_in */
    float *x_out;            /* EMBED_NORM: [NB][n_in], the residual written by row tile 0 */
    const tnn_step_io *io;   /* tokens, positions */
};

/* Four consecutive input elements e..e+3 of vector b (e % 4 == 0). */
__device__ __forceinline__ float4 input4(const InputArgs &a, int b, int e) {
    if (a.pro != PRO_EMBED_NORM) return *reinterpret_cast<const float4 *>(a.in + static_cast<int64_t>(b) * a.n_in + e);
    const int64_t tok = a.io->tokens[b], pos = a.io->positions[b];
    const float4 p = *reinterpret_cast<const float4 *>(a.wpe + pos * a.n_in + e);
    return make_float4(load_weight(a.wte, a.wte_type, a.n_in, tok, e) + p.x,
                       load_weight(a.wte, a.wte_type, a.n_in, tok, e + 1) + p.y,
                       load_weight(a.wte, a.wte_type, a.n_in, tok, e + 2) + p.z,
                       load_weight(a.wte, a.wte_type, a.n_in, tok, e + 3) + p.w);
}

/* Waits for the kernels before (pdl_wait), then writes elements [k0, k0+kn)
 * of the NB input vectors, layer-normalized where asked (gain and bias
 * applied), to xs laid out
 * [NB][G][units] float4: unit u holds elements 4G*u .. 4G*u + 4G - 1 of the
 * slice and group g its floats 4g..4g+3, so the lanes of a warp, reading one
 * unit each, read consecutive float4 (no bank conflicts). G = 2 for f16
 * (8-element chunks), 8 for q8_0 (32-element blocks). The block's vectors
 * are the step's base .. base + nv - 1 (nv <= NB); the NB - nv past them are
 * zeros. Ends with __syncthreads. Whole block; NB <= 8 = warps of the block. */
template <int NB, int G>
__device__ void stage_input(const InputArgs &a, float4 *xs, int units, int k0, int kn, bool write_x, int base,
                            int nv) {
    static_assert(NB <= TNN_GEMV_GROUP, "one warp a vector for the norm statistics");
    __shared__ float stat[TNN_GEMV_GROUP][2]; /* mean, 1/sqrt(var + eps) */
    pdl_wait();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (a.pro != PRO_PLAIN && warp < nv) {
        /* two passes (mean, then squared deviations): the residual of GPT-2
         * carries values in the hundreds, where E[x^2] - mean^2 loses digits */
        const int n4 = a.n_in >> 2;
        float s = 0.0f;
        for (int i = lane; i < n4; i += 32) {
            const float4 v = input4(a, base + warp, 4 * i);
            s += (v.x + v.y) + (v.z + v.w);
        }
        const float mean = warp_sum(s) / static_cast<float>(a.n_in);
        float ss = 0.0f;
        for (int i = lane; i < n4; i += 32) {
            const float4 v = input4(a, base + warp, 4 * i);
            const float dx = v.x - mean, dy = v.y - mean, dz = v.z - mean, dw = v.w - mean;
            ss += (dx * dx + dy * dy) + (dz * dz + dw * dw);
        }
        const float var = warp_sum(ss) / static_cast<float>(a.n_in);
        if (lane == 0) {
            stat[warp][0] = mean;
            stat[warp][1] = 1.0f / sqrtf(var + a.eps);
        }
    }
    __syncthreads();
    const int n4 = kn >> 2;
    for (int i = threadIdx.x; i < NB * n4; i += blockDim.x) {
        const int b = i / n4, e4 = i - b * n4;
        if (b >= nv) {
            xs[(b * G + e4 % G) * units + e4 / G] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            continue;
        }
        float4 v = input4(a, base + b, k0 + 4 * e4);
        if (write_x) *reinterpret_cast<float4 *>(a.x_out + static_cast<int64_t>(base + b) * a.n_in + k0 + 4 * e4) = v;
        if (a.pro != PRO_PLAIN) { /* (v - mean) / sqrt(var + eps) * gamma + beta */
            const float m = stat[b][0], r = stat[b][1];
            const float4 g = *reinterpret_cast<const float4 *>(a.gamma + k0 + 4 * e4);
            const float4 be = *reinterpret_cast<const float4 *>(a.beta + k0 + 4 * e4);
            v = make_float4(fmaf((v.x - m) * r, g.x, be.x), fmaf((v.y - m) * r, g.y, be.y),
                            fmaf((v.z - m) * r, g.z, be.z), fmaf((v.w - m) * r, g.w, be.w));
        }
        xs[(b * G + e4 % G) * units + e4 / G] = v;
    }
    __syncthreads();
}
