/* packed_layout.h - where an element of a matrix packed for our CPU product
 * lies (cpu_product.c reads it; tnn_pack_rows and file_reads.c write it): the
 * one definition of the layout, so a read that packs and the product agree.
 *
 * A matrix of n_rows rows of K values (K a multiple of TNN_PACK_GROUP), in
 * tiles of TNN_PACK_TILE_ROWS rows: tile t holds rows 8t .. 8t+h-1 (h = 8, or
 * fewer in the last tile) in the same bytes as the row-major matrix, ordered by
 * group of 16 values, then row:
 *   element (row 8t + r, k) at  8t K + ((k / 16) h + r) 16 + k % 16 */
#ifndef TNN_PACKED_LAYOUT_H
#define TNN_PACKED_LAYOUT_H

#include <stdint.h>

#define TNN_PACK_TILE_ROWS 8
#define TNN_PACK_GROUP 16

/* The rows of tile `tile` of a matrix of n_rows rows. */
static inline int packed_tile_height(int64_t n_rows, int64_t tile) {
    int64_t left = n_rows - tile * TNN_PACK_TILE_ROWS;
    return left < TNN_PACK_TILE_ROWS ? (int)left : TNN_PACK_TILE_ROWS;
}

/* The element index of (row, k) of a matrix of n_rows rows of K values, packed. */
static inline int64_t packed_offset(int64_t row, int64_t k, int64_t K, int64_t n_rows) {
    int64_t tile = row / TNN_PACK_TILE_ROWS, r = row % TNN_PACK_TILE_ROWS;
    int64_t h = packed_tile_height(n_rows, tile);
    return tile * TNN_PACK_TILE_ROWS * K + ((k / TNN_PACK_GROUP) * h + r) * TNN_PACK_GROUP +
           k % TNN_PACK_GROUP;
}

#endif
