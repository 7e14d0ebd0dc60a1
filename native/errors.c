/* errors.c - the last-error string, ggml's log and the library's version. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinynn_internal.h"

/* Per thread, as tinynn.h promises: one session per thread never sees
 * another thread's error. */
static _Thread_local char tnn_error[1024];

int fail(int code, const char *func, const char *fmt, ...) {
    int n = snprintf(tnn_error, sizeof tnn_error, "%s: ", func);
    if (n < 0 || n >= (int)sizeof tnn_error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tnn_error + n, sizeof tnn_error - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

const char *tnn_last_error(void) { return tnn_error; }

int tnn_abi_version(void) { return TNN_ABI_VERSION; }

void *tnn_null_ptr(void) { return NULL; }

/* ---- logging ---------------------------------------------------------------- */

static tnn_log_callback log_callback = NULL;
static void *log_user_data = NULL;

static void deliver(int level, const char *text) {
    tnn_log_callback cb = log_callback;
    if (cb) {
        cb(level, text, log_user_data);
    } else if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

/* Lines logged while this thread holds one of the shim's locks wait in a queue
 * of this thread and are delivered once it lets go (log_hold / log_release):
 * a callback that calls back into the shim would otherwise wait for that lock
 * forever. Each entry: the level as one byte, the text, its NUL. Past
 * LOG_QUEUE_MAX bytes lines are dropped and counted. */
#define LOG_QUEUE_MAX (64 * 1024)
static _Thread_local int log_held = 0;
static _Thread_local char *log_queue = NULL;
static _Thread_local size_t log_queue_used = 0, log_queue_cap = 0, log_dropped = 0;

static void enqueue(int level, const char *text) {
    size_t n = strlen(text) + 2;
    if (log_queue_used + n > log_queue_cap) {
        size_t cap = log_queue_cap ? 2 * log_queue_cap : 4096;
        while (cap < log_queue_used + n) cap *= 2;
        char *grown = cap <= LOG_QUEUE_MAX ? realloc(log_queue, cap) : NULL;
        if (!grown) {
            log_dropped++;
            return;
        }
        log_queue = grown;
        log_queue_cap = cap;
    }
    log_queue[log_queue_used] = (char)level;
    memcpy(log_queue + log_queue_used + 1, text, n - 1);
    log_queue_used += n;
}

void log_hold(void) { log_held++; }

void log_release(void) {
    if (--log_held > 0) return;
    /* the callback may log (and queue) again: take the queue before delivering */
    while (log_queue_used > 0 || log_dropped > 0) {
        char *queue = log_queue;
        size_t used = log_queue_used, dropped = log_dropped;
        log_queue = NULL;
        log_queue_used = log_queue_cap = log_dropped = 0;
        for (size_t at = 0; at < used;) {
            const char *text = queue + at + 1;
            deliver((int)(unsigned char)queue[at], text);
            at += strlen(text) + 2;
        }
        free(queue);
        if (dropped > 0) {
            char line[96];
            snprintf(line, sizeof line, "tinynn: %zu log lines dropped (queue full)\n", dropped);
            deliver(GGML_LOG_LEVEL_WARN, line);
        }
    }
}

static void log_trampoline(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    if (!text) return;
    if (log_held > 0) {
        enqueue((int)level, text);
    } else {
        deliver((int)level, text);
    }
}

void tnn_set_log_callback(tnn_log_callback callback, void *user_data) {
    log_user_data = user_data;
    log_callback = callback;
    ggml_log_set(log_trampoline, NULL);
}

void route_ggml_log(void) {
    if (!log_callback) ggml_log_set(log_trampoline, NULL);
}
