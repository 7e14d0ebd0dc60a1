/* transfers.c - bytes in and out of tensors: upload, download, and
 * tnn_compute_io (upload, compute, download with one wait). */
#include <string.h>

#include "tinynn_internal.h"

static bool has_memory(const struct ggml_tensor *t) {
    return t->data != NULL && storage_of(t)->buffer != NULL;
}

/* What every transfer needs: a live tensor with memory, of the wanted type
 * (want < 0: any), contiguous, the byte range inside it, and data. */
static int check_transfer(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                          int64_t offset, int want, const char *func) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (!check_tensor(sess, t, func, "t")) return TNN_EINVAL;
    if (want >= 0 && (int)t->type != want) {
        return fail(TNN_ESHAPE, func, "t is %s, expected %s", SHAPE(t),
                    ggml_type_name((enum ggml_type)want));
    }
    if (!has_memory(t)) {
        return fail(TNN_ESTATE, func,
                    is_persistent(sess, t) ? "t has no memory yet: call tnn_finalize_weights"
                                           : "t has no memory: realize a graph that uses it first");
    }
    if (!ggml_is_contiguous(t)) return fail(TNN_ESHAPE, func, "t %s is not contiguous", SHAPE(t));
    int64_t size = (int64_t)ggml_nbytes(t);
    if (nbytes < 0 || offset < 0 || offset > size || nbytes > size - offset) {
        return fail(TNN_ESHAPE, func,
                    "%lld bytes at offset %lld do not fit in t %s of %lld bytes", (long long)nbytes,
                    (long long)offset, SHAPE(t), (long long)size);
    }
    if (nbytes > 0 && !data) return fail(TNN_EINVAL, func, "data is NULL");
    return TNN_OK;
}

/* A transfer into t, and for an i32 tensor the index values it would write. */
static int check_upload(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                        int64_t offset, int want, const char *func) {
    int rc = check_transfer(sess, t, data, nbytes, offset, want, func);
    if (rc == TNN_OK && t->type == GGML_TYPE_I32) {
        rc = check_index_upload(sess, t, data, nbytes, offset, func);
    }
    return rc;
}

static int upload(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                  int64_t offset, int want, const char *func) {
    int rc = check_upload(sess, t, data, nbytes, offset, want, func);
    if (rc != TNN_OK) return rc;
    if (nbytes > 0) ggml_backend_tensor_set(t, data, (size_t)offset, (size_t)nbytes);
    return TNN_OK;
}

static int download(tnn_session *sess, tnn_tensor *t, void *data, int64_t nbytes, int64_t offset,
                    int want, const char *func) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (t && is_persistent(sess, t) && is_packed(sess, t)) {
        return download_packed(t, data, nbytes, offset, want, func);
    }
    int rc = check_transfer(sess, t, data, nbytes, offset, want, func);
    if (rc != TNN_OK) return rc;
    if (nbytes > 0) ggml_backend_tensor_get(t, data, (size_t)offset, (size_t)nbytes);
    return TNN_OK;
}

int tnn_upload_f32(tnn_session *sess, tnn_tensor *t, const float *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_F32, __func__);
}

int tnn_upload_i32(tnn_session *sess, tnn_tensor *t, const int32_t *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_I32, __func__);
}

int tnn_upload_f16(tnn_session *sess, tnn_tensor *t, const uint16_t *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_F16, __func__);
}

int tnn_upload_raw(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, -1, __func__);
}

int tnn_download_f32(tnn_session *sess, tnn_tensor *t, float *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_F32, __func__);
}

int tnn_download_i32(tnn_session *sess, tnn_tensor *t, int32_t *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_I32, __func__);
}

int tnn_download_f16(tnn_session *sess, tnn_tensor *t, uint16_t *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_F16, __func__);
}

int tnn_download_raw(tnn_session *sess, tnn_tensor *t, void *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, -1, __func__);
}

/* ---- one step: upload, compute, download -------------------------------------------- */

/* Steps move a few bytes (ids in, ids out); larger transfers go direct. */
#define TNN_STAGING_MAX ((size_t)1 << 20)
#define TNN_STAGING_ALIGN 64

