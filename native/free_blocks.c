/* See free_blocks.h. Mirrors ggml_gallocr_alloc_graph_impl (ggml-alloc.c)
 * closely enough to bound, not to place: a tensor is one region from its
 * allocation until ggml would free it. */
#include "free_blocks.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* Exported by libggml-base, declared only in ggml's internal ggml-impl.h:
 * the ops whose result may take over a parent's memory. */
GGML_API bool ggml_op_can_inplace(enum ggml_op op);

struct slot {
    const struct ggml_tensor *key;
    int n_children;
    int n_views;
    bool allocated;
};

struct table {
    struct slot *slots;
    size_t mask;
    int live;      /* allocated tensors now */
    int fixed;     /* of which never-freed inputs allocated before the first node */
    int frees;     /* tensors freed so far */
    int bound;     /* the most free blocks there can have been */
    bool started;  /* nodes are being placed (inputs are done) */
};

static struct slot *slot_of(struct table *t, const struct ggml_tensor *key) {
    size_t i = ((uintptr_t)key >> 4) * 0x9E3779B97F4A7C15u & t->mask;
    while (t->slots[i].key && t->slots[i].key != key) i = (i + 1) & t->mask;
    t->slots[i].key = key;
    return &t->slots[i];
}

/* ggml_impl_is_view: ops whose result is another tensor's memory */
static bool is_view(const struct ggml_tensor *x) {
    return x->op == GGML_OP_VIEW || x->op == GGML_OP_RESHAPE || x->op == GGML_OP_PERMUTE ||
           x->op == GGML_OP_TRANSPOSE;
}

static bool never_freed(const struct ggml_tensor *x) {
    return (x->flags & GGML_TENSOR_FLAG_OUTPUT) != 0;
}

static void count(struct table *t) {
    /* the inputs placed before any node sit side by side: one region */
    int regions = t->live - t->fixed + (t->fixed > 0);
    int blocks = (t->frees < regions ? t->frees : regions) + 1;
    if (blocks > t->bound) t->bound = blocks;
}

static void allocate(struct table *t, const struct ggml_tensor *x) {
    struct slot *s = slot_of(t, x);
    if (s->allocated || x->data != NULL || is_view(x)) return; /* has memory, or borrows it */
    s->allocated = true;
    t->live++;
    if (!t->started && never_freed(x)) t->fixed++;
}

static bool same_layout(const struct ggml_tensor *a, const struct ggml_tensor *b) {
    if (a->type != b->type) return false;
    for (int i = 0; i < GGML_MAX_DIMS; i++) {
        if (a->ne[i] != b->ne[i] || a->nb[i] != b->nb[i]) return false;
    }
    return true;
}

/* A node's result: in the memory of a parent whose last reader it is, as
 * ggml_gallocr_allocate_node reuses it (no new region, nothing freed), or new. */
static void place(struct table *t, const struct ggml_tensor *node) {
    struct slot *s = slot_of(t, node);
    if (s->allocated || node->data != NULL || is_view(node)) return;
    if (ggml_op_can_inplace(node->op)) {
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            const struct ggml_tensor *parent = node->src[j];
            if (!parent) continue;
            struct slot *p = slot_of(t, parent);
            bool output = never_freed(parent) || (parent->view_src && never_freed(parent->view_src));
            if (!p->allocated || output || !same_layout(node, parent)) continue;
            if (p->n_children == 1 && p->n_views == 0) {
                p->allocated = false;
                s->allocated = true;
                return;
            }
        }
    }
    allocate(t, node);
}

static void release(struct table *t, const struct ggml_tensor *x) {
    struct slot *s = slot_of(t, x);
    if (!s->allocated || never_freed(x)) return;
    s->allocated = false;
    t->live--;
    t->frees++;
    count(t);
}

int tnn_free_blocks_bound(struct ggml_cgraph *graph) {
    int n_nodes = ggml_graph_n_nodes(graph);
    size_t n_keys = 1;
    for (int i = 0; i < n_nodes; i++) {
        struct ggml_tensor *node = ggml_graph_node(graph, i);
        for (int j = 0; j < GGML_MAX_SRC; j++) n_keys += node->src[j] != NULL;
        n_keys += 1 + (node->view_src != NULL);
    }
    size_t size = 16;
    while (size < 2 * n_keys) size *= 2;
    struct table t = {calloc(size, sizeof(struct slot)), size - 1, 0, 0, 0, 1, false};
    if (!t.slots) return -1;

    /* leafs (sources without an op), then inputs, as ggml allocates them */
    for (int i = 0; i < n_nodes; i++) {
        struct ggml_tensor *node = ggml_graph_node(graph, i);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            if (node->src[j] && node->src[j]->op == GGML_OP_NONE) allocate(&t, node->src[j]);
        }
    }
    for (int i = 0; i < n_nodes; i++) {
        struct ggml_tensor *node = ggml_graph_node(graph, i);
        if (is_view(node)) slot_of(&t, node->view_src)->n_views++;
        if (node->flags & GGML_TENSOR_FLAG_INPUT) allocate(&t, node);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            struct ggml_tensor *src = node->src[j];
            if (!src) continue;
            slot_of(&t, src)->n_children++;
            if (src->flags & GGML_TENSOR_FLAG_INPUT) allocate(&t, src);
        }
    }

    t.started = true;
    for (int i = 0; i < n_nodes; i++) {
        struct ggml_tensor *node = ggml_graph_node(graph, i);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            if (node->src[j]) allocate(&t, node->src[j]);
        }
        place(&t, node);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            struct ggml_tensor *parent = node->src[j];
            if (!parent) continue;
            struct slot *p = slot_of(&t, parent);
            if (--p->n_children != 0 || p->n_views != 0) continue;
            if (is_view(parent)) {
                struct slot *base = slot_of(&t, parent->view_src);
                if (--base->n_views == 0 && base->n_children == 0) release(&t, parent->view_src);
            } else {
                release(&t, parent);
            }
        }
    }
    free(t.slots);
    return t.bound;
}
