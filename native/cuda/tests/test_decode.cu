/* test_decode.cu - standalone test of the fused decode step (no ggml).
 *
 * (a) each fast kernel against its reference (reference.cuh): GEMVs of every
 *     prologue/epilogue pair at GPT-2 shapes, f16 and q8_0, 1/3/8/13/32
 *     vectors (above 8 in groups of 8, the last partial); each vector of a
 *     batch of 1..31 bit for bit as among 32;
 *     attention at positions that use 1..16 context chunks.
 *     Tolerance: max |fast - ref| <= 1e-3 * max |ref| + 1e-5 (same f32 math,
 *     other summation order).
 * (b) whole steps: random tiny and GPT-2-small-shaped models (weights at GPT-2
 *     scales, q8_0 quantized here; every LayerNorm with its own random gamma
 *     and beta, applied in the kernels' prologue; the head is wte, tied),
 *     batches 1, 3, 8, 13, 32 in distinct slots at
 *     positions across the context buckets, three steps each (the greedy ids
 *     fed back). Logits against a float64 CPU step of the same math (same
 *     dequantized weights, K/V rounded to f16 as the cache does), tolerance
 *     1e-2 * max |logit| (batches up to 8); against the reference step on
 *     the device, 2e-3.
 *     ids must be the argmax of the returned logits (greedy).
 * (c) the error contract: bad arguments give a negative status and a message,
 *     and the decoder still works; a model without a norm's gamma is refused.
 * (d) timing (not with --quick): gpt2 and gpt2-xl shapes, f16 and q8_0,
 *     median of 200 steps: whole step (upload, graph, download, sync) and
 *     graph replay alone (cudaEvent), with the weight bytes a step reads.
 * Exits 1 on any mismatch. */
#include "../decode.cu"
#include "../reference.cuh"
#include "test_host.cuh"

#include <chrono>
#include <cstring>
#include <random>
#include <string>

/* --profile: a few batch-1 greedy steps of gpt2 f16 only (for ncu, which times
 * each kernel of the step alone); --no-pdl: steps captured without PDL edges */
static bool g_profile = false, g_no_pdl = false;

struct Shape {
    const char *name;
    int n_layer, d, n_head, d_ff, n_vocab, n_rows, n_slots;
};

struct HostModel {
    Shape s;
    int type;
    std::vector<HostLinear> lin;  /* 4 a layer */
    std::vector<HostNorm> norm;   /* ln_1, ln_2 a layer, then ln_f */
    HostLinear wte;               /* n_vocab x d: the embedding and the tied head, no bias used */
    std::vector<float> wpe;
    float *dwpe = nullptr;
    std::vector<std::vector<uint16_t>> kv; /* mirror of each layer's cache (f16 bits) */
    std::vector<tnn_cuda_layer> layers;
    tnn_cuda_model m;
};

static float f16_bits_to_float(uint16_t b) {
    __half h;
    memcpy(&h, &b, 2);
    return __half2float(h);
}
static uint16_t float_to_f16_bits(float v) {
    const __half h = __float2half_rn(v);
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}

static void build_model(HostModel &hm, const Shape &s, int type, uint32_t seed) {
    std::mt19937 rng(seed);
    hm.s = s;
    hm.type = type;
    const int d = s.d;
    const float ws = 0.05f * std::sqrt(768.0f / d), ws_ff = 0.05f * std::sqrt(768.0f / s.d_ff) * 1.4f;
    hm.lin.resize(4 * s.n_layer);
    hm.norm.resize(2 * s.n_layer + 1);
    for (int l = 0; l < s.n_layer; ++l) {
        make_norm(hm.norm[2 * l], d, rng);
        make_linear(hm.lin[4 * l + 0], d, 3 * d, type, ws, 0.02f, rng);
        make_linear(hm.lin[4 * l + 1], d, d, type, ws, 0.02f, rng);
        make_norm(hm.norm[2 * l + 1], d, rng);
        make_linear(hm.lin[4 * l + 2], d, s.d_ff, type, ws, 0.02f, rng);
        make_linear(hm.lin[4 * l + 3], s.d_ff, d, type, ws_ff, 0.02f, rng);
    }
    make_norm(hm.norm[2 * s.n_layer], d, rng);
    make_linear(hm.wte, d, s.n_vocab, type, 0.1f, 0.02f, rng);
    std::normal_distribution<float> np(0.0f, 0.02f);
    hm.wpe.resize(static_cast<size_t>(s.n_rows) * d);
    for (float &v : hm.wpe) v = np(rng);
    CHECK(cudaMalloc(&hm.dwpe, hm.wpe.size() * sizeof(float)));
    CHECK(cudaMemcpy(hm.dwpe, hm.wpe.data(), hm.wpe.size() * sizeof(float), cudaMemcpyHostToDevice));
    /* caches full of random K/V, so that any position has a past */
    const size_t kv_elems = static_cast<size_t>(s.n_slots) * s.n_rows * 2 * d;
    hm.kv.resize(s.n_layer);
    hm.layers.resize(s.n_layer);
    uint32_t x = seed * 2654435761u + 1;
    for (int l = 0; l < s.n_layer; ++l) {
        hm.kv[l].resize(kv_elems);
        for (size_t i = 0; i < kv_elems; ++i) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            hm.kv[l][i] = float_to_f16_bits((static_cast<float>(x >> 8) / 16777216.0f - 0.5f) * 4.0f);
        }
        void *dkv;
        CHECK(cudaMalloc(&dkv, kv_elems * 2));
        CHECK(cudaMemcpy(dkv, hm.kv[l].data(), kv_elems * 2, cudaMemcpyHostToDevice));
        hm.layers[l] = {as_cuda(hm.norm[2 * l]),     as_cuda(hm.lin[4 * l]),     as_cuda(hm.lin[4 * l + 1]),
                        as_cuda(hm.norm[2 * l + 1]), as_cuda(hm.lin[4 * l + 2]), as_cuda(hm.lin[4 * l + 3]),
                        dkv};
    }
    hm.m = {};
    hm.m.n_layer = s.n_layer;
    hm.m.n_embd = d;
    hm.m.n_head = s.n_head;
    hm.m.d_ff = s.d_ff;
    hm.m.n_vocab = s.n_vocab;
    hm.m.n_rows = s.n_rows;
    hm.m.n_slots = s.n_slots;
    hm.m.eps = 1e-5f;
    hm.m.wte = hm.wte.dw;
    hm.m.wte_type = type;
    hm.m.wpe = hm.dwpe;
    hm.m.ln_f = as_cuda(hm.norm[2 * s.n_layer]);
    hm.m.layers = hm.layers.data();
}

