/* common.cuh - what the decode kernels share: limits, the per-step inputs
 * uploaded from the host, Hopper's programmatic-dependent-launch controls,
 * streaming loads, cp.async and warp reductions. */
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "decode.h"

#define TNN_DEC_MAX_BATCH 32 /* sequences a step */
#define TNN_GEMV_GROUP 8     /* vectors a GEMV block takes: its kernels are compiled for 1..8 */
#define TNN_DEC_HEAD_DIM 64 /* every GPT-2 size */
#define TNN_DEC_THREADS 256 /* threads of a GEMV block: 8 warps */
#define Q8_BLOCK 32         /* q8_0: 32 weights share one f16 scale */
#define Q8_BLOCK_BYTES 34   /* f16 scale + 32 int8 */

/* The step's inputs, one pinned struct uploaded with one copy a step. The
 * captured kernels read positions and slots from here, which is what makes a
 * graph replayable at any position of its context bucket. */
struct tnn_step_io {
    int32_t tokens[TNN_DEC_MAX_BATCH];
    int32_t positions[TNN_DEC_MAX_BATCH];
    int32_t slots[TNN_DEC_MAX_BATCH];
    tnn_sampling_params params[TNN_DEC_MAX_BATCH];
};

/* Programmatic dependent launch (sm_90). launch_dependents lets the next
 * kernel of the stream start its blocks before this one ends; wait blocks
 * until every kernel this one depends on has finished and its writes are
 * visible. Before its wait a kernel only reads weights, which nothing writes.
 * Both are no-ops for a kernel launched without the PDL attribute. */
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* 16-byte load of read-only weights that are used once: through the
 * non-coherent path, not kept in L1. volatile keeps these loads ahead of the
 * pdl_wait that follows them in the GEMVs. */
__device__ __forceinline__ uint4 ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* cp.async of one aligned 16-byte word into shared memory, reading only its
 * first src_bytes (1..16) and zero-filling the rest. */
__device__ __forceinline__ void cp_async16(void *smem_dst, const void *src, int src_bytes) {
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* GPT-2's GELU (gelu_new, the tanh form), in f32 with an accurate tanh:
 * what gpt2/reference.py and the ggml engine compute. */
__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

/* One f16 wte / q8_0 weight, scalar (embedding rows and reference kernels). */
__device__ __forceinline__ float load_weight(const void *w, int type, int n_in, int64_t row, int k) {
    if (type == TNN_CUDA_W_F16) return __half2float(static_cast<const __half *>(w)[row * n_in + k]);
    const uint8_t *blk =
        static_cast<const uint8_t *>(w) + (row * (n_in / Q8_BLOCK) + k / Q8_BLOCK) * Q8_BLOCK_BYTES;
    const float scale = __half2float(*reinterpret_cast<const __half *>(blk));
    return scale * static_cast<float>(static_cast<int8_t>(blk[2 + k % Q8_BLOCK]));
}
