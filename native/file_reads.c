/* file_reads.c - a file's bytes into tensors, as the file stores them.
 *
 * Host memory (a CPU session's) is read into directly: one pread per piece, no
 * copy in between. Device memory is read into a few staging buffers of the
 * device's page-locked host memory (plain memory where it has none), each
 * round copied to the device asynchronously while the next round is read; a
 * staging buffer waits only for its own previous copies (an event, or a
 * synchronize where the backend has no events) before it is read into again.
 * Either way a few threads read pieces of the file at once (pread has no
 * shared file position), each checking its piece finite as it lands.
 *
 * Memory: nothing but the staging buffers (n_staging x staging_bytes), and
 * only for device memory. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tinynn_internal.h"

#define TNN_READ_MAX_THREADS 64
#define TNN_READ_MAX_STAGING 16
#define TNN_STAGING_MIN_BYTES ((int64_t)4096)
#define TNN_STAGING_MAX_BYTES ((int64_t)1 << 30)
/* A direct read is cut into pieces of this size (a huge page): small enough to
 * share a tensor among the threads, large enough that a pread costs nothing. */
#define TNN_DIRECT_PIECE ((int64_t)2 << 20)
#define TNN_PREAD_MAX ((size_t)1 << 30) /* pread's count, bounded */
#define TNN_STAGE_ALIGN 64

/* ---- values that are not finite ---------------------------------------------- */

/* Whether any of n values at p (width 2 or 4 bytes) has every bit of exp set
 * (an exponent of all ones: inf or NaN). No early exit, so that the compiler
 * vectorizes it: a model's every value passes here. */
static bool any_exp16(const unsigned char *p, size_t n, uint16_t exp) {
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        bad |= (v & exp) == exp;
    }
    return bad != 0;
}

static bool any_exp32(const unsigned char *p, size_t n, uint32_t exp) {
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        bad |= (v & exp) == exp;
    }
    return bad != 0;
}

#define SCAN_VALUES 4096 /* values tested at once; the exact place found within */

/* Byte offset (from p) of the first value of type `type` in n bytes that is
 * not finite (f32, f16, bf16: the value; q8_0: a block's f16 scale), or -1.
 * Other types are not checked. n is a whole number of values or blocks. */
static int64_t first_nonfinite(const unsigned char *p, size_t n, enum ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32:
        for (size_t at = 0; at < n; at += 4 * SCAN_VALUES) {
            size_t len = n - at < 4 * SCAN_VALUES ? n - at : 4 * SCAN_VALUES;
            if (!any_exp32(p + at, len / 4, 0x7f800000u)) continue;
            for (size_t i = at; i + 4 <= at + len; i += 4) {
                if (any_exp32(p + i, 1, 0x7f800000u)) return (int64_t)i;
            }
        }
        return -1;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: {
        const uint16_t exp = type == GGML_TYPE_F16 ? 0x7c00u : 0x7f80u;
        for (size_t at = 0; at < n; at += 2 * SCAN_VALUES) {
            size_t len = n - at < 2 * SCAN_VALUES ? n - at : 2 * SCAN_VALUES;
            if (!any_exp16(p + at, len / 2, exp)) continue;
            for (size_t i = at; i + 2 <= at + len; i += 2) {
                if (any_exp16(p + i, 1, exp)) return (int64_t)i;
            }
        }
        return -1;
    }
    case GGML_TYPE_Q8_0: {
        const size_t block = ggml_type_size(GGML_TYPE_Q8_0); /* an f16 scale, 32 int8 */
        for (size_t i = 0; i + block <= n; i += block) {
            if (any_exp16(p + i, 1, 0x7c00u)) return (int64_t)i;
        }
        return -1;
    }
    default:
        return -1;
    }
}

/* n bytes at file_offset into dst. 0, an errno, or -1 when the file ends
 * first; *done: the bytes read. */
