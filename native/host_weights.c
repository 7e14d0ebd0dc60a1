/* host_weights.c - a CPU session's persistent memory: one anonymous mapping.
 *
 * The kernel hands out an anonymous mapping's pages zeroed, and only when they
 * are first touched. So the caches need no clearing at load, and a cache slot
 * costs resident memory only for the rows a sequence has reached: a model
 * loaded with 4 slots of 1024 rows holds the weights, not 4 full caches. (A
 * malloc'd buffer would have to be cleared, touching every page at once.)
 *
 * The weights are written whole right after, and then the kernel's cost is
 * the first touch of each page: a fault and a zeroed page, 4 KiB at a time,
 * about 3x the copy itself on the 2-core machine measured (GPT-2 small f16,
 * 252 MB read by two threads, quiet machine: 0.073 s into fresh pages, 0.020 s
 * into touched ones, 0.03-0.045 s into fresh huge pages). Huge pages take
 * 1/512 of the faults, so the weights (and only they: the caches stay lazy at
 * 4 KiB) are advised to use them just before they are read in. Advice only:
 * where the kernel has none to give, pages stay small.
 *
 * Where they cost more: a VM whose balloon reports free 2 MiB blocks back to
 * its host (virtio-balloon free page reporting, as on the 2-core machines
 * here) pays for each huge page again on its first touch after it was
 * reported, a pause of a few seconds after the memory was last freed; small
 * pages come first from memory freed recently. Measured there (GPT-2 small
 * f16 GGUF, fresh processes, another session busy on the machine): back to
 * back, huge pages 0.21 s and small ones 0.28 s; after 5 s of idle, huge pages
 * 0.66 s and small ones 0.30 s (medians). So huge pages are taken unless the
 * kernel reports free pages to a hypervisor; TINYNN_HUGE_PAGES=1 or 0 decides
 * instead.
 *
 * Small pages cost every step afterwards, though: decode streams the weights,
 * and from 4 KiB pages of fresh memory it reads them at 17 GB/s where huge
 * pages give 27 (one core, 128 MB, this VM; llama.cpp's weights, mapped from
 * the page cache, 26): gpt2-small q8_0 decode 7.9-8.5 -> 6.8-7.5 ms a token,
 * f16 11.0-12.3 -> 9.2-9.6 (bench/NOTES.md, 2026-12-08). So once the weights
 * are in, tnn_move_to_huge_pages has a thread of the root copy them onto huge
 * pages (MADV_COLLAPSE, Linux 6.1 and later; 0.33 s for 128 MB) while decoding
 * goes on: the load keeps the small pages' speed, the steps get the huge
 * pages' bandwidth a moment later. The copy is the kernel's and invisible to
 * readers; the thread stops (and is joined) when the memory is unmapped.
 *
 * The copy must not cost the steps it is for. At normal priority it was a
 * neighbour like any other: it took a core, and the busy-machine probe
 * (session.c) halved our compute threads for it, so the first prefill after a
 * load took twice as long (gpt2-small f16, 2 cores: 153-164 ms against 77-89).
 * So the thread runs at idle priority (SCHED_IDLE; nice 19 where that is
 * refused): the kernel gives it only cores that no other task wants, and hands
 * the core back the moment a compute thread wakes; and the probe does not count
 * it. It still uses every idle moment: between steps, while Python runs, and
 * all of an idle server's time. But idle priority alone did not keep it out of
 * the steps (measured: the first 25 decode steps 16 ms against 10): a compute's
 * threads leave a core idle for moments (between ops), the mover takes it and
 * enters a collapse, and a kernel that preempts only at its own points
 * (PREEMPT_NONE, the default of the machines here) finishes that page (about 1
 * ms) before our thread gets the core back, while its partners wait at ggml's
 * barrier. So the mover also starts a page only while no compute of this
 * process runs (computing_now), and sleeps 0.2 ms between looks otherwise.
 *
 * A collapse preempted halfway: MADV_COLLAPSE copies a page with the process's
 * memory map locked for writing and that 2 MiB range unmapped, so a compute
 * thread that reads the range, or faults on any page (a cache's first touch),
 * waits until the copy is done. If the thread were preempted there, our compute
 * threads would wait for a thread that runs only on idle cores; but once they
 * wait, their cores are idle, and it runs, unless another process takes them:
 * then we wait for that process's time slice. The kernel's own collapse daemon
 * (khugepaged, nice 19) has the same exposure. Where the kernel preempts only at
 * its own points (PREEMPT_NONE, the default of the machines here) one page's
 * copy is not interrupted at all. */
#define _GNU_SOURCE /* SCHED_IDLE, gettid */
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#include "tinynn_internal.h"

static size_t pad_to(size_t n, size_t align) {
    return (n + align - 1) / align * align;
}

