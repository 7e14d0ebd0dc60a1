/*
 * tinynn.c - the shim behind tinynn.h.
 *
 * The rule that shapes this file: ggml answers bad input with GGML_ASSERT,
 * which calls abort() and takes the Python process with it. So every public
 * function checks its handles, shapes, types, offsets, states and capacities
 * before it calls ggml, and reports a failure through tnn_last_error().
 */
#define _GNU_SOURCE
#include "tinynn.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "free_blocks.h"

/* Capacities. A graph can never hold more tensors than both contexts, so a
 * graph sized to their sum never overflows (ggml asserts on overflow). */
#define TNN_MAX_COMPUTE_TENSORS 32768
#define TNN_MAX_PERSISTENT_TENSORS 16384
#define TNN_GRAPH_SIZE (TNN_MAX_COMPUTE_TENSORS + TNN_MAX_PERSISTENT_TENSORS)
#define TNN_MAX_INDEX_INPUTS 4096
#define TNN_MAX_GRAPH_EXTRAS 4096 /* tnn_add_to_graph calls per graph */
/* Free blocks in compute memory (see avoid_fragmentation); ggml aborts past 256. */
#define TNN_MAX_FREE_BLOCKS 224

/* ---- errors ------------------------------------------------------------- */

static _Thread_local char tnn_error[1024];

static int fail(int code, const char *func, const char *fmt, ...) {
    int n = snprintf(tnn_error, sizeof tnn_error, "%s: ", func);
    if (n < 0 || n >= (int)sizeof tnn_error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tnn_error + n, sizeof tnn_error - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

#define FAIL_NULL(...) (fail(0, __func__, __VA_ARGS__), (tnn_tensor *)NULL)

const char *tnn_last_error(void) { return tnn_error; }

int tnn_abi_version(void) { return TNN_ABI_VERSION; }

void *tnn_null_ptr(void) { return NULL; }

/* ---- logging ------------------------------------------------------------- */

static tnn_log_callback log_callback = NULL;
static void *log_user_data = NULL;

static void log_trampoline(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    tnn_log_callback cb = log_callback;
    if (cb) {
        cb((int)level, text, log_user_data);
    } else if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

void tnn_set_log_callback(tnn_log_callback callback, void *user_data) {
    log_user_data = user_data;
    log_callback = callback;
    ggml_log_set(log_trampoline, NULL);
}

/* ---- backends: loaded by path from the folder this library lives in ------ */

static pthread_mutex_t backend_lock = PTHREAD_MUTEX_INITIALIZER;
static bool cpu_loaded = false;
static bool cuda_tried = false;
static char cuda_reason[512];

static void library_dir(char *out, size_t size) {
    Dl_info info;
    out[0] = '\0';
    if (dladdr((void *)&tnn_abi_version, &info) && info.dli_fname) {
        snprintf(out, size, "%s", info.dli_fname);
        char *slash = strrchr(out, '/');
        if (slash) *slash = '\0';
        else snprintf(out, size, ".");
    }
}

/* Loads a backend module; false (with reason) if the file is missing or
 * does not load. dlopen first, to keep dlerror()'s message. */
static bool load_module(const char *name, char *reason, size_t reason_size) {
    char dir[PATH_MAX], path[PATH_MAX + 64];
    library_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (access(path, R_OK) != 0) {
        snprintf(reason, reason_size, "%s not found (this build has no such backend)", path);
        return false;
    }
    void *probe = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!probe) {
        snprintf(reason, reason_size, "cannot load %s: %s", path, dlerror());
        return false;
    }
    dlclose(probe);
    if (!ggml_backend_load(path)) {
        snprintf(reason, reason_size, "ggml could not register the backend in %s", path);
        return false;
    }
    return true;
}

/* The CPU module this processor runs best: libggml-cpu.so, or with
 * GGML_CPU_ALL_VARIANTS one libggml-cpu-<variant>.so per instruction set.
 * Each reports through ggml_backend_score() whether this CPU can run it (0:
 * it would fault on an instruction), so a module is never picked blind. */
static bool load_best_cpu(char *reason, size_t reason_size) {
    char dir[PATH_MAX], path[PATH_MAX + 300], best[PATH_MAX + 300] = "";
    int best_score = 0;
    library_dir(dir, sizeof dir);
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(reason, reason_size, "cannot list %s", dir);
        return false;
    }
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "libggml-cpu", 11) != 0 || n < 3 ||
            strcmp(e->d_name + n - 3, ".so") != 0) {
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) continue;
        int (*score)(void) = (int (*)(void))dlsym(h, "ggml_backend_score");
        int s = score ? score() : 1;
        dlclose(h);
        if (s > best_score) {
            best_score = s;
            snprintf(best, sizeof best, "%s", path);
        }
    }
    closedir(d);
    if (!best[0]) {
        snprintf(reason, reason_size, "no CPU backend module in %s runs on this processor", dir);
        return false;
    }
    if (!ggml_backend_load(best)) {
        snprintf(reason, reason_size, "ggml could not register the backend in %s", best);
        return false;
    }
    return true;
}

static bool ensure_cpu_backend(const char *func) {
    pthread_mutex_lock(&backend_lock);
    if (!log_callback) ggml_log_set(log_trampoline, NULL);
    if (!cpu_loaded) {
        char reason[600];
        cpu_loaded = load_best_cpu(reason, sizeof reason);
        if (!cpu_loaded) fail(TNN_EBACKEND, func, "%s", reason);
    }
    pthread_mutex_unlock(&backend_lock);
    return cpu_loaded;
}

static ggml_backend_dev_t cuda_device(void) {
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU &&
            strncmp(ggml_backend_dev_name(dev), "CUDA", 4) == 0) {
            return dev;
        }
    }
    return NULL;
}

/* ggml-cuda puts its cuBLAS handles in TF32 tensor-op mode, which rounds f32
 * GEMM inputs to 10 mantissa bits (GPT-2-small logits drift ~1e-2 from f64).
 * f32 should mean f32, so cuBLAS's own switch turns TF32 off before cuBLAS is
 * loaded, unless the user set that switch or asked for TF32 (TINYNN_CUDA_TF32=1).
 * ggml's mmf kernels (f32 products of 4 to 16 columns) stay TF32. */
static void prefer_strict_f32_gemm(void) {
    const char *allow = getenv("TINYNN_CUDA_TF32");
    if (allow && strcmp(allow, "1") == 0) return;
    setenv("NVIDIA_TF32_OVERRIDE", "0", 0);
}

/* The CUDA device, or NULL with the reason in tnn_last_error(). */
static ggml_backend_dev_t ensure_cuda_backend(const char *func) {
    if (!ensure_cpu_backend(func)) return NULL;
    pthread_mutex_lock(&backend_lock);
    if (!cuda_tried) {
        cuda_tried = true;
        prefer_strict_f32_gemm();
        if (load_module("libggml-cuda.so", cuda_reason, sizeof cuda_reason) && !cuda_device()) {
            snprintf(cuda_reason, sizeof cuda_reason,
                     "the CUDA backend loaded but found no usable CUDA device");
        }
    }
    ggml_backend_dev_t dev = cuda_device();
    pthread_mutex_unlock(&backend_lock);
    if (!dev) fail(TNN_EBACKEND, func, "CUDA is not available: %s", cuda_reason);
    return dev;
}

int tnn_cuda_available(void) { return ensure_cuda_backend(__func__) != NULL; }

int64_t tnn_type_row_size(int type, int64_t n) {
    if (type != TNN_TYPE_F32 && type != TNN_TYPE_F16 && type != TNN_TYPE_Q8_0 &&
        type != TNN_TYPE_I32) {
        return fail(TNN_EINVAL, __func__, "unsupported type %d (expected 0 f32, 1 f16, 8 q8_0, 26 i32)",
                    type);
    }
    int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (n < 0 || n % blck != 0) {
        return fail(TNN_ESHAPE, __func__, "n=%lld is not a non-negative multiple of %lld",
                    (long long)n, (long long)blck);
    }
    return (int64_t)ggml_row_size((enum ggml_type)type, n);
}

/* ---- sessions ------------------------------------------------------------ */

