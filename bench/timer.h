/* Wall-clock seconds for the benchmarks. */
#ifndef KN_BENCH_TIMER_H
#define KN_BENCH_TIMER_H

#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