ggml_backend_buffer_t alloc_host_weights(tnn_session *sess) {
    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(sess->backend);
    ggml_backend_dev_t dev = ggml_backend_get_device(sess->backend);
    struct ggml_backend_dev_props props;
    if (!dev || !ggml_backend_buft_is_host(buft)) return NULL;
    ggml_backend_dev_get_props(dev, &props);
    if (!props.caps.buffer_from_host_ptr) return NULL;
    size_t align = ggml_backend_buft_get_alignment(buft);
    size_t total = 0;
    for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx_w); t;
         t = ggml_get_next_tensor(sess->ctx_w, t)) {
        total += pad_to(ggml_backend_buft_get_alloc_size(buft, t), align); /* as ggml_tallocr_alloc sizes it */
    }
    if (total == 0) return NULL;
    void *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return NULL;
    ggml_backend_buffer_t buf = ggml_backend_dev_buffer_from_host_ptr(dev, map, total, total);
    if (!buf) {
        munmap(map, total);
        return NULL;
    }
    /* Sized above with the same padding, so every tensor fits (tallocr aborts
     * when one does not). */
    struct ggml_tallocr talloc = ggml_tallocr_new(buf);
    for (struct ggml_tensor *t = ggml_get_first_tensor(sess->ctx_w); t;
         t = ggml_get_next_tensor(sess->ctx_w, t)) {
        if (ggml_tallocr_alloc(&talloc, t) != GGML_STATUS_SUCCESS) {
            ggml_backend_buffer_free(buf);
            munmap(map, total);
            return NULL;
        }
    }
    sess->host_weights = map;
    sess->host_weights_size = total;
    return buf;
}

#define HUGE_PAGE ((uintptr_t)2 << 20)
#define BALLOONS "/sys/bus/virtio/drivers/virtio_balloon"
#define BALLOON_F_REPORTING 5 /* the virtio feature bit of free page reporting */

static bool reports_free_pages;

/* Whether a virtio balloon of this kernel reports free pages to its host: its
 * devices' features (one '0' or '1' a bit, bit 0 first) have the bit set. */
static void find_free_page_reporting(void) {
    DIR *dir = opendir(BALLOONS);
    if (!dir) return;
    for (struct dirent *e; (e = readdir(dir)) != NULL && !reports_free_pages;) {
        if (strncmp(e->d_name, "virtio", 6) != 0) continue;
        char path[512], bits[64] = "";
        snprintf(path, sizeof path, "%s/%s/features", BALLOONS, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(bits, sizeof bits, f) && strlen(bits) > BALLOON_F_REPORTING) {
            reports_free_pages = bits[BALLOON_F_REPORTING] == '1';
        }
        fclose(f);
    }
    closedir(dir);
}

static bool want_huge_pages(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const char *wanted = getenv("TINYNN_HUGE_PAGES");
    if (wanted && (strcmp(wanted, "0") == 0 || strcmp(wanted, "1") == 0)) {
        return wanted[0] == '1';
    }
    pthread_once(&once, find_free_page_reporting);
    return !reports_free_pages;
}

void advise_huge_pages(tnn_session *root, const void *start, size_t n) {
    uintptr_t map = (uintptr_t)root->host_weights, map_end = map + root->host_weights_size;
    uintptr_t lo = (uintptr_t)start, hi = lo + n;
    if (!root->host_weights || lo < map || hi > map_end) return; /* not our mapping */
    if (!want_huge_pages()) return;
    /* Whole huge pages inside the range; the pages at its ends may hold a cache. */
    lo = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    hi &= ~(HUGE_PAGE - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

void prefault_host_weights(tnn_session *root, const void *start, size_t n) {
    uintptr_t map = (uintptr_t)root->host_weights, map_end = map + root->host_weights_size;
    uintptr_t lo = (uintptr_t)start, hi = lo + n;
    if (!root->host_weights || lo < map || hi > map_end || n == 0) return; /* not our mapping */
    const uintptr_t page = 4096; /* the smallest; madvise wants its start aligned */
    lo &= ~(page - 1);
    /* Fills no page that is there already, changes no byte; EINVAL before Linux 5.14:
     * then the writes fault the pages in themselves. */
    madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
}

/* ---- weights moved onto huge pages in the background ----------------------------- */

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1 */
#endif

struct huge_page_mover {
    pthread_t thread;
    pid_t pid;           /* a forked child has no such thread: it must not join it */
    atomic_bool stop;    /* set before the memory is unmapped */
    size_t n_ranges;
    struct { char *start; size_t size; } ranges[]; /* whole huge pages, ascending */
};

/* The calling thread to idle priority (see the top of this file); false
 * where neither SCHED_IDLE nor nice 19 is allowed. */
static bool lower_own_priority(void) {
    struct sched_param none = {0};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &none) == 0) return true;
    return setpriority(PRIO_PROCESS, (id_t)gettid(), 19) == 0; /* Linux: one thread's nice */
}