static int pread_fully(int fd, unsigned char *dst, int64_t n, int64_t file_offset, int64_t *done) {
    *done = 0;
    while (*done < n) {
        size_t want = (size_t)(n - *done);
        if (want > TNN_PREAD_MAX) want = TNN_PREAD_MAX;
        ssize_t got = pread(fd, dst + *done, want, (off_t)(file_offset + *done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return errno ? errno : EIO;
        if (got == 0) return -1;
        *done += got;
    }
    return 0;
}

/* ---- checks ------------------------------------------------------------------ */

/* What range `which` needs before anything is read: a live tensor with memory,
 * not i32 (indices are uploaded with their checks), contiguous, the byte range
 * inside it in whole values or blocks, a file offset >= 0 whose end does not
 * overflow. */
static int check_range(tnn_session *sess, const tnn_file_range *r, int64_t which,
                       const char *func) {
    char where[48];
    snprintf(where, sizeof where, "range %lld: ", (long long)which);
    struct ggml_tensor *t = r->t;
    if (!check_tensor(sess, t, func, "t")) {
        char why[512]; /* check_tensor's message, after its "func: " */
        snprintf(why, sizeof why, "%s", tnn_last_error() + strlen(func) + 2);
        return fail(TNN_EINVAL, func, "%s%s", where, why);
    }
    if (t->data == NULL || storage_of(t)->buffer == NULL) {
        return fail(TNN_ESTATE, func, "%st has no memory yet: %s", where,
                    is_persistent(sess, t) ? "call tnn_finalize_weights"
                                           : "realize a graph that uses it first");
    }
    if (t->type == GGML_TYPE_I32) {
        return fail(TNN_EINVAL, func, "%st is %s: index tensors are uploaded with their checks "
                    "(tnn_upload_i32)", where, SHAPE(t));
    }
    if (!ggml_is_contiguous(t)) {
        return fail(TNN_ESHAPE, func, "%st %s is not contiguous", where, SHAPE(t));
    }
    int64_t size = (int64_t)ggml_nbytes(t);
    if (r->nbytes < 0 || r->offset < 0 || r->offset > size || r->nbytes > size - r->offset) {
        return fail(TNN_ESHAPE, func, "%s%lld bytes at offset %lld do not fit in t %s of %lld "
                    "bytes", where, (long long)r->nbytes, (long long)r->offset, SHAPE(t),
                    (long long)size);
    }
    if (r->file_offset < 0 || r->nbytes > INT64_MAX - r->file_offset) {
        return fail(TNN_EINVAL, func, "%sfile_offset=%lld: expected an offset >= 0 with room for "
                    "%lld bytes", where, (long long)r->file_offset, (long long)r->nbytes);
    }
    const size_t unit = ggml_type_size(t->type); /* a value, or a block of values */
    if (unit == 0 || r->offset % (int64_t)unit || r->nbytes % (int64_t)unit) {
        return fail(TNN_ESHAPE, func, "%s%lld bytes at offset %lld of t %s: not whole %s values "
                    "(%zu bytes)", where, (long long)r->nbytes, (long long)r->offset, SHAPE(t),
                    ggml_type_name(t->type), unit);
    }
    return TNN_OK;
}

static bool in_host_memory(const struct ggml_tensor *t) {
    return ggml_backend_buffer_is_host(storage_of(t)->buffer);
}

/* The error for a failed piece: errno's text, or the file's end. */
static int read_failed(const tnn_file_range *r, int64_t which, int err, int64_t at_file,
                       int64_t done, const char *func) {
    char where[48];
    snprintf(where, sizeof where, "range %lld: ", (long long)which);
    if (err > 0) {
        return fail(TNN_EBACKEND, func, "%sreading %lld bytes at file offset %lld: %s", where,
                    (long long)r->nbytes, (long long)r->file_offset, strerror(err));
    }
    return fail(TNN_ESHAPE, func, "%sthe file ended at byte %lld, inside the %lld bytes at file "
                "offset %lld (truncated?)", where, (long long)(at_file + done),
                (long long)r->nbytes, (long long)r->file_offset);
}

/* ---- the plan: pieces, and for staged ranges the rounds they travel in -------- */

struct piece {
    int64_t range;   /* index in the caller's ranges */
    int64_t at;      /* byte offset within the range */
    int64_t nbytes;
    int64_t round;   /* -1: read straight into the tensor */
    int64_t stage_at; /* staged: byte offset in its round's staging buffer */
    /* results, written by the thread that reads it */
    int err;              /* 0, an errno, or -1: the file ended */
    int64_t done;         /* bytes read */
    int64_t nonfinite_at; /* within the piece, or -1 */
};

struct plan {
    struct piece *pieces;
    int64_t n_pieces, n_direct; /* the direct pieces come first */
    int64_t n_rounds;
};

static int64_t round_down(int64_t n, int64_t to) { return n / to * to; }
static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

/* Cuts each range into pieces of whole values or blocks: a direct range into
 * TNN_DIRECT_PIECE bytes; a staged one into at most a thread's share of a
 * staging buffer, packed into rounds of staging_bytes, a piece cut short where
 * the round ends (a range's pieces lie back to back in a round, so that its
 * bytes there go to the device in one copy). Direct pieces come first. With
 * p->pieces NULL only counts them (p->n_pieces). */
static void cut_pieces(const tnn_file_range *ranges, int64_t n, const bool *staged,
                       int64_t staging_bytes, int n_threads, struct plan *p) {
    int64_t count = 0, round = 0, used = 0;
    for (int stage = 0; stage < 2; stage++) {
        if (stage == 1) p->n_direct = count;
        for (int64_t i = 0; i < n; i++) {
            if (staged[i] != (stage == 1)) continue;
            int64_t unit = (int64_t)ggml_type_size(ranges[i].t->type);
            int64_t most = round_down(stage ? staging_bytes / n_threads : TNN_DIRECT_PIECE, unit);
            if (most < unit) most = unit;
            for (int64_t at = 0; at < ranges[i].nbytes;) {
                int64_t len = ranges[i].nbytes - at < most ? ranges[i].nbytes - at : most;
                int64_t in_round = -1, stage_at = -1;
                if (stage) {
                    stage_at = at == 0 ? round_up(used, TNN_STAGE_ALIGN) : used;
                    if (staging_bytes - stage_at < unit) { /* full: the next round */
                        round++;
                        stage_at = 0;
                    }
                    if (len > staging_bytes - stage_at) {
                        len = round_down(staging_bytes - stage_at, unit);
                    }
                    in_round = round;
                    used = stage_at + len;
                }
                if (p->pieces) {
                    p->pieces[count] = (struct piece){i, at, len, in_round, stage_at, 0, 0, -1};
                }
                count++;
                at += len;
            }
        }
    }
    p->n_pieces = count;
    p->n_rounds = count > p->n_direct ? round + 1 : 0;
}

static bool make_plan(const tnn_file_range *ranges, int64_t n, const bool *staged,
                      int64_t staging_bytes, int n_threads, struct plan *p) {
    *p = (struct plan){0};
    cut_pieces(ranges, n, staged, staging_bytes, n_threads, p);
    p->pieces = calloc(p->n_pieces ? (size_t)p->n_pieces : 1, sizeof *p->pieces);
    if (!p->pieces) return false;
    cut_pieces(ranges, n, staged, staging_bytes, n_threads, p);
    return true;
}

/* ---- the readers: the calling thread and n_threads - 1 helpers ---------------- */

struct readers {
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    int fd;
    const tnn_file_range *ranges;
    struct piece *pieces;
    unsigned char *stage; /* the staging buffer of the round being read */
    int64_t next, end;    /* the pieces of this batch not yet taken */
    int busy;             /* helpers not yet done with this batch */
    long batch;           /* counts batches, so a helper knows a new one */
    bool stop;            /* a piece failed: take no more */
    bool quit;
    int n_helpers;
    pthread_t helpers[TNN_READ_MAX_THREADS];
};

static void read_piece(struct readers *r, struct piece *pc, unsigned char *stage) {
    const tnn_file_range *range = &r->ranges[pc->range];
    unsigned char *dst = pc->round < 0 ? (unsigned char *)range->t->data + range->offset + pc->at
                                       : stage + pc->stage_at;
    pc->err = pread_fully(r->fd, dst, pc->nbytes, range->file_offset + pc->at, &pc->done);
    if (!pc->err) pc->nonfinite_at = first_nonfinite(dst, (size_t)pc->nbytes, range->t->type);
}

/* Takes pieces of the current batch until none is left (or one failed). */
static void take_pieces(struct readers *r) {
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->stop || r->next >= r->end) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        struct piece *pc = &r->pieces[r->next++];
        unsigned char *stage = r->stage;
        pthread_mutex_unlock(&r->mu);
        read_piece(r, pc, stage);
        if (pc->err) {
            pthread_mutex_lock(&r->mu);
            r->stop = true;
            pthread_mutex_unlock(&r->mu);
        }
    }
}

