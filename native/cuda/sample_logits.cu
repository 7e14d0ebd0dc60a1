/* sample_logits.cu - THE SAMPLING RULE over logits a ggml graph left in device
 * memory (sample_logits.h): the graph path's token choice for steps of more
 * sequences than our fused decode step takes.
 *
 * A call: records into page-locked memory, one upload (16 bytes a row), the
 * ids set to -1, one launch of the sampling kernels (sampling_kernels.cuh: a
 * cluster of 8 blocks a row up to 65536 logits), one download (4 bytes a
 * row), one sync on the sampler's own stream. An id still -1 (or out of
 * range) afterwards is reported, never returned. */
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <new>

#include "host_status.cuh"
#include "sample_logits.h"
#include "sampling_kernels.cuh"

namespace {

int cuda_fail(char *err, size_t err_len, cudaError_t e, const char *what) {
    return cuda_fail_as("tnn_cuda_logits_sampler", err, err_len, e, what);
}

/* Makes `device` current for a scope and restores the caller's device after
 * (ggml-cuda sets its device before each of its own calls; other code in the
 * process may not). ok() is false when either query or switch failed. */
class DeviceScope {
  public:
    explicit DeviceScope(int device) {
        e_ = cudaGetDevice(&saved_);
        if (e_ == cudaSuccess && saved_ != device) e_ = cudaSetDevice(device);
        switched_ = e_ == cudaSuccess && saved_ != device;
    }
    ~DeviceScope() {
        if (switched_) cudaSetDevice(saved_);
    }
    cudaError_t error() const { return e_; }
    DeviceScope(const DeviceScope &) = delete;
    DeviceScope &operator=(const DeviceScope &) = delete;

  private:
    int saved_ = 0;
    bool switched_ = false;
    cudaError_t e_;
};

} // namespace

#define CK(call)                                                                                   \
    do {                                                                                           \
        const cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) return cuda_fail(err, err_len, e_, #call);                          \
    } while (0)

struct tnn_cuda_logits_sampler {
    int device = 0;
    cudaStream_t stream = nullptr;
    int cap_rows = 0;                          /* rows the buffers below hold */
    tnn_sampling_params *params_dev = nullptr; /* [cap_rows] */
    int32_t *ids_dev = nullptr;                /* [cap_rows] */
    tnn_sampling_params *params_host = nullptr; /* page-locked [cap_rows] */
    int32_t *ids_host = nullptr;                /* page-locked [cap_rows] */
    void *scratch = nullptr;                   /* tnn_sampling_scratch_bytes (0 today) */
    size_t scratch_bytes = 0;
};

namespace {

void free_rows(tnn_cuda_logits_sampler *s) {
    cudaFree(s->params_dev);
    cudaFree(s->ids_dev);
    cudaFreeHost(s->params_host);
    cudaFreeHost(s->ids_host);
    s->params_dev = nullptr;
    s->ids_dev = nullptr;
    s->params_host = nullptr;
    s->ids_host = nullptr;
    s->cap_rows = 0;
}

/* Buffers for n_rows rows of n_vocab logits: grown to the next power of two
 * (at least 8 rows, at most TNN_CUDA_SAMPLE_MAX_ROWS), never shrunk. After a
 * failure the sampler holds no row buffers and the next call tries again. */
int reserve(tnn_cuda_logits_sampler *s, int n_rows, int n_vocab, char *err, size_t err_len) {
    if (n_rows > s->cap_rows) {
        int cap = 8;
        while (cap < n_rows) cap *= 2;
        if (cap > TNN_CUDA_SAMPLE_MAX_ROWS) cap = TNN_CUDA_SAMPLE_MAX_ROWS;
        free_rows(s);
        const size_t n = static_cast<size_t>(cap);
        cudaError_t e = cudaMalloc(&s->params_dev, n * sizeof(tnn_sampling_params));
        if (e == cudaSuccess) e = cudaMalloc(&s->ids_dev, n * sizeof(int32_t));
        if (e == cudaSuccess) e = cudaMallocHost(&s->params_host, n * sizeof(tnn_sampling_params));
        if (e == cudaSuccess) e = cudaMallocHost(&s->ids_host, n * sizeof(int32_t));
        if (e != cudaSuccess) {
            free_rows(s);
            return cuda_fail(err, err_len, e, "allocating buffers for the rows");
        }
        s->cap_rows = cap;
    }
    const size_t need = tnn_sampling_scratch_bytes(s->cap_rows, n_vocab);
    if (need > s->scratch_bytes) {
        cudaFree(s->scratch);
        s->scratch = nullptr;
        s->scratch_bytes = 0;
        CK(cudaMalloc(&s->scratch, need));
        s->scratch_bytes = need;
    }
    return ST_OK;
}

/* The step's work on s->stream, in order; the first error stops it. */
cudaError_t enqueue(tnn_cuda_logits_sampler *s, const float *logits, int n_rows, int n_vocab) {
    const size_t n = static_cast<size_t>(n_rows);
    cudaError_t e = cudaMemcpyAsync(s->params_dev, s->params_host, n * sizeof(tnn_sampling_params),
                                    cudaMemcpyHostToDevice, s->stream);
    if (e == cudaSuccess) e = cudaMemsetAsync(s->ids_dev, 0xFF, n * sizeof(int32_t), s->stream);
    if (e == cudaSuccess)
        e = tnn_sampling_launch(logits, n_rows, n_vocab, s->params_dev, s->ids_dev, s->scratch,
                                s->stream);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(s->ids_host, s->ids_dev, n * sizeof(int32_t), cudaMemcpyDeviceToHost,
                            s->stream);
    return e;
}

} // namespace

