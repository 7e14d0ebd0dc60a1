/* value_layouts.c - a file's values laid out as a tensor takes them: a tile
 * transposed, values converted between float types, and either written in
 * the packed layout of our CPU product (packed_layout.h).
 *
 * HF's Conv1D weights (and the Ruby converter's GGUF) store a linear layer as
 * [in, out]; ggml's products read it as rows of `in` values. file_reads.c
 * reads such a tensor a tile of the file's rows at a time into a small buffer
 * (it stays in cache) and writes it transposed here, so no copy of the whole
 * tensor is ever made. */
#include <string.h>

#include "packed_layout.h"
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

/* Packed, the 16 values of a group (of one row) are contiguous, and so are a
 * tile's rows within a group (16 values apart): a transposed block of at most
 * one group of k by the rows of one tile is a transposed block of pitch 16.
 * Blocks are cut at those edges, so any origin (k0, row0) works; tiles of the
 * file whose k0 is a multiple of 16 make whole blocks. */
void transpose_values_packed(const void *src, int64_t h, int64_t w, int64_t k0, int64_t row0,
                             int64_t K, int64_t n_rows, void *dst, size_t size) {
    for (int64_t r = 0; r < h;) {
        int64_t bh = TNN_PACK_GROUP - (k0 + r) % TNN_PACK_GROUP;
        if (bh > h - r) bh = h - r;
        for (int64_t c = 0; c < w;) {
            int64_t bw = TNN_PACK_TILE_ROWS - (row0 + c) % TNN_PACK_TILE_ROWS;
            if (bw > w - c) bw = w - c;
            int64_t at = packed_offset(row0 + c, k0 + r, K, n_rows);
            if (size == 4) {
                block_uint32_t((const uint32_t *)src + r * w + c, w, (uint32_t *)dst + at,
                               TNN_PACK_GROUP, bh, bw);
            } else {
                block_uint16_t((const uint16_t *)src + r * w + c, w, (uint16_t *)dst + at,
                               TNN_PACK_GROUP, bh, bw);
            }
            c += bw;
        }
        r += bh;
    }
}

/* A row's n_groups groups from in to out, `stride` bytes apart there; inlined
 * with a constant group size, so that each group is one or two vector moves. */
static inline void scatter_groups(unsigned char *out, const unsigned char *in, int64_t n_groups,
                                  int64_t stride, size_t group_bytes) {
    for (int64_t g = 0; g < n_groups; g++) memcpy(out + g * stride, in + g * group_bytes, group_bytes);
}

void pack_values(const void *src, int64_t first, int64_t n, int64_t K, int64_t n_rows, void *dst,
                 size_t size) {
    const unsigned char *in = src;
    int64_t row = first / K, k = first % K;
    for (int64_t done = 0; done < n; row++, k = 0) {
        int64_t len = K - k < n - done ? K - k : n - done; /* this row's values in src */
        int64_t at = packed_offset(row, k, K, n_rows);
        /* the step from one group of the row to the next: the rows of its tile */
        int64_t stride = (packed_offset(row, TNN_PACK_GROUP, K, n_rows) -
                          packed_offset(row, 0, K, n_rows)) * (int64_t)size;
        unsigned char *out = (unsigned char *)dst + at * (int64_t)size;
        if (size == 4) {
            scatter_groups(out, in, len / TNN_PACK_GROUP, stride, 4 * TNN_PACK_GROUP);
        } else {
            scatter_groups(out, in, len / TNN_PACK_GROUP, stride, 2 * TNN_PACK_GROUP);
        }
        in += len * (int64_t)size;
        done += len;
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
