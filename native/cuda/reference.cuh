/* reference.cuh - the decode step in plain kernels, one thread per output,
 * no fusion, no splitting, no shared memory: what the fast kernels of
 * gemv.cuh, attention.cuh and embed_norm.cuh are compared with
 * (tests/test_decode.cu). Same math and the same f32 accumulation; only the
 * order of the sums differs. Not used by the decoder itself. */
#pragma once

#include "common.cuh"

/* x[b][k] = wte[token b][k] + wpe[position b][k]. grid ceil(NB*d/256), block 256. */
__global__ void ref_embed_kernel(const void *wte, int wte_type, const float *wpe, const tnn_step_io *io, int nb,
                                 int d, float *x) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nb * d) return;
    const int b = i / d, k = i % d;
    x[i] = load_weight(wte, wte_type, d, io->tokens[b], k) + wpe[static_cast<int64_t>(io->positions[b]) * d + k];
}

/* y[b] = (x[b] - mean) / sqrt(var + eps) * gamma + beta. grid NB, block 1: one thread a vector. */
__global__ void ref_norm_kernel(const float *x, int n, float eps, const float *gamma, const float *beta, float *y) {
    const float *xb = x + static_cast<int64_t>(blockIdx.x) * n;
    float *yb = y + static_cast<int64_t>(blockIdx.x) * n;
    float s = 0.0f;
    for (int k = 0; k < n; ++k) s += xb[k];
    const float mean = s / n;
    float ss = 0.0f;
    for (int k = 0; k < n; ++k) ss += (xb[k] - mean) * (xb[k] - mean);
    const float r = 1.0f / sqrtf(ss / n + eps);
    for (int k = 0; k < n; ++k) yb[k] = (xb[k] - mean) * r * gamma[k] + beta[k];
}

/* y[b][o] = sum_k W[o][k] x[b][k] + bias[o]. grid ceil(NB*n_out/256), block 256: one thread an output. */
__global__ void ref_linear_kernel(const void *w, int type, const float *bias, int n_in, int n_out, int nb,
                                  const float *x, float *y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nb * n_out) return;
    const int b = i / n_out, o = i % n_out;
    float s = 0.0f;
    for (int k = 0; k < n_in; ++k) s += load_weight(w, type, n_in, o, k) * x[static_cast<int64_t>(b) * n_in + k];
    y[i] = s + (bias ? bias[o] : 0.0f);
}

/* x[i] = gelu(x[i]) (op 0) or y[i] += x[i] (op 1). grid ceil(n/256), block 256. */
__global__ void ref_pointwise_kernel(int op, int n, float *x, float *y) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (op == 0) x[i] = gelu_tanh(x[i]);
    else y[i] += x[i];
}

/* Cache row slot*n_rows + position of sequence b = f16(K | V of qkv[b]). grid NB, block 256. */
__global__ void ref_kv_write_kernel(const float *qkv, const tnn_step_io *io, int d, int n_rows, __half *kv) {
    const int b = blockIdx.x;
    const int64_t r = static_cast<int64_t>(io->slots[b]) * n_rows + io->positions[b];
    for (int j = threadIdx.x; j < 2 * d; j += blockDim.x)
        kv[r * 2 * d + j] = __float2half_rn(qkv[static_cast<int64_t>(b) * 3 * d + d + j]);
}

/* out[b][h*64 + i] = softmax(q.K[0..p] / 8) V[0..p][i]: grid (n_head, NB), block 64, one thread a dim. */
__global__ void ref_attention_kernel(const float *q, int q_stride, const __half *kv, const tnn_step_io *io, int d,
                                     int n_rows, float *out) {
    const int h = blockIdx.x, b = blockIdx.y, i = threadIdx.x;
    const int p = io->positions[b];
    const int64_t base = static_cast<int64_t>(io->slots[b]) * n_rows;
    const float *qh = q + static_cast<int64_t>(b) * q_stride + h * 64;
    float m = -INFINITY;
    for (int t = 0; t <= p; ++t) {
        const __half *k = kv + (base + t) * 2 * d + h * 64;
        float s = 0.0f;
        for (int j = 0; j < 64; ++j) s += qh[j] * __half2float(k[j]);
        m = fmaxf(m, s * 0.125f);
    }
    float l = 0.0f, acc = 0.0f;
    for (int t = 0; t <= p; ++t) {
        const __half *k = kv + (base + t) * 2 * d + h * 64;
        float s = 0.0f;
        for (int j = 0; j < 64; ++j) s += qh[j] * __half2float(k[j]);
        const float e = expf(s * 0.125f - m);
        l += e;
        acc += e * __half2float(k[d + i]);
    }
    out[static_cast<int64_t>(b) * d + h * 64 + i] = acc / l;
}

