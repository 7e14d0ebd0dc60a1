/* graph.c - the graph: what goes into it, the scheduler that places and
 * allocates it (tnn_realize), and its computation. */
#include <stdlib.h>

#include "free_blocks.h"
#include "tinynn_internal.h"

bool new_graph(tnn_session *s) {
    if (!s->ctx_graph) {
        struct ggml_init_params p = {ggml_graph_overhead_custom(TNN_GRAPH_SIZE, false), NULL,
                                     true};
        s->ctx_graph = ggml_init(p);
        if (!s->ctx_graph) return false;
    } else {
        ggml_reset(s->ctx_graph);
    }
    s->graph = ggml_new_graph_custom(s->ctx_graph, TNN_GRAPH_SIZE, false);
    return s->graph != NULL;
}

int check_realized(tnn_session *s, const char *func) {
    if (!s->realized) return fail(TNN_ESTATE, func, "the graph is not realized (call tnn_realize)");
    return TNN_OK;
}

int compute_failed(enum ggml_status status, const char *func) {
    return fail(TNN_EBACKEND, func, "ggml compute failed: %s", ggml_status_to_string(status));
}

/* ---- building --------------------------------------------------------------------- */

int tnn_set_output(tnn_session *sess, tnn_tensor *t) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    if (!not_realized(sess, __func__)) return TNN_ESTATE;
    ggml_set_output(t);
    return TNN_OK;
}

int tnn_add_to_graph(tnn_session *sess, tnn_tensor *t) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    if (!not_realized(sess, __func__)) return TNN_ESTATE;
    if (sess->n_graph_extras == TNN_MAX_GRAPH_EXTRAS) {
        return fail(TNN_ENOMEM, __func__, "more than %d tensors added to one graph",
                    TNN_MAX_GRAPH_EXTRAS);
    }
    sess->graph_extras[sess->n_graph_extras++] = t;
    return TNN_OK;
}

int tnn_reset_for_rebuild(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (sess->sched) ggml_backend_sched_reset(sess->sched);
    ggml_reset(sess->ctx);
    sess->n_index_inputs = 0;
    sess->n_graph_extras = 0;
    sess->realized = false; /* the next tnn_realize builds a fresh graph */
    return TNN_OK;
}

/* ---- the scheduler ------------------------------------------------------------------ */

/* A scheduler for graphs of up to graph_size tensors, or NULL.
 * ggml_backend_sched_new mallocs a context buffer of graph_size * 60 tensor
 * headers (~20 kB a tensor: 950 MB of address space at TNN_GRAPH_SIZE, which is
 * why it is sized to the graph) and does not check it: a NULL buffer aborts
 * later in ggml_init. So the allocation is probed first: an address-space
 * limit or exhausted memory gives NULL here instead. */
static ggml_backend_sched_t new_sched(tnn_session *s, int graph_size) {
    size_t need = (size_t)graph_size * 30 * 2 * sizeof(struct ggml_tensor) +
                  ggml_graph_overhead_custom((size_t)graph_size, false);
    void *probe = malloc(need);
    if (!probe) return NULL;
    free(probe);
    ggml_backend_t backends[2];
    int n_backends = sched_backends(s, backends);
    ggml_backend_sched_t sched =
        ggml_backend_sched_new(backends, NULL, n_backends, (size_t)graph_size, false, false);
    s->sched_graph_size = sched ? graph_size : 0;
    return sched;
}

/* Frees the scheduler; the next tnn_realize makes a new one. */
static void drop_sched(tnn_session *s) {
    ggml_backend_sched_free(s->sched);
    s->sched = NULL;
}

/* Tensors the scheduler of the session's graph keeps track of, with room to
 * spare: nodes, their sources without an op (each counted every time it is
 * read), tnn_add_to_graph's tensors and the inputs that placement names. */
static int sched_graph_size(tnn_session *sess) {
    int64_t n = ggml_graph_n_nodes(sess->graph) + sess->n_graph_extras + 1;
    for (int i = 0; i < ggml_graph_n_nodes(sess->graph); i++) {
        struct ggml_tensor *node = ggml_graph_node(sess->graph, i);
        for (int j = 0; j < GGML_MAX_SRC; j++) {
            n += node->src[j] != NULL && node->src[j]->op == GGML_OP_NONE;
        }
    }
    for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx); t;
         t = ggml_get_next_tensor(sess->ctx, t)) {
        n += (t->flags & GGML_TENSOR_FLAG_INPUT) != 0;
    }
    n = 2 * n + 64;
    return n < TNN_GRAPH_SIZE ? (int)n : TNN_GRAPH_SIZE;
}

/* ---- realize ------------------------------------------------------------------------ */

static bool needs_weights(tnn_session *s, const char *func) {
    if (!s->root->finalized && ggml_get_first_tensor(s->root->ctx_w)) {
        return fail(TNN_ESTATE, func,
                    "persistent tensors exist but tnn_finalize_weights was not called"),
               false;
    }
    return true;
}