extern "C" int tnn_cuda_logits_sampler_new(int device, tnn_cuda_logits_sampler **out, char *err,
                                           size_t err_len) {
    if (!out) return fail(err, err_len, ST_EINVAL, "tnn_cuda_logits_sampler_new: out is NULL");
    *out = nullptr;
    int n_devices = 0;
    CK(cudaGetDeviceCount(&n_devices));
    if (device < 0 || device >= n_devices)
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_logits_sampler_new: CUDA device %d, this process sees %d", device,
                    n_devices);
    int major = 0, minor = 0;
    CK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    if (major < 9)
        return fail(err, err_len, ST_EBACKEND,
                    "tnn_cuda_logits_sampler_new: CUDA device %d has compute capability %d.%d; "
                    "our sampling kernels are built for 9.0 or newer",
                    device, major, minor);
    tnn_cuda_logits_sampler *s = new (std::nothrow) tnn_cuda_logits_sampler;
    if (!s) return fail(err, err_len, ST_ENOMEM, "tnn_cuda_logits_sampler_new: out of host memory");
    s->device = device;
    {
        DeviceScope scope(device);
        cudaError_t e = scope.error();
        if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) {
            s->stream = nullptr;
            delete s;
            return cuda_fail(err, err_len, e, "creating the stream");
        }
    }
    *out = s;
    return ST_OK;
}

extern "C" int tnn_cuda_logits_sampler_run(tnn_cuda_logits_sampler *s, const float *logits,
                                           int32_t n_rows, int32_t n_vocab,
                                           const tnn_sampling_params *params, int32_t *out_ids,
                                           char *err, size_t err_len) {
    if (!s || !logits || !params || !out_ids)
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_logits_sampler_run: sampler, logits, params and out_ids must not "
                    "be NULL");
    if (n_rows < 1 || n_rows > TNN_CUDA_SAMPLE_MAX_ROWS || n_vocab < 1)
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_logits_sampler_run: n_rows %d (expected 1..%d), n_vocab %d "
                    "(expected >= 1)",
                    n_rows, TNN_CUDA_SAMPLE_MAX_ROWS, n_vocab);
    DeviceScope scope(s->device);
    CK(scope.error());
    /* The kernels read n_rows * n_vocab floats from here: device memory of
     * this device (the shim checked the size against the tensor's). */
    cudaPointerAttributes attr;
    CK(cudaPointerGetAttributes(&attr, logits));
    const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
    if (!on_device || attr.device != s->device)
        return fail(err, err_len, ST_EINVAL,
                    "tnn_cuda_logits_sampler_run: logits %p are not device memory of CUDA "
                    "device %d (memory type %d, device %d)",
                    static_cast<const void *>(logits), s->device, static_cast<int>(attr.type),
                    attr.device);
    int st = reserve(s, n_rows, n_vocab, err, err_len);
    if (st) return st;

    const size_t n = static_cast<size_t>(n_rows);
    memcpy(s->params_host, params, n * sizeof(tnn_sampling_params));
    const cudaError_t e = enqueue(s, logits, n_rows, n_vocab);
    /* wait even after a failed enqueue: nothing may still read params_host */
    const cudaError_t e_sync = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess) return cuda_fail(err, err_len, e, "sampling the rows");
    if (e_sync != cudaSuccess) return cuda_fail(err, err_len, e_sync, "sampling the rows");
    for (int i = 0; i < n_rows; ++i)
        if (s->ids_host[i] < 0 || s->ids_host[i] >= n_vocab)
            return fail(err, err_len, ST_EBACKEND,
                        "tnn_cuda_logits_sampler_run: row %d got id %d, expected 0..%d (a "
                        "kernel wrote no id)",
                        i, s->ids_host[i], n_vocab - 1);
    memcpy(out_ids, s->ids_host, n * sizeof(int32_t));
    return ST_OK;
}

extern "C" void tnn_cuda_logits_sampler_free(tnn_cuda_logits_sampler *s) {
    if (!s) return;
    {
        DeviceScope scope(s->device);
        if (s->stream) cudaStreamSynchronize(s->stream);
        free_rows(s);
        cudaFree(s->scratch);
        if (s->stream) cudaStreamDestroy(s->stream);
    }
    cudaGetLastError();
    delete s;
}