struct tnn_index_input {
    struct ggml_tensor *base; /* the input (or persistent) tensor that holds the indices */
    int64_t first, count;     /* which int32 elements of base are indices */
    int64_t bound;            /* their values must lie in [0, bound) */
};

struct tnn_session {
    struct tnn_session *root; /* owner of the persistent tensors (self or parent) */
    int n_forks;              /* live forks of this root */
    bool free_requested;      /* freed by the caller; memory kept for forks */
    bool is_cuda;
    ggml_backend_t backend;
    ggml_backend_t cpu_backend; /* the scheduler's fallback (== backend on CPU) */
    ggml_backend_sched_t sched; /* made by tnn_realize, sized to the graph */
    int sched_graph_size;
    int n_threads;

    struct ggml_context *ctx_w; /* persistent tensors (root only) */
    ggml_backend_buffer_t weights_buf;
    bool finalized;

    struct ggml_context *ctx;       /* compute tensors */
    struct ggml_context *ctx_graph; /* the cgraph object */
    struct ggml_cgraph *graph;
    bool realized;

    struct tnn_index_input index_inputs[TNN_MAX_INDEX_INPUTS];
    /* Tensors given to tnn_add_to_graph, expanded into a fresh graph by each
     * tnn_realize attempt, so a failed attempt leaves no nodes behind. */
    struct ggml_tensor *graph_extras[TNN_MAX_GRAPH_EXTRAS];
    int n_graph_extras;
    int n_index_inputs;

    /* Page-locked host memory for tnn_compute_io's copies (CUDA only, made
     * on first use): copies from pageable memory make the driver wait. */
    ggml_backend_buffer_t staging;
};

/* Live sessions: a freed or foreign pointer is refused, not dereferenced. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tnn_session **registry = NULL;
static size_t registry_len = 0, registry_cap = 0;

static bool registry_add(tnn_session *s) {
    pthread_mutex_lock(&registry_lock);
    if (registry_len == registry_cap) {
        size_t cap = registry_cap ? registry_cap * 2 : 16;
        tnn_session **grown = realloc(registry, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&registry_lock);
            return false;
        }
        registry = grown;
        registry_cap = cap;
    }
    registry[registry_len++] = s;
    pthread_mutex_unlock(&registry_lock);
    return true;
}

static void registry_remove(tnn_session *s) {
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < registry_len; i++) {
        if (registry[i] == s) {
            registry[i] = registry[--registry_len];
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

static bool registry_has(const tnn_session *s) {
    bool found = false;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < registry_len && !found; i++) found = registry[i] == s;
    pthread_mutex_unlock(&registry_lock);
    return found;
}

#define CHECK_SESS(sess, ret)                                                                  \
    do {                                                                                       \
        if (!(sess)) return (fail(TNN_EINVAL, __func__, "session is NULL"), ret);              \
        if (!registry_has(sess))                                                               \
            return (fail(TNN_EINVAL, __func__, "session %p is not live (freed or foreign)",    \
                         (void *)(sess)),                                                      \
                    ret);                                                                      \
    } while (0)

/* Tensor objects of a no_alloc context sit at a fixed stride from its start;
 * measured once, it lets us tell a tensor of ours from any other pointer. */
static size_t tensor_first_offset = 0, tensor_stride = 0;

static void measure_tensor_layout(void) {
    struct ggml_init_params p = {3 * ggml_tensor_overhead(), NULL, true};
    struct ggml_context *c = ggml_init(p);
    struct ggml_tensor *a = ggml_new_tensor_1d(c, GGML_TYPE_F32, 1);
    struct ggml_tensor *b = ggml_new_tensor_1d(c, GGML_TYPE_F32, 1);
    tensor_first_offset = (size_t)((char *)a - (char *)ggml_get_mem_buffer(c));
    tensor_stride = (size_t)((char *)b - (char *)a);
    ggml_free(c);
}

static bool ctx_owns(struct ggml_context *c, const struct ggml_tensor *t) {
    if (!c) return false;
    const char *base = ggml_get_mem_buffer(c);
    const char *p = (const char *)t;
    size_t used = ggml_used_mem(c);
    if (p < base + tensor_first_offset || p >= base + used) return false;
    return ((size_t)(p - base) - tensor_first_offset) % tensor_stride == 0;
}

static bool is_persistent(const tnn_session *s, const struct ggml_tensor *t) {
    return ctx_owns(s->root->ctx_w, t);
}

static bool owns(const tnn_session *s, const struct ggml_tensor *t) {
    return ctx_owns(s->ctx, t) || is_persistent(s, t);
}

/* Checks a tensor argument; on failure sets the error and returns false. */
static bool check_tensor(const tnn_session *s, const struct ggml_tensor *t, const char *func,
                         const char *what) {
    if (!t) return fail(TNN_EINVAL, func, "%s is NULL", what), false;
    if (!owns(s, t)) {
        return fail(TNN_EINVAL, func,
                    "%s (%p) is not a live tensor of this session (freed, from another session, "
                    "or from before tnn_reset_for_rebuild)",
                    what, (const void *)t),
               false;
    }
    return true;
}

#define CHECK_T(t, ret)                                     \
    do {                                                    \
        if (!check_tensor(sess, (t), __func__, #t)) return ret; \
    } while (0)

static bool room_for(tnn_session *s, int n_tensors, const char *func) {
    size_t free_bytes = ggml_get_mem_size(s->ctx) - ggml_used_mem(s->ctx);
    if (free_bytes < (size_t)n_tensors * ggml_tensor_overhead()) {
        return fail(TNN_ENOMEM, func,
                    "the compute context is full (%d tensors at most per graph); call "
                    "tnn_reset_for_rebuild",
                    TNN_MAX_COMPUTE_TENSORS),
               false;
    }
    return true;
}

static bool not_realized(tnn_session *s, const char *func) {
    if (s->realized) {
        return fail(TNN_ESTATE, func,
                    "the graph is already realized: call tnn_reset_for_rebuild to build another"),
               false;
    }
    return true;
}

/* Shared preamble of every op builder. */
#define OP_PREAMBLE(n_new)                                                   \
    CHECK_SESS(sess, NULL);                                                  \
    if (!not_realized(sess, __func__) || !room_for(sess, (n_new), __func__)) \
        return NULL

static struct ggml_context *new_compute_ctx(void) {
    struct ggml_init_params p = {TNN_MAX_COMPUTE_TENSORS * ggml_tensor_overhead(), NULL, true};
    return ggml_init(p);
}

static bool new_graph(tnn_session *s) {
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

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    return n > 8 ? 8 : (int)n;
}

static void apply_threads(ggml_backend_t cpu, int n) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(cpu));
    ggml_backend_set_n_threads_t set =
        (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg,
                                                                        "ggml_backend_set_n_threads");
    if (set) set(cpu, n);
}

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
    ggml_backend_t backends[2] = {s->backend, s->cpu_backend};
    int n_backends = s->is_cuda ? 2 : 1;
    ggml_backend_sched_t sched =
        ggml_backend_sched_new(backends, NULL, n_backends, (size_t)graph_size, false, false);
    s->sched_graph_size = sched ? graph_size : 0;
    return sched;
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

static void session_destroy(tnn_session *s) {
    if (s->staging) ggml_backend_buffer_free(s->staging);
    if (s->sched) ggml_backend_sched_free(s->sched);
    if (s->ctx) ggml_free(s->ctx);
    if (s->ctx_graph) ggml_free(s->ctx_graph);
    if (s->cpu_backend && s->cpu_backend != s->backend) ggml_backend_free(s->cpu_backend);
    if (s->backend) ggml_backend_free(s->backend);
    if (s->root == s) {
        if (s->weights_buf) ggml_backend_buffer_free(s->weights_buf);
        if (s->ctx_w) ggml_free(s->ctx_w);
    }
    free(s);
}

