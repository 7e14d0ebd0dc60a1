/*
 * decoder.c - tnn_decoder_*: our fused CUDA decode step (native/cuda/decode.h)
 * over a CUDA session's persistent tensors.
 *
 * The shim's part is what the kernels cannot check: that every handle is a
 * live persistent tensor of this session with memory on the device, of the
 * type and shape the layout in decode.h says. It then hands the tensors'
 * device pointers to tnn_cuda_decoder_new. The weights are the file's: each
 * LayerNorm's gamma and beta are tensors of their own, which the kernels apply,
 * and the output head is wte (tied). A decoder belongs to its root
 * session, which frees it before the memory it reads (session.c).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tinynn_internal.h"

#ifdef TNN_HAVE_CUDA_KERNELS
#include "cuda/decode.h"
#endif

/* ln_1_g, ln_1_b, w_qkv, b_qkv, w_o, b_o, ln_2_g, ln_2_b, w_fc, b_fc, w_proj, b_proj, kv */
#define LAYER_TENSORS 13
enum { L_LN1_G, L_LN1_B, L_QKV, L_QKV_B, L_O, L_O_B, L_LN2_G, L_LN2_B, L_FC, L_FC_B, L_PROJ, L_PROJ_B, L_KV };

struct tnn_decoder {
    tnn_session *root;
    struct tnn_decoder *next; /* the root's other decoders */
    int max_batch, n_vocab;
#ifdef TNN_HAVE_CUDA_KERNELS
    tnn_cuda_decoder *cuda;
#endif
};

/* ---- the registry: a handle from Python is used only if it is live ---------- */

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static tnn_decoder **live = NULL;
static size_t n_live = 0;

static bool live_remove(tnn_decoder *d) {
    bool found = false;
    pthread_mutex_lock(&live_lock);
    for (size_t i = 0; i < n_live; i++) {
        if (live[i] == d) {
            live[i] = live[--n_live];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&live_lock);
    return found;
}

static bool live_has(const tnn_decoder *d) {
    bool found = false;
    pthread_mutex_lock(&live_lock);
    for (size_t i = 0; i < n_live && !found; i++) found = live[i] == d;
    pthread_mutex_unlock(&live_lock);
    return found;
}

static void decoder_destroy(tnn_decoder *d) {
#ifdef TNN_HAVE_CUDA_KERNELS
    tnn_cuda_decoder_free(d->cuda);
#endif
    free(d);
}

void free_session_decoders(tnn_session *root) {
    tnn_decoder *d = root->decoders;
    while (d) {
        tnn_decoder *next = d->next;
        live_remove(d);
        decoder_destroy(d);
        d = next;
    }
    root->decoders = NULL;
}

#ifdef TNN_HAVE_CUDA_KERNELS

static size_t cap_live = 0;

static bool live_add(tnn_decoder *d) {
    pthread_mutex_lock(&live_lock);
    if (n_live == cap_live) {
        size_t cap = cap_live ? 2 * cap_live : 16;
        tnn_decoder **grown = realloc(live, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&live_lock);
            return false;
        }
        live = grown;
        cap_live = cap;
    }
    live[n_live++] = d;
    pthread_mutex_unlock(&live_lock);
    return true;
}

/* ---- checks ------------------------------------------------------------------ */

/* A live persistent tensor of sess with device memory, of type f32 (or, with
 * weight, f16 / q8_0) and shape [ne0, ne1] (ne1 0: a vector [ne0]). */
static bool want_param(tnn_session *sess, tnn_tensor *t, const char *what, bool weight,
                       int64_t ne0, int64_t ne1) {
    const char *func = "tnn_decoder_new";
    if (!check_tensor(sess, t, func, what)) return false;
    if (!is_persistent(sess, t) || !t->data || t->view_src) {
        fail(TNN_EINVAL, func, "%s must be a persistent tensor with memory (after "
                               "tnn_finalize_weights), got %s", what, SHAPE(t));
        return false;
    }
    bool type_ok = weight ? t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_Q8_0
                          : t->type == GGML_TYPE_F32;
    if (!type_ok) {
        fail(TNN_ESHAPE, func, "%s must be %s, got %s", what, weight ? "f16 or q8_0" : "f32",
             SHAPE(t));
        return false;
    }
    int64_t want1 = ne1 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want1 || t->ne[2] != 1 || t->ne[3] != 1 ||
        !ggml_is_contiguous(t)) {
        fail(TNN_ESHAPE, func, "%s must be a contiguous [%lld, %lld], got %s", what,
             (long long)ne0, (long long)want1, SHAPE(t));
        return false;
    }
    return true;
}

static int weight_kind(const struct ggml_tensor *t) {
    return t->type == GGML_TYPE_Q8_0 ? TNN_CUDA_W_Q8_0 : TNN_CUDA_W_F16;
}

