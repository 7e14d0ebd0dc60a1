/* file_reads.c - a file's bytes into tensors, as the file stores them or
 * converted and transposed on the way.
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
 * A range the file holds in another type, or transposed (HF's Conv1D weights,
 * [in, out]), is read a tile of at most TNN_TILE_BYTES at a time into a buffer
 * of the reading thread, checked there, converted, and written out (to the
 * tensor, or to the staging buffer) by the same thread (value_layouts.c).
 *
 * A range may ask for the packed layout of our CPU product (packed_layout.h)
 * instead of t's rows: it is read the same way a tile at a time (through the
 * thread's buffer, even where the file holds t's own values), converted and
 * transposed as it says, and each group of 16 values written where the
 * product reads it: the model is laid out once, by the reading threads, with
 * no pass over it afterwards. Such a range is the whole of a tensor that
 * tnn_pack_rows would take, read straight into host memory; the tensor is
 * marked packed when every range was read.
 *
 * Memory: the staging buffers (n_staging x staging_bytes), only for device
 * memory, and a tile's buffer per thread, only for converted or transposed
 * ranges; never a copy of a tensor. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "packed_layout.h"
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

/* How one range's values lie in the file, derived from its record once checked. */
struct layout {
    enum ggml_type from, to; /* the file's type, t's */
    int64_t fsz, dsz;        /* bytes of a value (or block) in the file, in t */
    int64_t rows, cols;      /* transposed: the file's R x C; rows 0: in t's order */
    int64_t file_nbytes;     /* bytes of the file the range reads */
    bool packed;             /* written in the packed layout of t, [K, n_rows] */
    int64_t K, n_rows;
};