/* Backends, scheduler, compute context and graph of a new session. */
static tnn_session *session_create(bool cuda, tnn_session *root, const char *func) {
    ggml_backend_dev_t gpu = NULL;
    if (!ensure_cpu_backend(func)) return NULL;
    if (cuda && !(gpu = ensure_cuda_backend(func))) return NULL;
    if (!tensor_stride) measure_tensor_layout();

    tnn_session *s = calloc(1, sizeof *s);
    if (!s) return (tnn_session *)FAIL_NULL("out of host memory");
    s->root = root ? root : s;
    s->is_cuda = cuda;
    s->n_threads = root ? root->n_threads : default_threads();
    s->cpu_backend = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    s->backend = cuda ? ggml_backend_dev_init(gpu, NULL) : s->cpu_backend;
    if (!s->cpu_backend || !s->backend) {
        fail(TNN_EBACKEND, func, "could not initialise the %s backend", cuda ? "CUDA" : "CPU");
        session_destroy(s);
        return NULL;
    }
    apply_threads(s->cpu_backend, s->n_threads);

    s->ctx = new_compute_ctx();
    if (!s->ctx || !new_graph(s)) {
        fail(TNN_ENOMEM, func, "could not allocate the compute context");
        session_destroy(s);
        return NULL;
    }
    if (!root) {
        struct ggml_init_params p = {TNN_MAX_PERSISTENT_TENSORS * ggml_tensor_overhead(), NULL,
                                     true};
        s->ctx_w = ggml_init(p);
        if (!s->ctx_w) {
            fail(TNN_ENOMEM, func, "could not allocate the persistent context");
            session_destroy(s);
            return NULL;
        }
    }
    if (!registry_add(s)) {
        fail(TNN_ENOMEM, func, "out of host memory");
        session_destroy(s);
        return NULL;
    }
    return s;
}

tnn_session *tnn_session_new(int prefer_cuda) {
    return session_create(prefer_cuda != 0, NULL, __func__);
}

tnn_session *tnn_session_fork(tnn_session *parent) {
    CHECK_SESS(parent, NULL);
    tnn_session *root = parent->root;
    if (!root->finalized) {
        return (tnn_session *)FAIL_NULL("the parent's weights are not finalized");
    }
    tnn_session *s = session_create(parent->is_cuda, root, __func__);
    if (s) root->n_forks++;
    return s;
}

void tnn_session_free(tnn_session *sess) {
    if (!sess || !registry_has(sess)) return;
    registry_remove(sess);
    tnn_session *root = sess->root;
    if (root != sess) {
        session_destroy(sess);
        root->n_forks--;
        if (root->free_requested && root->n_forks == 0) session_destroy(root);
    } else if (root->n_forks > 0) {
        root->free_requested = true; /* its forks still read its weights */
    } else {
        session_destroy(root);
    }
}

const char *tnn_backend_name(tnn_session *sess) {
    CHECK_SESS(sess, NULL);
    return sess->is_cuda ? "cuda" : "cpu";
}

int tnn_set_n_threads(tnn_session *sess, int n_threads) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (n_threads < 1 || n_threads > 512) {
        return fail(TNN_EINVAL, __func__, "n_threads=%d, expected 1..512", n_threads);
    }
    sess->n_threads = n_threads;
    apply_threads(sess->cpu_backend, n_threads);
    return TNN_OK;
}

int tnn_get_n_threads(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return sess->n_threads;
}

int tnn_device_memory(tnn_session *sess, int64_t *free_bytes, int64_t *total_bytes) {
    CHECK_SESS(sess, TNN_EINVAL);
    size_t f = 0, t = 0;
    ggml_backend_dev_memory(ggml_backend_get_device(sess->backend), &f, &t);
    if (free_bytes) *free_bytes = (int64_t)f;
    if (total_bytes) *total_bytes = (int64_t)t;
    return TNN_OK;
}

/* ---- tensors ------------------------------------------------------------- */

static bool valid_type(int type) {
    return type == TNN_TYPE_F32 || type == TNN_TYPE_F16 || type == TNN_TYPE_Q8_0 ||
           type == TNN_TYPE_I32;
}

/* Checks a shape for a new tensor: positive axes, ne0 a multiple of the
 * type's block, and a byte size that cannot overflow. */
/* Bytes of a dense tensor of this type and shape, exactly; false when that
 * overflows int64 (size_t products inside ggml would wrap silently). */
static bool dense_bytes(int type, const int64_t ne[4], int64_t *bytes) {
    int64_t n = (int64_t)ggml_type_size((enum ggml_type)type);
    if (__builtin_mul_overflow(n, ne[0] / ggml_blck_size((enum ggml_type)type), &n)) return false;
    for (int i = 1; i < 4; i++) {
        if (__builtin_mul_overflow(n, ne[i], &n)) return false;
    }
    *bytes = n;
    return true;
}

static bool check_new_shape(int type, const int64_t ne[4], const char *func) {
    if (!valid_type(type)) {
        return fail(TNN_EINVAL, func, "unsupported type %d (expected 0 f32, 1 f16, 8 q8_0, 26 i32)",
                    type),
               false;
    }
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) {
            return fail(TNN_ESHAPE, func, "ne[%d]=%lld must be positive", i, (long long)ne[i]),
                   false;
        }
    }
    int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (ne[0] % blck != 0) {
        return fail(TNN_ESHAPE, func, "ne0=%lld must be a multiple of %lld for type %s",
                    (long long)ne[0], (long long)blck, ggml_type_name((enum ggml_type)type)),
               false;
    }
    /* Exact: ggml_row_size is a size_t product that wraps (ne0 = 2^62 f32 gives
     * 0 bytes, and a tensor that claims 2^62 elements in no memory). */
    int64_t bytes;
    if (!dense_bytes(type, ne, &bytes) || bytes > INT64_MAX / 4) {
        return fail(TNN_ESHAPE, func, "shape [%lld, %lld, %lld, %lld] is too large",
                    (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3]),
               false;
    }
    return true;
}

static struct ggml_tensor *new_tensor(struct ggml_context *c, int type, const int64_t ne[4]) {
    int n_dims = 4;
    while (n_dims > 1 && ne[n_dims - 1] == 1) n_dims--;
    return ggml_new_tensor(c, (enum ggml_type)type, n_dims, ne);
}

static tnn_tensor *persistent(tnn_session *sess, int type, int64_t ne0, int64_t ne1, int64_t ne2,
                              int64_t ne3, const char *func) {
    CHECK_SESS(sess, NULL);
    if (sess->root != sess) {
        return fail(TNN_ESTATE, func, "a forked session cannot declare persistent tensors"), NULL;
    }
    if (sess->finalized) {
        return fail(TNN_ESTATE, func, "weights are already finalized: declare persistent tensors "
                                      "before tnn_finalize_weights"),
               NULL;
    }
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    if (!check_new_shape(type, ne, func)) return NULL;
    if (ggml_get_mem_size(sess->ctx_w) - ggml_used_mem(sess->ctx_w) < ggml_tensor_overhead()) {
        return fail(TNN_ENOMEM, func, "at most %d persistent tensors per session",
                    TNN_MAX_PERSISTENT_TENSORS),
               NULL;
    }
    return new_tensor(sess->ctx_w, type, ne);
}

tnn_tensor *tnn_input_2d_f32_persistent(tnn_session *sess, int64_t rows, int64_t cols) {
    return persistent(sess, TNN_TYPE_F32, cols, rows, 1, 1, __func__);
}

tnn_tensor *tnn_input_1d_f32_persistent(tnn_session *sess, int64_t n) {
    return persistent(sess, TNN_TYPE_F32, n, 1, 1, 1, __func__);
}

tnn_tensor *tnn_input_typed_persistent(tnn_session *sess, int type, int64_t ne0, int64_t ne1,
                                       int64_t ne2, int64_t ne3) {
    return persistent(sess, type, ne0, ne1, ne2, ne3, __func__);
}

int tnn_finalize_weights(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (sess->root != sess) return fail(TNN_ESTATE, __func__, "a forked session has no weights");
    if (sess->finalized) return fail(TNN_ESTATE, __func__, "weights are already finalized");
    if (!ggml_get_first_tensor(sess->ctx_w)) {
        return fail(TNN_ESTATE, __func__, "no persistent tensor was declared");
    }
    sess->weights_buf = ggml_backend_alloc_ctx_tensors(sess->ctx_w, sess->backend);
    if (!sess->weights_buf) {
        size_t total = 0;
        for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx_w); t;
             t = ggml_get_next_tensor(sess->ctx_w, t)) {
            total += ggml_nbytes(t);
        }
        return fail(TNN_ENOMEM, __func__, "could not allocate %.1f MiB of %s memory for the weights",
                    (double)total / (1 << 20), sess->is_cuda ? "CUDA device" : "host");
    }
    /* Caches must start defined; the original assumed zeros it never wrote. */
    ggml_backend_buffer_clear(sess->weights_buf, 0);
    sess->finalized = true;
    return TNN_OK;
}