static bool linear(tnn_session *sess, tnn_tensor *w, tnn_tensor *b, const char *what,
                   int64_t n_in, int64_t n_out, tnn_cuda_linear *out) {
    char name[64];
    snprintf(name, sizeof name, "%s weight", what);
    if (!want_param(sess, w, name, true, n_in, n_out)) return false;
    if (b) {
        snprintf(name, sizeof name, "%s bias", what);
        if (!want_param(sess, b, name, false, n_out, 0)) return false;
    }
    *out = (tnn_cuda_linear){w->data, b ? (const float *)b->data : NULL, weight_kind(w),
                             (int32_t)n_in, (int32_t)n_out};
    return true;
}

/* A LayerNorm's gamma and beta: live persistent f32 [d] tensors of sess. */
static bool norm(tnn_session *sess, tnn_tensor *g, tnn_tensor *b, const char *what, int64_t d,
                 tnn_cuda_norm *out) {
    char name[64];
    snprintf(name, sizeof name, "%s gamma", what);
    if (!want_param(sess, g, name, false, d, 0)) return false;
    snprintf(name, sizeof name, "%s beta", what);
    if (!want_param(sess, b, name, false, d, 0)) return false;
    *out = (tnn_cuda_norm){(const float *)g->data, (const float *)b->data};
    return true;
}

#endif /* TNN_HAVE_CUDA_KERNELS */

/* ---- the API ----------------------------------------------------------------- */

tnn_decoder *tnn_decoder_new(tnn_session *sess, int n_head, double eps, int max_batch,
                             tnn_tensor *wte, tnn_tensor *wpe, tnn_tensor *ln_f_g,
                             tnn_tensor *ln_f_b, tnn_tensor *const *layers, int n_layer) {
    const char *func = __func__;
    CHECK_SESS(sess, NULL);
#ifndef TNN_HAVE_CUDA_KERNELS
    (void)n_head, (void)eps, (void)max_batch, (void)wte, (void)wpe, (void)ln_f_g,
        (void)ln_f_b, (void)layers, (void)n_layer;
    fail(TNN_EBACKEND, func, "this library was built without our CUDA kernels (build with "
                             "-DGGML_CUDA=ON)");
    return NULL;
#else
    if (!sess->is_cuda) {
        fail(TNN_EBACKEND, func, "the fused decode step needs a CUDA session");
        return NULL;
    }
    tnn_session *root = sess->root;
    if (!root->finalized) {
        fail(TNN_ESTATE, func, "the session's weights are not finalized");
        return NULL;
    }
    if (!layers || n_layer < 1 || n_layer > 4096) {
        fail(TNN_EINVAL, func, "n_layer=%d (layers %p), expected 1..4096 layers", n_layer,
             (void *)layers);
        return NULL;
    }
    if (max_batch < 1 || max_batch > TNN_DECODER_MAX_BATCH) {
        fail(TNN_EINVAL, func, "max_batch=%d, expected 1..%d", max_batch, TNN_DECODER_MAX_BATCH);
        return NULL;
    }
    if (!(eps > 0 && eps < 1)) {
        fail(TNN_EINVAL, func, "eps=%g, expected a small positive number", eps);
        return NULL;
    }
    if (!check_tensor(sess, wte, func, "wte") || !check_tensor(sess, wpe, func, "wpe")) return NULL;
    const int64_t d = wte->ne[0], n_vocab = wte->ne[1], n_rows = wpe->ne[1];
    if (n_head < 1 || d % n_head || d > 65536 || n_vocab > INT32_MAX || n_rows > INT32_MAX) {
        fail(TNN_ESHAPE, func, "n_embd=%lld, n_head=%d, vocab=%lld, rows=%lld do not fit",
             (long long)d, n_head, (long long)n_vocab, (long long)n_rows);
        return NULL;
    }
    tnn_cuda_layer *cl = calloc((size_t)n_layer, sizeof *cl);
    if (!cl) {
        fail(TNN_ENOMEM, func, "out of host memory");
        return NULL;
    }
    tnn_cuda_model m = {0};
    bool ok = want_param(sess, wte, "wte", true, d, n_vocab) &&
              want_param(sess, wpe, "wpe", false, d, n_rows) &&
              norm(sess, ln_f_g, ln_f_b, "ln_f", d, &m.ln_f);
    int64_t d_ff = 0, n_slots = 0;
    for (int il = 0; ok && il < n_layer; il++) {
        tnn_tensor *const *t = layers + (size_t)il * LAYER_TENSORS;
        char what[32];
        snprintf(what, sizeof what, "layer %d fc", il);
        ok = check_tensor(sess, t[L_FC], func, what);
        if (!ok) break;
        if (il == 0) d_ff = t[L_FC]->ne[1];
        ok = check_tensor(sess, t[L_KV], func, "kv cache");
        if (!ok) break;
        tnn_tensor *kv = t[L_KV];
        if (il == 0) n_slots = n_rows ? kv->ne[1] / n_rows : 0;
        if (n_slots < 1 || kv->ne[1] != n_slots * n_rows || kv->type != GGML_TYPE_F16 ||
            kv->ne[0] != 2 * d || !is_persistent(sess, kv) || !ggml_is_contiguous(kv) ||
            !kv->data) {
            fail(TNN_ESHAPE, func, "layer %d kv cache must be a persistent f16 [%lld, %lld * "
                 "n_slots], got %s", il, (long long)(2 * d), (long long)n_rows, SHAPE(kv));
            ok = false;
            break;
        }
        snprintf(what, sizeof what, "layer %d ln_1", il);
        ok = ok && norm(sess, t[L_LN1_G], t[L_LN1_B], what, d, &cl[il].ln_1);
        snprintf(what, sizeof what, "layer %d qkv", il);
        ok = ok && linear(sess, t[L_QKV], t[L_QKV_B], what, d, 3 * d, &cl[il].qkv);
        snprintf(what, sizeof what, "layer %d o", il);
        ok = ok && linear(sess, t[L_O], t[L_O_B], what, d, d, &cl[il].o);
        snprintf(what, sizeof what, "layer %d ln_2", il);
        ok = ok && norm(sess, t[L_LN2_G], t[L_LN2_B], what, d, &cl[il].ln_2);
        snprintf(what, sizeof what, "layer %d fc", il);
        ok = ok && linear(sess, t[L_FC], t[L_FC_B], what, d, d_ff, &cl[il].fc);
        snprintf(what, sizeof what, "layer %d proj", il);
        ok = ok && linear(sess, t[L_PROJ], t[L_PROJ_B], what, d_ff, d, &cl[il].proj);
        cl[il].kv = kv->data;
    }
    if (!ok) {
        free(cl);
        return NULL;
    }
    m.n_layer = n_layer;
    m.n_embd = (int32_t)d;
    m.n_head = n_head;
    m.d_ff = (int32_t)d_ff;
    m.n_vocab = (int32_t)n_vocab;
    m.n_rows = (int32_t)n_rows;
    m.n_slots = (int32_t)n_slots;
    m.eps = (float)eps;
    m.wte = wte->data;
    m.wte_type = weight_kind(wte);
    m.wpe = (const float *)wpe->data;
    m.layers = cl;

    tnn_decoder *dec = calloc(1, sizeof *dec);
    if (!dec) {
        free(cl);
        fail(TNN_ENOMEM, func, "out of host memory");
        return NULL;
    }
    char err[512] = {0};
    int status = tnn_cuda_decoder_new(&m, max_batch, &dec->cuda, err, sizeof err);
    free(cl); /* copied by tnn_cuda_decoder_new */
    if (status != TNN_OK) {
        free(dec);
        fail(status, func, "%s", err);
        return NULL;
    }
    dec->root = root;
    dec->max_batch = max_batch;
    dec->n_vocab = (int)n_vocab;
    if (!live_add(dec)) {
        decoder_destroy(dec);
        fail(TNN_ENOMEM, func, "out of host memory");
        return NULL;
    }
    dec->next = root->decoders;
    root->decoders = dec;
    return dec;
#endif
}

