/* Peak kernels: see peak.h.
 *
 * Every kernel updates NACC independent accumulators per iteration, NACC at
 * least latency x issue width of its instruction on current x86 cores (FMA:
 * 4-5 cycles x 2 pipes; vdpbf16ps: up to 6 x 2), so the units never wait on a
 * dependency. acc = acc * a + b with a just below 1 converges instead of
 * overflowing or going denormal (either would distort the timing). */
#include "bench/peak.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "bench/timer.h"

#define NACC_AVX2 12  /* of 16 ymm registers: 12 chains + 2 constants */
#define NACC_AVX512 24 /* of 32 zmm registers */

static volatile float peak_sink; /* keeps the results observable */

/* The chains are spelled out as named variables: an array of accumulators
 * is kept in memory by GCC, and a loop bound by its loads and stores measured
 * Zen 5's zmm FMA rate at half of what the GEMM itself reaches. */
#define ACC12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ACC24(X) ACC12(X) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)
_Static_assert(NACC_AVX2 == 12 && NACC_AVX512 == 24, "ACC12/ACC24 list the chains");

/* One kernel: TAG names the DECL_/STEP_/SUM_ macros of its chains, VT is
 * its vector type and SUM(s) a vector reduced to a float. */
#define PEAK_KERNEL(name, isa, TAG, VT, ACCS, SUM)                     \
    __attribute__((target(isa))) static void name(int64_t iters) {     \
        ACCS(DECL_##TAG)                                                \
        for (int64_t i = 0; i < iters; i++) { ACCS(STEP_##TAG) }        \
        VT s;                                                           \
        memset(&s, 0, sizeof s);                                        \
        ACCS(SUM_##TAG)                                                 \
        peak_sink = SUM(s);                                             \
    }

/* fp32: acc = acc * a + b with a just below 1. */
#define DECL_ymm(j) __m256 acc##j = _mm256_set1_ps((float)j);
#define STEP_ymm(j) acc##j = _mm256_fmadd_ps(acc##j, _mm256_set1_ps(0.999999f), _mm256_set1_ps(1e-6f));
#define SUM_ymm(j) s = _mm256_add_ps(s, acc##j);
#define DECL_zmm(j) __m512 acc##j = _mm512_set1_ps((float)j);
#define STEP_zmm(j) acc##j = _mm512_fmadd_ps(acc##j, _mm512_set1_ps(0.999999f), _mm512_set1_ps(1e-6f));
#define SUM_zmm(j) s = _mm512_add_ps(s, acc##j);
__attribute__((target("avx2"))) static inline float sum256(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
PEAK_KERNEL(run_fma_avx2, "avx2,fma", ymm, __m256, ACC12, sum256)
PEAK_KERNEL(run_fma_avx512, "avx512f", zmm, __m512, ACC24, _mm512_reduce_add_ps)

/* bf16: acc += a . b over bf16 pairs with a = 1, b = 2^-20: grows by 2^-19 a
 * step, far from overflow for any run length used here. */
#define DECL_bf16(j) DECL_zmm(j)
#define STEP_bf16(j)                                                                                      \
    acc##j = _mm512_dpbf16_ps(acc##j, (__m512bh)_mm512_set1_epi16(0x3f80), (__m512bh)_mm512_set1_epi16(0x3580));
#define SUM_bf16(j) SUM_zmm(j)
PEAK_KERNEL(run_dp_bf16, "avx512f,avx512bf16", bf16, __m512, ACC24, _mm512_reduce_add_ps)

static const struct {
    const char *name;
    void (*run)(int64_t iters);
    double flops_per_iter;
} kernels[PEAK_KINDS] = {
    [PEAK_FMA_AVX2] = {"fp32 FMA avx2 (vfmadd231ps ymm)", run_fma_avx2, NACC_AVX2 * 8 * 2},
    [PEAK_FMA_AVX512] = {"fp32 FMA avx512 (vfmadd231ps zmm)", run_fma_avx512, NACC_AVX512 * 16 * 2},
    [PEAK_DP_BF16] = {"bf16 dot avx512_bf16 (vdpbf16ps zmm)", run_dp_bf16, NACC_AVX512 * 32 * 2},
};

const char *peak_name(peak_kind k) { return kernels[k].name; }

int peak_supported(peak_kind k) {
    __builtin_cpu_init();
    switch (k) {
    case PEAK_FMA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case PEAK_FMA_AVX512: return __builtin_cpu_supports("avx512f");
    case PEAK_DP_BF16: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    default: return 0;
    }
}

/* Seconds for every thread to run `iters` iterations at once. */
static double timed_run(peak_kind k, int threads, int64_t iters) {
    double t0 = 0.0, t1 = 0.0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp barrier
#pragma omp master
        t0 = bench_now();
        kernels[k].run(iters);
#pragma omp barrier
#pragma omp master
        t1 = bench_now();
    }
    return t1 - t0;
}

double peak_gflops(peak_kind k, int threads) {
    int64_t iters = 1 << 16;
    while (timed_run(k, threads, iters) < 0.1) iters *= 2; /* ~0.1-0.2 s a run */
    double best = 0.0;
    for (int r = 0; r < 5; r++) {
        double g = kernels[k].flops_per_iter * (double)iters * threads / timed_run(k, threads, iters) * 1e-9;
        best = g > best ? g : best;
    }
    return best;
}