int64_t tnn_weights_nbytes(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    tnn_session *r = sess->root;
    return r->weights_buf ? (int64_t)ggml_backend_buffer_get_size(r->weights_buf) : 0;
}

static tnn_tensor *compute_input(tnn_session *sess, int type, int64_t ne0, int64_t ne1,
                                 int64_t ne2, int64_t ne3, const char *func) {
    CHECK_SESS(sess, NULL);
    if (!not_realized(sess, func) || !room_for(sess, 1, func)) return NULL;
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    if (!check_new_shape(type, ne, func)) return NULL;
    struct ggml_tensor *t = new_tensor(sess->ctx, type, ne);
    ggml_set_input(t);
    /* ggml's allocator frees an input after its last reader and hands the memory
     * to later nodes: an input not uploaded again would then feed the next compute
     * whatever landed there. Outputs are never reused, so inputs keep their values. */
    ggml_set_output(t);
    return t;
}

tnn_tensor *tnn_input_1d_i32(tnn_session *sess, int64_t n) {
    return compute_input(sess, TNN_TYPE_I32, n, 1, 1, 1, __func__);
}

tnn_tensor *tnn_input_2d_f32(tnn_session *sess, int64_t rows, int64_t cols) {
    return compute_input(sess, TNN_TYPE_F32, cols, rows, 1, 1, __func__);
}

tnn_tensor *tnn_input_typed(tnn_session *sess, int type, int64_t ne0, int64_t ne1, int64_t ne2,
                            int64_t ne3) {
    return compute_input(sess, type, ne0, ne1, ne2, ne3, __func__);
}

int tnn_tensor_info(tnn_session *sess, tnn_tensor *t, int64_t *ne, int64_t *nb, int *type) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    for (int i = 0; i < 4; i++) {
        if (ne) ne[i] = t->ne[i];
        if (nb) nb[i] = (int64_t)t->nb[i];
    }
    if (type) *type = (int)t->type;
    return TNN_OK;
}

int tnn_set_name(tnn_session *sess, tnn_tensor *t, const char *name) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    if (!name) return fail(TNN_EINVAL, __func__, "name is NULL");
    ggml_set_name(t, name);
    return TNN_OK;
}

/* ---- op checks ------------------------------------------------------------- */

static const char *shape_str(const struct ggml_tensor *t, char *buf, size_t size) {
    snprintf(buf, size, "%s [%lld, %lld, %lld, %lld]", ggml_type_name(t->type), (long long)t->ne[0],
             (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    return buf;
}

#define SHAPE(t) shape_str((t), (char[96]){0}, 96)

static bool want_type(const struct ggml_tensor *t, enum ggml_type type, const char *func,
                      const char *what) {
    if (t->type != type) {
        return fail(TNN_ESHAPE, func, "%s is %s, expected %s", what, SHAPE(t),
                    ggml_type_name(type)),
               false;
    }
    return true;
}

static bool want_float(const struct ggml_tensor *t, const char *func, const char *what) {
    if (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16) {
        return fail(TNN_ESHAPE, func, "%s is %s, expected f32 or f16", what, SHAPE(t)), false;
    }
    return true;
}

/* Elements of each row adjacent in memory (what most CPU kernels need). */
static bool want_dense_rows(const struct ggml_tensor *t, const char *func, const char *what) {
    if (t->nb[0] != ggml_type_size(t->type)) {
        return fail(TNN_ESHAPE, func, "%s must have adjacent elements along ne0 (nb0=%zu)", what,
                    t->nb[0]),
               false;
    }
    return true;
}

static bool want_contiguous(const struct ggml_tensor *t, const char *func, const char *what) {
    if (!ggml_is_contiguous(t)) {
        return fail(TNN_ESHAPE, func, "%s %s must be contiguous (use tnn_cont)", what, SHAPE(t)),
               false;
    }
    return true;
}

/* What most ops on f32 data need of an operand. */
static bool want_contiguous_f32(const struct ggml_tensor *t, const char *func, const char *what) {
    return want_type(t, GGML_TYPE_F32, func, what) && want_contiguous(t, func, what);
}

/* Registers an I32 tensor (or a contiguous view of one) whose values index
 * rows of something of size bound; uploads to its base are checked against
 * the bound, since ggml asserts on a bad index in the middle of compute. */
static bool note_index_input(tnn_session *s, struct ggml_tensor *idx, int64_t bound,
                             const char *func) {
    struct ggml_tensor *base = idx->view_src ? idx->view_src : idx;
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

/* ---- ops ------------------------------------------------------------------- */

tnn_tensor *tnn_get_rows(tnn_session *sess, tnn_tensor *table, tnn_tensor *idx) {
    OP_PREAMBLE(1);
    CHECK_T(table, NULL);
    CHECK_T(idx, NULL);
    if (table->type != GGML_TYPE_F32 && table->type != GGML_TYPE_F16 &&
        table->type != GGML_TYPE_Q8_0) {
        return FAIL_NULL("table is %s, expected f32, f16 or q8_0", SHAPE(table));
    }
    if (!want_type(idx, GGML_TYPE_I32, __func__, "idx")) return NULL;
    if (idx->ne[2] != 1 || idx->ne[3] != 1 || table->ne[2] != idx->ne[1] ||
        table->ne[3] != 1) {
        return FAIL_NULL("table %s and idx %s do not fit: expected idx [n] or [n, table.ne2]",
                         SHAPE(table), SHAPE(idx));
    }
    if (!want_dense_rows(table, __func__, "table") || !want_contiguous(idx, __func__, "idx")) {
        return NULL;
    }
    if (!note_index_input(sess, idx, table->ne[1], __func__)) return NULL;
    int64_t out[4] = {table->ne[0], idx->ne[0], idx->ne[1], idx->ne[2]};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    return ggml_get_rows(sess->ctx, table, idx);
}

static tnn_tensor *binary(tnn_session *sess, tnn_tensor *a, tnn_tensor *b, bool is_add,
                          const char *func) {
    CHECK_SESS(sess, NULL);
    if (!not_realized(sess, func) || !room_for(sess, 1, func)) return NULL;
    if (!check_tensor(sess, a, func, "a") || !check_tensor(sess, b, func, "b")) return NULL;
    if (!want_type(a, GGML_TYPE_F32, func, "a") || !want_type(b, GGML_TYPE_F32, func, "b") ||
        !want_dense_rows(a, func, "a") || !want_dense_rows(b, func, "b")) {
        return NULL;
    }
    if (!ggml_can_repeat(b, a)) {
        return fail(TNN_ESHAPE, func,
                    "b %s cannot be broadcast to a %s: each a.ne[i] must be a multiple of b.ne[i]",
                    SHAPE(b), SHAPE(a)),
               NULL;
    }
    return is_add ? ggml_add(sess->ctx, a, b) : ggml_mul(sess->ctx, a, b);
}

tnn_tensor *tnn_add(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    return binary(sess, a, b, true, __func__);
}

tnn_tensor *tnn_mul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    return binary(sess, a, b, false, __func__);
}

tnn_tensor *tnn_matmul(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (a->type != GGML_TYPE_F32 && a->type != GGML_TYPE_F16 && a->type != GGML_TYPE_Q8_0) {
        return FAIL_NULL("a is %s, expected f32, f16 or q8_0", SHAPE(a));
    }
    if (!want_type(b, GGML_TYPE_F32, __func__, "b")) return NULL;
    if (a->ne[0] != b->ne[0] || b->ne[2] % a->ne[2] != 0 || b->ne[3] % a->ne[3] != 0) {
        return FAIL_NULL("a %s and b %s do not fit: need a.ne0 == b.ne0 and b.ne2, b.ne3 "
                         "multiples of a.ne2, a.ne3",
                         SHAPE(a), SHAPE(b));
    }
    if (ggml_is_transposed(a)) return FAIL_NULL("a %s must not be transposed", SHAPE(a));
    if (!want_dense_rows(a, __func__, "a") || !want_dense_rows(b, __func__, "b")) return NULL;
    int64_t out[4] = {a->ne[1], b->ne[1], b->ne[2], b->ne[3]};
    if (!check_new_shape(GGML_TYPE_F32, out, __func__)) return NULL;
    return ggml_mul_mat(sess->ctx, a, b);
}

tnn_tensor *tnn_scale(tnn_session *sess, tnn_tensor *a, double s) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (!isfinite(s)) return FAIL_NULL("scale %g is not finite", s);
    /* ggml_scale asserts rows evenly strided, stricter than ggml_is_contiguous,
     * which skips axes of size 1 (a transposed [1, n] passes it and fails this). */
    if (a->nb[2] != a->nb[1] * a->ne[1] || a->nb[3] != a->nb[2] * a->ne[2]) {
        return FAIL_NULL("a %s has uneven strides (use tnn_cont)", SHAPE(a));
    }
    return ggml_scale(sess->ctx, a, (float)s);
}

tnn_tensor *tnn_diag_mask_inf(tnn_session *sess, tnn_tensor *a, int64_t n_past) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (n_past < 0 || n_past > INT_MAX) return FAIL_NULL("n_past=%lld must be >= 0", (long long)n_past);
    return ggml_diag_mask_inf(sess->ctx, a, (int)n_past);
}

