/* The unit tests' one assertion: CHECK(cond, fmt, ...) counts a check and, on
 * failure, prints file:line, the condition and a formatted reason. Only the
 * first 50 failures are printed (a broken conversion would otherwise print
 * one line per input); all are counted. Each test is one translation unit, so
 * the counters are per test. */
#ifndef KN_TEST_CHECK_H
#define KN_TEST_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

static int checks, failures;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        checks++;                                                              \
        if (!(cond) && ++failures <= 50) {                                     \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

/* ||a - b|| / ||b|| over n floats, in double. */
static inline double check_rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

#endif
