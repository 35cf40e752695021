/* The unit tests' one assertion: CHECK(cond, fmt, ...) counts a check and, on
 * failure, prints file:line, the condition and a formatted reason. Only the
 * first 50 failures are printed (a broken conversion would otherwise print
 * one line per input); all are counted. Each test is one translation unit, so
 * the counters are per test. */
#ifndef KN_TEST_CHECK_H
#define KN_TEST_CHECK_H

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

#endif