tnn_tensor *tnn_softmax(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    return ggml_soft_max(sess->ctx, a);
}

tnn_tensor *tnn_soft_max_ext(tnn_session *sess, tnn_tensor *a, tnn_tensor *mask, double scale,
                             double max_bias) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (!isfinite(scale) || !isfinite(max_bias) || max_bias < 0) {
        return FAIL_NULL("scale=%g and max_bias=%g must be finite, max_bias >= 0", scale, max_bias);
    }
    if (max_bias > 0 && !mask) return FAIL_NULL("max_bias=%g needs a mask", max_bias);
    if (mask) {
        CHECK_T(mask, NULL);
        if (!want_float(mask, __func__, "mask") || !want_contiguous(mask, __func__, "mask")) {
            return NULL;
        }
        if (mask->ne[0] != a->ne[0] || mask->ne[1] < a->ne[1] || a->ne[2] % mask->ne[2] != 0 ||
            a->ne[3] % mask->ne[3] != 0) {
            return FAIL_NULL("mask %s does not fit a %s: need mask.ne0 == a.ne0, mask.ne1 >= "
                             "a.ne1, a.ne2 and a.ne3 multiples of mask.ne2 and mask.ne3",
                             SHAPE(mask), SHAPE(a));
        }
    }
    return ggml_soft_max_ext(sess->ctx, a, mask, (float)scale, (float)max_bias);
}

tnn_tensor *tnn_layer_norm(tnn_session *sess, tnn_tensor *x, tnn_tensor *gamma, tnn_tensor *beta,
                           double eps) {
    OP_PREAMBLE(3);
    CHECK_T(x, NULL);
    if (!want_type(x, GGML_TYPE_F32, __func__, "x") || !want_dense_rows(x, __func__, "x")) {
        return NULL;
    }
    if (!(eps >= 0) || !isfinite(eps)) return FAIL_NULL("eps=%g must be finite and >= 0", eps);
    tnn_tensor *params[2] = {gamma, beta};
    const char *names[2] = {"gamma", "beta"};
    for (int i = 0; i < 2; i++) {
        if (!params[i]) continue;
        if (!check_tensor(sess, params[i], __func__, names[i]) ||
            !want_type(params[i], GGML_TYPE_F32, __func__, names[i]) ||
            !want_dense_rows(params[i], __func__, names[i])) {
            return NULL;
        }
        if (params[i]->ne[0] != x->ne[0] || !ggml_can_repeat(params[i], x)) {
            return FAIL_NULL("%s %s does not fit x %s: expected [%lld]", names[i],
                             SHAPE(params[i]), SHAPE(x), (long long)x->ne[0]);
        }
    }
    struct ggml_tensor *y = ggml_norm(sess->ctx, x, (float)eps);
    if (gamma) y = ggml_mul(sess->ctx, y, gamma);
    if (beta) y = ggml_add(sess->ctx, y, beta);
    return y;
}

tnn_tensor *tnn_gelu(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    return ggml_gelu(sess->ctx, a);
}

tnn_tensor *tnn_gelu_exact(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(6);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (sess->is_cuda) return ggml_gelu(sess->ctx, a);
    /* 0.5 x (1 + tanh(c x (1 + 0.044715 x^2))), c = sqrt(2 / pi) */
    const float c = 0.7978845608028654f;
    struct ggml_context *ctx = sess->ctx;
    struct ggml_tensor *inner = ggml_scale_bias(ctx, ggml_sqr(ctx, a), 0.044715f * c, c);
    struct ggml_tensor *t = ggml_tanh(ctx, ggml_mul(ctx, a, inner));
    return ggml_mul(ctx, a, ggml_scale_bias(ctx, t, 0.5f, 0.5f));
}

tnn_tensor *tnn_concat(tnn_session *sess, tnn_tensor *a, tnn_tensor *b, int dim) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (dim < 0 || dim > 3) return FAIL_NULL("dim=%d, expected 0..3", dim);
    if (!want_type(a, GGML_TYPE_F32, __func__, "a") || !want_type(b, GGML_TYPE_F32, __func__, "b")) {
        return NULL;
    }
    for (int d = 0; d < 4; d++) {
        if (d != dim && a->ne[d] != b->ne[d]) {
            return FAIL_NULL("a %s and b %s differ on axis %d (only axis %d may differ)", SHAPE(a),
                             SHAPE(b), d, dim);
        }
    }
    int64_t out[4] = {a->ne[0], a->ne[1], a->ne[2], a->ne[3]};
    out[dim] += b->ne[dim];
    if (!check_new_shape(a->type, out, __func__)) return NULL;
    return ggml_concat(sess->ctx, a, b, dim);
}

/* A view [ne0..ne3] with byte strides nb1..nb3 at offset must lie inside a:
 * both ggml's own rule (dense size + offset) and the real strided extent. */
static bool check_view(const struct ggml_tensor *a, const int64_t ne[4], const int64_t nb[4],
                       int64_t offset, const char *func) {
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) {
            return fail(TNN_ESHAPE, func, "view ne[%d]=%lld must be positive", i, (long long)ne[i]),
                   false;
        }
        if (nb[i] <= 0) {
            return fail(TNN_ESHAPE, func, "view nb[%d]=%lld must be positive", i, (long long)nb[i]),
                   false;
        }
    }
    if (offset < 0) return fail(TNN_ESHAPE, func, "offset=%lld is negative", (long long)offset), false;
    int64_t blck = ggml_blck_size(a->type);
    if (ne[0] % blck != 0) {
        return fail(TNN_ESHAPE, func, "view ne0=%lld is not a multiple of the block size %lld",
                    (long long)ne[0], (long long)blck),
               false;
    }
    /* Element-aligned: a view between elements mixes bytes of two values (an
     * index made that way escapes the upload checks) and misaligns CUDA loads. */
    int64_t esize = (int64_t)ggml_type_size(a->type);
    bool misaligned = offset % esize != 0;
    for (int i = 1; i < 4; i++) misaligned = misaligned || (ne[i] > 1 && nb[i] % esize != 0);
    if (misaligned) {
        return fail(TNN_ESHAPE, func,
                    "view offset %lld and strides [%lld, %lld, %lld] must be multiples of the "
                    "%lld-byte element of %s",
                    (long long)offset, (long long)nb[1], (long long)nb[2], (long long)nb[3],
                    (long long)esize, ggml_type_name(a->type)),
               false;
    }
    /* Exact integers: the last byte the view reaches, densely and by its strides. */
    int64_t dense, extent = esize * (ne[0] / blck), end;
    bool overflow = !dense_bytes(a->type, ne, &dense);
    for (int i = 1; i < 4 && !overflow; i++) {
        int64_t step;
        overflow = __builtin_mul_overflow(ne[i] - 1, nb[i], &step) ||
                   __builtin_add_overflow(extent, step, &extent);
    }
    overflow = overflow || __builtin_add_overflow(offset, dense > extent ? dense : extent, &end);
    int64_t size = (int64_t)ggml_nbytes(a);
    if (overflow || end > size) {
        return fail(TNN_ESHAPE, func,
                    "view [%lld, %lld, %lld, %lld] with strides [%lld, %lld, %lld] at offset %lld "
                    "reaches byte %s%lld of a tensor of %lld bytes",
                    (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3],
                    (long long)nb[1], (long long)nb[2], (long long)nb[3], (long long)offset,
                    overflow ? "> " : "", (long long)(overflow ? INT64_MAX : end),
                    (long long)size),
               false;
    }
    return true;
}

