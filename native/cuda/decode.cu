/* decode.cu - the fused GPT-2 decode step (decode.h): per layer five kernels
 *   1. QKV GEMV   prologue ln_1(x) (layer 0: of wte[token] + wpe[pos], also
 *                 writing x); epilogue bias, q, K|V into the cache
 *   2. attention  over cache rows 0..p, split by 64 positions, combined
 *   3. O GEMV     epilogue bias + residual: x += W_o a + b_o
 *   4. FC GEMV    prologue ln_2(x); epilogue bias + GELU
 *   5. proj GEMV  epilogue bias + residual: x += W_proj u + b_proj
 * (a prologue's LayerNorm applies the file's gamma and beta, embed_norm.cuh)
 * then the head GEMV over wte itself (tied; prologue ln_f(x)) and the token
 * choice (sampling_kernels.cuh): 5 * n_layer + 2 kernels a token. Consecutive
 * kernels overlap through programmatic dependent launch: a GEMV's first weight
 * loads go out while the kernel before it finishes.
 *
 * One CUDA graph per (n_seq, context bucket, sampling or greedy), captured at
 * its first use; a step is one upload of the pinned tnn_step_io, one graph
 * launch, one download of the ids (and of the logits when asked), one sync. */
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <vector>

#include "attention.cuh"
#include "common.cuh"
#include "decode.h"
#include "gemv.cuh"
#include "host_status.cuh"
#include "sampling_kernels.cuh"

namespace {

constexpr int MAX_BUCKETS = 8;

int cuda_fail(char *err, size_t err_len, cudaError_t e, const char *what) {
    return cuda_fail_as("tnn_cuda_decoder", err, err_len, e, what);
}

} // namespace

#define CK(call)                                                                                                       \
    do {                                                                                                               \
        const cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) return cuda_fail(err, err_len, e_, #call);                                              \
    } while (0)

struct tnn_cuda_decoder {
    tnn_cuda_model m;
    std::vector<tnn_cuda_layer> layers;
    tnn_cuda_linear head = {}; /* wte read as the output head: d -> n_vocab, no bias */
    int max_batch = 0, n_sm = 0, device = 0;
    bool pdl = true; /* cleared if a capture with PDL edges fails */
    int n_buckets = 0, bucket_len[MAX_BUCKETS] = {};
    cudaStream_t stream = nullptr;
    /* device scratch */
    float *x = nullptr, *q = nullptr, *att = nullptr, *u = nullptr, *logits = nullptr;
    float *partial = nullptr, *attn_part = nullptr;
    int *counters = nullptr, *attn_counters = nullptr;
    void *sampling_scratch = nullptr;
    tnn_step_io *io_dev = nullptr;
    int32_t *ids_dev = nullptr;
    /* pinned host */
    tnn_step_io *io_host = nullptr;
    int32_t *ids_host = nullptr;
    cudaGraphExec_t graphs[TNN_DEC_MAX_BATCH][MAX_BUCKETS][2] = {};
};

namespace {

using GemvKernel = void (*)(GemvArgs);

template <int NB>
GemvKernel f16_kernel() {
    return gemv_f16_kernel<NB, gemv_rows_per_warp(TNN_CUDA_W_F16, NB)>;
}

/* The kernel of a step of nb vectors: 1..8 vectors a block (more run in groups of 8). */
GemvKernel gemv_kernel(int type, int nb) {
    nb = std::min(nb, static_cast<int>(TNN_GEMV_GROUP));
    static const GemvKernel f16[TNN_GEMV_GROUP] = {f16_kernel<1>(), f16_kernel<2>(), f16_kernel<3>(),
                                                      f16_kernel<4>(), f16_kernel<5>(), f16_kernel<6>(),
                                                      f16_kernel<7>(), f16_kernel<8>()};
    static const GemvKernel q8[TNN_GEMV_GROUP] = {gemv_q8_kernel<1>, gemv_q8_kernel<2>, gemv_q8_kernel<3>,
                                                     gemv_q8_kernel<4>, gemv_q8_kernel<5>, gemv_q8_kernel<6>,
                                                     gemv_q8_kernel<7>, gemv_q8_kernel<8>};
    return type == TNN_CUDA_W_F16 ? f16[nb - 1] : q8[nb - 1];
}

/* A launch, with the PDL attribute when asked: the kernel may then start
 * while the one before it in the stream is still running (see common.cuh). */
template <typename Arg>
cudaError_t launch(void (*kernel)(Arg), dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl, Arg arg) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = pdl ? attr : nullptr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, arg);
}