static void free_model(HostModel &hm) {
    for (HostLinear &l : hm.lin) cudaFree(l.dw), cudaFree(l.db);
    for (HostNorm &n : hm.norm) cudaFree(n.dg), cudaFree(n.db);
    cudaFree(hm.wte.dw);
    cudaFree(hm.wte.db);
    cudaFree(hm.dwpe);
    for (auto &l : hm.layers) cudaFree(l.kv);
}

/* ------------------------------------------------------- CPU float64 step */

static void cpu_norm(const std::vector<double> &x, const HostNorm &n, std::vector<double> &y) {
    double m = 0, v = 0;
    for (double e : x) m += e;
    m /= x.size();
    for (double e : x) v += (e - m) * (e - m);
    v /= x.size();
    const double r = 1.0 / std::sqrt(v + 1e-5);
    y.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = (x[i] - m) * r * n.g[i] + n.b[i];
}

static void cpu_linear(const HostLinear &l, const std::vector<double> &x, std::vector<double> &y, bool bias = true) {
    y.assign(l.n_out, 0.0);
    for (int o = 0; o < l.n_out; ++o) {
        const float *w = &l.w[static_cast<size_t>(o) * l.n_in];
        double s = 0;
        for (int k = 0; k < l.n_in; ++k) s += static_cast<double>(w[k]) * x[k];
        y[o] = s + (bias ? l.b[o] : 0.0);
    }
}

/* One sequence's step; writes its K/V into the mirror (rounded to f16). */
static std::vector<double> cpu_step(HostModel &hm, int token, int pos, int slot) {
    const Shape &s = hm.s;
    const int d = s.d;
    std::vector<double> x(d), h, qkv, att(d), y, u;
    for (int k = 0; k < d; ++k) x[k] = static_cast<double>(hm.wte.w[static_cast<size_t>(token) * d + k]) + hm.wpe[static_cast<size_t>(pos) * d + k];
    for (int l = 0; l < s.n_layer; ++l) {
        cpu_norm(x, hm.norm[2 * l], h);
        cpu_linear(hm.lin[4 * l], h, qkv);
        uint16_t *row = &hm.kv[l][(static_cast<size_t>(slot) * s.n_rows + pos) * 2 * d];
        for (int j = 0; j < 2 * d; ++j) row[j] = float_to_f16_bits(static_cast<float>(qkv[d + j]));
        for (int hh = 0; hh < s.n_head; ++hh) {
            std::vector<double> sc(pos + 1);
            double m = -1e300;
            for (int t = 0; t <= pos; ++t) {
                const uint16_t *kr = &hm.kv[l][(static_cast<size_t>(slot) * s.n_rows + t) * 2 * d + hh * 64];
                double dot = 0;
                for (int j = 0; j < 64; ++j) dot += qkv[hh * 64 + j] * f16_bits_to_float(kr[j]);
                sc[t] = dot / 8.0;
                m = std::max(m, sc[t]);
            }
            double z = 0;
            for (double &e : sc) z += (e = std::exp(e - m));
            for (int j = 0; j < 64; ++j) {
                double a = 0;
                for (int t = 0; t <= pos; ++t)
                    a += sc[t] * f16_bits_to_float(hm.kv[l][(static_cast<size_t>(slot) * s.n_rows + t) * 2 * d + d + hh * 64 + j]);
                att[hh * 64 + j] = a / z;
            }
        }
        cpu_linear(hm.lin[4 * l + 1], att, y);
        for (int k = 0; k < d; ++k) x[k] += y[k];
        cpu_norm(x, hm.norm[2 * l + 1], h);
        cpu_linear(hm.lin[4 * l + 2], h, u);
        for (double &e : u) e = 0.5 * e * (1.0 + std::tanh(0.7978845608028654 * (e + 0.044715 * e * e * e)));
        cpu_linear(hm.lin[4 * l + 3], u, y);
        for (int k = 0; k < d; ++k) x[k] += y[k];
    }
    cpu_norm(x, hm.norm[2 * s.n_layer], h);
    cpu_linear(hm.wte, h, y, false); /* the tied head: wte, no bias */
    return y;
}

