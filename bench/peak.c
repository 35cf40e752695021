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

#include <omp.h>

#include "bench/timer.h"

#define NACC_AVX2 12  /* of 16 ymm registers: 12 chains + 2 constants */
#define NACC_AVX512 24 /* of 32 zmm registers */

static volatile float peak_sink; /* keeps the results observable */

__attribute__((target("avx2,fma"))) static void run_fma_avx2(int64_t iters) {
    __m256 acc[NACC_AVX2], a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
    for (int j = 0; j < NACC_AVX2; j++) acc[j] = _mm256_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++)
        for (int j = 0; j < NACC_AVX2; j++) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
    __m256 s = acc[0];
    for (int j = 1; j < NACC_AVX2; j++) s = _mm256_add_ps(s, acc[j]);
    peak_sink = _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"))) static void run_fma_avx512(int64_t iters) {
    __m512 acc[NACC_AVX512], a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
    for (int j = 0; j < NACC_AVX512; j++) acc[j] = _mm512_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++)
        for (int j = 0; j < NACC_AVX512; j++) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
    __m512 s = acc[0];
    for (int j = 1; j < NACC_AVX512; j++) s = _mm512_add_ps(s, acc[j]);
    peak_sink = _mm512_reduce_add_ps(s);
}

/* acc += a . b over bf16 pairs with a = 1, b = 2^-20: grows by 2^-19 a step,
 * far from overflow for any run length used here. */
__attribute__((target("avx512f,avx512bf16"))) static void run_dp_bf16(int64_t iters) {
    __m512 acc[NACC_AVX512];
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3580);
    for (int j = 0; j < NACC_AVX512; j++) acc[j] = _mm512_set1_ps((float)j);
    for (int64_t i = 0; i < iters; i++)
        for (int j = 0; j < NACC_AVX512; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    __m512 s = acc[0];
    for (int j = 1; j < NACC_AVX512; j++) s = _mm512_add_ps(s, acc[j]);
    peak_sink = _mm512_reduce_add_ps(s);
}

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