/* The products of one step, each with its launch shape (for scratch sizing). */
void for_each_linear(const tnn_cuda_decoder *dec, void (*f)(const tnn_cuda_linear &, void *), void *ctx) {
    for (const tnn_cuda_layer &l : dec->layers) {
        f(l.qkv, ctx);
        f(l.o, ctx);
        f(l.fc, ctx);
        f(l.proj, ctx);
    }
    f(dec->head, ctx);
}

cudaError_t launch_gemv(const tnn_cuda_decoder *dec, const tnn_cuda_linear &lin, int nb, const InputArgs &in, int epi,
                        float *out, __half *kv, bool pdl) {
    const GemvPlan p = gemv_plan(lin.type, nb, lin.n_in, lin.n_out, dec->n_sm);
    GemvArgs a = {};
    a.w = lin.w;
    a.bias = lin.b;
    a.n_out = lin.n_out;
    a.tiles = p.tiles;
    a.splits = p.splits;
    a.nb = nb;
    a.slice = p.slice;
    a.epi = epi;
    a.out = out;
    a.kv = kv;
    a.d = dec->m.n_embd;
    a.n_rows = dec->m.n_rows;
    a.partial = dec->partial;
    a.counters = dec->counters;
    a.x = in;
    return launch(gemv_kernel(lin.type, nb), dim3(p.tiles * p.splits, p.groups), dim3(TNN_DEC_THREADS), p.smem,
                  dec->stream, pdl, a);
}

int n_split_of(int bucket) { return (bucket + ATTN_CHUNK - 1) / ATTN_CHUNK; }

/* in, layer-normalized by `n` (gamma, beta) in the prologue */
InputArgs with_norm(InputArgs in, const tnn_cuda_norm &n) {
    in.gamma = n.gamma;
    in.beta = n.beta;
    return in;
}