static void *helper_main(void *arg) {
    struct readers *r = arg;
    long seen = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (r->batch == seen && !r->quit) pthread_cond_wait(&r->wake, &r->mu);
        if (r->quit) break;
        seen = r->batch;
        pthread_mutex_unlock(&r->mu);
        take_pieces(r);
        pthread_mutex_lock(&r->mu);
        if (--r->busy == 0) pthread_cond_signal(&r->idle);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Helpers that could not be started are done without: the calling thread
 * reads every piece the others leave. */
static void start_readers(struct readers *r, int n_threads) {
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->wake, NULL);
    pthread_cond_init(&r->idle, NULL);
    r->n_helpers = 0;
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&r->helpers[r->n_helpers], NULL, helper_main, r) != 0) break;
        r->n_helpers++;
    }
}

/* Reads pieces first..end (into stage where staged) with every thread; returns
 * when all are read, or one failed and the others stopped. */
static void read_batch(struct readers *r, int64_t first, int64_t end, unsigned char *stage) {
    pthread_mutex_lock(&r->mu);
    r->next = first;
    r->end = end;
    r->stage = stage;
    r->busy = r->n_helpers;
    r->batch++;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
    take_pieces(r);
    pthread_mutex_lock(&r->mu);
    while (r->busy > 0) pthread_cond_wait(&r->idle, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

static void stop_readers(struct readers *r) {
    pthread_mutex_lock(&r->mu);
    r->quit = true;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->n_helpers; i++) pthread_join(r->helpers[i], NULL);
    pthread_cond_destroy(&r->idle);
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->mu);
}