int tnn_decoder_step(tnn_decoder *dec, int n_seq, const int32_t *tokens,
                     const int32_t *positions, const int32_t *slots, const void *sampling,
                     int32_t *out_ids, float *out_logits) {
    if (!dec || !live_has(dec)) {
        return fail(TNN_EINVAL, __func__, "decoder %p is not live (freed or foreign)",
                    (void *)dec);
    }
    if (n_seq < 1 || n_seq > dec->max_batch) {
        return fail(TNN_EINVAL, __func__, "n_seq=%d, expected 1..%d (max_batch)", n_seq,
                    dec->max_batch);
    }
    if (!tokens || !positions || !slots || !out_ids) {
        return fail(TNN_EINVAL, __func__, "tokens, positions, slots and out_ids must not be NULL");
    }
#ifdef TNN_HAVE_CUDA_KERNELS
    char err[512] = {0};
    int status = tnn_cuda_decoder_step(dec->cuda, n_seq, tokens, positions, slots,
                                       (const tnn_sampling_params *)sampling, out_ids,
                                       out_logits, err, sizeof err);
    return status == TNN_OK ? TNN_OK : fail(status, __func__, "%s", err);
#else
    (void)sampling, (void)out_logits;
    return fail(TNN_EBACKEND, __func__, "built without our CUDA kernels");
#endif
}

void tnn_decoder_free(tnn_decoder *dec) {
    if (!dec || !live_remove(dec)) return;
    tnn_decoder **link = &dec->root->decoders;
    while (*link && *link != dec) link = &(*link)->next;
    if (*link) *link = dec->next;
    decoder_destroy(dec);
}