/* Every kernel of one step, in order, on dec->stream (captured by the caller). */
cudaError_t enqueue_step(const tnn_cuda_decoder *dec, int nb, int bucket, bool sampling, bool pdl) {
    (void)sampling; /* greedy steps carry temperature 0 in io->params */
    const tnn_cuda_model &m = dec->m;
    const int d = m.n_embd;
    InputArgs norm_x = {};
    norm_x.pro = PRO_NORM;
    norm_x.n_in = d;
    norm_x.in = dec->x;
    norm_x.eps = m.eps;
    norm_x.io = dec->io_dev;
    InputArgs embed = norm_x;
    embed.pro = PRO_EMBED_NORM;
    embed.in = nullptr;
    embed.wte = m.wte;
    embed.wte_type = m.wte_type;
    embed.wpe = m.wpe;
    embed.x_out = dec->x;
    InputArgs att = {};
    att.pro = PRO_PLAIN;
    att.n_in = d;
    att.in = dec->att;
    att.io = dec->io_dev;
    InputArgs u = att;
    u.n_in = m.d_ff;
    u.in = dec->u;
    AttnArgs aa = {};
    aa.q = dec->q;
    aa.out = dec->att;
    aa.part = dec->attn_part;
    aa.counters = dec->attn_counters;
    aa.io = dec->io_dev;
    aa.d = d;
    aa.n_head = m.n_head;
    aa.n_rows = m.n_rows;
    aa.n_split = n_split_of(bucket);

    cudaError_t e = cudaSuccess;
    for (int il = 0; il < m.n_layer && e == cudaSuccess; ++il) {
        const tnn_cuda_layer &L = dec->layers[il];
        __half *kv = static_cast<__half *>(L.kv);
        /* the first kernel of the graph follows the upload: an ordinary launch */
        e = launch_gemv(dec, L.qkv, nb, with_norm(il == 0 ? embed : norm_x, L.ln_1), EPI_QKV, dec->q, kv,
                        pdl && il > 0);
        if (e != cudaSuccess) break;
        aa.kv = kv;
        e = launch(attention_kernel, dim3(aa.n_split, m.n_head, nb), dim3(ATTN_THREADS), 0, dec->stream, pdl, aa);
        if (e != cudaSuccess) break;
        e = launch_gemv(dec, L.o, nb, att, EPI_RESID, dec->x, nullptr, pdl);
        if (e != cudaSuccess) break;
        e = launch_gemv(dec, L.fc, nb, with_norm(norm_x, L.ln_2), EPI_GELU, dec->u, nullptr, pdl);
        if (e != cudaSuccess) break;
        e = launch_gemv(dec, L.proj, nb, u, EPI_RESID, dec->x, nullptr, pdl);
    }
    if (e == cudaSuccess)
        e = launch_gemv(dec, dec->head, nb, with_norm(norm_x, m.ln_f), EPI_STORE, dec->logits, nullptr, pdl);
    if (e == cudaSuccess)
        e = tnn_sampling_launch(dec->logits, nb, m.n_vocab, &dec->io_dev->params[0], dec->ids_dev,
                                dec->sampling_scratch, dec->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    return e;
}

/* Captures the graph of (nb, bucket index, sampling) into dec->graphs. With
 * PDL first; if the driver refuses PDL edges in a graph, once more without
 * (and without for good). */
int capture(tnn_cuda_decoder *dec, int nb, int bi, int sampling, char *err, size_t err_len) {
    for (;;) {
        const bool pdl = dec->pdl;
        CK(cudaStreamBeginCapture(dec->stream, cudaStreamCaptureModeThreadLocal));
        const cudaError_t e = enqueue_step(dec, nb, dec->bucket_len[bi], sampling != 0, pdl);
        cudaGraph_t g = nullptr;
        const cudaError_t e_end = cudaStreamEndCapture(dec->stream, &g);
        cudaError_t e_inst = cudaErrorUnknown;
        cudaGraphExec_t exec = nullptr;
        if (e == cudaSuccess && e_end == cudaSuccess) e_inst = cudaGraphInstantiate(&exec, g, 0);
        if (g) cudaGraphDestroy(g);
        if (e == cudaSuccess && e_end == cudaSuccess && e_inst == cudaSuccess) {
            dec->graphs[nb - 1][bi][sampling] = exec;
            return ST_OK;
        }
        const cudaError_t first = e != cudaSuccess ? e : (e_end != cudaSuccess ? e_end : e_inst);
        cudaGetLastError();
        if (!pdl) return cuda_fail(err, err_len, first, "capturing the decode step");
        dec->pdl = false;
    }
}

bool aligned(const void *p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

/* il: the layer, or -1 for ln_f. The prologue reads gamma and beta as float4. */
int check_norm(const tnn_cuda_norm &n, const char *name, int il, char *err, size_t err_len) {
    if (!n.gamma || !n.beta || !aligned(n.gamma, 16) || !aligned(n.beta, 16))
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_decoder_new: layer %d %s: gamma and beta must be 16-byte aligned device pointers", il,
                    name);
    return ST_OK;
}

int check_linear(const tnn_cuda_linear &l, int n_in, int n_out, const char *name, int il, char *err, size_t err_len) {
    if (!l.w) return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: layer %d %s: weight is NULL", il, name);
    if (l.type != TNN_CUDA_W_F16 && l.type != TNN_CUDA_W_Q8_0)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: layer %d %s: type %d, expected f16 (0) or q8_0 (1)",
                    il, name, l.type);
    if (l.n_in != n_in || l.n_out != n_out)
        return fail(err, err_len, ST_ESHAPE, "tnn_cuda_decoder_new: layer %d %s: %d -> %d, expected %d -> %d", il,
                    name, l.n_in, l.n_out, n_in, n_out);
    if (l.type == TNN_CUDA_W_Q8_0 && n_in % Q8_BLOCK)
        return fail(err, err_len, ST_ESHAPE, "tnn_cuda_decoder_new: layer %d %s: q8_0 needs n_in %% 32 == 0, got %d",
                    il, name, n_in);
    if (!aligned(l.w, 16) || (l.b && !aligned(l.b, 4)))
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_decoder_new: layer %d %s: weight must be 16-byte aligned, bias 4-byte aligned", il, name);
    return ST_OK;
}