/* Pieces first..end, read: the first that failed (an error, TNN_OK when none),
 * and the first value that is not finite, in the ranges' order. */
static int check_pieces(const struct readers *r, int64_t first, int64_t end, int64_t *bad_range,
                        int64_t *nonfinite_at, const char *func) {
    for (int64_t i = first; i < end; i++) {
        const struct piece *pc = &r->pieces[i];
        const tnn_file_range *range = &r->ranges[pc->range];
        if (pc->err) {
            *bad_range = pc->range;
            return read_failed(range, pc->range, pc->err, range->file_offset + pc->at, pc->done,
                               func);
        }
    }
    for (int64_t i = first; i < end; i++) { /* pieces are in the ranges' order */
        const struct piece *pc = &r->pieces[i];
        if (pc->nonfinite_at >= 0) {
            *bad_range = pc->range;
            *nonfinite_at = pc->at + pc->nonfinite_at;
            break;
        }
    }
    return TNN_OK;
}

/* ---- staging buffers ------------------------------------------------------------ */

struct staging {
    int n;
    unsigned char *base[TNN_READ_MAX_STAGING];
    ggml_backend_buffer_t pinned[TNN_READ_MAX_STAGING]; /* NULL: plain memory in base */
    ggml_backend_event_t copied[TNN_READ_MAX_STAGING];  /* NULL: synchronize instead */
};

static void free_staging(struct staging *s) {
    for (int i = 0; i < s->n; i++) {
        if (s->pinned[i]) {
            ggml_backend_buffer_free(s->pinned[i]);
        } else {
            free(s->base[i]);
        }
        if (s->copied[i]) ggml_backend_event_free(s->copied[i]);
    }
    s->n = 0;
}

/* n buffers of size bytes: the device's page-locked host memory where it has
 * some (copies from it run without the driver staging them again), else plain
 * memory; an event each where the device has them. */