/* Scratch of the reference step: x [NB][d], h [NB][d], qkv [NB][3d], att [NB][d], u [NB][d_ff], y [NB][d]. */
struct RefScratch {
    float *x, *h, *qkv, *att, *u, *y;
};

static inline unsigned ref_blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }

/* The whole step with the reference kernels: logits [nb][n_vocab] for the
 * inputs at io (device). Writes the caches like the fast step. */
static inline cudaError_t ref_decode_step(const tnn_cuda_model &m, const tnn_cuda_layer *layers, int nb,
                                          const tnn_step_io *io, RefScratch s, float *logits, cudaStream_t st) {
    const int d = m.n_embd;
    ref_embed_kernel<<<ref_blocks(nb * d), 256, 0, st>>>(m.wte, m.wte_type, m.wpe, io, nb, d, s.x);
    for (int l = 0; l < m.n_layer; ++l) {
        const tnn_cuda_layer &L = layers[l];
        ref_norm_kernel<<<nb, 1, 0, st>>>(s.x, d, m.eps, L.ln_1.gamma, L.ln_1.beta, s.h);
        ref_linear_kernel<<<ref_blocks(nb * 3 * d), 256, 0, st>>>(L.qkv.w, L.qkv.type, L.qkv.b, d, 3 * d, nb, s.h,
                                                                 s.qkv);
        ref_kv_write_kernel<<<nb, 256, 0, st>>>(s.qkv, io, d, m.n_rows, static_cast<__half *>(L.kv));
        ref_attention_kernel<<<dim3(m.n_head, nb), 64, 0, st>>>(s.qkv, 3 * d, static_cast<const __half *>(L.kv), io,
                                                                d, m.n_rows, s.att);
        ref_linear_kernel<<<ref_blocks(nb * d), 256, 0, st>>>(L.o.w, L.o.type, L.o.b, d, d, nb, s.att, s.y);
        ref_pointwise_kernel<<<ref_blocks(nb * d), 256, 0, st>>>(1, nb * d, s.y, s.x);
        ref_norm_kernel<<<nb, 1, 0, st>>>(s.x, d, m.eps, L.ln_2.gamma, L.ln_2.beta, s.h);
        ref_linear_kernel<<<ref_blocks(nb * m.d_ff), 256, 0, st>>>(L.fc.w, L.fc.type, L.fc.b, d, m.d_ff, nb, s.h,
                                                                  s.u);
        ref_pointwise_kernel<<<ref_blocks(nb * m.d_ff), 256, 0, st>>>(0, nb * m.d_ff, s.u, nullptr);
        ref_linear_kernel<<<ref_blocks(nb * d), 256, 0, st>>>(L.proj.w, L.proj.type, L.proj.b, m.d_ff, d, nb, s.u,
                                                             s.y);
        ref_pointwise_kernel<<<ref_blocks(nb * d), 256, 0, st>>>(1, nb * d, s.y, s.x);
    }
    ref_norm_kernel<<<nb, 1, 0, st>>>(s.x, d, m.eps, m.ln_f.gamma, m.ln_f.beta, s.h);
    ref_linear_kernel<<<ref_blocks(static_cast<int64_t>(nb) * m.n_vocab), 256, 0, st>>>(
        m.wte, m.wte_type, nullptr, d, m.n_vocab, nb, s.h, logits); /* the tied head */
    return cudaGetLastError();
}