tnn_tensor *tnn_view_1d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, 1, 1, 1};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), 1, 1, 1};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_1d(sess->ctx, a, ne0, (size_t)offset);
}

tnn_tensor *tnn_view_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t nb1,
                        int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, 1, 1};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb1 * ne1, nb1 * ne1};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_2d(sess->ctx, a, ne0, ne1, (size_t)nb1, (size_t)offset);
}

tnn_tensor *tnn_view_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                        int64_t nb1, int64_t nb2, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, ne2, 1};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb2, nb2 * ne2};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_3d(sess->ctx, a, ne0, ne1, ne2, (size_t)nb1, (size_t)nb2, (size_t)offset);
}

tnn_tensor *tnn_view_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                        int64_t ne3, int64_t nb1, int64_t nb2, int64_t nb3, int64_t offset) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    int64_t nb[4] = {(int64_t)ggml_type_size(a->type), nb1, nb2, nb3};
    if (!check_view(a, ne, nb, offset, __func__)) return NULL;
    return ggml_view_4d(sess->ctx, a, ne0, ne1, ne2, ne3, (size_t)nb1, (size_t)nb2, (size_t)nb3,
                        (size_t)offset);
}

tnn_tensor *tnn_reshape_4d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2,
                           int64_t ne3) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous(a, __func__, "a")) return NULL;
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    for (int i = 0; i < 4; i++) {
        if (ne[i] <= 0) return FAIL_NULL("ne[%d]=%lld must be positive", i, (long long)ne[i]);
    }
    int64_t n = ne0;
    bool overflow = __builtin_mul_overflow(n, ne1, &n) || __builtin_mul_overflow(n, ne2, &n) ||
                    __builtin_mul_overflow(n, ne3, &n);
    if (overflow || n != ggml_nelements(a) || ne0 % ggml_blck_size(a->type) != 0) {
        return FAIL_NULL("cannot reshape %s (%lld elements) to [%lld, %lld, %lld, %lld]", SHAPE(a),
                         (long long)ggml_nelements(a), (long long)ne0, (long long)ne1,
                         (long long)ne2, (long long)ne3);
    }
    return ggml_reshape_4d(sess->ctx, a, ne0, ne1, ne2, ne3);
}

tnn_tensor *tnn_reshape_3d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1,
                           int64_t ne2) {
    return tnn_reshape_4d(sess, a, ne0, ne1, ne2, 1);
}

tnn_tensor *tnn_reshape_2d(tnn_session *sess, tnn_tensor *a, int64_t ne0, int64_t ne1) {
    return tnn_reshape_4d(sess, a, ne0, ne1, 1, 1);
}

tnn_tensor *tnn_permute(tnn_session *sess, tnn_tensor *a, int ax0, int ax1, int ax2, int ax3) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    int axes[4] = {ax0, ax1, ax2, ax3};
    int seen = 0;
    for (int i = 0; i < 4; i++) {
        if (axes[i] < 0 || axes[i] > 3 || (seen & (1 << axes[i]))) {
            return FAIL_NULL("(%d, %d, %d, %d) is not a permutation of 0..3", ax0, ax1, ax2, ax3);
        }
        seen |= 1 << axes[i];
    }
    return ggml_permute(sess->ctx, a, ax0, ax1, ax2, ax3);
}

tnn_tensor *tnn_transpose(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    return ggml_transpose(sess->ctx, a);
}

tnn_tensor *tnn_cont(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_float(a, __func__, "a")) return NULL;
    return ggml_cont(sess->ctx, a);
}

tnn_tensor *tnn_cpy(tnn_session *sess, tnn_tensor *a, tnn_tensor *b) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    CHECK_T(b, NULL);
    if (!want_float(a, __func__, "a") || !want_float(b, __func__, "b")) return NULL;
    if (ggml_nelements(a) != ggml_nelements(b)) {
        return FAIL_NULL("a %s and b %s hold different element counts", SHAPE(a), SHAPE(b));
    }
    return ggml_cpy(sess->ctx, a, b);
}

tnn_tensor *tnn_cast(tnn_session *sess, tnn_tensor *a, int type) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_float(a, __func__, "a")) return NULL;
    if (type != TNN_TYPE_F32 && type != TNN_TYPE_F16) {
        return FAIL_NULL("type %d: expected 0 (f32) or 1 (f16)", type);
    }
    return ggml_cast(sess->ctx, a, (enum ggml_type)type);
}

tnn_tensor *tnn_set_rows(tnn_session *sess, tnn_tensor *dst, tnn_tensor *src, tnn_tensor *idx) {
    OP_PREAMBLE(1);
    CHECK_T(dst, NULL);
    CHECK_T(src, NULL);
    CHECK_T(idx, NULL);
    if (!want_float(dst, __func__, "dst") || !want_type(src, GGML_TYPE_F32, __func__, "src") ||
        !want_type(idx, GGML_TYPE_I32, __func__, "idx") ||
        !want_contiguous(idx, __func__, "idx") || !want_dense_rows(dst, __func__, "dst") ||
        !want_dense_rows(src, __func__, "src")) {
        return NULL;
    }
    if (dst->ne[0] != src->ne[0] || dst->ne[2] != src->ne[2] || dst->ne[3] != src->ne[3] ||
        src->ne[1] != idx->ne[0] || idx->ne[1] != 1 || idx->ne[2] != 1 || idx->ne[3] != 1) {
        return FAIL_NULL("dst %s, src %s and idx %s do not fit: need dst [n, rows, a, b], "
                         "src [n, k, a, b], idx [k]",
                         SHAPE(dst), SHAPE(src), SHAPE(idx));
    }
    if (!note_index_input(sess, idx, dst->ne[1], __func__)) return NULL;
    return ggml_set_rows(sess->ctx, dst, src, idx);
}

