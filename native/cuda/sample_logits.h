/* Token choice on the device for logits a ggml graph computed: THE SAMPLING
 * RULE (sampling.h) over rows of logits that live in device memory ggml
 * allocated, with the host's parameters and draws, one call a step. What the
 * fused decode step does inside its CUDA graph (decode.cu), for the graph path
 * (more sequences than our decode step takes).
 *
 * A sampler holds a stream of its own and, grown on demand, device and
 * page-locked host buffers for the records and the ids; it does no work on
 * ggml's stream: the caller runs it after ggml's compute has finished.
 * The shim (native/device_sampler.c) checks every argument first.
 */
#ifndef TNN_CUDA_SAMPLE_LOGITS_H
#define TNN_CUDA_SAMPLE_LOGITS_H

#include <stddef.h>
#include <stdint.h>

#include "sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most rows one call takes (a launch's grid.y). */
#define TNN_CUDA_SAMPLE_MAX_ROWS 65535

typedef struct tnn_cuda_logits_sampler tnn_cuda_logits_sampler;

/* A sampler for CUDA device `device` (the runtime's ordinal): checks the device
 * runs our kernels (compute capability 9.0 or newer) and makes its stream;
 * buffers come with the first call. 0 on success; else a negative status and
 * a message in err (nothing is left allocated). Free with
 * tnn_cuda_logits_sampler_free. */
int tnn_cuda_logits_sampler_new(int device, tnn_cuda_logits_sampler **out, char *err,
                                size_t err_len);

/* out_ids[i] = THE SAMPLING RULE's id for row i < n_rows of logits (device,
 * f32, row-major [n_rows][n_vocab], contiguous) with params[i] (host), for
 * 1 <= n_rows <= TNN_CUDA_SAMPLE_MAX_ROWS, 1 <= n_vocab. The records must
 * already be checked (temperature, top_k, top_p, uniform in range); logits
 * must be device memory of the sampler's device (checked: else an error, no
 * launch). NaN logits count as -inf (rule 0). Blocks until the ids are on the
 * host; the current device is restored before it returns. 0 on success; else
 * a negative status and a message in err (out_ids untouched). */
int tnn_cuda_logits_sampler_run(tnn_cuda_logits_sampler *s, const float *logits, int32_t n_rows,
                                int32_t n_vocab, const tnn_sampling_params *params,
                                int32_t *out_ids, char *err, size_t err_len);

/* Waits for the sampler's stream, frees its buffers and stream. NULL is fine. */
void tnn_cuda_logits_sampler_free(tnn_cuda_logits_sampler *s);

#ifdef __cplusplus
}
#endif

#endif