int check_model(const tnn_cuda_model *m, int max_batch, char *err, size_t err_len) {
    if (!m) return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: model is NULL");
    if (max_batch < 1 || max_batch > TNN_DEC_MAX_BATCH)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: max_batch %d, expected 1..%d", max_batch,
                    TNN_DEC_MAX_BATCH);
    if (m->n_layer < 1 || m->n_head < 1 || m->n_embd != m->n_head * TNN_DEC_HEAD_DIM)
        return fail(err, err_len, ST_ESHAPE,
                    "tnn_cuda_decoder_new: n_layer %d, n_head %d, n_embd %d: expected n_layer >= 1 and "
                    "n_embd = 64 * n_head",
                    m->n_layer, m->n_head, m->n_embd);
    if (m->d_ff < 32 || m->d_ff % 32 || m->n_vocab < 1 || m->n_rows < 1 || m->n_slots < 1)
        return fail(err, err_len, ST_ESHAPE,
                    "tnn_cuda_decoder_new: d_ff %d (a multiple of 32), n_vocab %d, n_rows %d, n_slots %d "
                    "(each >= 1)",
                    m->d_ff, m->n_vocab, m->n_rows, m->n_slots);
    if (!(m->eps > 0.0f) || !std::isfinite(m->eps))
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: eps %g, expected a finite value > 0", m->eps);
    if (!m->wte || !m->wpe || !m->layers)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: wte, wpe and layers must not be NULL");
    if (m->wte_type != TNN_CUDA_W_F16 && m->wte_type != TNN_CUDA_W_Q8_0)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: wte type %d, expected f16 (0) or q8_0 (1)",
                    m->wte_type);
    if (!aligned(m->wte, 16) || !aligned(m->wpe, 16))
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: wte and wpe must be 16-byte aligned");
    const int d = m->n_embd;
    for (int il = 0; il < m->n_layer; ++il) {
        const tnn_cuda_layer &l = m->layers[il];
        int st;
        if ((st = check_norm(l.ln_1, "ln_1", il, err, err_len)) || (st = check_norm(l.ln_2, "ln_2", il, err, err_len)) ||
            (st = check_linear(l.qkv, d, 3 * d, "qkv", il, err, err_len)) ||
            (st = check_linear(l.o, d, d, "o", il, err, err_len)) ||
            (st = check_linear(l.fc, d, m->d_ff, "fc", il, err, err_len)) ||
            (st = check_linear(l.proj, m->d_ff, d, "proj", il, err, err_len)))
            return st;
        if (!l.kv || !aligned(l.kv, 16))
            return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: layer %d kv: NULL or not 16-byte aligned", il);
    }
    const tnn_cuda_linear head = {m->wte, nullptr, m->wte_type, d, m->n_vocab};
    const int st = check_linear(head, d, m->n_vocab, "head (wte)", -1, err, err_len);
    return st ? st : check_norm(m->ln_f, "ln_f", -1, err, err_len);
}

struct ScratchNeeds {
    const tnn_cuda_decoder *dec;
    size_t partial_floats, counters, smem[2][TNN_GEMV_GROUP]; /* smem by kernel: 1..8 vectors */
};

void add_needs(const tnn_cuda_linear &l, void *ctx) {
    ScratchNeeds &n = *static_cast<ScratchNeeds *>(ctx);
    for (int nb = 1; nb <= n.dec->max_batch; ++nb) {
        const GemvPlan p = gemv_plan(l.type, nb, l.n_in, l.n_out, n.dec->n_sm);
        if (p.splits > 1) {
            n.partial_floats = std::max(n.partial_floats, static_cast<size_t>(p.splits) * nb * l.n_out);
            n.counters = std::max(n.counters, static_cast<size_t>(p.groups) * p.tiles);
        }
        const int k = std::min(nb, static_cast<int>(TNN_GEMV_GROUP)) - 1;
        n.smem[l.type][k] = std::max(n.smem[l.type][k], p.smem);
    }
}