tnn_tensor *tnn_flash_attn_ext(tnn_session *sess, tnn_tensor *q, tnn_tensor *k, tnn_tensor *v,
                               tnn_tensor *mask, double scale) {
    OP_PREAMBLE(1);
    CHECK_T(q, NULL);
    CHECK_T(k, NULL);
    CHECK_T(v, NULL);
    if (!want_type(q, GGML_TYPE_F32, __func__, "q") || !want_float(k, __func__, "k") ||
        !want_float(v, __func__, "v") || !want_dense_rows(q, __func__, "q") ||
        !want_dense_rows(k, __func__, "k") || !want_dense_rows(v, __func__, "v")) {
        return NULL;
    }
    if (k->type != v->type) return FAIL_NULL("k %s and v %s must have one type", SHAPE(k), SHAPE(v));
    if (q->ne[0] != k->ne[0] || v->ne[0] != k->ne[0] || k->ne[1] != v->ne[1] ||
        k->ne[2] != v->ne[2] || q->ne[2] % k->ne[2] != 0 || q->ne[3] != k->ne[3] ||
        q->ne[3] != v->ne[3]) {
        return FAIL_NULL("q %s, k %s, v %s do not fit: need q [d, n_q, h, B], k and v "
                         "[d, n_kv, h_kv, B] with h a multiple of h_kv",
                         SHAPE(q), SHAPE(k), SHAPE(v));
    }
    if (!isfinite(scale)) return FAIL_NULL("scale %g is not finite", scale);
    if (mask) {
        CHECK_T(mask, NULL);
        if (!want_type(mask, GGML_TYPE_F16, __func__, "mask") ||
            !want_contiguous(mask, __func__, "mask")) {
            return NULL;
        }
        if (mask->ne[0] != k->ne[1] || mask->ne[1] < q->ne[1] || q->ne[2] % mask->ne[2] != 0 ||
            q->ne[3] % mask->ne[3] != 0) {
            return FAIL_NULL("mask %s does not fit q %s and k %s: need mask [n_kv, >= n_q]",
                             SHAPE(mask), SHAPE(q), SHAPE(k));
        }
    }
    struct ggml_tensor *r = ggml_flash_attn_ext(sess->ctx, q, k, v, mask, (float)scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(r, GGML_PREC_F32);
    return r;
}

tnn_tensor *tnn_argmax(tnn_session *sess, tnn_tensor *a) {
    OP_PREAMBLE(1);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (a->ne[2] != 1 || a->ne[3] != 1) return FAIL_NULL("a %s must be a matrix", SHAPE(a));
    if (a->ne[0] > INT32_MAX) return FAIL_NULL("a %s: rows longer than 2^31-1", SHAPE(a));
    return ggml_argmax(sess->ctx, a);
}

tnn_tensor *tnn_top_k(tnn_session *sess, tnn_tensor *a, int64_t k) {
    OP_PREAMBLE(2);
    CHECK_T(a, NULL);
    if (!want_contiguous_f32(a, __func__, "a")) return NULL;
    if (k < 1 || k > a->ne[0] || k > INT32_MAX) {
        return FAIL_NULL("k=%lld, expected 1..%lld", (long long)k,
                         (long long)(a->ne[0] < INT32_MAX ? a->ne[0] : INT32_MAX));
    }
    return ggml_top_k(sess->ctx, a, (int)k);
}

/* ---- graph ------------------------------------------------------------------ */

int tnn_set_output(tnn_session *sess, tnn_tensor *t) {
    CHECK_SESS(sess, TNN_EINVAL);
    CHECK_T(t, TNN_EINVAL);
    if (!not_realized(sess, __func__)) return TNN_ESTATE;
    ggml_set_output(t);
    return TNN_OK;
}

static bool needs_weights(tnn_session *s, const char *func) {
    if (!s->root->finalized && ggml_get_first_tensor(s->root->ctx_w)) {
        return fail(TNN_ESTATE, func,
                    "persistent tensors exist but tnn_finalize_weights was not called"),
               false;
    }
    return true;
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

/* Fills index inputs with zeros so a compute before any upload reads valid
 * rows. */
static void zero_index_inputs(tnn_session *s) {
    for (int i = 0; i < s->n_index_inputs; i++) {
        struct ggml_tensor *base = s->index_inputs[i].base;
        if (base->buffer && !is_persistent(s, base)) {
            ggml_backend_tensor_memset(base, 0, 0, ggml_nbytes(base));
        }
    }
}

/* The scheduler puts graph inputs on its last backend, the CPU, and then runs
 * there every op that reads only inputs: a CUDA session would compute such ops
 * on the CPU. Inputs of a CUDA session live in device memory instead. */
static void place_inputs_on_device(tnn_session *sess) {
    for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx); t;
         t = ggml_get_next_tensor(sess->ctx, t)) {
        if ((t->flags & GGML_TENSOR_FLAG_INPUT) && !t->view_src) {
            ggml_backend_sched_set_tensor_backend(sess->sched, t, sess->backend);
        }
    }
}

/* Sources of the graph's ops that the session's backend cannot run (0 on the
 * CPU): the scheduler runs those ops on the CPU and copies these sources. */
static int cpu_fallback_sources(tnn_session *sess) {
    int n = 0;
    if (!sess->is_cuda) return 0;
    for (int i = 0; i < ggml_graph_n_nodes(sess->graph); i++) {
        struct ggml_tensor *node = ggml_graph_node(sess->graph, i);
        if (ggml_backend_supports_op(sess->backend, node)) continue;
        for (int j = 0; j < GGML_MAX_SRC; j++) n += node->src[j] != NULL;
    }
    return n;
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
    if (sess->sched && sess->sched_graph_size < graph_size) {
        ggml_backend_sched_free(sess->sched); /* made for a smaller graph */
        sess->sched = NULL;
    }
    if (!sess->sched && !(sess->sched = new_sched(sess, graph_size))) {
        return fail(TNN_ENOMEM, __func__, "could not allocate a scheduler");
    }
    ggml_backend_sched_reset(sess->sched);
    if (sess->is_cuda) place_inputs_on_device(sess);
    /* Reserve first: ggml 0.20.2's ggml_backend_sched_alloc_graph ignores a
     * failed re-reservation and then writes through the missing buffer
     * (SIGSEGV) when the compute memory cannot be allocated (a CUDA graph
     * larger than the GPU did, 2026-11-29). After a failed reserve the
     * allocator keeps assignments without a buffer, so the scheduler is
     * replaced by a fresh one. The reserve splits the graph once more, and a
     * split rewrites the sources of ops that fall back to the CPU to copies it
     * frees at the next split: with fallbacks the second split would read them
     * (every CUDA test crashed so while inputs still lived on the CPU), so such
     * graphs allocate directly. The reserve resets the inputs' placement. */
    bool reserve = fallback_sources == 0;
    bool reserved = !reserve || ggml_backend_sched_reserve(sess->sched, sess->graph);
    if (reserve && reserved && sess->is_cuda) place_inputs_on_device(sess);
    if (!reserved || !ggml_backend_sched_alloc_graph(sess->sched, sess->graph)) {
        ggml_backend_sched_free(sess->sched);
        sess->sched = NULL; /* made again by the next realize */
        return fail(TNN_ENOMEM, __func__, "could not allocate compute memory for %d nodes on %s",
                    ggml_graph_n_nodes(sess->graph), sess->is_cuda ? "CUDA" : "the CPU");
    }
    sess->realized = true;
    zero_index_inputs(sess);
    return TNN_OK;
}

/* Persistent index tensors can be written before the graph that reads them
 * exists, or by a fork: their values are checked before every compute. */
static int check_persistent_indices(tnn_session *s, const char *func) {
    for (int i = 0; i < s->n_index_inputs; i++) {
        const struct tnn_index_input *in = &s->index_inputs[i];
        if (!is_persistent(s, in->base)) continue;
        int32_t buf[1024];
        for (int64_t done = 0; done < in->count;) {
            int64_t n = in->count - done < 1024 ? in->count - done : 1024;
            ggml_backend_tensor_get(in->base, buf, (size_t)(in->first + done) * 4, (size_t)n * 4);
            for (int64_t j = 0; j < n; j++) {
                if (buf[j] < 0 || buf[j] >= in->bound) {
                    return fail(TNN_ESHAPE, func,
                                "persistent index %d at element %lld is outside [0, %lld)", buf[j],
                                (long long)(in->first + done + j), (long long)in->bound);
                }
            }
            done += n;
        }
    }
    return TNN_OK;
}

int tnn_compute(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (!sess->realized) return fail(TNN_ESTATE, __func__, "the graph is not realized (call tnn_realize)");
    int rc = check_persistent_indices(sess, __func__);
    if (rc != TNN_OK) return rc;
    enum ggml_status status = ggml_backend_sched_graph_compute(sess->sched, sess->graph);
    if (status != GGML_STATUS_SUCCESS) {
        return fail(TNN_EBACKEND, __func__, "ggml compute failed: %s", ggml_status_to_string(status));
    }
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

int tnn_graph_n_nodes(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return sess->realized ? ggml_graph_n_nodes(sess->graph) : 0;
}

int tnn_graph_n_splits(tnn_session *sess) {
    CHECK_SESS(sess, TNN_EINVAL);
    return sess->realized ? ggml_backend_sched_get_n_splits(sess->sched) : 0;
}

/* ---- data ------------------------------------------------------------------- */

static bool has_memory(const struct ggml_tensor *t) {
    const struct ggml_tensor *base = t->view_src ? t->view_src : t;
    return t->data != NULL && base->buffer != NULL;
}

static int check_transfer(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                          int64_t offset, int want, const char *func) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (!check_tensor(sess, t, func, "t")) return TNN_EINVAL;
    if (want >= 0 && (int)t->type != want) {
        return fail(TNN_ESHAPE, func, "t is %s, expected %s", SHAPE(t),
                    ggml_type_name((enum ggml_type)want));
    }
    if (!has_memory(t)) {
        return fail(TNN_ESTATE, func,
                    is_persistent(sess, t) ? "t has no memory yet: call tnn_finalize_weights"
                                           : "t has no memory: realize a graph that uses it first");
    }
    if (!ggml_is_contiguous(t)) return fail(TNN_ESHAPE, func, "t %s is not contiguous", SHAPE(t));
    int64_t size = (int64_t)ggml_nbytes(t);
    if (nbytes < 0 || offset < 0 || offset > size || nbytes > size - offset) {
        return fail(TNN_ESHAPE, func,
                    "%lld bytes at offset %lld do not fit in t %s of %lld bytes", (long long)nbytes,
                    (long long)offset, SHAPE(t), (long long)size);
    }
    if (nbytes > 0 && !data) return fail(TNN_EINVAL, func, "data is NULL");
    return TNN_OK;
}