static void *move_to_huge_pages(void *arg) {
    struct huge_page_mover *m = arg;
    const bool idle = lower_own_priority();
    if (idle) idle_thread_started();
    for (size_t i = 0; i < m->n_ranges; i++) {
        for (size_t at = 0; at < m->ranges[i].size && !atomic_load(&m->stop); at += HUGE_PAGE) {
            while (computing_now() && !atomic_load(&m->stop)) {
                nanosleep(&(struct timespec){0, 200000}, NULL);
            }
            if (atomic_load(&m->stop)) break;
            /* one huge page a call, so that a stop waits for one page's copy at most;
             * a failure (no huge page free, an old kernel) leaves that page small */
            madvise(m->ranges[i].start + at, HUGE_PAGE, MADV_COLLAPSE);
        }
    }
    if (idle) idle_thread_stopped();
    return NULL;
}

static int by_address(const void *a, const void *b) {
    const struct ggml_tensor *x = *(struct ggml_tensor *const *)a, *y = *(struct ggml_tensor *const *)b;
    return (uintptr_t)x->data < (uintptr_t)y->data ? -1 : (uintptr_t)x->data > (uintptr_t)y->data;
}

int tnn_move_to_huge_pages(tnn_session *sess, tnn_tensor *const *tensors, int n_tensors) {
    CHECK_SESS(sess, TNN_EINVAL);
    tnn_session *root = sess->root;
    if (n_tensors < 0 || n_tensors > TNN_MAX_PERSISTENT_TENSORS || (n_tensors > 0 && !tensors)) {
        return fail(TNN_EINVAL, __func__, "n_tensors=%d with tensors %p: expected 0..%d tensors",
                    n_tensors, (const void *)tensors, TNN_MAX_PERSISTENT_TENSORS);
    }
    for (int i = 0; i < n_tensors; i++) {
        if (!tensors[i] || !is_persistent(sess, tensors[i]) || tensors[i]->view_src) {
            return fail(TNN_EINVAL, __func__, "tensors[%d] is not a persistent tensor of this session", i);
        }
    }
    if (!root->finalized) return fail(TNN_ESTATE, __func__, "call tnn_finalize_weights first");
    if (root->huge_pages_asked) return fail(TNN_ESTATE, __func__, "called once a session already");
    root->huge_pages_asked = true;
    const char *wanted = getenv("TINYNN_HUGE_PAGES");
    if (!root->host_weights || n_tensors == 0 || (wanted && strcmp(wanted, "0") == 0)) return TNN_OK;

    struct ggml_tensor **sorted = malloc((size_t)n_tensors * sizeof *sorted);
    struct huge_page_mover *m =
        calloc(1, sizeof *m + (size_t)n_tensors * sizeof m->ranges[0]);
    if (!sorted || !m) {
        free(sorted);
        free(m);
        return fail(TNN_ENOMEM, __func__, "out of host memory");
    }
    memcpy(sorted, tensors, (size_t)n_tensors * sizeof *sorted);
    qsort(sorted, (size_t)n_tensors, sizeof *sorted, by_address);
    /* Adjacent tensors (padding between them included) merged into runs; the whole
     * huge pages inside each run, so that no page of anything else (a cache, whose
     * untouched pages would all be filled) is collapsed. */
    size_t align = ggml_backend_buft_get_alignment(ggml_backend_get_default_buffer_type(root->backend));
    for (int i = 0; i < n_tensors;) {
        uintptr_t lo = (uintptr_t)sorted[i]->data, hi = lo + ggml_nbytes(sorted[i]);
        for (i++; i < n_tensors && (uintptr_t)sorted[i]->data <= (hi + align - 1) / align * align; i++) {
            uintptr_t end = (uintptr_t)sorted[i]->data + ggml_nbytes(sorted[i]);
            if (end > hi) hi = end;
        }
        lo = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
        hi &= ~(HUGE_PAGE - 1);
        if (hi > lo) {
            m->ranges[m->n_ranges].start = (char *)lo;
            m->ranges[m->n_ranges++].size = hi - lo;
        }
    }
    free(sorted);
    m->pid = getpid();
    atomic_init(&m->stop, false);
    if (m->n_ranges == 0 || pthread_create(&m->thread, NULL, move_to_huge_pages, m) != 0) {
        free(m); /* nothing to move, or no thread to be had: the pages stay as they are */
        return TNN_OK;
    }
    root->huge_page_mover = m;
    return TNN_OK;
}

void free_host_weights(tnn_session *sess) {
    struct huge_page_mover *m = sess->huge_page_mover;
    if (m) {
        atomic_store(&m->stop, true);
        if (m->pid == getpid()) pthread_join(m->thread, NULL);
        free(m);
        sess->huge_page_mover = NULL;
    }
    if (sess->host_weights) munmap(sess->host_weights, sess->host_weights_size);
    sess->host_weights = NULL;
    sess->host_weights_size = 0;
}
