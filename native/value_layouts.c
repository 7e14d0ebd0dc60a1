/* value_layouts.c - a file's values laid out as a tensor takes them: a tile
 * transposed, and values converted between float types.
 *
 * HF's Conv1D weights (and the Ruby converter's GGUF) store a linear layer as
 * [in, out]; ggml's products read it as rows of `in` values. file_reads.c
 * reads such a tensor a tile of the file's rows at a time into a small buffer
 * (it stays in cache) and writes it transposed here, so no copy of the whole
 * tensor is ever made. */
#include <string.h>

#include "tinynn_internal.h"

/* Values are moved in square blocks of this side: a block's reads (BLOCK rows
 * of the tile) and writes (BLOCK rows of the destination) stay in L1, and each
 * destination row is written BLOCK values at a time. */
#define BLOCK 16

/* One block, h x w values (h, w <= BLOCK) of one size: value (r, c) of src
 * (row width src_w) to dst + c * pitch + r. Sizes as separate loops so that
 * each copies with a plain load and store. */
#define TRANSPOSE_BLOCK(type)                                                            \
    static void block_##type(const type *src, int64_t src_w, type *dst, int64_t pitch,  \
                             int64_t h, int64_t w) {                                    \
        for (int64_t c = 0; c < w; c++) {                                                \
            type *out = dst + c * pitch;                                                 \
            for (int64_t r = 0; r < h; r++) out[r] = src[r * src_w + c];                 \
        }                                                                                \
    }
TRANSPOSE_BLOCK(uint32_t)
TRANSPOSE_BLOCK(uint16_t)

void transpose_values(const void *src, int64_t h, int64_t w, void *dst, int64_t pitch,
                      size_t size) {
    for (int64_t r = 0; r < h; r += BLOCK) {
        int64_t bh = h - r < BLOCK ? h - r : BLOCK;
        for (int64_t c = 0; c < w; c += BLOCK) {
            int64_t bw = w - c < BLOCK ? w - c : BLOCK;
            if (size == 4) {
                block_uint32_t((const uint32_t *)src + r * w + c, w,
                               (uint32_t *)dst + c * pitch + r, pitch, bh, bw);
            } else {
                block_uint16_t((const uint16_t *)src + r * w + c, w,
                               (uint16_t *)dst + c * pitch + r, pitch, bh, bw);
            }
        }
    }
}

bool can_convert_values(enum ggml_type from, enum ggml_type to) {
    return (from == GGML_TYPE_F32 && to == GGML_TYPE_F16) ||
           (from == GGML_TYPE_F16 && to == GGML_TYPE_F32) ||
           (from == GGML_TYPE_BF16 && to == GGML_TYPE_F32);
}

void convert_values(const void *src, enum ggml_type from, void *dst, enum ggml_type to,
                    int64_t n) {
    if (from == GGML_TYPE_F32 && to == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(src, dst, n); /* round to nearest even; past 65504: inf */
    } else if (from == GGML_TYPE_F16) {
        ggml_fp16_to_fp32_row(src, dst, n); /* exact */
    } else {
        ggml_bf16_to_fp32_row(src, dst, n); /* exact */
    }
}
