/* TEST BUILD ONLY: a stand-in for native/cuda/sampling_kernels.cuh while that
 * file is being written. The quoted include in decode.cu finds the real file
 * beside decode.cu first; this one is reached only through tests/run.sh's
 * -I tests/stub when the real one is absent. Greedy for every row (argmax,
 * lowest id on ties), whatever the parameters say. */
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "../../sampling.h"

#define TNN_SAMPLING_STUB 1

static inline size_t tnn_sampling_scratch_bytes(int, int) { return 0; }

/* grid n_seq, block 256: one block a row. */
__global__ void stub_argmax_kernel(const float *logits, int n_vocab, int32_t *ids) {
    __shared__ float bv[256];
    __shared__ int bi[256];
    const float *row = logits + static_cast<int64_t>(blockIdx.x) * n_vocab;
    float v = -INFINITY;
    int id = 0;
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x)
        if (row[i] > v) v = row[i], id = i;
    bv[threadIdx.x] = v;
    bi[threadIdx.x] = id;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float ov = bv[threadIdx.x + s];
            const int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x]))
                bv[threadIdx.x] = ov, bi[threadIdx.x] = oi;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = bi[0];
}

static inline cudaError_t tnn_sampling_launch(const float *logits, int n_seq, int n_vocab,
                                              const tnn_sampling_params *, int32_t *ids_dev, void *,
                                              cudaStream_t stream) {
    stub_argmax_kernel<<<n_seq, 256, 0, stream>>>(logits, n_vocab, ids_dev);
    return cudaGetLastError();
}
