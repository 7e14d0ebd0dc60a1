/* cpu_level.c - which instruction level our own CPU kernels run: the levels
 * this CPU has (tnn_cpu_kernels_supported) and the one an op built now uses
 * (cpu_level_for_op, TINYNN_CPU_KERNELS). See cpu_level.h.
 *
 * Checked at run time: libtinynn is built once for every x86-64 CPU, each
 * kernel compiled for its own level (__attribute__((target))), so a level is
 * taken only where __builtin_cpu_supports says its instructions exist. */
#include <stdlib.h>
#include <string.h>

#include "cpu_level.h"
#include "tinynn_internal.h"

static const char *const level_names[CPU_LEVEL_COUNT] = {
    [CPU_LEVEL_SCALAR] = "scalar",
    [CPU_LEVEL_AVX2] = "avx2",
    [CPU_LEVEL_AVX512] = "avx512",
};

int tnn_cpu_kernels_supported(void) {
    int mask = 1 << CPU_LEVEL_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* the AVX2 kernels also fuse (FMA) and widen f16 weights (F16C) */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        mask |= 1 << CPU_LEVEL_AVX2;
    }
    if (__builtin_cpu_supports("avx512f")) mask |= 1 << CPU_LEVEL_AVX512;
#endif
    return mask;
}

int cpu_level_for_op(const char *func) {
    const int have = tnn_cpu_kernels_supported();
    const char *wanted = getenv("TINYNN_CPU_KERNELS");
    if (!wanted || !wanted[0] || strcmp(wanted, "auto") == 0) {
        int best = CPU_LEVEL_SCALAR;
        for (int level = 0; level < CPU_LEVEL_COUNT; level++) {
            if (have & (1 << level)) best = level;
        }
        return best;
    }
    for (int level = 0; level < CPU_LEVEL_COUNT; level++) {
        if (strcmp(wanted, level_names[level]) != 0) continue;
        if (!(have & (1 << level))) {
            return fail(TNN_EBACKEND, func, "TINYNN_CPU_KERNELS=%.40s: this CPU cannot run it",
                        wanted);
        }
        return level;
    }
    return fail(TNN_EINVAL, func, "TINYNN_CPU_KERNELS=%.40s: expected auto, scalar, avx2 or avx512",
                wanted);
}
