/* backends.c - ggml's backend modules, loaded by path from the folder this
 * library lives in (ggml is built with GGML_BACKEND_DL: the CPU and CUDA
 * backends are modules, not link dependencies, so libtinynn loads on a
 * machine without CUDA and says why CUDA is missing when asked). */
#define _GNU_SOURCE /* dladdr */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tinynn_internal.h"

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

bool ensure_cpu_backend(const char *func) {
    pthread_mutex_lock(&backend_lock);
    log_hold();
    route_ggml_log();
    bool loaded = cpu_loaded;
    if (!loaded) {
        char reason[600];
        loaded = cpu_loaded = load_best_cpu(reason, sizeof reason);
        if (!loaded) fail(TNN_EBACKEND, func, "%s", reason);
    }
    pthread_mutex_unlock(&backend_lock);
    log_release();
    return loaded;
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

/* The CUDA device, or NULL with the reason in tnn_last_error(). The module is
 * tried once; later calls repeat the first answer. */
ggml_backend_dev_t ensure_cuda_backend(const char *func) {
    if (!ensure_cpu_backend(func)) return NULL;
    pthread_mutex_lock(&backend_lock);
    log_hold();
    if (!cuda_tried) {
        cuda_tried = true;
        prefer_strict_f32_gemm(); /* before the module loads cuBLAS */
        if (load_module("libggml-cuda.so", cuda_reason, sizeof cuda_reason) && !cuda_device()) {
            snprintf(cuda_reason, sizeof cuda_reason,
                     "the CUDA backend loaded but found no usable CUDA device");
        }
    }
    ggml_backend_dev_t dev = cuda_device();
    pthread_mutex_unlock(&backend_lock);
    log_release();
    if (!dev) fail(TNN_EBACKEND, func, "CUDA is not available: %s", cuda_reason);
    return dev;
}

int tnn_cuda_available(void) { return ensure_cuda_backend(__func__) != NULL; }