/* Index values must be rows that exist: ggml asserts on them mid-compute. */
static int check_index_values(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                              int64_t offset, const char *func) {
    struct ggml_tensor *base = t->view_src ? t->view_src : t;
    int64_t start = ((int64_t)(t->view_src ? t->view_offs : 0) + offset);
    for (int i = 0; i < sess->n_index_inputs; i++) {
        const struct tnn_index_input *in = &sess->index_inputs[i];
        if (in->base != base) continue;
        if (start % 4 != 0 || nbytes % 4 != 0) {
            return fail(TNN_ESHAPE, func, "index tensor writes must be whole int32 values");
        }
        const int32_t *v = data;
        int64_t lo = in->first > start / 4 ? in->first : start / 4;
        int64_t hi = in->first + in->count < (start + nbytes) / 4 ? in->first + in->count
                                                                  : (start + nbytes) / 4;
        for (int64_t j = lo; j < hi; j++) {
            int32_t value = v[j - start / 4];
            if (value < 0 || value >= in->bound) {
                return fail(TNN_ESHAPE, func, "index %d at element %lld is outside [0, %lld)",
                            value, (long long)j, (long long)in->bound);
            }
        }
    }
    return TNN_OK;
}

static int upload(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                  int64_t offset, int want, const char *func) {
    int rc = check_transfer(sess, t, data, nbytes, offset, want, func);
    if (rc == TNN_OK && t->type == GGML_TYPE_I32) {
        rc = check_index_values(sess, t, data, nbytes, offset, func);
    }
    if (rc != TNN_OK) return rc;
    if (nbytes > 0) ggml_backend_tensor_set(t, data, (size_t)offset, (size_t)nbytes);
    return TNN_OK;
}

static int download(tnn_session *sess, tnn_tensor *t, void *data, int64_t nbytes, int64_t offset,
                    int want, const char *func) {
    int rc = check_transfer(sess, t, data, nbytes, offset, want, func);
    if (rc != TNN_OK) return rc;
    if (nbytes > 0) ggml_backend_tensor_get(t, data, (size_t)offset, (size_t)nbytes);
    return TNN_OK;
}

int tnn_upload_f32(tnn_session *sess, tnn_tensor *t, const float *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_F32, __func__);
}

int tnn_upload_i32(tnn_session *sess, tnn_tensor *t, const int32_t *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_I32, __func__);
}

int tnn_upload_f16(tnn_session *sess, tnn_tensor *t, const uint16_t *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, TNN_TYPE_F16, __func__);
}

int tnn_upload_raw(tnn_session *sess, tnn_tensor *t, const void *data, int64_t nbytes,
                   int64_t offset) {
    return upload(sess, t, data, nbytes, offset, -1, __func__);
}

int tnn_download_f32(tnn_session *sess, tnn_tensor *t, float *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_F32, __func__);
}

int tnn_download_i32(tnn_session *sess, tnn_tensor *t, int32_t *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_I32, __func__);
}

int tnn_download_f16(tnn_session *sess, tnn_tensor *t, uint16_t *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, TNN_TYPE_F16, __func__);
}

int tnn_download_raw(tnn_session *sess, tnn_tensor *t, void *data, int64_t nbytes,
                     int64_t offset) {
    return download(sess, t, data, nbytes, offset, -1, __func__);
}

/* ---- one step: upload, compute, download ----------------------------------- */

/* Steps move a few bytes (ids in, ids out); larger transfers go direct. */
#define TNN_STAGING_MAX ((size_t)1 << 20)
#define TNN_STAGING_ALIGN 64

/* True when t's memory is in the buffer type of the session's backend, the
 * only memory its asynchronous copies may touch (ggml asserts on others). */
static bool on_session_backend(tnn_session *sess, const struct ggml_tensor *t) {
    const struct ggml_tensor *base = t->view_src ? t->view_src : t;
    return ggml_backend_buffer_get_type(base->buffer) ==
           ggml_backend_get_default_buffer_type(sess->backend);
}

/* need bytes of page-locked memory, or NULL (not CUDA, too large, or none
 * to be had): the caller then copies from its own memory. */
static char *staging_memory(tnn_session *sess, size_t need) {
    if (!sess->is_cuda || need > TNN_STAGING_MAX) return NULL;
    if (sess->staging && ggml_backend_buffer_get_size(sess->staging) >= need) {
        return ggml_backend_buffer_get_base(sess->staging);
    }
    ggml_backend_buffer_type_t host =
        ggml_backend_dev_host_buffer_type(ggml_backend_get_device(sess->backend));
    if (!host) return NULL;
    size_t size = 4096;
    while (size < need) size *= 2;
    ggml_backend_buffer_t grown = ggml_backend_buft_alloc_buffer(host, size);
    if (!grown) return NULL;
    if (sess->staging) ggml_backend_buffer_free(sess->staging);
    sess->staging = grown;
    return ggml_backend_buffer_get_base(grown);
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int tnn_compute_io(tnn_session *sess, tnn_tensor *in, const void *in_data, int64_t in_nbytes,
                   tnn_tensor *out, void *out_data, int64_t out_nbytes) {
    CHECK_SESS(sess, TNN_EINVAL);
    if (!sess->realized) return fail(TNN_ESTATE, __func__, "the graph is not realized (call tnn_realize)");
    int rc = TNN_OK;
    if (in) {
        rc = check_transfer(sess, in, in_data, in_nbytes, 0, -1, __func__);
        if (rc == TNN_OK && in->type == GGML_TYPE_I32) {
            rc = check_index_values(sess, in, in_data, in_nbytes, 0, __func__);
        }
        if (rc != TNN_OK) return rc;
    }
    if (out && (rc = check_transfer(sess, out, out_data, out_nbytes, 0, -1, __func__)) != TNN_OK) {
        return rc;
    }
    if ((rc = check_persistent_indices(sess, __func__)) != TNN_OK) return rc;
    size_t n_in = in ? (size_t)in_nbytes : 0, n_out = out ? (size_t)out_nbytes : 0;
    bool async_in = n_in > 0 && on_session_backend(sess, in);
    bool async_out = n_out > 0 && on_session_backend(sess, out);
    size_t out_at = round_up(n_in, TNN_STAGING_ALIGN);
    char *stage = async_in || async_out ? staging_memory(sess, out_at + n_out) : NULL;
    /* Copies and compute queue on the backend's stream; the one wait is the
     * synchronize at the end (upload + compute + download wait three times). */
    if (async_in) {
        const void *src = in_data;
        if (stage) src = memcpy(stage, in_data, n_in);
        ggml_backend_tensor_set_async(sess->backend, in, src, 0, n_in);
    } else if (n_in > 0) {
        ggml_backend_tensor_set(in, in_data, 0, n_in);
    }
    enum ggml_status status = ggml_backend_sched_graph_compute_async(sess->sched, sess->graph);
    if (status == GGML_STATUS_SUCCESS && async_out) {
        ggml_backend_tensor_get_async(sess->backend, out, stage ? stage + out_at : out_data, 0, n_out);
    }
    ggml_backend_sched_synchronize(sess->sched);
    if (status != GGML_STATUS_SUCCESS) {
        return fail(TNN_EBACKEND, __func__, "ggml compute failed: %s", ggml_status_to_string(status));
    }
    if (async_out && stage) {
        memcpy(out_data, stage + out_at, n_out);
    } else if (n_out > 0 && !async_out) {
        ggml_backend_tensor_get(out, out_data, 0, n_out);
    }
    return TNN_OK;
}
