/*
 * device_sampler.c - tnn_compute_io_sample: a step of the realized graph, then
 * token choice on the device over the logits it computed (cuda/sample_logits.h),
 * so a step of many sequences moves 4 bytes a row back instead of its logits.
 *
 * The shim's part is what the kernels cannot check: that the logits are a
 * dense f32 [n_vocab, n_rows] output of this session's graph in the device
 * memory of the session's backend, that the byte counts fit, and that every
 * record is in range. Everything is checked before the device does anything.
 * The sampler (a stream, buffers for records and ids) is made on first use and
 * belongs to the session, which frees it (session.c); the fused decode step
 * does its own token choice inside its CUDA graph (decode.cu).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "tinynn_internal.h"

#include "cuda/sampling.h"

#ifdef TNN_HAVE_CUDA_KERNELS
#include "cuda/sample_logits.h"
#endif

_Static_assert(sizeof(tnn_sampling_params) == 16, "tinynn.h documents 16-byte records");

#define MAX_ROWS 65535 /* a launch's grid.y (TNN_CUDA_SAMPLE_MAX_ROWS) */

void free_session_logits_sampler(tnn_session *s) {
#ifdef TNN_HAVE_CUDA_KERNELS
    tnn_cuda_logits_sampler_free(s->logits_sampler);
#endif
    s->logits_sampler = NULL;
}

/* ---- checks ------------------------------------------------------------------ */

/* The logits: a compute tensor of this session's realized graph whose memory
 * nothing else reuses during the compute (ggml's allocator never frees the
 * memory of an output, tnn_set_output, or of the graph's result), f32, dense,
 * ne = [n_vocab, n_rows] within the launch limits. For a view, the tensor it
 * views must be the output (an output flag on the view itself keeps nothing). */
static int check_logits(tnn_session *sess, tnn_tensor *t, const char *func) {
    if (!check_tensor(sess, t, func, "logits")) return TNN_EINVAL;
    const struct ggml_tensor *st = storage_of(t);
    bool is_output = (st->flags & GGML_TENSOR_FLAG_OUTPUT) != 0;
    bool is_result = ggml_graph_n_nodes(sess->graph) > 0 && ggml_graph_node(sess->graph, -1) == t;
    if (is_persistent(sess, t) || !t->data || !st->buffer || !(is_output || is_result)) {
        return fail(TNN_EINVAL, func,
                    "logits %s must be an output of the realized graph (tnn_set_output on it, "
                    "or on the tensor it views, before tnn_realize; or the graph's result)",
                    SHAPE(t));
    }
    if (t->type != GGML_TYPE_F32 || t->ne[2] != 1 || t->ne[3] != 1 || !ggml_is_contiguous(t)) {
        return fail(TNN_ESHAPE, func, "logits must be a contiguous f32 [n_vocab, n_rows], got %s",
                    SHAPE(t));
    }
    if (t->ne[1] < 1 || t->ne[1] > MAX_ROWS || t->ne[0] < 1 || t->ne[0] > INT32_MAX) {
        return fail(TNN_ESHAPE, func,
                    "logits %s: n_rows (ne[1]) must be in 1..%d and n_vocab (ne[0]) in 1..%d",
                    SHAPE(t), MAX_ROWS, INT32_MAX);
    }
    return TNN_OK;
}

/* The ranges of tnn_sample_rows (sampler.c), so both paths take the same records. */
static int check_records(const tnn_sampling_params *p, int64_t n_rows, const char *func) {
    for (int64_t row = 0; row < n_rows; row++, p++) {
        if (!(isfinite(p->temperature) && p->temperature >= 0.0f)) {
            return fail(TNN_EINVAL, func,
                        "row %lld: temperature %g, expected a finite value >= 0 (0: greedy)",
                        (long long)row, (double)p->temperature);
        }
        if (p->top_k < 0) {
            return fail(TNN_EINVAL, func, "row %lld: top_k %d, expected >= 0 (0: off)",
                        (long long)row, (int)p->top_k);
        }
        if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
            return fail(TNN_EINVAL, func, "row %lld: top_p %g, expected a value in (0, 1] (1: off)",
                        (long long)row, (double)p->top_p);
        }
        if (!(p->uniform >= 0.0f && p->uniform < 1.0f)) {
            return fail(TNN_EINVAL, func, "row %lld: uniform %g, expected [0, 1)", (long long)row,
                        (double)p->uniform);
        }
    }
    return TNN_OK;
}

/* ---- the sampler of a session -------------------------------------------------- */

#ifdef TNN_HAVE_CUDA_KERNELS
/* The CUDA runtime's ordinal of the session's device: ggml-cuda names its
 * devices "CUDA<ordinal>". */
static int cuda_ordinal(tnn_session *sess, const char *func) {
    const char *name = ggml_backend_dev_name(ggml_backend_get_device(sess->backend));
    int ordinal = -1;
    if (!name || sscanf(name, "CUDA%d", &ordinal) != 1 || ordinal < 0) {
        fail(TNN_EBACKEND, func, "cannot tell the CUDA device of backend device '%s'",
             name ? name : "(null)");
        return -1;
    }
    return ordinal;
}
#endif