static bool is_float(enum ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

static bool in_host_memory(const struct ggml_tensor *t) {
    return ggml_backend_buffer_is_host(storage_of(t)->buffer);
}

/* A range that asks for the packed layout: all of a tensor tnn_pack_rows would
 * take (check_packable: its message, after "range i: "), read straight into
 * its host memory. */
static int check_packed_range(tnn_session *sess, const tnn_file_range *r, const char *where,
                              bool staged, struct layout *L, const char *func) {
    struct ggml_tensor *t = r->t;
    int rc = check_packable(sess, t, func);
    if (rc != TNN_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", tnn_last_error() + strlen(func) + 2);
        return fail(rc, func, "%spacked rows: %s", where, why);
    }
    if (r->offset != 0 || r->nbytes != (int64_t)ggml_nbytes(t)) {
        return fail(TNN_ESHAPE, func, "%spacked rows: %lld bytes at offset %lld of t %s: expected "
                    "the whole tensor (%zu bytes at 0)", where, (long long)r->nbytes,
                    (long long)r->offset, SHAPE(t), ggml_nbytes(t));
    }
    if (staged || !in_host_memory(t)) {
        return fail(TNN_EINVAL, func, "%spacked rows are read straight into host memory, not "
                    "staged (TNN_READ_STAGED)", where);
    }
    L->packed = true;
    L->K = t->ne[0];
    L->n_rows = t->ne[1];
    return TNN_OK;
}

/* What range `which` needs before anything is read: a live tensor with memory,
 * not i32 (indices are uploaded with their checks), contiguous, the byte range
 * inside it in whole values or blocks, a file type t takes as it is or one
 * convert_values turns into t's, file rows that divide the range's values
 * (float types only), a file offset >= 0 whose end does not overflow, a known
 * layout (packed: check_packed_range). */
static int check_range(tnn_session *sess, const tnn_file_range *r, int64_t which, bool staged,
                       struct layout *L, const char *func) {
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
    const size_t unit = ggml_type_size(t->type); /* a value, or a block of values */
    if (unit == 0 || r->offset % (int64_t)unit || r->nbytes % (int64_t)unit) {
        return fail(TNN_ESHAPE, func, "%s%lld bytes at offset %lld of t %s: not whole %s values "
                    "(%zu bytes)", where, (long long)r->nbytes, (long long)r->offset, SHAPE(t),
                    ggml_type_name(t->type), unit);
    }
    if (r->layout != TNN_LAYOUT_ROW_MAJOR && r->layout != TNN_LAYOUT_PACKED_ROWS) {
        return fail(TNN_EINVAL, func, "%slayout=%d: expected %d (t's rows) or %d (packed rows)",
                    where, (int)r->layout, TNN_LAYOUT_ROW_MAJOR, TNN_LAYOUT_PACKED_ROWS);
    }
    *L = (struct layout){.from = t->type, .to = t->type, .dsz = (int64_t)unit};
    if (r->file_type != TNN_FILE_TYPE_OF_T && r->file_type != (int32_t)t->type) {
        if (r->file_type < 0 || r->file_type >= GGML_TYPE_COUNT ||
            !can_convert_values((enum ggml_type)r->file_type, t->type)) {
            return fail(TNN_EINVAL, func, "%sfile_type=%d into t %s: expected %d (t's own type) "
                        "or a conversion f32 -> f16, f16 -> f32 or bf16 -> f32", where,
                        (int)r->file_type, SHAPE(t), (int)t->type);
        }
        L->from = (enum ggml_type)r->file_type;
    }
    L->fsz = (int64_t)ggml_type_size(L->from);
    const int64_t values = r->nbytes / L->dsz;
    if (r->file_rows < 0 ||
        (r->file_rows > 0 && (!is_float(L->from) || !is_float(L->to) ||
                              values % r->file_rows != 0))) {
        return fail(TNN_ESHAPE, func, "%sfile_rows=%lld for %lld %s values into t %s: expected 0, "
                    "or rows of float values that divide them", where, (long long)r->file_rows,
                    (long long)values, ggml_type_name(L->from), SHAPE(t));
    }
    if (r->file_rows > 0) {
        L->rows = r->file_rows;
        L->cols = values / r->file_rows;
    }
    L->file_nbytes = values * L->fsz; /* fsz <= 2 x dsz: no overflow */
    if (r->file_offset < 0 || L->file_nbytes > INT64_MAX - r->file_offset) {
        return fail(TNN_EINVAL, func, "%sfile_offset=%lld: expected an offset >= 0 with room for "
                    "%lld bytes", where, (long long)r->file_offset, (long long)L->file_nbytes);
    }
    if (r->layout == TNN_LAYOUT_PACKED_ROWS) return check_packed_range(sess, r, where, staged, L, func);
    return TNN_OK;
}

/* The error for a failed piece: errno's text, or the file's end (at file byte
 * ended_at). */
static int read_failed(const tnn_file_range *r, const struct layout *L, int64_t which, int err,
                       int64_t ended_at, const char *func) {
    char where[48];
    snprintf(where, sizeof where, "range %lld: ", (long long)which);
    if (err > 0) {
        return fail(TNN_EBACKEND, func, "%sreading %lld bytes at file offset %lld: %s", where,
                    (long long)L->file_nbytes, (long long)r->file_offset, strerror(err));
    }
    return fail(TNN_ESHAPE, func, "%sthe file ended at byte %lld, inside the %lld bytes at file "
                "offset %lld (truncated?)", where, (long long)ended_at,
                (long long)L->file_nbytes, (long long)r->file_offset);
}

/* ---- the plan: pieces, and for staged ranges the rounds they travel in -------- */

/* A converted or transposed range is read a tile of at most this many bytes of
 * the file at a time, into the reading thread's buffer: it stays in a core's
 * cache while it is converted and written out. */
#define TNN_TILE_BYTES ((int64_t)1 << 20)

struct piece {
    int64_t range;  /* index in the caller's ranges */
    int64_t at;     /* byte offset within the range (in t) of its first value */
    int64_t nbytes; /* bytes from `at` its values lie within (a tile's: with gaps) */
    /* a tile of a transposed range: the file's rows r0..r1 and columns c0..c1,
     * whose value (r, c) goes to the range's value c * R + r; r1 == 0: a piece
     * of values in t's order (those at..at + nbytes) */
    int64_t r0, r1, c0, c1;
    bool prefault;    /* only faults in the tensor's memory at..at + nbytes */
    int64_t round;    /* -1: written straight into the tensor */
    int64_t stage_at; /* staged: byte offset of `at` in its round's staging buffer */
    /* results, written by the thread that reads it */
    int err;              /* 0, an errno, or -1: the file ended */
    int64_t ended_at;     /* the failed read: the file byte it stopped at */
    int64_t nonfinite_at; /* in the range's bytes of the file, or -1 */
};

struct plan {
    struct piece *pieces;
    int64_t n_pieces, cap, n_direct; /* the direct pieces come first */
    int64_t n_rounds;
    int64_t scratch_bytes; /* the buffer each thread needs */
};

static int64_t round_down(int64_t n, int64_t to) { return n / to * to; }
static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static bool add_piece(struct plan *p, struct piece pc) {
    if (p->n_pieces == p->cap) {
        int64_t cap = p->cap ? 2 * p->cap : 256;
        struct piece *more = realloc(p->pieces, (size_t)cap * sizeof *more);
        if (!more) return false;
        p->pieces = more;
        p->cap = cap;
    }
    pc.nonfinite_at = -1;
    p->pieces[p->n_pieces++] = pc;
    return true;
}

/* Whether a range's pieces go through the reading thread's buffer (converted,
 * transposed or packed), not read straight into place. */
static bool through_buffer(const struct layout *L) {
    return L->from != L->to || L->rows != 0 || L->packed;
}

/* The buffer a thread needs for a piece of `values` values: the file's bytes,
 * and where they are converted and then moved again (transposed or packed)
 * the converted values too. */
static void note_scratch(struct plan *p, const struct layout *L, int64_t values) {
    if (!through_buffer(L)) return;
    bool moved = L->rows != 0 || L->packed;
    int64_t need = values * L->fsz + (moved && L->from != L->to ? values * L->dsz : 0);
    if (need > p->scratch_bytes) p->scratch_bytes = need;
}

/* Tiles of the file's rows r0..r1 x columns c0..c1 of a transposed range, each at
 * most `most` bytes of the file (whole rows of the rectangle where they fit);
 * base: the piece every tile copies round and staging from (its at and
 * stage_at: the band's start). */
static bool cut_tiles(struct plan *p, const struct layout *L, struct piece base, int64_t r0,
                      int64_t r1, int64_t c0, int64_t c1, int64_t most) {
    int64_t w = c1 - c0, cap = most / L->fsz > 0 ? most / L->fsz : 1; /* values */
    int64_t tw = w <= cap ? w : cap, th = w <= cap ? cap / w : 1;
    if (L->packed && cap >= TNN_PACK_GROUP) { /* tiles of whole groups of k: whole blocks */
        if (th >= TNN_PACK_GROUP) {
            th = round_down(th, TNN_PACK_GROUP);
        } else {
            th = TNN_PACK_GROUP;
            tw = min64(w, cap / TNN_PACK_GROUP);
        }
    }
    for (int64_t r = r0; r < r1; r += th) {
        for (int64_t c = c0; c < c1; c += tw) {
            struct piece pc = base;
            pc.r0 = r;
            pc.r1 = min64(r + th, r1);
            pc.c0 = c;
            pc.c1 = min64(c + tw, c1);
            pc.at = (c * L->rows + r) * L->dsz;
            pc.nbytes = ((pc.c1 - 1 - c) * L->rows + (pc.r1 - r)) * L->dsz;
            if (base.round >= 0) pc.stage_at = base.stage_at + (pc.at - base.at);
            note_scratch(p, L, (pc.r1 - r) * (pc.c1 - c));
            if (!add_piece(p, pc)) return false;
        }
    }
    return true;
}

/* The pieces of bytes at..at + len of range i (whole values of t), at most
 * `most` bytes of the file each: pieces of values in t's order, or for a
 * transposed range tiles of the rectangles those values make (a row of t
 * begun, whole rows, a row ended). base: round and stage_at of `at`. */
static bool cut_band(struct plan *p, const struct layout *L, struct piece base, int64_t at,
                     int64_t len, int64_t most) {
    base.at = at;
    if (L->rows == 0) {
        int64_t step = L->from == L->to ? round_down(most, L->dsz) : most / L->fsz * L->dsz;
        if (step < L->dsz) step = L->dsz;
        if (L->packed) { /* whole groups of a row: pack_values' unit */
            step = round_down(step, TNN_PACK_GROUP * L->dsz);
            if (step == 0) step = TNN_PACK_GROUP * L->dsz;
        }
        for (int64_t done = 0; done < len; done += step) {
            struct piece pc = base;
            pc.at = at + done;
            pc.nbytes = min64(step, len - done);
            if (base.round >= 0) pc.stage_at = base.stage_at + done;
            note_scratch(p, L, pc.nbytes / L->dsz);
            if (!add_piece(p, pc)) return false;
        }
        return true;
    }
    const int64_t R = L->rows;
    for (int64_t k = at / L->dsz, end = (at + len) / L->dsz; k < end;) {
        int64_t c = k / R, r = k % R;
        if (r != 0 || end - k < R) { /* part of t's row c: the file's column c */
            int64_t r_end = min64(R, r + (end - k));
            if (!cut_tiles(p, L, base, r, r_end, c, c + 1, most)) return false;
            k += r_end - r;
        } else { /* whole rows of t: whole columns of the file */
            int64_t n = (end - k) / R;
            if (!cut_tiles(p, L, base, 0, R, c, c + n, most)) return false;
            k += n * R;
        }
    }
    return true;
}

/* Pieces that fault in a transposed range's memory (host memory, direct) before
 * its tiles are written: every tile writes a little of every page of the
 * tensor, so the threads writing tiles would take the same pages' faults at
 * once, one waiting for the other (2 cores, GPT-2 small's 324 MiB of Conv1D
 * weights: 0.18-0.25 s); faulted in a piece of TNN_DIRECT_PIECE bytes each,
 * apart, they cost what a plain read's do (0.11-0.14 s in all). */
static bool add_prefaults(struct plan *p, int64_t i, int64_t nbytes) {
    for (int64_t at = 0; at < nbytes; at += TNN_DIRECT_PIECE) {
        struct piece pc = {.range = i, .at = at, .prefault = true, .round = -1};
        pc.nbytes = min64(TNN_DIRECT_PIECE, nbytes - at);
        if (!add_piece(p, pc)) return false;
    }
    return true;
}

/* Cuts each range into pieces: a direct range into TNN_DIRECT_PIECE bytes of
 * its own (converted or transposed: TNN_TILE_BYTES of the file; transposed:
 * after its prefaults); a staged one into bands of what fits the round's
 * staging buffer, each band into pieces of at most a thread's share of the
 * buffer (and a tile's bytes), a range's bands back to back in a round (so
 * that its bytes there go to the device in one copy). A band of a transposed
 * range that does not span the file's rows whole is read a pread per row of
 * each tile. Direct pieces come first. */
static bool make_plan(const tnn_file_range *ranges, const struct layout *layouts, int64_t n,
                      const bool *staged, int64_t staging_bytes, int n_threads, struct plan *p) {
    *p = (struct plan){0};
    int64_t round = 0, used = 0;
    for (int stage = 0; stage < 2; stage++) {
        if (stage == 1) p->n_direct = p->n_pieces;
        for (int64_t i = 0; i < n; i++) {
            if (staged[i] != (stage == 1)) continue;
            const struct layout *L = &layouts[i];
            bool plain = !through_buffer(L);
            int64_t most = stage ? staging_bytes / n_threads : TNN_DIRECT_PIECE;
            if (!plain) most = min64(most, TNN_TILE_BYTES);
            struct piece base = {.range = i, .round = -1, .stage_at = -1};
            if (!stage) {
                if (L->rows && !add_prefaults(p, i, ranges[i].nbytes)) return false;
                if (!cut_band(p, L, base, 0, ranges[i].nbytes, most)) return false;
                continue;
            }
            for (int64_t at = 0; at < ranges[i].nbytes;) {
                base.stage_at = at == 0 ? round_up(used, TNN_STAGE_ALIGN) : used;
                if (staging_bytes - base.stage_at < L->dsz) { /* full: the next round */
                    round++;
                    base.stage_at = 0;
                }
                base.round = round;
                int64_t len = min64(ranges[i].nbytes - at,
                                    round_down(staging_bytes - base.stage_at, L->dsz));
                if (!cut_band(p, L, base, at, len, most)) return false;
                used = base.stage_at + len;
                at += len;
            }
        }
    }
    p->n_rounds = p->n_pieces > p->n_direct ? round + 1 : 0;
    return true;
}

/* ---- reading one piece ---------------------------------------------------------- */

/* The file's rows r0..r1, columns c0..c1 of a transposed range into buf, a row
 * of the tile after another (one pread where they are whole rows of the file). */
static int pread_tile(int fd, const tnn_file_range *range, const struct layout *L,
                      struct piece *pc, unsigned char *buf) {
    int64_t w = (pc->c1 - pc->c0) * L->fsz, done = 0;
    int64_t first = range->file_offset + (pc->r0 * L->cols + pc->c0) * L->fsz;
    if (pc->c1 - pc->c0 == L->cols) {
        int err = pread_fully(fd, buf, (pc->r1 - pc->r0) * w, first, &done);
        pc->ended_at = first + done;
        return err;
    }
    for (int64_t r = 0; r < pc->r1 - pc->r0; r++) {
        int64_t from = first + r * L->cols * L->fsz;
        int err = pread_fully(fd, buf + r * w, w, from, &done);
        if (err) {
            pc->ended_at = from + done;
            return err;
        }
    }
    return 0;
}

/* Where value i of a piece's bytes of the file (in the order it read them)
 * lies in the range's bytes of the file. */
static int64_t file_byte(const struct layout *L, const struct piece *pc, int64_t i) {
    if (pc->r1 == 0) return pc->at / L->dsz * L->fsz + i * L->fsz;
    int64_t w = pc->c1 - pc->c0;
    return ((pc->r0 + i / w) * L->cols + pc->c0 + i % w) * L->fsz;
}

/* A converted piece, a tile or a piece of a packed range: read into buf,
 * checked, converted (to f16: checked again, a value past f16's range became
 * inf), written to dst (a tile: transposed, t's rows R values apart; packed:
 * dst is t's first byte, and each value goes where packed_offset says). */
static void read_through(int fd, const tnn_file_range *range, const struct layout *L,
                         struct piece *pc, unsigned char *dst, unsigned char *buf) {
    int64_t values;
    if (pc->r1 == 0) {
        values = pc->nbytes / L->dsz;
        int64_t from = range->file_offset + pc->at / L->dsz * L->fsz, done = 0;
        pc->err = pread_fully(fd, buf, values * L->fsz, from, &done);
        pc->ended_at = from + done;
    } else {
        values = (pc->r1 - pc->r0) * (pc->c1 - pc->c0);
        pc->err = pread_tile(fd, range, L, pc, buf);
    }
    if (pc->err) return;
    int64_t bad = first_nonfinite(buf, (size_t)(values * L->fsz), L->from);
    if (bad >= 0) {
        pc->nonfinite_at = file_byte(L, pc, bad / L->fsz);
        return;
    }
    unsigned char *out = buf;
    if (L->from != L->to) {
        out = pc->r1 == 0 && !L->packed ? dst : buf + values * L->fsz;
        convert_values(buf, L->from, out, L->to, values);
        bad = L->to == GGML_TYPE_F16 ? first_nonfinite(out, (size_t)(values * 2), L->to) : -1;
        if (bad >= 0) {
            pc->nonfinite_at = file_byte(L, pc, bad / 2);
            return;
        }
    }
    if (L->packed && pc->r1 != 0) { /* the file's (r, c): t's row c, value r */
        transpose_values_packed(out, pc->r1 - pc->r0, pc->c1 - pc->c0, pc->r0, pc->c0, L->K,
                                L->n_rows, dst, (size_t)L->dsz);
    } else if (L->packed) {
        pack_values(out, pc->at / L->dsz, values, L->K, L->n_rows, dst, (size_t)L->dsz);
    } else if (pc->r1 != 0) {
        transpose_values(out, pc->r1 - pc->r0, pc->c1 - pc->c0, dst, L->rows, (size_t)L->dsz);
    }
}

/* ---- the readers: the calling thread and n_threads - 1 helpers ---------------- */

struct readers;

struct reader {
    struct readers *all;
    unsigned char *scratch; /* for converted pieces and tiles */
    pthread_t thread;
};

struct readers {
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    int fd;
    tnn_session *root; /* whose host memory direct pieces fault in */
    const tnn_file_range *ranges;
    const struct layout *layouts;
    struct piece *pieces;
    unsigned char *stage; /* the staging buffer of the round being read */
    int64_t next, end;    /* the pieces of this batch not yet taken */
    int busy;             /* helpers not yet done with this batch */
    long batch;           /* counts batches, so a helper knows a new one */
    bool stop;            /* a piece failed: take no more */
    bool quit;
    int n_helpers;
    struct reader self;                          /* the calling thread */
    struct reader helpers[TNN_READ_MAX_THREADS]; /* n_helpers of them started */
};

static void read_piece(struct readers *r, struct piece *pc, unsigned char *stage,
                       unsigned char *scratch) {
    const tnn_file_range *range = &r->ranges[pc->range];
    const struct layout *L = &r->layouts[pc->range];
    unsigned char *dst = pc->round < 0 ? (unsigned char *)range->t->data + range->offset + pc->at
                                       : stage + pc->stage_at;
    if (pc->prefault) {
        prefault_host_weights(r->root, dst, (size_t)pc->nbytes);
        return;
    }
    if (through_buffer(L)) {
        read_through(r->fd, range, L, pc, L->packed ? range->t->data : dst, scratch);
        return;
    }
    int64_t from = range->file_offset + pc->at, done = 0;
    pc->err = pread_fully(r->fd, dst, pc->nbytes, from, &done);
    pc->ended_at = from + done;
    if (!pc->err) {
        int64_t bad = first_nonfinite(dst, (size_t)pc->nbytes, L->to);
        pc->nonfinite_at = bad < 0 ? -1 : pc->at + bad;
    }
}

/* Takes pieces of the current batch until none is left (or one failed). */
static void take_pieces(struct readers *r, unsigned char *scratch) {
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->stop || r->next >= r->end) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        struct piece *pc = &r->pieces[r->next++];
        unsigned char *stage = r->stage;
        pthread_mutex_unlock(&r->mu);
        read_piece(r, pc, stage, scratch);
        if (pc->err) {
            pthread_mutex_lock(&r->mu);
            r->stop = true;
            pthread_mutex_unlock(&r->mu);
        }
    }
}

