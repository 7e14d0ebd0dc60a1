/* Host-side status helpers of our CUDA files: tinynn.h's status codes (the .cu
 * files do not include the shim's headers: the standalone tests build them with
 * nvcc alone), an error message into the caller's buffer, and a CUDA error as a
 * status. Each translation unit gets its own copy (anonymous namespace). */
#ifndef TNN_CUDA_HOST_STATUS_CUH
#define TNN_CUDA_HOST_STATUS_CUH

#include <cuda_runtime.h>

#include <cstdarg>
#include <cstddef>
#include <cstdio>

namespace {

constexpr int ST_OK = 0, ST_EINVAL = -1, ST_ESHAPE = -3, ST_ENOMEM = -4, ST_EBACKEND = -5;

/* Writes the message (printf format) into err and returns status. */
int fail(char *err, size_t err_len, int status, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* A CUDA error of `who`'s call `what`: ST_ENOMEM or ST_EBACKEND with its message. */
int cuda_fail_as(const char *who, char *err, size_t err_len, cudaError_t e, const char *what) {
    cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return fail(err, err_len, e == cudaErrorMemoryAllocation ? ST_ENOMEM : ST_EBACKEND, "%s: %s: %s",
                who, what, cudaGetErrorString(e));
}

}  // namespace

#endif
