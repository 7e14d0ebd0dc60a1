/* How fragmented a graph can leave ggml's compute allocator (internal to the shim).
 *
 * ggml-alloc keeps at most 256 free blocks per buffer chunk and aborts when a
 * free would need one more. A free block is made only by freeing a tensor,
 * and free blocks never touch (they merge), so each but one follows an
 * allocated region: after f frees with r regions allocated there are at most
 * min(f, r) + 1 free blocks. */
#ifndef TINYNN_FREE_BLOCKS_H
#define TINYNN_FREE_BLOCKS_H

#include "ggml.h"

/* The most free blocks the graph allocator (ggml_gallocr; ggml-alloc.c is the
 * same in 0.20.2 and 0.25.3 but for which ops may run in place) can
 * hold while placing graph, by the bound above, with allocations and frees
 * counted the way it makes them: inputs first (never freed: tinynn flags
 * them as outputs, so they form one region), then each node, freeing a
 * parent after its last child unless it is an output, or handing its
 * memory to that child (in place). Returns -1 when out of memory. */
int tnn_free_blocks_bound(struct ggml_cgraph *graph);

#endif /* TINYNN_FREE_BLOCKS_H */