static void *helper_main(void *arg) {
    struct reader *me = arg;
    struct readers *r = me->all;
    long seen = 0;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (r->batch == seen && !r->quit) pthread_cond_wait(&r->wake, &r->mu);
        if (r->quit) break;
        seen = r->batch;
        pthread_mutex_unlock(&r->mu);
        take_pieces(r, me->scratch);
        pthread_mutex_lock(&r->mu);
        if (--r->busy == 0) pthread_cond_signal(&r->idle);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Each reader's buffer (scratch_bytes; none when 0): false when one cannot be
 * had. Helpers that could not be started are done without: the calling thread
 * reads every piece the others leave. */
static bool start_readers(struct readers *r, int n_threads, int64_t scratch_bytes) {
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->wake, NULL);
    pthread_cond_init(&r->idle, NULL);
    r->n_helpers = 0;
    r->self = (struct reader){.all = r};
    if (scratch_bytes > 0 && !(r->self.scratch = malloc((size_t)scratch_bytes))) return false;
    for (int i = 0; i < n_threads - 1; i++) {
        struct reader *h = &r->helpers[r->n_helpers];
        *h = (struct reader){.all = r};
        if (scratch_bytes > 0 && !(h->scratch = malloc((size_t)scratch_bytes))) break;
        if (pthread_create(&h->thread, NULL, helper_main, h) != 0) {
            free(h->scratch);
            break;
        }
        r->n_helpers++;
    }
    return true;
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
    take_pieces(r, r->self.scratch);
    pthread_mutex_lock(&r->mu);
    while (r->busy > 0) pthread_cond_wait(&r->idle, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

static void stop_readers(struct readers *r) {
    pthread_mutex_lock(&r->mu);
    r->quit = true;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->n_helpers; i++) {
        pthread_join(r->helpers[i].thread, NULL);
        free(r->helpers[i].scratch);
    }
    free(r->self.scratch);
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
        if (pc->err) {
            *bad_range = pc->range;
            return read_failed(&r->ranges[pc->range], &r->layouts[pc->range], pc->range, pc->err,
                               pc->ended_at, func);
        }
    }
    for (int64_t i = first; i < end; i++) { /* pieces are in the ranges' order */
        const struct piece *pc = &r->pieces[i];
        if (pc->nonfinite_at >= 0) {
            *bad_range = pc->range;
            *nonfinite_at = pc->nonfinite_at;
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

/* The copies of one round: each range's bytes in the round (a band: its
 * pieces' values, back to back) in one copy, asynchronous on the session's
 * stream where t's memory belongs to its backend (ggml's asynchronous copies
 * take no other memory), else a plain copy. */
static void copy_round(tnn_session *sess, const struct readers *r, int64_t first, int64_t end,
                       const unsigned char *stage) {
    for (int64_t i = first; i < end;) {
        const struct piece *pc = &r->pieces[i];
        int64_t lo = pc->at, hi = pc->at + pc->nbytes, lo_stage = pc->stage_at, j = i + 1;
        for (; j < end && r->pieces[j].range == pc->range; j++) {
            const struct piece *q = &r->pieces[j];
            if (q->at < lo) {
                lo = q->at;
                lo_stage = q->stage_at;
            }
            if (q->at + q->nbytes > hi) hi = q->at + q->nbytes;
        }
        const tnn_file_range *range = &r->ranges[pc->range];
        struct ggml_tensor *t = range->t;
        size_t to = (size_t)(range->offset + lo);
        if (ggml_backend_buffer_get_type(storage_of(t)->buffer) ==
            ggml_backend_get_default_buffer_type(sess->backend)) {
            ggml_backend_tensor_set_async(sess->backend, t, stage + lo_stage, to,
                                          (size_t)(hi - lo));
        } else {
            ggml_backend_tensor_set(t, stage + lo_stage, to, (size_t)(hi - lo));
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

/* A tensor read packed is read by that one range: no other range may write it
 * (or a view of it) in t's own layout, or packed a second time. */
static int check_packed_alone(tnn_session *sess, const tnn_file_range *ranges,
                              const struct layout *layouts, int64_t n, const char *func) {
    int64_t n_packed = 0;
    for (int64_t i = 0; i < n; i++) n_packed += layouts[i].packed;
    if (n_packed == 0) return TNN_OK;
    int64_t *by_tensor = malloc(TNN_MAX_PERSISTENT_TENSORS * sizeof *by_tensor);
    if (!by_tensor) return fail(TNN_ENOMEM, func, "no memory to check %lld ranges", (long long)n);
    for (int64_t i = 0; i < TNN_MAX_PERSISTENT_TENSORS; i++) by_tensor[i] = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t at = layouts[i].packed ? persistent_index(sess, ranges[i].t) : -1;
        if (at >= 0 && by_tensor[at] < 0) by_tensor[at] = i; /* the first: named in the error */
    }
    int rc = TNN_OK;
    for (int64_t i = 0; i < n && rc == TNN_OK; i++) {
        int64_t at = persistent_index(sess, storage_of(ranges[i].t));
        int64_t packed_by = at >= 0 ? by_tensor[at] : -1;
        if (packed_by >= 0 && packed_by != i) {
            rc = fail(TNN_EINVAL, func, "range %lld: t %s is read packed by range %lld, which "
                      "must be the only range of it", (long long)i, SHAPE(ranges[i].t),
                      (long long)packed_by);
        }
    }
    free(by_tensor);
    return rc;
}

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
    struct layout *layouts = calloc(n_ranges ? (size_t)n_ranges : 1, sizeof *layouts);
    if (!staged || !layouts) {
        free(staged);
        free(layouts);
        return fail(TNN_ENOMEM, func, "no memory for %lld ranges", (long long)n_ranges);
    }
    int rc = TNN_OK;
    bool any_staged = false;
    const unsigned char *lo = NULL, *hi = NULL; /* what direct reads write */
    for (int64_t i = 0; i < n_ranges && rc == TNN_OK; i++) {
        rc = check_range(sess, &ranges[i], i, flags & TNN_READ_STAGED, &layouts[i], func);
        staged[i] = (flags & TNN_READ_STAGED) || (rc == TNN_OK && !in_host_memory(ranges[i].t));
        any_staged |= staged[i] && ranges[i].nbytes > 0;
        if (rc != TNN_OK || staged[i] || ranges[i].nbytes == 0) continue;
        const unsigned char *dst = (const unsigned char *)ranges[i].t->data + ranges[i].offset;
        if (!lo || dst < lo) lo = dst;
        if (!hi || dst + ranges[i].nbytes > hi) hi = dst + ranges[i].nbytes;
    }
    if (rc == TNN_OK) rc = check_packed_alone(sess, ranges, layouts, n_ranges, func);
    struct plan p = {0};
    if (rc == TNN_OK &&
        !make_plan(ranges, layouts, n_ranges, staged, staging_bytes, n_threads, &p)) {
        rc = fail(TNN_ENOMEM, func, "no memory to plan %lld ranges", (long long)n_ranges);
    }
    free(staged);
    struct staging s = {0};
    if (rc == TNN_OK && any_staged) rc = alloc_staging(sess, n_staging, staging_bytes, &s, func);
    if (rc != TNN_OK) {
        free(p.pieces);
        free(layouts);
        return rc;
    }
    if (lo) advise_huge_pages(sess->root, lo, (size_t)(hi - lo));

    struct readers r = {.fd = fd, .root = sess->root, .ranges = ranges, .layouts = layouts, .pieces = p.pieces};
    if (!start_readers(&r, n_threads, p.scratch_bytes)) {
        rc = fail(TNN_ENOMEM, func, "could not allocate a reading buffer of %lld bytes",
                  (long long)p.scratch_bytes);
    } else {
        read_batch(&r, 0, p.n_direct, NULL);
        rc = check_pieces(&r, 0, p.n_direct, bad_range, nonfinite_at, func);
        if (rc == TNN_OK && *bad_range < 0 && any_staged) {
            rc = read_staged(sess, &r, &p, &s, bad_range, nonfinite_at, func);
        }
    }
    stop_readers(&r);
    if (rc == TNN_OK && *bad_range < 0) { /* every byte in place: the layout they are in */
        for (int64_t i = 0; i < n_ranges; i++) {
            if (layouts[i].packed) mark_packed(sess, ranges[i].t);
        }
    }
    free_staging(&s);
    free(p.pieces);
    free(layouts);
    return rc;
}