/* ------------------------------------------------- (a) kernel vs reference */

/* A decoder shell with just what launch_gemv reads. */
static tnn_cuda_decoder *gemv_shell(int n_sm, cudaStream_t st) {
    tnn_cuda_decoder *dec = new tnn_cuda_decoder;
    dec->n_sm = n_sm;
    dec->stream = st;
    CHECK(cudaMalloc(&dec->partial, 64u << 20));
    CHECK(cudaMalloc(&dec->counters, 1u << 20));
    CHECK(cudaMemset(dec->counters, 0, 1u << 20));
    return dec;
}

static void test_gemv(tnn_cuda_decoder *dec, int type, int nb, int n_in, int n_out, std::mt19937 &rng) {
    HostLinear l;
    make_linear(l, n_in, n_out, type, 0.05f * std::sqrt(768.0f / n_in), 0.02f, rng);
    std::normal_distribution<float> nx(0.5f, 3.0f);
    std::vector<float> x(static_cast<size_t>(nb) * n_in), r0(static_cast<size_t>(nb) * n_out);
    for (float &v : x) v = nx(rng);
    for (float &v : r0) v = nx(rng);
    HostNorm norm;
    make_norm(norm, n_in, rng);
    float *dx = upload(x), *dh, *dy, *dr = upload(r0), *dr2 = upload(r0), *dout;
    CHECK(cudaMalloc(&dh, x.size() * sizeof(float)));
    CHECK(cudaMalloc(&dy, r0.size() * sizeof(float)));
    CHECK(cudaMalloc(&dout, r0.size() * sizeof(float)));
    for (int pro = 0; pro < 2; ++pro)
        for (int epi : {EPI_STORE, EPI_GELU, EPI_RESID}) {
            const GemvPlan p = gemv_plan(type, nb, n_in, n_out, dec->n_sm);
            if (p.smem > 48 * 1024)
                CHECK(cudaFuncSetAttribute(gemv_kernel(type, nb), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(p.smem)));
            InputArgs in = {};
            in.pro = pro;
            in.n_in = n_in;
            in.in = dx;
            in.eps = 1e-5f;
            in.gamma = norm.dg;
            in.beta = norm.db;
            CHECK(cudaMemcpy(dr, r0.data(), r0.size() * 4, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(dr2, r0.data(), r0.size() * 4, cudaMemcpyHostToDevice));
            CHECK(launch_gemv(dec, as_cuda(l), nb, in, epi, epi == EPI_RESID ? dr : dout, nullptr, false));
            /* reference */
            const float *src = dx;
            if (pro == PRO_NORM) {
                ref_norm_kernel<<<nb, 1>>>(dx, n_in, 1e-5f, norm.dg, norm.db, dh);
                src = dh;
            }
            ref_linear_kernel<<<ref_blocks(static_cast<int64_t>(nb) * n_out), 256>>>(l.dw, type, l.db, n_in, n_out, nb, src, dy);
            if (epi == EPI_GELU) ref_pointwise_kernel<<<ref_blocks(nb * n_out), 256>>>(0, nb * n_out, dy, nullptr);
            if (epi == EPI_RESID) ref_pointwise_kernel<<<ref_blocks(nb * n_out), 256>>>(1, nb * n_out, dy, dr2);
            CHECK(cudaGetLastError());
            CHECK(cudaDeviceSynchronize());
            const std::vector<float> fast = download(epi == EPI_RESID ? dr : dout, r0.size());
            const std::vector<float> ref = download(epi == EPI_RESID ? dr2 : dy, r0.size());
            char what[160];
            snprintf(what, sizeof what, "gemv %s nb %d %4d->%-5d %s %s (%d slices)", type ? "q8_0" : "f16 ", nb, n_in,
                     n_out, pro ? "norm " : "plain", epi == EPI_STORE ? "store" : epi == EPI_GELU ? "gelu " : "resid",
                     p.splits);
            const double sc = max_abs(ref);
            report(what, max_diff(fast, ref), 1e-3 * sc + 1e-5, sc);
        }
    cudaFree(dx), cudaFree(dh), cudaFree(dy), cudaFree(dr), cudaFree(dr2), cudaFree(dout), cudaFree(l.dw), cudaFree(l.db);
    cudaFree(norm.dg), cudaFree(norm.db);
}

/* Batch invariance: each vector's outputs from a launch of nb = 1..31 vectors
 * equal, bit for bit, those of the same vector among 32 (gemv_plan keeps one
 * set of slices for every batch size; a vector sits in another group and at
 * another place in its group). */
static void test_gemv_invariance(tnn_cuda_decoder *dec, int type, int n_in, int n_out, std::mt19937 &rng) {
    HostLinear l;
    make_linear(l, n_in, n_out, type, 0.05f * std::sqrt(768.0f / n_in), 0.02f, rng);
    std::normal_distribution<float> nx(0.5f, 3.0f);
    const int max_nb = TNN_DEC_MAX_BATCH;
    std::vector<float> x(static_cast<size_t>(max_nb) * n_in);
    for (float &v : x) v = nx(rng);
    HostNorm norm;
    make_norm(norm, n_in, rng);
    float *dx = upload(x), *dout;
    CHECK(cudaMalloc(&dout, static_cast<size_t>(max_nb) * n_out * sizeof(float)));
    InputArgs in = {};
    in.pro = PRO_NORM;
    in.n_in = n_in;
    in.eps = 1e-5f;
    in.gamma = norm.dg;
    in.beta = norm.db;
    std::vector<float> all;
    int differ = 0;
    for (int nb = max_nb; nb >= 1; --nb) {
        const GemvPlan p = gemv_plan(type, nb, n_in, n_out, dec->n_sm);
        if (p.smem > 48 * 1024)
            CHECK(cudaFuncSetAttribute(gemv_kernel(type, nb), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(p.smem)));
        /* the last nb vectors: each sits at another index than among all 32 */
        in.in = dx + static_cast<size_t>(max_nb - nb) * n_in;
        CHECK(launch_gemv(dec, as_cuda(l), nb, in, EPI_STORE, dout, nullptr, false));
        CHECK(cudaDeviceSynchronize());
        const std::vector<float> got = download(dout, static_cast<size_t>(nb) * n_out);
        if (nb == max_nb) {
            all = got;
            continue;
        }
        const float *want = all.data() + static_cast<size_t>(max_nb - nb) * n_out;
        if (std::memcmp(got.data(), want, got.size() * sizeof(float)) != 0) ++differ;
    }
    char what[160];
    snprintf(what, sizeof what, "gemv %s %4d->%-5d: batches 1..%d against %d, batches that differ",
             type ? "q8_0" : "f16 ", n_in, n_out, max_nb - 1, max_nb);
    report(what, differ, 0, 0);
    cudaFree(dx), cudaFree(dout), cudaFree(l.dw), cudaFree(l.db), cudaFree(norm.dg), cudaFree(norm.db);
}

static void test_attention(int nb, int n_head, int n_rows, const std::vector<int> &pos, std::mt19937 &rng) {
    const int d = n_head * 64, n_slots = nb + 1;
    std::normal_distribution<float> n1(0.0f, 1.5f);
    std::vector<float> q(static_cast<size_t>(nb) * d);
    for (float &v : q) v = n1(rng);
    std::vector<__half> kv(static_cast<size_t>(n_slots) * n_rows * 2 * d);
    for (__half &v : kv) v = __float2half_rn(n1(rng));
    tnn_step_io io = {};
    int max_pos = 0;
    for (int b = 0; b < nb; ++b) {
        io.positions[b] = pos[b];
        io.slots[b] = n_slots - 1 - b;
        max_pos = std::max(max_pos, pos[b]);
    }
    int bucket = 256;
    while (bucket < max_pos + 1) bucket *= 2;
    bucket = std::min(bucket, n_rows);
    float *dq = upload(q), *dout, *dref, *dpart;
    __half *dkv;
    int *dcnt;
    tnn_step_io *dio;
    CHECK(cudaMalloc(&dkv, kv.size() * 2));
    CHECK(cudaMemcpy(dkv, kv.data(), kv.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&dout, q.size() * 4));
    CHECK(cudaMalloc(&dref, q.size() * 4));
    CHECK(cudaMalloc(&dpart, static_cast<size_t>(nb) * n_head * n_split_of(n_rows) * 66 * 4));
    CHECK(cudaMalloc(&dcnt, nb * n_head * 4));
    CHECK(cudaMemset(dcnt, 0, nb * n_head * 4));
    CHECK(cudaMalloc(&dio, sizeof io));
    CHECK(cudaMemcpy(dio, &io, sizeof io, cudaMemcpyHostToDevice));
    AttnArgs a = {dq, dkv, dout, dpart, dcnt, dio, d, n_head, n_rows, n_split_of(bucket)};
    for (int rep = 0; rep < 2; ++rep) /* twice: the counters must have been reset */
        attention_kernel<<<dim3(a.n_split, n_head, nb), ATTN_THREADS>>>(a);
    ref_attention_kernel<<<dim3(n_head, nb), 64>>>(dq, d, dkv, dio, d, n_rows, dref);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    const std::vector<float> fast = download(dout, q.size()), ref = download(dref, q.size());
    char what[160];
    snprintf(what, sizeof what, "attention nb %d heads %d max pos %d (%d chunks)", nb, n_head, max_pos, a.n_split);
    const double sc = max_abs(ref);
    report(what, max_diff(fast, ref), 1e-3 * sc + 1e-5, sc);
    cudaFree(dq), cudaFree(dout), cudaFree(dref), cudaFree(dpart), cudaFree(dkv), cudaFree(dcnt), cudaFree(dio);
}

/* ----------------------------------------------------- (b) whole steps */

static void test_steps(const Shape &s, int type, bool with_cpu) {
    HostModel hm;
    build_model(hm, s, type, 1234 + type);
    printf(" model %s %s: %d layers, d %d, vocab %d, %d rows x %d slots\n", s.name, type ? "q8_0" : "f16", s.n_layer,
           s.d, s.n_vocab, s.n_rows, s.n_slots);
    char err[512] = "";
    tnn_cuda_decoder *dec = nullptr;
    if (tnn_cuda_decoder_new(&hm.m, TNN_DEC_MAX_BATCH, &dec, err, sizeof err) != 0) {
        printf("  decoder_new failed: %s\n", err);
        ++g_failures;
        free_model(hm);
        return;
    }
    RefScratch rs;
    float *ref_logits;
    const size_t B = TNN_DEC_MAX_BATCH;
    CHECK(cudaMalloc(&rs.x, B * s.d * 4));
    CHECK(cudaMalloc(&rs.h, B * s.d * 4));
    CHECK(cudaMalloc(&rs.qkv, B * 3 * s.d * 4));
    CHECK(cudaMalloc(&rs.att, B * s.d * 4));
    CHECK(cudaMalloc(&rs.u, B * s.d_ff * 4));
    CHECK(cudaMalloc(&rs.y, B * s.d * 4));
    CHECK(cudaMalloc(&ref_logits, B * s.n_vocab * 4));
    tnn_step_io *dio;
    CHECK(cudaMalloc(&dio, sizeof(tnn_step_io)));

    std::mt19937 rng(99 + type);
    const int starts[] = {0, 5, 255, 256, 300, s.n_rows / 2, s.n_rows - 4, 63, 64, 129};
    for (int nb : {1, 3, 8, 13, 32}) {
        std::vector<int> slots(s.n_slots);
        for (int i = 0; i < s.n_slots; ++i) slots[i] = i;
        std::shuffle(slots.begin(), slots.end(), rng);
        std::vector<int> tokens(nb), pos(nb);
        for (int b = 0; b < nb; ++b) {
            tokens[b] = static_cast<int>(rng() % s.n_vocab);
            pos[b] = std::min(starts[(b + nb) % 10], s.n_rows - 4);
        }
        std::vector<float> logits(static_cast<size_t>(nb) * s.n_vocab);
        std::vector<int32_t> ids(nb);
        for (int step = 0; step < 3; ++step) {
            if (tnn_cuda_decoder_step(dec, nb, tokens.data(), pos.data(), slots.data(), nullptr, ids.data(),
                                      logits.data(), err, sizeof err) != 0) {
                printf("  step failed: %s\n", err);
                ++g_failures;
                break;
            }
            /* the reference step on the device, same inputs (rewrites the same cache rows) */
            tnn_step_io io = {};
            for (int b = 0; b < nb; ++b) io.tokens[b] = tokens[b], io.positions[b] = pos[b], io.slots[b] = slots[b];
            CHECK(cudaMemcpy(dio, &io, sizeof io, cudaMemcpyHostToDevice));
            CHECK(ref_decode_step(hm.m, hm.layers.data(), nb, dio, rs, ref_logits, 0));
            CHECK(cudaDeviceSynchronize());
            const std::vector<float> rl = download(ref_logits, logits.size());
            char what[160];
            snprintf(what, sizeof what, "step nb %d step %d pos %d..: fast vs device reference", nb, step, pos[0]);
            const double sc = max_abs(rl);
            report(what, max_diff(logits, rl), 2e-3 * sc, sc);
            int bad_ids = 0;
            for (int b = 0; b < nb; ++b) {
                const float *row = &logits[static_cast<size_t>(b) * s.n_vocab];
                const int am = static_cast<int>(std::max_element(row, row + s.n_vocab) - row);
                bad_ids += ids[b] != am;
            }
            if (bad_ids) {
                printf("  step nb %d step %d: %d ids differ from the argmax of the logits  FAIL\n", nb, step, bad_ids);
                ++g_failures;
            }
            if (with_cpu && nb <= 8) { /* float64 on one host thread: the larger batches only on the device */
                double worst = 0, scale = 0;
                for (int b = 0; b < nb; ++b) {
                    const std::vector<double> c = cpu_step(hm, tokens[b], pos[b], slots[b]);
                    for (int v = 0; v < s.n_vocab; ++v) {
                        scale = std::max(scale, std::fabs(c[v]));
                        const double dd = std::fabs(c[v] - logits[static_cast<size_t>(b) * s.n_vocab + v]);
                        if (!(dd <= worst)) worst = dd;
                    }
                }
                snprintf(what, sizeof what, "step nb %d step %d pos %d..: fast vs CPU float64", nb, step, pos[0]);
                report(what, worst, 1e-2 * scale, scale);
            }
            for (int b = 0; b < nb; ++b) tokens[b] = ids[b], pos[b] += 1;
        }
    }

    /* (c) the error contract, on this decoder */
    {
        int32_t tok[2] = {1, 2}, p[2] = {0, 1}, sl[2] = {0, 1}, out[2];
        tnn_sampling_params sp[2] = {{0.8f, 40, 0.9f, 0.5f}, {0.8f, 40, 0.9f, 0.5f}};
        auto expect_fail = [&](const char *name, int rc) {
            const bool ok = rc < 0 && err[0];
            printf("  error contract: %-34s -> %d \"%s\"  %s\n", name, rc, err, ok ? "ok" : "FAIL");
            if (!ok) ++g_failures;
            err[0] = 0;
        };
        expect_fail("n_seq 0", tnn_cuda_decoder_step(dec, 0, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        expect_fail("n_seq past max_batch", tnn_cuda_decoder_step(dec, TNN_DEC_MAX_BATCH + 1, tok, p, sl, nullptr, out,
                                                                   nullptr, err, sizeof err));
        tok[1] = s.n_vocab;
        expect_fail("token n_vocab", tnn_cuda_decoder_step(dec, 2, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        tok[1] = 2;
        p[1] = s.n_rows;
        expect_fail("position n_rows", tnn_cuda_decoder_step(dec, 2, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        p[1] = -1;
        expect_fail("position -1", tnn_cuda_decoder_step(dec, 2, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        p[1] = 1;
        sl[1] = 0;
        expect_fail("same slot twice", tnn_cuda_decoder_step(dec, 2, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        sl[1] = s.n_slots;
        expect_fail("slot n_slots", tnn_cuda_decoder_step(dec, 2, tok, p, sl, nullptr, out, nullptr, err, sizeof err));
        sl[1] = 1;
        sp[1].temperature = NAN;
        expect_fail("temperature NaN", tnn_cuda_decoder_step(dec, 2, tok, p, sl, sp, out, nullptr, err, sizeof err));
        sp[1].temperature = 0.8f;
        sp[1].uniform = 1.0f;
        expect_fail("uniform 1", tnn_cuda_decoder_step(dec, 2, tok, p, sl, sp, out, nullptr, err, sizeof err));
        sp[1].uniform = 0.5f;
        expect_fail("NULL tokens", tnn_cuda_decoder_step(dec, 2, nullptr, p, sl, sp, out, nullptr, err, sizeof err));
        {
            std::vector<tnn_cuda_layer> bad(hm.layers);
            tnn_cuda_model m = hm.m;
            bad[s.n_layer - 1].ln_2.gamma = nullptr;
            m.layers = bad.data();
            tnn_cuda_decoder *none = nullptr;
            expect_fail("decoder_new, ln_2 gamma NULL", tnn_cuda_decoder_new(&m, 1, &none, err, sizeof err));
            m.layers = hm.layers.data();
            m.ln_f.beta = hm.m.ln_f.beta + 1; /* 4-byte aligned, not 16 */
            expect_fail("decoder_new, ln_f beta misaligned", tnn_cuda_decoder_new(&m, 1, &none, err, sizeof err));
        }
        const int rc = tnn_cuda_decoder_step(dec, 2, tok, p, sl, sp, out, nullptr, err, sizeof err);
        const bool ok = rc == 0 && out[0] >= 0 && out[0] < s.n_vocab && out[1] >= 0 && out[1] < s.n_vocab;
        printf("  error contract: a sampling step afterwards -> %d (ids %d %d)  %s\n", rc, out[0], out[1],
               ok ? "ok" : "FAIL");
        if (!ok) ++g_failures;
    }
    tnn_cuda_decoder_free(dec);
    cudaFree(rs.x), cudaFree(rs.h), cudaFree(rs.qkv), cudaFree(rs.att), cudaFree(rs.u), cudaFree(rs.y);
    cudaFree(ref_logits), cudaFree(dio);
    free_model(hm);
}

/* -------------------------------------------------------------- (d) timing */

__global__ void fill_f16_kernel(__half *p, size_t n, float scale, uint32_t seed) {
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<size_t>(blockDim.x)) {
        uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        x ^= x >> 15, x *= 2246822519u, x ^= x >> 13;
        p[i] = __float2half_rn((static_cast<float>(x >> 8) / 16777216.0f - 0.5f) * scale);
    }
}
__global__ void fill_q8_kernel(uint8_t *p, size_t n_blocks, uint32_t seed) {
    for (size_t k = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; k < n_blocks; k += gridDim.x * static_cast<size_t>(blockDim.x)) {
        uint8_t *b = p + k * Q8_BLOCK_BYTES;
        const __half s = __float2half_rn(0.0008f);
        memcpy(b, &s, 2);
        uint32_t x = static_cast<uint32_t>(k) * 2654435761u ^ seed;
        for (int i = 0; i < 32; ++i) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            b[2 + i] = static_cast<uint8_t>(x);
        }
    }
}

static size_t weight_bytes(int type, int n_in, int n_out) {
    return type == TNN_CUDA_W_F16 ? static_cast<size_t>(n_in) * n_out * 2
                                  : static_cast<size_t>(n_in) / 32 * n_out * Q8_BLOCK_BYTES;
}

static void *device_weights(int type, int n_in, int n_out, uint32_t seed) {
    void *p;
    const size_t bytes = weight_bytes(type, n_in, n_out);
    CHECK(cudaMalloc(&p, bytes));
    if (type == TNN_CUDA_W_F16)
        fill_f16_kernel<<<1024, 256>>>(static_cast<__half *>(p), bytes / 2, 0.1f, seed);
    else
        fill_q8_kernel<<<1024, 256>>>(static_cast<uint8_t *>(p), bytes / Q8_BLOCK_BYTES, seed);
    CHECK(cudaGetLastError());
    return p;
}

static void time_model(const Shape &s, int type) {
    std::vector<void *> to_free;
    auto lin = [&](int n_in, int n_out, uint32_t seed) {
        tnn_cuda_linear l = {device_weights(type, n_in, n_out, seed), nullptr, type, n_in, n_out};
        float *b;
        CHECK(cudaMalloc(&b, n_out * 4));
        CHECK(cudaMemset(b, 0, n_out * 4));
        l.b = b;
        to_free.push_back(const_cast<void *>(l.w));
        to_free.push_back(b);
        return l;
    };
    /* one norm for all (the prologue reads its gamma and beta whatever they hold) */
    std::vector<float> ones(s.d, 1.0f), zeros(s.d, 0.0f);
    float *gamma = upload(ones), *beta = upload(zeros);
    to_free.push_back(gamma);
    to_free.push_back(beta);
    const tnn_cuda_norm norm = {gamma, beta};
    std::vector<tnn_cuda_layer> layers(s.n_layer);
    size_t bytes = 0;
    for (int l = 0; l < s.n_layer; ++l) {
        layers[l].ln_1 = norm;
        layers[l].ln_2 = norm;
        layers[l].qkv = lin(s.d, 3 * s.d, 4 * l + 1);
        layers[l].o = lin(s.d, s.d, 4 * l + 2);
        layers[l].fc = lin(s.d, s.d_ff, 4 * l + 3);
        layers[l].proj = lin(s.d_ff, s.d, 4 * l + 4);
        const size_t kvb = static_cast<size_t>(s.n_slots) * s.n_rows * 2 * s.d * 2;
        CHECK(cudaMalloc(&layers[l].kv, kvb));
        CHECK(cudaMemset(layers[l].kv, 0, kvb));
        to_free.push_back(layers[l].kv);
        bytes += weight_bytes(type, s.d, 3 * s.d) + weight_bytes(type, s.d, s.d) + weight_bytes(type, s.d, s.d_ff) +
                 weight_bytes(type, s.d_ff, s.d);
    }
    tnn_cuda_model m = {};
    m.n_layer = s.n_layer;
    m.n_embd = s.d;
    m.n_head = s.n_head;
    m.d_ff = s.d_ff;
    m.n_vocab = s.n_vocab;
    m.n_rows = s.n_rows;
    m.n_slots = s.n_slots;
    m.eps = 1e-5f;
    m.wte = lin(s.d, s.n_vocab, 999).w; /* the embedding and the tied head, as GPT-2's */
    m.wte_type = type;
    m.ln_f = norm;
    float *wpe;
    CHECK(cudaMalloc(&wpe, static_cast<size_t>(s.n_rows) * s.d * 4));
    CHECK(cudaMemset(wpe, 0, static_cast<size_t>(s.n_rows) * s.d * 4));
    to_free.push_back(wpe);
    m.wpe = wpe;
    m.layers = layers.data();
    bytes += weight_bytes(type, s.d, s.n_vocab);
    CHECK(cudaDeviceSynchronize());

    char err[512];
    tnn_cuda_decoder *dec = nullptr;
    if (tnn_cuda_decoder_new(&m, TNN_DEC_MAX_BATCH, &dec, err, sizeof err) != 0) {
        printf("  decoder_new failed: %s\n", err);
        ++g_failures;
        return;
    }
    if (g_no_pdl) dec->pdl = false;
    printf(" timing %s %s (weights %.1f MB a step, PDL %s):\n", s.name, type ? "q8_0" : "f16", bytes / 1e6,
           dec->pdl ? "on" : "off");
    struct Run {
        int nb, pos;
        bool sample;
    };
    const Run runs[] = {{1, 200, false},  {1, 1000, false}, {1, 200, true},   {2, 200, false}, {4, 200, false},
                        {8, 200, false},  {8, 1000, false}, {16, 200, false}, {32, 200, false}, {32, 200, true}};
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    for (const Run &r : runs) {
        if (g_profile && (r.nb != 1 || r.pos != 200 || r.sample)) continue;
        std::vector<int32_t> tok(r.nb, 11), pos(r.nb, r.pos), sl(r.nb), ids(r.nb);
        std::vector<tnn_sampling_params> sp(r.nb, tnn_sampling_params{0.8f, 40, 0.95f, 0.3f});
        for (int b = 0; b < r.nb; ++b) sl[b] = b;
        std::vector<double> step_ms, graph_ms;
        for (int i = 0; i < (g_profile ? 13 : 210); ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            if (tnn_cuda_decoder_step(dec, r.nb, tok.data(), pos.data(), sl.data(), r.sample ? sp.data() : nullptr,
                                      ids.data(), nullptr, err, sizeof err) != 0) {
                printf("  step failed: %s\n", err);
                ++g_failures;
                break;
            }
            const auto t1 = std::chrono::steady_clock::now();
            if (i >= 10) step_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
        int bi = 0;
        while (dec->bucket_len[bi] < r.pos + 1) ++bi;
        cudaGraphExec_t g = dec->graphs[r.nb - 1][bi][r.sample ? 1 : 0];
        for (int i = 0; i < (g_profile ? 1 : 200) && g; ++i) {
            CHECK(cudaEventRecord(e0, dec->stream));
            CHECK(cudaGraphLaunch(g, dec->stream));
            CHECK(cudaEventRecord(e1, dec->stream));
            CHECK(cudaEventSynchronize(e1));
            float ms;
            CHECK(cudaEventElapsedTime(&ms, e0, e1));
            graph_ms.push_back(ms);
        }
        if (step_ms.empty() || graph_ms.empty()) continue;
        std::sort(step_ms.begin(), step_ms.end());
        std::sort(graph_ms.begin(), graph_ms.end());
        const double sm = step_ms[step_ms.size() / 2], gm = graph_ms[graph_ms.size() / 2];
        printf("  batch %d pos %4d %-7s  step %.4f ms (%.4f ms/token)  graph %.4f ms  weights %.0f GB/s\n", r.nb,
               r.pos, r.sample ? "sample" : "greedy", sm, sm / r.nb, gm, bytes / (gm * 1e-3) / 1e9);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    tnn_cuda_decoder_free(dec);
    for (void *p : to_free) cudaFree(p);
}

int main(int argc, char **argv) {
    bool quick = false;
    for (int i = 1; i < argc; ++i) {
        quick |= std::string(argv[i]) == "--quick";
        g_profile |= std::string(argv[i]) == "--profile";
        g_no_pdl |= std::string(argv[i]) == "--no-pdl";
    }
    if (g_profile) {
        cudaDeviceProp p;
        CHECK(cudaGetDeviceProperties(&p, 0));
        printf("device %s, profile: gpt2 f16, batch 1\n", p.name);
        time_model({"gpt2", 12, 768, 12, 3072, 50257, 1024, TNN_DEC_MAX_BATCH}, 0);
        return g_failures ? 1 : 0;
    }
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, sampling %s\n", prop.name, prop.multiProcessorCount,
#ifdef TNN_SAMPLING_STUB
           "stub (argmax)"
#else
           "sampling_kernels.cuh"
#endif
    );
    std::mt19937 rng(7);

    printf("(a) fast kernels vs reference kernels\n");
    {
        tnn_cuda_decoder *shell = gemv_shell(prop.multiProcessorCount, 0);
        struct IO {
            int n_in, n_out;
        };
        const std::vector<IO> shapes =
            quick ? std::vector<IO>{{128, 384}, {512, 128}, {1600, 100}}
                  : std::vector<IO>{{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}, {1600, 4800}, {6400, 1600}, {768, 50257}};
        for (int type = 0; type < 2; ++type)
            for (int nb : {1, 3, 8, 13, 32})
                for (const IO &io : shapes) test_gemv(shell, type, nb, io.n_in, io.n_out, rng);
        for (int type = 0; type < 2; ++type)
            for (const IO &io : shapes) test_gemv_invariance(shell, type, io.n_in, io.n_out, rng);
        cudaFree(shell->partial);
        cudaFree(shell->counters);
        shell->partial = nullptr;
        shell->counters = nullptr;
        shell->stream = nullptr;
        delete shell;
        test_attention(1, 2, 300, {0}, rng);
        test_attention(3, 2, 300, {17, 299, 64}, rng);
        test_attention(8, 12, 1024, {1023, 0, 63, 64, 500, 255, 256, 777}, rng);
        if (!quick) test_attention(8, 25, 1024, {1000, 3, 900, 64, 128, 1023, 511, 512}, rng);
        std::vector<int> pos32(TNN_DEC_MAX_BATCH);
        for (int b = 0; b < TNN_DEC_MAX_BATCH; ++b) pos32[b] = (b * 97 + 5) % (quick ? 300 : 1024);
        test_attention(TNN_DEC_MAX_BATCH, quick ? 2 : 12, quick ? 300 : 1024, pos32, rng);
    }

    printf("(b, c) whole steps and the error contract\n");
    const Shape tiny = {"tiny", 2, 128, 2, 512, 1000, 600, TNN_DEC_MAX_BATCH};
    const Shape small = {"gpt2", 12, 768, 12, 3072, 50257, 1024, TNN_DEC_MAX_BATCH};
    for (int type = 0; type < 2; ++type) test_steps(tiny, type, true);
    if (!quick)
        for (int type = 0; type < 2; ++type) test_steps(small, type, true);

    if (!quick) {
        printf("(d) timing\n");
        const Shape xl = {"gpt2-xl", 48, 1600, 25, 6400, 50257, 1024, TNN_DEC_MAX_BATCH};
        for (int type = 0; type < 2; ++type) time_model(small, type);
        for (int type = 0; type < 2; ++type) time_model(xl, type);
    }
    printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
    return g_failures ? 1 : 0;
}