int setup(tnn_cuda_decoder *dec, char *err, size_t err_len) {
    const tnn_cuda_model &m = dec->m;
    CK(cudaGetDevice(&dec->device));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dec->device));
    if (prop.major < 9)
        return fail(err, err_len, ST_EBACKEND,
                    "tnn_cuda_decoder_new: device %s has compute capability %d.%d; these kernels are built for 9.0",
                    prop.name, prop.major, prop.minor);
    dec->n_sm = prop.multiProcessorCount;
    for (int b = 256; b < m.n_rows && dec->n_buckets < MAX_BUCKETS - 1; b *= 2) dec->bucket_len[dec->n_buckets++] = b;
    dec->bucket_len[dec->n_buckets++] = m.n_rows;

    ScratchNeeds needs = {};
    needs.dec = dec;
    for_each_linear(dec, add_needs, &needs);
    for (int t = 0; t < 2; ++t)
        for (int nb = 1; nb <= std::min(dec->max_batch, static_cast<int>(TNN_GEMV_GROUP)); ++nb) {
            const size_t s = needs.smem[t][nb - 1];
            if (s > static_cast<size_t>(prop.sharedMemPerBlockOptin))
                return fail(err, err_len, ST_ESHAPE, "tnn_cuda_decoder_new: a GEMV needs %zu bytes of shared memory",
                            s);
            if (s > 48 * 1024)
                CK(cudaFuncSetAttribute(gemv_kernel(t, nb), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(s)));
        }

    const size_t B = dec->max_batch, d = m.n_embd;
    const size_t max_split = static_cast<size_t>(n_split_of(m.n_rows));
    CK(cudaStreamCreateWithFlags(&dec->stream, cudaStreamNonBlocking));
    CK(cudaMalloc(&dec->x, B * d * sizeof(float)));
    CK(cudaMalloc(&dec->q, B * d * sizeof(float)));
    CK(cudaMalloc(&dec->att, B * d * sizeof(float)));
    CK(cudaMalloc(&dec->u, B * m.d_ff * sizeof(float)));
    CK(cudaMalloc(&dec->logits, B * m.n_vocab * sizeof(float)));
    CK(cudaMalloc(&dec->partial, std::max<size_t>(needs.partial_floats, 1) * sizeof(float)));
    CK(cudaMalloc(&dec->counters, std::max<size_t>(needs.counters, 1) * sizeof(int)));
    CK(cudaMemset(dec->counters, 0, std::max<size_t>(needs.counters, 1) * sizeof(int)));
    CK(cudaMalloc(&dec->attn_part, B * m.n_head * max_split * (2 + TNN_DEC_HEAD_DIM) * sizeof(float)));
    CK(cudaMalloc(&dec->attn_counters, B * m.n_head * sizeof(int)));
    CK(cudaMemset(dec->attn_counters, 0, B * m.n_head * sizeof(int)));
    const size_t sbytes = tnn_sampling_scratch_bytes(dec->max_batch, m.n_vocab);
    if (sbytes) CK(cudaMalloc(&dec->sampling_scratch, sbytes));
    CK(cudaMalloc(&dec->io_dev, sizeof(tnn_step_io)));
    CK(cudaMalloc(&dec->ids_dev, B * sizeof(int32_t)));
    CK(cudaMallocHost(&dec->io_host, sizeof(tnn_step_io)));
    CK(cudaMallocHost(&dec->ids_host, B * sizeof(int32_t)));
    memset(dec->io_host, 0, sizeof(tnn_step_io));
    CK(cudaDeviceSynchronize()); /* the memsets, before any capture */
    return ST_OK;
}

int check_step(const tnn_cuda_decoder *dec, int32_t n_seq, const int32_t *tokens, const int32_t *positions,
               const int32_t *slots, const tnn_sampling_params *sampling, const int32_t *out_ids, char *err,
               size_t err_len) {
    const tnn_cuda_model &m = dec->m;
    if (n_seq < 1 || n_seq > dec->max_batch)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: n_seq %d, expected 1..%d", n_seq, dec->max_batch);
    if (!tokens || !positions || !slots || !out_ids)
        return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: tokens, positions, slots and out_ids must not be NULL");
    for (int i = 0; i < n_seq; ++i) {
        if (tokens[i] < 0 || tokens[i] >= m.n_vocab)
            return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: tokens[%d] = %d, expected 0..%d", i, tokens[i],
                        m.n_vocab - 1);
        if (positions[i] < 0 || positions[i] >= m.n_rows)
            return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: positions[%d] = %d, expected 0..%d", i,
                        positions[i], m.n_rows - 1);
        if (slots[i] < 0 || slots[i] >= m.n_slots)
            return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: slots[%d] = %d, expected 0..%d", i, slots[i],
                        m.n_slots - 1);
        for (int j = 0; j < i; ++j)
            if (slots[j] == slots[i])
                return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: slots[%d] = slots[%d] = %d (must differ)",
                            j, i, slots[i]);
        if (sampling) {
            const tnn_sampling_params &s = sampling[i];
            if (!std::isfinite(s.temperature) || !std::isfinite(s.top_p) || s.top_k < 0 || !(s.uniform >= 0.0f) ||
                !(s.uniform < 1.0f))
                return fail(err, err_len, ST_EINVAL,
                            "tnn_cuda_decoder_step: sampling[%d] = {temperature %g, top_k %d, top_p %g, uniform %g}: "
                            "expected finite values, top_k >= 0, uniform in [0, 1)",
                            i, s.temperature, s.top_k, s.top_p, s.uniform);
        }
    }
    return ST_OK;
}

} // namespace

