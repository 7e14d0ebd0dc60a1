/* cuda_specifics.c - what a CUDA session does differently from a CPU one,
 * each behind a name that says what and a comment that says why. Every
 * function here is safe to call for a CPU session (it does nothing there).
 * Nothing here links against CUDA: ggml-cuda is a module that backends.c
 * loads at run time, so this file builds the same with GGML_CUDA on or off. */
#include <stdlib.h>
#include <string.h>

#include "tinynn_internal.h"

/* ggml-cuda puts its cuBLAS handles in TF32 tensor-op mode, which rounds f32
 * GEMM inputs to 10 mantissa bits (GPT-2-small logits drift ~1e-2 from f64).
 * f32 should mean f32, so cuBLAS's own switch turns TF32 off before cuBLAS is
 * loaded, unless the user set that switch or asked for TF32 (TINYNN_CUDA_TF32=1).
 * ggml's mmf kernels (f32 products of 4 to 16 columns) stay TF32. */
void prefer_strict_f32_gemm(void) {
    const char *allow = getenv("TINYNN_CUDA_TF32");
    if (allow && strcmp(allow, "1") == 0) return;
    setenv("NVIDIA_TF32_OVERRIDE", "0", 0);
}

/* Whether ggml_gelu already computes tanh GELU in f32 on this session's
 * backend: ggml-cuda's kernel does; the CPU's reads an f16 table, so
 * tnn_gelu_exact composes f32 ops there instead. */
bool native_gelu_is_f32(const tnn_session *s) { return s->is_cuda; }

/* The backends a session's scheduler may place ops on, best first. A CUDA
 * session has the CPU behind it for the ops ggml-cuda lacks (see
 * cpu_fallback_sources); a CPU session has only the CPU. */
int sched_backends(tnn_session *s, ggml_backend_t backends[2]) {
    backends[0] = s->backend;
    backends[1] = s->cpu_backend;
    return s->is_cuda ? 2 : 1;
}

/* The scheduler puts graph inputs on its last backend, the CPU, and then runs
 * there every op that reads only inputs: a CUDA session would compute such ops
 * on the CPU. Inputs of a CUDA session live in device memory instead. */
void place_inputs_on_device(tnn_session *s) {
    if (!s->is_cuda) return;
    for (struct ggml_tensor *t = ggml_get_first_tensor(s->ctx); t;
         t = ggml_get_next_tensor(s->ctx, t)) {
        if ((t->flags & GGML_TENSOR_FLAG_INPUT) && !t->view_src) {
            ggml_backend_sched_set_tensor_backend(s->sched, t, s->backend);
        }
    }
}

/* Sources of the graph's ops that the session's backend cannot run (0 on the
 * CPU): the scheduler runs those ops on the CPU and copies these sources,
 * which changes how the graph may be allocated (graph.c, allocate_graph) and
 * how fragmented its memory may get (graph.c, avoid_fragmentation). */
int cpu_fallback_sources(tnn_session *s) {
    int n = 0;
    if (!s->is_cuda) return 0;
    for (int i = 0; i < ggml_graph_n_nodes(s->graph); i++) {
        struct ggml_tensor *node = ggml_graph_node(s->graph, i);
        if (ggml_backend_supports_op(s->backend, node)) continue;
        for (int j = 0; j < GGML_MAX_SRC; j++) n += node->src[j] != NULL;
    }
    return n;
}