/* ggml's graph allocator aborts past 256 free blocks in a buffer, which a
 * graph keeping many results alive between freed ones reaches (about 300
 * outputs). Where the bound allows that many (with room to spare, and each
 * copy of a CPU fallback's source counted as a block), no result of the
 * graph is freed: nothing fragments, at the cost of compute memory, whose
 * lack is a clean error. */
static int avoid_fragmentation(tnn_session *sess, int fallback_sources) {
    int blocks = tnn_free_blocks_bound(sess->graph);
    if (blocks < 0) return fail(TNN_ENOMEM, "tnn_realize", "out of memory checking the graph");
    if (blocks + fallback_sources > TNN_MAX_FREE_BLOCKS) {
        for (int i = 0; i < ggml_graph_n_nodes(sess->graph); i++) {
            ggml_set_output(ggml_graph_node(sess->graph, i));
        }
    }
    return TNN_OK;
}

/* Places the graph on the backends and allocates its compute memory.
 * Reserve first: ggml 0.20.2's ggml_backend_sched_alloc_graph ignores a
 * failed re-reservation and then writes through the missing buffer
 * (SIGSEGV) when the compute memory cannot be allocated (a CUDA graph
 * larger than the GPU did, 2026-11-29; 0.25.3 returns false there instead,
 * but leaves the same half-placed allocator behind). After a failed reserve the
 * allocator keeps assignments without a buffer, so the scheduler is
 * replaced by a fresh one. The reserve splits the graph once more, and a
 * split rewrites the sources of ops that fall back to the CPU to copies it
 * frees at the next split: with fallbacks the second split would read them
 * (every CUDA test crashed so while inputs still lived on the CPU), so such
 * graphs allocate directly. The reserve resets the inputs' placement. */
static bool allocate_graph(tnn_session *sess, int fallback_sources) {
    ggml_backend_sched_reset(sess->sched);
    place_inputs_on_device(sess);
    bool reserve = fallback_sources == 0;
    bool reserved = !reserve || ggml_backend_sched_reserve(sess->sched, sess->graph);
    if (reserve && reserved) place_inputs_on_device(sess);
    if (!reserved || !ggml_backend_sched_alloc_graph(sess->sched, sess->graph)) {
        drop_sched(sess);
        return false;
    }
    return true;
}

int tnn_realize(tnn_session *sess, tnn_tensor *result) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(result, TNN_EINVAL);
    if (!not_realized(sess, __func__)) return TNN_ESTATE;
    if (!needs_weights(sess, __func__)) return TNN_ESTATE;
    if (!new_graph(sess)) return fail(TNN_ENOMEM, __func__, "could not create the graph");
    for (int i = 0; i < sess->n_graph_extras; i++) {
        ggml_build_forward_expand(sess->graph, sess->graph_extras[i]);
    }
    ggml_build_forward_expand(sess->graph, result);
    if (ggml_graph_n_nodes(sess->graph) == 0) {
        return fail(TNN_ESHAPE, __func__, "the graph has no operation (result is an input?)");
    }
    int fallback_sources = cpu_fallback_sources(sess);
    int rc = avoid_fragmentation(sess, fallback_sources);
    if (rc != TNN_OK) return rc;
    int graph_size = sched_graph_size(sess);
    if (sess->sched && sess->sched_graph_size < graph_size) drop_sched(sess); /* too small */
    if (!sess->sched && !(sess->sched = new_sched(sess, graph_size))) {
        return fail(TNN_ENOMEM, __func__, "could not allocate a scheduler");
    }
    if (!allocate_graph(sess, fallback_sources)) {
        return fail(TNN_ENOMEM, __func__, "could not allocate compute memory for %d nodes on %s",
                    ggml_graph_n_nodes(sess->graph), sess->is_cuda ? "CUDA" : "the CPU");
    }
    sess->realized = true;
    zero_index_inputs(sess);
    return TNN_OK;
}

/* ---- compute ------------------------------------------------------------------------ */

int tnn_compute(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    int rc = check_realized(sess, __func__);
    if (rc == TNN_OK) rc = check_persistent_indices(sess, __func__);
    if (rc != TNN_OK) return rc;
    adapt_threads(sess);
    compute_started();
    enum ggml_status status = ggml_backend_sched_graph_compute(sess->sched, sess->graph);
    compute_finished();
    if (status != GGML_STATUS_SUCCESS) return compute_failed(status, __func__);
    return TNN_OK;
}

int tnn_graph_n_nodes(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return sess->realized ? ggml_graph_n_nodes(sess->graph) : 0;
}

int tnn_graph_n_splits(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return sess->realized ? ggml_backend_sched_get_n_splits(sess->sched) : 0;
}
