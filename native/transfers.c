/* transfers.c - bytes in and out of tensors: upload, download, and
 * tnn_compute_io (upload, compute, download with one wait). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

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

/* ---- from a file, straight into host memory ----------------------------------------- */

/* Byte offset (from p) of the first value of type `type` in n bytes that is
 * not finite (f32, f16, bf16: the value; q8_0: a block's f16 scale), or -1.
 * Other types are not checked. n is a whole number of values or blocks. */
static int64_t first_nonfinite(const unsigned char *p, size_t n, enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32:
        for (size_t i = 0; i + 4 <= n; i += 4) {
            uint32_t v;
            memcpy(&v, p + i, 4);
            if ((v & 0x7f800000u) == 0x7f800000u) return (int64_t)i;
        }
        return -1;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: {
        const uint16_t exp = type == GGML_TYPE_F16 ? 0x7c00u : 0x7f80u;
        for (size_t i = 0; i + 2 <= n; i += 2) {
            uint16_t v;
            memcpy(&v, p + i, 2);
            if ((v & exp) == exp) return (int64_t)i;
        }
        return -1;
    }
    case GGML_TYPE_Q8_0: {
        const size_t block = ggml_type_size(GGML_TYPE_Q8_0); /* an f16 scale, 32 int8 */
        for (size_t i = 0; i + block <= n; i += block) {
            uint16_t v;
            memcpy(&v, p + i, 2);
            if ((v & 0x7c00u) == 0x7c00u) return (int64_t)i;
        }
        return -1;
    }
    default:
        return -1;
    }
}

int tnn_read_file_into(tnn_session *sess, tnn_tensor *t, int fd, int64_t file_offset,
                       int64_t nbytes, int64_t offset, int64_t *nonfinite_at) {
    const char *func = __func__;
    static const char any = 0; /* check_transfer's data: the file stands for it */
    int rc = check_transfer(sess, t, &any, nbytes, offset, -1, func);
    if (rc != TNN_OK) return rc;
    if (!nonfinite_at) return fail(TNN_EINVAL, func, "nonfinite_at is NULL");
    *nonfinite_at = -1;
    if (t->type == GGML_TYPE_I32) {
        return fail(TNN_EINVAL, func, "t is %s: index tensors are uploaded with their checks "
                    "(tnn_upload_i32)", SHAPE(t));
    }
    if (!ggml_backend_buffer_is_host(storage_of(t)->buffer)) {
        return fail(TNN_EBACKEND, func, "t %s is not in host memory (%s): upload it from a "
                    "host copy", SHAPE(t), ggml_backend_buffer_name(storage_of(t)->buffer));
    }
    if (fd < 0 || file_offset < 0) {
        return fail(TNN_EINVAL, func, "fd=%d, file_offset=%lld: expected an open descriptor and "
                    "an offset >= 0", fd, (long long)file_offset);
    }
    const size_t unit = ggml_type_size(t->type); /* a value, or a block of values */
    if (unit == 0 || offset % (int64_t)unit || nbytes % (int64_t)unit) {
        return fail(TNN_ESHAPE, func, "%lld bytes at offset %lld of t %s: not whole %s values "
                    "(%zu bytes)", (long long)nbytes, (long long)offset, SHAPE(t),
                    ggml_type_name(t->type), unit);
    }
    unsigned char *dst = (unsigned char *)t->data + offset;
    int64_t done = 0;
    while (done < nbytes) {
        size_t want = (size_t)(nbytes - done);
        if (want > ((size_t)1 << 30)) want = (size_t)1 << 30; /* pread's count, bounded */
        ssize_t got = pread(fd, dst + done, want, (off_t)(file_offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            return fail(TNN_EBACKEND, func, "reading %lld bytes at file offset %lld: %s",
                        (long long)nbytes, (long long)file_offset, strerror(errno));
        }
        if (got == 0) {
            return fail(TNN_ESHAPE, func, "the file ended at byte %lld: %lld of the %lld bytes "
                        "at file offset %lld were read (truncated?)",
                        (long long)(file_offset + done), (long long)done, (long long)nbytes,
                        (long long)file_offset);
        }
        done += got;
    }
    *nonfinite_at = first_nonfinite(dst, (size_t)nbytes, t->type);
    return TNN_OK;
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
    enum ggml_status status = ggml_backend_sched_graph_compute_async(sess->sched, sess->graph);
    if (status == GGML_STATUS_SUCCESS && async_out) {
        ggml_backend_tensor_get_async(sess->backend, out, stage ? stage + out_at : out_data, 0, n_out);
    }
    ggml_backend_sched_synchronize(sess->sched);
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
