/* Which instruction level our own CPU kernels run (internal to the shim).
 *
 * The packed product (cpu_product.c) and the ports' products (port_dot.c)
 * each have scalar, AVX2 and AVX-512 code giving the same bits; the CPU only
 * decides how fast. One level, chosen here, serves both, so one environment
 * variable forces both and one query says what this CPU runs. */
#ifndef TINYNN_CPU_LEVEL_H
#define TINYNN_CPU_LEVEL_H

/* In order of speed; the bit of level l in tnn_cpu_kernels_supported() is 1 << l. */
enum cpu_level {
    CPU_LEVEL_SCALAR = 0,
    CPU_LEVEL_AVX2 = 1,   /* AVX2, FMA and F16C */
    CPU_LEVEL_AVX512 = 2, /* AVX-512F */
    CPU_LEVEL_COUNT
};

/* The level an op built now runs: the one TINYNN_CPU_KERNELS names (scalar,
 * avx2 or avx512: for tests, and to compare), else the best this CPU has.
 * Negative, with the error set under func, when the variable names an unknown
 * level or one this CPU cannot run. Read at each op's build, so a test can
 * force a level per op. */
int cpu_level_for_op(const char *func);

#endif /* TINYNN_CPU_LEVEL_H */
