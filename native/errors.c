/* errors.c - the last-error string, ggml's log and the library's version. */
#include <stdarg.h>
#include <stdio.h>

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

void route_ggml_log(void) {
    if (!log_callback) ggml_log_set(log_trampoline, NULL);
}