/* True when t's memory is in the buffer type of the session's backend, the
 * only memory its asynchronous copies may touch (ggml asserts on others). */
static bool on_session_backend(tnn_session *sess, const struct ggml_tensor *t) {
    return ggml_backend_buffer_get_type(storage_of(t)->buffer) ==
           ggml_backend_get_default_buffer_type(sess->backend);
}

/* need bytes of page-locked memory, or NULL (not CUDA, too large, or none
 * to be had): the caller then copies from its own memory. */
static char *staging_memory(tnn_session *sess, size_t need) {
    if (!sess->is_cuda || need > TNN_STAGING_MAX) return NULL;
    if (sess->staging && ggml_backend_buffer_get_size(sess->staging) >= need) {
        return ggml_backend_buffer_get_base(sess->staging);
    }
    ggml_backend_buffer_type_t host =
        ggml_backend_dev_host_buffer_type(ggml_backend_get_device(sess->backend));
    if (!host) return NULL;
    size_t size = 4096;
    while (size < need) size *= 2;
    ggml_backend_buffer_t grown = ggml_backend_buft_alloc_buffer(host, size);
    if (!grown) return NULL;
    if (sess->staging) ggml_backend_buffer_free(sess->staging);
    sess->staging = grown;
    return ggml_backend_buffer_get_base(grown);
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* Every check of a step (tnn_upload_raw's, tnn_download_raw's, tnn_compute's),
 * so that a failure copies nothing; sess is live (CHECK_SESS done). */
int compute_io_check(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                     tnn_tensor *out, void *out_data, int64_t out_nbytes, const char *func) {
    int rc = check_realized(sess, func);
    if (rc == TNN_OK && in) rc = check_upload(sess, in, in_data, in_nbytes, 0, -1, func);
    if (rc == TNN_OK && out) rc = check_transfer(sess, out, out_data, out_nbytes, 0, -1, func);
    if (rc == TNN_OK) rc = check_persistent_indices(sess, func);
    return rc;
}

int compute_io_run(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                   tnn_tensor *out, void *out_data, int64_t out_nbytes, const char *func) {
    size_t n_in = in ? (size_t)in_nbytes : 0, n_out = out ? (size_t)out_nbytes : 0;
    bool async_in = n_in > 0 && on_session_backend(sess, in);
    bool async_out = n_out > 0 && on_session_backend(sess, out);
    size_t out_at = round_up(n_in, TNN_STAGING_ALIGN);
    char *stage = async_in || async_out ? staging_memory(sess, out_at + n_out) : NULL;
    /* Copies and compute queue on the backend's stream; the one wait is the
     * synchronize at the end (upload + compute + download wait three times). */
    if (async_in) {
        const void *src = in_data;
        if (stage) src = memcpy(stage, in_data, n_in);
        ggml_backend_tensor_set_async(sess->backend, in, src, 0, n_in);
    } else if (n_in > 0) {
        ggml_backend_tensor_set(in, in_data, 0, n_in);
    }
    adapt_threads(sess);
    compute_started();
    enum ggml_status status = ggml_backend_sched_graph_compute_async(sess->sched, sess->graph);
    if (status == GGML_STATUS_SUCCESS && async_out) {
        ggml_backend_tensor_get_async(sess->backend, out, stage ? stage + out_at : out_data, 0, n_out);
    }
    ggml_backend_sched_synchronize(sess->sched);
    compute_finished();
    if (status != GGML_STATUS_SUCCESS) return compute_failed(status, func);
    if (async_out && stage) {
        memcpy(out_data, stage + out_at, n_out);
    } else if (n_out > 0 && !async_out) {
        ggml_backend_tensor_get(out, out_data, 0, n_out);
    }
    return TNN_OK;
}

int tnn_compute_io(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                   tnn_tensor *out, void *out_data, int64_t out_nbytes) {
    CHECK_SESS(sess, TNN_EINVAL);
    int rc = compute_io_check(sess, in, in_data, in_nbytes, out, out_data, out_nbytes, __func__);
    if (rc != TNN_OK) return rc;
    return compute_io_run(sess, in, in_data, in_nbytes, out, out_data, out_nbytes, __func__);
}