extern "C" int tnn_cuda_decoder_new(const tnn_cuda_model *model, int32_t max_batch, tnn_cuda_decoder **out, char *err,
                                    size_t err_len) {
    if (!out) return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_new: out is NULL");
    *out = nullptr;
    int st = check_model(model, max_batch, err, err_len);
    if (st) return st;
    tnn_cuda_decoder *dec = new (std::nothrow) tnn_cuda_decoder;
    if (!dec) return fail(err, err_len, ST_ENOMEM, "tnn_cuda_decoder_new: out of host memory");
    dec->m = *model;
    dec->layers.assign(model->layers, model->layers + model->n_layer);
    dec->m.layers = dec->layers.data();
    dec->head = {model->wte, nullptr, model->wte_type, model->n_embd, model->n_vocab};
    dec->max_batch = max_batch;
    st = setup(dec, err, err_len);
    if (st) {
        tnn_cuda_decoder_free(dec);
        return st;
    }
    *out = dec;
    return ST_OK;
}

extern "C" int tnn_cuda_decoder_step(tnn_cuda_decoder *dec, int32_t n_seq, const int32_t *tokens,
                                     const int32_t *positions, const int32_t *slots,
                                     const tnn_sampling_params *sampling, int32_t *out_ids, float *out_logits,
                                     char *err, size_t err_len) {
    if (!dec) return fail(err, err_len, ST_EINVAL, "tnn_cuda_decoder_step: decoder is NULL");
    int st = check_step(dec, n_seq, tokens, positions, slots, sampling, out_ids, err, err_len);
    if (st) return st;
    int device = 0;
    CK(cudaGetDevice(&device));
    if (device != dec->device) CK(cudaSetDevice(dec->device));

    int max_pos = 0;
    tnn_step_io &io = *dec->io_host;
    for (int i = 0; i < n_seq; ++i) {
        io.tokens[i] = tokens[i];
        io.positions[i] = positions[i];
        io.slots[i] = slots[i];
        io.params[i] = sampling ? sampling[i] : tnn_sampling_params{0.0f, 0, 1.0f, 0.0f};
        max_pos = std::max(max_pos, positions[i]);
    }
    int bi = 0;
    while (dec->bucket_len[bi] < max_pos + 1) ++bi; /* the last bucket is n_rows > max_pos */
    const int samp = sampling ? 1 : 0;
    if (!dec->graphs[n_seq - 1][bi][samp]) {
        st = capture(dec, n_seq, bi, samp, err, err_len);
        if (st) return st;
    }
    CK(cudaMemcpyAsync(dec->io_dev, dec->io_host, sizeof(tnn_step_io), cudaMemcpyHostToDevice, dec->stream));
    CK(cudaGraphLaunch(dec->graphs[n_seq - 1][bi][samp], dec->stream));
    CK(cudaMemcpyAsync(dec->ids_host, dec->ids_dev, n_seq * sizeof(int32_t), cudaMemcpyDeviceToHost, dec->stream));
    if (out_logits)
        CK(cudaMemcpyAsync(out_logits, dec->logits, static_cast<size_t>(n_seq) * dec->m.n_vocab * sizeof(float),
                           cudaMemcpyDeviceToHost, dec->stream));
    CK(cudaStreamSynchronize(dec->stream));
    memcpy(out_ids, dec->ids_host, n_seq * sizeof(int32_t));
    return ST_OK;
}

extern "C" void tnn_cuda_decoder_free(tnn_cuda_decoder *dec) {
    if (!dec) return;
    if (dec->stream) cudaStreamSynchronize(dec->stream);
    for (auto &by_nb : dec->graphs)
        for (auto &by_bucket : by_nb)
            for (cudaGraphExec_t g : by_bucket)
                if (g) cudaGraphExecDestroy(g);
    cudaFree(dec->x);
    cudaFree(dec->q);
    cudaFree(dec->att);
    cudaFree(dec->u);
    cudaFree(dec->logits);
    cudaFree(dec->partial);
    cudaFree(dec->counters);
    cudaFree(dec->attn_part);
    cudaFree(dec->attn_counters);
    cudaFree(dec->sampling_scratch);
    cudaFree(dec->io_dev);
    cudaFree(dec->ids_dev);
    cudaFreeHost(dec->io_host);
    cudaFreeHost(dec->ids_host);
    if (dec->stream) cudaStreamDestroy(dec->stream);
    cudaGetLastError();
    delete dec;
}
