/* index_bounds.c - index tensors (get_rows and set_rows indices) hold only
 * rows that exist. ggml asserts on a bad index in the middle of compute, so
 * every value is checked before it can reach a kernel: values uploaded into
 * an input when they are written, values in a persistent tensor (which can
 * be written before the graph that reads them exists, or by a fork) before
 * each compute, and values a graph computes only from ops known to stay in
 * range. All of them go through in_bounds below. */
#include "tinynn_internal.h"

/* The one bound check: n values, elements first.. of an index input, each in
 * [0, bound). what names them in the error ("index", "persistent index"). */
static int in_bounds(const int32_t *values, int64_t n, int64_t first, int64_t bound,
                     const char *what, const char *func) {
    for (int64_t j = 0; j < n; j++) {
        if (values[j] < 0 || values[j] >= bound) {
            return fail(TNN_ESHAPE, func, "%s %d at element %lld is outside [0, %lld)", what,
                        values[j], (long long)(first + j), (long long)bound);
        }
    }
    return TNN_OK;
}

bool note_index_input(tnn_session *s, struct ggml_tensor *idx, int64_t bound, const char *func) {
    struct ggml_tensor *base = storage_of(idx);
    if (!(base->flags & GGML_TENSOR_FLAG_INPUT) && !is_persistent(s, base)) {
        /* Computed in the graph: only an argmax or top_k whose rows are no
         * longer than the bound is known to stay in range. */
        if ((base->op == GGML_OP_ARGMAX || base->op == GGML_OP_TOP_K) && base->src[0] &&
            base->src[0]->ne[0] <= bound) {
            return true;
        }
        return fail(TNN_ESHAPE, func,
                    "indices must come from an input or persistent i32 tensor, or from an "
                    "argmax/top_k over at most %lld values",
                    (long long)bound),
               false;
    }
    if (base->type != GGML_TYPE_I32) {
        return fail(TNN_ESHAPE, func, "index values must live in an i32 tensor"), false;
    }
    if (s->n_index_inputs == TNN_MAX_INDEX_INPUTS) {
        return fail(TNN_ENOMEM, func, "too many index inputs in one graph (%d)",
                    TNN_MAX_INDEX_INPUTS),
               false;
    }
    s->index_inputs[s->n_index_inputs++] = (struct tnn_index_input){
        base, (int64_t)idx->view_offs / 4, ggml_nelements(idx), bound};
    return true;
}

/* Zeros, so that a compute before any upload reads valid rows. Persistent
 * tensors keep their values: those are checked before each compute. */
void zero_index_inputs(tnn_session *s) {
    for (int i = 0; i < s->n_index_inputs; i++) {
        struct ggml_tensor *base = s->index_inputs[i].base;
        if (base->buffer && !is_persistent(s, base)) {
            ggml_backend_tensor_memset(base, 0, 0, ggml_nbytes(base));
        }
    }
}

int check_index_upload(tnn_session *s, const struct ggml_tensor *t, const void *data,
                       int64_t nbytes, int64_t offset, const char *func) {
    const struct ggml_tensor *base = storage_of(t);
    int64_t start = (int64_t)(t->view_src ? t->view_offs : 0) + offset; /* bytes into base */
    for (int i = 0; i < s->n_index_inputs; i++) {
        const struct tnn_index_input *in = &s->index_inputs[i];
        if (in->base != base) continue;
        if (start % 4 != 0 || nbytes % 4 != 0) {
            return fail(TNN_ESHAPE, func, "index tensor writes must be whole int32 values");
        }
        /* The elements both written and registered as indices. */
        int64_t lo = in->first > start / 4 ? in->first : start / 4;
        int64_t hi = in->first + in->count < (start + nbytes) / 4 ? in->first + in->count
                                                                  : (start + nbytes) / 4;
        if (hi <= lo) continue;
        const int32_t *v = data;
        int rc = in_bounds(v + (lo - start / 4), hi - lo, lo, in->bound, "index", func);
        if (rc != TNN_OK) return rc;
    }
    return TNN_OK;
}

int check_persistent_indices(tnn_session *s, const char *func) {
    for (int i = 0; i < s->n_index_inputs; i++) {
        const struct tnn_index_input *in = &s->index_inputs[i];
        if (!is_persistent(s, in->base)) continue;
        int32_t buf[1024];
        for (int64_t done = 0; done < in->count;) {
            int64_t n = in->count - done < 1024 ? in->count - done : 1024;
            ggml_backend_tensor_get(in->base, buf, (size_t)(in->first + done) * 4, (size_t)n * 4);
            int rc = in_bounds(buf, n, in->first + done, in->bound, "persistent index", func);
            if (rc != TNN_OK) return rc;
            done += n;
        }
    }
    return TNN_OK;
}
