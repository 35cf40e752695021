/* Wall-clock and process CPU seconds for the benchmarks. */
#ifndef KN_BENCH_TIMER_H
#define KN_BENCH_TIMER_H

#include <time.h>

static inline double bench_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline double bench_now(void) { return bench_seconds(CLOCK_MONOTONIC); }

/* CPU time of every thread of the process so far. */
static inline double bench_cpu_seconds(void) { return bench_seconds(CLOCK_PROCESS_CPUTIME_ID); }

#endif
