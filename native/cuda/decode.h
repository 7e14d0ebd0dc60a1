/* Our own fused GPT-2 decode step on CUDA (native/cuda/): one token for each of
 * 1..max_batch sequences, reading the weights and the KV cache that ggml
 * allocated and the fast engine uploaded (gpt2/engine), choosing each next
 * token on the device (sampling.h), replayed as one CUDA graph a step.
 *
 * Layouts (those of gpt2/engine/upload.py and kv_cache.py; d = n_embd):
 * - a linear layer: n_out rows of n_in inputs, each row contiguous; f16, or
 *   q8_0 (per row n_in/32 blocks of 34 bytes: an f16 scale, then 32 int8);
 *   y[o] = sum_i W[o][i] x[i] + b[o].
 * - wte: n_vocab rows of d (the linear layers' types), read as the embedding
 *   and as the output head (GPT-2's is tied: logits = wte ln_f(x), no bias);
 *   wpe: f32, n_rows rows of d.
 * - LayerNorms: gamma and beta f32, d each, the file's own: a norm here is
 *   (x - mean) / sqrt(var + eps) * gamma + beta, applied in the prologue of
 *   the product that reads it (embed_norm.cuh); no weight has a norm folded in.
 * - KV cache of a layer: f16, n_slots * n_rows rows of 2d: row slot*n_rows + p
 *   holds K | V of position p of the sequence in that slot, heads side by side
 *   (head h: K at h*d_head, V at d + h*d_head).
 * - qkv output: Q | K | V, each d wide, heads side by side.
 * One step of a sequence at position p in slot s: x = wte[token] + wpe[p];
 * per layer: h = ln_1(x); qkv = W_qkv h + b; write K, V at row s*n_rows + p;
 * a = softmax(Q K[0..p]^T / sqrt(d_head)) V[0..p] per head;
 * x += W_o a + b_o; h = ln_2(x); u = gelu(W_fc h + b_fc); x += W_proj u + b_proj;
 * (gelu: GPT-2's tanh form in f32, as gpt2/reference.py and the engine's
 * tnn_gelu_exact compute it, not the erf form)
 * then logits = wte ln_f(x) and the token choice.
 */
#ifndef TNN_CUDA_DECODE_H
#define TNN_CUDA_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { TNN_CUDA_W_F16 = 0, TNN_CUDA_W_Q8_0 = 1 };

typedef struct {
    const void *w;   /* device: n_out rows of n_in */
    const float *b;  /* device: n_out, or NULL */
    int32_t type;    /* TNN_CUDA_W_F16 or TNN_CUDA_W_Q8_0 (q8_0 needs n_in % 32 == 0) */
    int32_t n_in, n_out;
} tnn_cuda_linear;

typedef struct {
    const float *gamma; /* device: n_embd, 16-byte aligned: the norm's gain */
    const float *beta;  /* device: n_embd, 16-byte aligned: its bias */
} tnn_cuda_norm;

typedef struct {
    tnn_cuda_norm ln_1;   /* before qkv */
    tnn_cuda_linear qkv;  /* d -> 3d */
    tnn_cuda_linear o;    /* d -> d */
    tnn_cuda_norm ln_2;   /* before fc */
    tnn_cuda_linear fc;   /* d -> d_ff */
    tnn_cuda_linear proj; /* d_ff -> d */
    void *kv;             /* device, f16: n_slots * n_rows rows of 2d */
} tnn_cuda_layer;

typedef struct {
    int32_t n_layer, n_embd, n_head, d_ff, n_vocab, n_rows, n_slots;
    float eps;
    const void *wte;        /* device: n_vocab rows of n_embd; the embedding and the head */
    int32_t wte_type;       /* TNN_CUDA_W_* */
    const float *wpe;       /* device: n_rows rows of n_embd */
    tnn_cuda_norm ln_f;     /* before the head */
    const tnn_cuda_layer *layers; /* host array of n_layer (copied by _new) */
} tnn_cuda_model;

typedef struct tnn_cuda_decoder tnn_cuda_decoder;

/* Checks the model description, allocates scratch for up to max_batch
 * sequences and a stream of its own. 0 on success; else a negative status and
 * a message in err. The device pointers must outlive the decoder. */
int tnn_cuda_decoder_new(const tnn_cuda_model *model, int32_t max_batch,
                         tnn_cuda_decoder **out, char *err, size_t err_len);

/* One token for each of n_seq sequences: tokens[i] at positions[i] in slot
 * slots[i] (distinct slots). sampling: n_seq parameter sets, or NULL for
 * greedy. Writes out_ids[n_seq]; out_logits, when not NULL, gets the logits
 * [n_seq][n_vocab] (f32). Validates every argument before any launch; the
 * first call for a (n_seq, context bucket, sampling or not) captures a CUDA
 * graph that later calls replay. Blocks until the ids are on the host.
 * 0 on success; else a negative status and a message in err. */
int tnn_cuda_decoder_step(tnn_cuda_decoder *dec, int32_t n_seq, const int32_t *tokens,
                          const int32_t *positions, const int32_t *slots,
                          const tnn_sampling_params *sampling, int32_t *out_ids,
                          float *out_logits, char *err, size_t err_len);

/* Frees the scratch, graphs and stream. NULL is fine. */
void tnn_cuda_decoder_free(tnn_cuda_decoder *dec);

#ifdef __cplusplus
}
#endif

#endif