/* TNN_OK when this session can sample on the device, its sampler made; else
 * TNN_EBACKEND with the reason. */
static int ensure_sampler(tnn_session *sess, const char *func) {
#ifndef TNN_HAVE_CUDA_KERNELS
    (void)sess;
    return fail(TNN_EBACKEND, func,
                "this library was built without our CUDA kernels (GGML_CUDA=ON with every CUDA "
                "architecture >= 90): download the logits and choose on the host "
                "(tnn_sample_rows)");
#else
    if (!sess->is_cuda) {
        return fail(TNN_EBACKEND, func,
                    "token choice on the device needs a CUDA session, this one is on the CPU: "
                    "download the logits and choose on the host (tnn_sample_rows)");
    }
    if (sess->logits_sampler) return TNN_OK;
    int ordinal = cuda_ordinal(sess, func);
    if (ordinal < 0) return TNN_EBACKEND;
    char err[512] = {0};
    int status = tnn_cuda_logits_sampler_new(ordinal, &sess->logits_sampler, err, sizeof err);
    if (status != TNN_OK) {
        sess->logits_sampler = NULL;
        return fail(status == TNN_ENOMEM ? TNN_ENOMEM : TNN_EBACKEND, func, "%s", err);
    }
    return TNN_OK;
#endif
}

/* ---- the API ------------------------------------------------------------------- */

int tnn_can_sample_on_device(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return ensure_sampler(sess, __func__) == TNN_OK ? 1 : 0;
}

int tnn_compute_io_sample(tnn_session *sess, tnn_tensor *in, const void *in_data,
                          int64_t in_nbytes, tnn_tensor *logits, const void *sampling,
                          int64_t sampling_nbytes, int32_t *out_ids, int64_t out_ids_nbytes) {
    const char *func = __func__;
    CHECK_SESS(sess, TNN_EINVAL);
    /* Every argument first: the step's own checks, the logits, the records and
     * the ids, so that a bad one reaches neither ggml nor the device. */
    int rc = compute_io_check(sess, in, in_data, in_nbytes, NULL, NULL, 0, func);
    if (rc == TNN_OK) rc = check_logits(sess, logits, func);
    if (rc != TNN_OK) return rc;
    const int64_t n_rows = logits->ne[1], n_vocab = logits->ne[0];
    const int64_t want_records = n_rows * (int64_t)sizeof(tnn_sampling_params);
    const int64_t want_ids = n_rows * (int64_t)sizeof(int32_t);
    if (!sampling || sampling_nbytes != want_records) {
        return fail(TNN_ESHAPE, func,
                    "sampling: %lld bytes at %p, expected %lld (%lld records of 16 bytes, one "
                    "for each row of logits %s)",
                    (long long)sampling_nbytes, sampling, (long long)want_records,
                    (long long)n_rows, SHAPE(logits));
    }
    if (!out_ids || out_ids_nbytes != want_ids) {
        return fail(TNN_ESHAPE, func,
                    "out_ids: %lld bytes at %p, expected %lld (an int32 for each of %lld rows)",
                    (long long)out_ids_nbytes, (void *)out_ids, (long long)want_ids,
                    (long long)n_rows);
    }
    rc = check_records((const tnn_sampling_params *)sampling, n_rows, func);
    if (rc != TNN_OK) return rc;
    /* Then where it can run: our kernels, a CUDA session, logits in its
     * device memory (an op ggml-cuda lacks runs on the CPU, and its result
     * lives in host memory). */
    rc = ensure_sampler(sess, func);
    if (rc != TNN_OK) return rc;
    ggml_backend_buffer_t buf = storage_of(logits)->buffer;
    if (ggml_backend_buffer_is_host(buf) ||
        ggml_backend_buffer_get_type(buf) != ggml_backend_get_default_buffer_type(sess->backend)) {
        return fail(TNN_EBACKEND, func,
                    "logits %s are in %s memory, not the session's device memory (computed on the "
                    "CPU?): download them and choose on the host (tnn_sample_rows)",
                    SHAPE(logits), ggml_backend_buffer_name(buf));
    }
    rc = compute_io_run(sess, in, in_data, in_nbytes, NULL, NULL, 0, func);
    if (rc != TNN_OK) return rc;
#ifdef TNN_HAVE_CUDA_KERNELS
    char err[512] = {0};
    int status = tnn_cuda_logits_sampler_run(sess->logits_sampler, (const float *)logits->data,
                                             (int32_t)n_rows, (int32_t)n_vocab,
                                             (const tnn_sampling_params *)sampling, out_ids, err,
                                             sizeof err);
    return status == TNN_OK ? TNN_OK : fail(status, func, "%s", err);
#else
    (void)n_vocab;
    return fail(TNN_EBACKEND, func, "built without our CUDA kernels"); /* ensure_sampler said so */
#endif
}
