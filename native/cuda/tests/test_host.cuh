/* test_host.cuh - the host side of the decode tests: device calls checked,
 * random linears (f16, or q8_0 quantized here) and LayerNorms kept on both
 * sides, copies to and from the device, and the comparison report. Included
 * by test_decode.cu after decode.cu (its types and Q8 constants). */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        const cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                   \
            exit(2);                                                                                                   \
        }                                                                                                              \
    } while (0)

static int g_failures = 0;

static void report(const char *what, double err, double tol, double scale) {
    const bool ok = err <= tol && std::isfinite(err);
    if (!ok) ++g_failures;
    printf("  %-58s max|diff| %.3e  tol %.3e  (scale %.3e)  %s\n", what, err, tol, scale, ok ? "ok" : "FAIL");
}

/* ---------------------------------------------------------------- host data */

struct HostLinear {
    int n_in = 0, n_out = 0, type = 0;
    std::vector<float> w; /* dequantized, what the device computes with */
    std::vector<float> b;
    void *dw = nullptr;
    float *db = nullptr;
};

/* Uploads w (n_out x n_in) as f16 or q8_0; keeps the dequantized values. */
static void make_linear(HostLinear &l, int n_in, int n_out, int type, float w_std, float b_std, std::mt19937 &rng) {
    std::normal_distribution<float> nw(0.0f, w_std), nb(0.0f, b_std);
    l.n_in = n_in;
    l.n_out = n_out;
    l.type = type;
    l.w.resize(static_cast<size_t>(n_in) * n_out);
    for (float &v : l.w) v = nw(rng);
    l.b.resize(n_out);
    for (float &v : l.b) v = nb(rng);
    std::vector<uint8_t> bytes;
    if (type == TNN_CUDA_W_F16) {
        bytes.resize(l.w.size() * 2);
        for (size_t i = 0; i < l.w.size(); ++i) {
            const __half h = __float2half_rn(l.w[i]);
            memcpy(&bytes[2 * i], &h, 2);
            l.w[i] = __half2float(h);
        }
    } else {
        const size_t nblk = l.w.size() / Q8_BLOCK;
        bytes.resize(nblk * Q8_BLOCK_BYTES);
        for (size_t k = 0; k < nblk; ++k) {
            float amax = 0.0f;
            for (int i = 0; i < Q8_BLOCK; ++i) amax = std::max(amax, std::fabs(l.w[k * Q8_BLOCK + i]));
            const __half hs = __float2half_rn(amax / 127.0f);
            const float s = __half2float(hs);
            memcpy(&bytes[k * Q8_BLOCK_BYTES], &hs, 2);
            for (int i = 0; i < Q8_BLOCK; ++i) {
                const int q = s > 0 ? std::max(-127, std::min(127, static_cast<int>(lrintf(l.w[k * Q8_BLOCK + i] / s)))) : 0;
                bytes[k * Q8_BLOCK_BYTES + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
                l.w[k * Q8_BLOCK + i] = s * q;
            }
        }
    }
    CHECK(cudaMalloc(&l.dw, bytes.size()));
    CHECK(cudaMemcpy(l.dw, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&l.db, n_out * sizeof(float)));
    CHECK(cudaMemcpy(l.db, l.b.data(), n_out * sizeof(float), cudaMemcpyHostToDevice));
}

static tnn_cuda_linear as_cuda(const HostLinear &l) { return {l.dw, l.db, l.type, l.n_in, l.n_out}; }

/* A LayerNorm's gain and bias, at the scales of GPT-2's. */
struct HostNorm {
    std::vector<float> g, b;
    float *dg = nullptr, *db = nullptr;
};

static void make_norm(HostNorm &n, int d, std::mt19937 &rng) {
    std::normal_distribution<float> ng(1.0f, 0.2f), nb(0.0f, 0.05f);
    n.g.resize(d);
    n.b.resize(d);
    for (float &v : n.g) v = ng(rng);
    for (float &v : n.b) v = nb(rng);
    CHECK(cudaMalloc(&n.dg, d * sizeof(float)));
    CHECK(cudaMalloc(&n.db, d * sizeof(float)));
    CHECK(cudaMemcpy(n.dg, n.g.data(), d * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(n.db, n.b.data(), d * sizeof(float), cudaMemcpyHostToDevice));
}

static tnn_cuda_norm as_cuda(const HostNorm &n) { return {n.dg, n.db}; }

/* ------------------------------------------------------------- comparisons */

static double max_abs(const std::vector<float> &v) {
    double m = 0;
    for (float e : v) m = std::max(m, static_cast<double>(std::fabs(e)));
    return m;
}
static double max_diff(const std::vector<float> &a, const std::vector<float> &b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double dd = std::fabs(static_cast<double>(a[i]) - b[i]);
        if (!(dd <= m)) m = dd; /* NaN propagates */
    }
    return m;
}

static std::vector<float> download(const float *p, size_t n) {
    std::vector<float> v(n);
    CHECK(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
    return v;
}
static float *upload(const std::vector<float> &v) {
    float *p;
    CHECK(cudaMalloc(&p, v.size() * sizeof(float)));
    CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
    return p;
}
