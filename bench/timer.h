/* Wall-clock and process CPU seconds for the benchmarks. */
#ifndef KN_BENCH_TIMER_H
#define KN_BENCH_TIMER_H

#include <stdlib.h>
#include <time.h>

static inline double bench_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline double bench_now(void) { return bench_seconds(CLOCK_MONOTONIC); }

/* CPU time of every thread of the process so far. */
static inline double bench_cpu_seconds(void) { return bench_seconds(CLOCK_PROCESS_CPUTIME_ID); }

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of t[0..n) (sorts t; n >= 1). */
static inline double bench_median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

#endif