static int alloc_staging(tnn_session *sess, int n, int64_t size, struct staging *s,
                         const char *func) {
    memset(s, 0, sizeof *s);
    ggml_backend_dev_t dev = ggml_backend_get_device(sess->backend);
    struct ggml_backend_dev_props props = {0};
    if (dev) ggml_backend_dev_get_props(dev, &props);
    ggml_backend_buffer_type_t host =
        props.caps.host_buffer ? ggml_backend_dev_host_buffer_type(dev) : NULL;
    bool events = dev && props.caps.events;
    for (int i = 0; i < n; i++) {
        s->pinned[i] = host ? ggml_backend_buft_alloc_buffer(host, (size_t)size) : NULL;
        s->base[i] = s->pinned[i] ? ggml_backend_buffer_get_base(s->pinned[i]) : NULL;
        if (!s->base[i]) {
            if (s->pinned[i]) ggml_backend_buffer_free(s->pinned[i]);
            s->pinned[i] = NULL;
            if (posix_memalign((void **)&s->base[i], TNN_STAGE_ALIGN, (size_t)size) != 0) {
                s->base[i] = NULL;
            }
        }
        s->n = i + 1;
        if (!s->base[i]) {
            free_staging(s);
            return fail(TNN_ENOMEM, func, "could not allocate %d staging buffers of %lld bytes",
                        n, (long long)size);
        }
        s->copied[i] = events ? ggml_backend_event_new(dev) : NULL;
        if (!s->copied[i]) events = false;
    }
    if (!events) { /* all or none: a buffer without an event waits for every copy */
        for (int i = 0; i < n; i++) {
            if (s->copied[i]) ggml_backend_event_free(s->copied[i]);
            s->copied[i] = NULL;
        }
    }
    return TNN_OK;
}

/* Waits until the copies out of staging buffer b are done. */
static void wait_for_copies(tnn_session *sess, struct staging *s, int b) {
    if (s->copied[b]) {
        ggml_backend_event_synchronize(s->copied[b]);
    } else {
        ggml_backend_synchronize(sess->backend);
    }
}

/* The copies of one round: each range's bytes in the round in one copy,
 * asynchronous on the session's stream where t's memory belongs to its backend
 * (ggml's asynchronous copies take no other memory), else a plain copy. */
static void copy_round(tnn_session *sess, const struct readers *r, int64_t first, int64_t end,
                       const unsigned char *stage) {
    for (int64_t i = first; i < end;) {
        const struct piece *pc = &r->pieces[i];
        const tnn_file_range *range = &r->ranges[pc->range];
        int64_t n = pc->nbytes, j = i + 1;
        while (j < end && r->pieces[j].range == pc->range) n += r->pieces[j++].nbytes;
        struct ggml_tensor *t = range->t;
        size_t to = (size_t)(range->offset + pc->at);
        if (ggml_backend_buffer_get_type(storage_of(t)->buffer) ==
            ggml_backend_get_default_buffer_type(sess->backend)) {
            ggml_backend_tensor_set_async(sess->backend, t, stage + pc->stage_at, to, (size_t)n);
        } else {
            ggml_backend_tensor_set(t, stage + pc->stage_at, to, (size_t)n);
        }
        i = j;
    }
}

/* Staged pieces, round by round: read into buffer round % n (after its last
 * copies are done), then queue its copies; one synchronize at the end, before
 * the buffers go. A failed read or a value that is not finite ends the rounds. */
static int read_staged(tnn_session *sess, struct readers *r, const struct plan *p,
                       struct staging *s, int64_t *bad_range, int64_t *nonfinite_at,
                       const char *func) {
    int rc = TNN_OK;
    int64_t first = p->n_direct;
    for (int64_t round = 0; round < p->n_rounds && rc == TNN_OK && *bad_range < 0; round++) {
        int b = (int)(round % s->n);
        int64_t end = first;
        while (end < p->n_pieces && p->pieces[end].round == round) end++;
        if (round >= s->n) wait_for_copies(sess, s, b);
        read_batch(r, first, end, s->base[b]);
        rc = check_pieces(r, first, end, bad_range, nonfinite_at, func);
        if (rc == TNN_OK && *bad_range < 0) {
            copy_round(sess, r, first, end, s->base[b]);
            if (s->copied[b]) ggml_backend_event_record(s->copied[b], sess->backend);
        }
        first = end;
    }
    ggml_backend_synchronize(sess->backend);
    return rc;
}

/* ---- tnn_read_file_ranges ------------------------------------------------------ */

