/* session.c - sessions: the registry of live ones, new / fork / free, CPU
 * threads and device memory. */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "tinynn_internal.h"

/* ---- the registry: a freed or foreign pointer is refused, not dereferenced - */

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

bool registry_has(const tnn_session *s) {
    bool found = false;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < registry_len && !found; i++) found = registry[i] == s;
    pthread_mutex_unlock(&registry_lock);
    return found;
}

/* ---- threads ------------------------------------------------------------------ */

static long online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n;
}

static int default_threads(void) {
    long n = online_cores();
    return n > 8 ? 8 : (int)n;
}

/* The CPU backend is a module: its thread setter is found through the registry. */
static void apply_threads(tnn_session *s, int n) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(s->cpu_backend));
    ggml_backend_set_n_threads_t set =
        (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg,
                                                                        "ggml_backend_set_n_threads");
    if (set) set(s->cpu_backend, n);
    s->threads_applied = n;
}

/* ---- a busy machine -------------------------------------------------------------
 * ggml's CPU threads meet at a barrier after every op, and wait there spinning. A
 * thread the kernel takes off its core for another process leaves its partners
 * spinning for that process's whole time slice, at every op: with one busy
 * neighbour on a 2-core machine decoding ran 17-100x slower. ggml's thread-pool
 * polling setting does not reach those barriers (only the wait between graphs).
 * So, unless the caller fixed the count (tnn_set_n_threads), a compute uses at most
 * the cores that no other runnable task wants: online cores minus the runnable
 * tasks besides this thread (Linux's /proc/loadavg, fourth field "runnable/total",
 * read at most every BUSY_READ_NS). Elsewhere, or unreadable: n_threads.
 * Our own threads at idle priority (the huge-page mover, host_weights.c) are not
 * counted: the kernel runs them only on cores that nothing else wants, so they
 * never take a core from a compute thread; counted, the mover halved our threads
 * for the first second after every load. */
#define BUSY_READ_NS 20000000LL /* 20 ms */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static _Atomic int idle_threads_of_ours = 0;
static _Atomic int computes_in_flight = 0;

/* A fork's child has none of its parent's threads, nor their computes. */
static void forget_threads_in_child(void) {
    atomic_store(&idle_threads_of_ours, 0);
    atomic_store(&computes_in_flight, 0);
}

static void reset_counts_at_fork(void) {
    pthread_atfork(NULL, NULL, forget_threads_in_child);
}

static pthread_once_t fork_reset_once = PTHREAD_ONCE_INIT;

void idle_thread_started(void) {
    pthread_once(&fork_reset_once, reset_counts_at_fork);
    atomic_fetch_add(&idle_threads_of_ours, 1);
}

void idle_thread_stopped(void) {
    atomic_fetch_sub(&idle_threads_of_ours, 1);
}

void compute_started(void) {
    pthread_once(&fork_reset_once, reset_counts_at_fork);
    atomic_fetch_add(&computes_in_flight, 1);
}

void compute_finished(void) {
    atomic_fetch_sub(&computes_in_flight, 1);
}

bool computing_now(void) {
    return atomic_load(&computes_in_flight) > 0;
}

/* Runnable tasks on the machine besides the caller and our idle-priority
 * threads; -1 when unknown. (An idle thread of ours that is asleep, not
 * runnable, is subtracted all the same: for that moment a neighbour may be
 * missed, at most one per such thread, while it lasts.) */
static int other_runnable_tasks(void) {
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    double l1, l5, l15;
    int running = 0, total = 0;
    if (sscanf(buf, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) != 5) return -1;
    int others = running - 1 - atomic_load(&idle_threads_of_ours);
    return others > 0 ? others : 0;
}

static _Atomic int64_t busy_read_at = 0;
static _Atomic int busy_others = -1;

void adapt_threads(tnn_session *s) {
    int n = s->n_threads;
    if (!s->threads_fixed && n > 1) {
        int64_t t = now_ns();
        if (t - atomic_load(&busy_read_at) > BUSY_READ_NS) {
            atomic_store(&busy_others, other_runnable_tasks());
            atomic_store(&busy_read_at, t);
        }
        int others = atomic_load(&busy_others);
        if (others >= 0) {
            int free_cores = (int)online_cores() - others;
            if (free_cores < n) n = free_cores < 1 ? 1 : free_cores;
        }
    }
    if (n != s->threads_applied) apply_threads(s, n);
}

/* ---- life and death ----------------------------------------------------------- */

static struct ggml_context *new_compute_ctx(void) {
    struct ggml_init_params p = {TNN_MAX_COMPUTE_TENSORS * ggml_tensor_overhead(), NULL, true};
    return ggml_init(p);
}

static void session_destroy(tnn_session *s) {
    free_session_logits_sampler(s); /* its own memory and stream; it holds no ggml memory */
    if (s->staging) ggml_backend_buffer_free(s->staging);
    if (s->sched) ggml_backend_sched_free(s->sched);
    if (s->ctx) ggml_free(s->ctx);
    if (s->ctx_graph) ggml_free(s->ctx_graph);
    if (s->cpu_backend && s->cpu_backend != s->backend) ggml_backend_free(s->cpu_backend);
    if (s->backend) ggml_backend_free(s->backend);
    if (s->root == s) {
        free_session_decoders(s);
        if (s->weights_buf) ggml_backend_buffer_free(s->weights_buf);
        free_host_weights(s);
        if (s->ctx_w) ggml_free(s->ctx_w);
        free(s->packed);
    }
    free(s);
}

/* Backends, compute context and graph of a new session (the scheduler is
 * made by tnn_realize, for the graph at hand). */
static tnn_session *session_create(bool cuda, tnn_session *root, const char *func) {
    ggml_backend_dev_t gpu = NULL;
    if (!ensure_cpu_backend(func)) return NULL;
    if (cuda && !(gpu = ensure_cuda_backend(func))) return NULL;
    measure_tensor_layout();

    tnn_session *s = calloc(1, sizeof *s);
    if (!s) return (tnn_session *)FAIL_NULL("out of host memory");
    s->root = root ? root : s;
    s->is_cuda = cuda;
    s->n_threads = root ? root->n_threads : default_threads();
    s->threads_fixed = root ? root->threads_fixed : false;
    s->cpu_backend = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    s->backend = cuda ? ggml_backend_dev_init(gpu, NULL) : s->cpu_backend;
    if (!s->cpu_backend || !s->backend) {
        fail(TNN_EBACKEND, func, "could not initialise the %s backend", cuda ? "CUDA" : "CPU");
        session_destroy(s);
        return NULL;
    }
    apply_threads(s, s->n_threads);

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

/* ---- what a session runs on ----------------------------------------------------- */

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
    sess->threads_fixed = true;
    apply_threads(sess, n_threads);
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