int tnn_read_file_ranges(tnn_session *sess, int fd, const tnn_file_range *ranges, int64_t n_ranges,
                         int64_t ranges_nbytes, int n_threads, int64_t staging_bytes, int n_staging,
                         int flags, int64_t *bad_range, int64_t *nonfinite_at) {
    const char *func = __func__;
    CHECK_SESS(sess, TNN_EINVAL);
    if (!bad_range || !nonfinite_at) {
        return fail(TNN_EINVAL, func, "bad_range or nonfinite_at is NULL");
    }
    *bad_range = -1;
    *nonfinite_at = -1;
    if (n_ranges < 0 || n_ranges > INT64_MAX / (int64_t)sizeof *ranges ||
        ranges_nbytes != n_ranges * (int64_t)sizeof *ranges || (n_ranges > 0 && !ranges)) {
        return fail(TNN_EINVAL, func, "ranges: %lld records need %lld bytes (%zu each), got %lld%s",
                    (long long)n_ranges, (long long)(n_ranges * (int64_t)sizeof *ranges),
                    sizeof *ranges, (long long)ranges_nbytes,
                    ranges || !n_ranges ? "" : " and NULL");
    }
    if (fd < 0) return fail(TNN_EINVAL, func, "fd=%d: expected an open descriptor", fd);
    if (n_threads < 1 || n_threads > TNN_READ_MAX_THREADS) {
        return fail(TNN_EINVAL, func, "n_threads=%d: expected 1..%d", n_threads,
                    TNN_READ_MAX_THREADS);
    }
    if (staging_bytes < TNN_STAGING_MIN_BYTES || staging_bytes > TNN_STAGING_MAX_BYTES ||
        n_staging < 1 || n_staging > TNN_READ_MAX_STAGING) {
        return fail(TNN_EINVAL, func, "staging_bytes=%lld, n_staging=%d: expected %lld..%lld and "
                    "1..%d", (long long)staging_bytes, n_staging, (long long)TNN_STAGING_MIN_BYTES,
                    (long long)TNN_STAGING_MAX_BYTES, TNN_READ_MAX_STAGING);
    }
    if (flags & ~TNN_READ_STAGED) return fail(TNN_EINVAL, func, "flags=%d: unknown bits", flags);
    bool *staged = calloc(n_ranges ? (size_t)n_ranges : 1, sizeof *staged);
    if (!staged) return fail(TNN_ENOMEM, func, "no memory for %lld ranges", (long long)n_ranges);
    bool any_staged = false;
    const unsigned char *lo = NULL, *hi = NULL; /* what direct reads write */
    for (int64_t i = 0; i < n_ranges; i++) {
        int rc = check_range(sess, &ranges[i], i, func);
        if (rc != TNN_OK) {
            free(staged);
            return rc;
        }
        staged[i] = (flags & TNN_READ_STAGED) || !in_host_memory(ranges[i].t);
        any_staged |= staged[i] && ranges[i].nbytes > 0;
        const unsigned char *dst = (const unsigned char *)ranges[i].t->data + ranges[i].offset;
        if (!staged[i] && ranges[i].nbytes > 0) {
            if (!lo || dst < lo) lo = dst;
            if (!hi || dst + ranges[i].nbytes > hi) hi = dst + ranges[i].nbytes;
        }
    }
    struct plan p = {0};
    if (!make_plan(ranges, n_ranges, staged, staging_bytes, n_threads, &p)) {
        free(staged);
        return fail(TNN_ENOMEM, func, "no memory to plan %lld ranges", (long long)n_ranges);
    }
    free(staged);
    struct staging s = {0};
    if (any_staged) {
        int rc = alloc_staging(sess, n_staging, staging_bytes, &s, func);
        if (rc != TNN_OK) {
            free(p.pieces);
            return rc;
        }
    }
    if (lo) advise_huge_pages(sess->root, lo, (size_t)(hi - lo));

    struct readers r = {.fd = fd, .ranges = ranges, .pieces = p.pieces};
    start_readers(&r, n_threads);
    read_batch(&r, 0, p.n_direct, NULL);
    int rc = check_pieces(&r, 0, p.n_direct, bad_range, nonfinite_at, func);
    if (rc == TNN_OK && *bad_range < 0 && any_staged) {
        rc = read_staged(sess, &r, &p, &s, bad_range, nonfinite_at, func);
    }
    stop_readers(&r);
    free_staging(&s);
    free(p.pieces);
    return rc;
}
