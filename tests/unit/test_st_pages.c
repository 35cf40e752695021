/* kn_st_drop_pages and the finite-value scan: the pages a load reads leave the
 * process's resident memory again, and every tensor still reads the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/safetensors.h"

static int checks, failures;
#define CHECK(cond, ...)                                      \
    do {                                                      \
        checks++;                                             \
        if (!(cond)) {                                        \
            failures++;                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                     \
            fputc('\n', stderr);                              \
        }                                                     \
    } while (0)

#define N_TENSORS 4
#define TENSOR_FLOATS ((int64_t)4 << 20) /* 16 MiB each */

/* The process's resident memory in MiB (VmRSS). */
static double rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %lld kB", &kib) == 1) break;
    if (f) fclose(f);
    return (double)kib / 1024.0;
}

static double sum_all(const kn_st_file *f) {
    double s = 0;
    for (int i = 0; i < kn_st_count(f); i++) {
        const kn_tensor *t = kn_st_at(f, i);
        const float *v = t->data;
        for (int64_t j = 0; j < TENSOR_FLOATS; j++) s += v[j];
    }
    return s;
}

int main(void) {
    const char *base = getenv("KN_TEST_TMP");
    char path[600];
    snprintf(path, sizeof path, "%s/st_pages_%d.safetensors", base && *base ? base : "/tmp", (int)getpid());
    kn_err err;
    float *data = malloc((size_t)TENSOR_FLOATS * sizeof(float));
    kn_tensor ts[N_TENSORS];
    char names[N_TENSORS][16];
    for (int64_t j = 0; j < TENSOR_FLOATS; j++) data[j] = (float)(j % 1000) * 0.25f;
    for (int i = 0; i < N_TENSORS; i++) {
        snprintf(names[i], sizeof names[i], "w%d", i);
        ts[i] = kn_tensor_make(KN_F32, KN_DEV_CPU, data, 1, (int64_t[]){TENSOR_FLOATS});
        ts[i].name = names[i];
    }
    int rc = kn_st_write(path, ts, N_TENSORS, &err);
    free(data);
    CHECK(rc == KN_OK, "writing %s: %s", path, err.msg);
    kn_st_file *f = NULL;
    if (!rc) rc = kn_st_open(&f, path, &err);
    CHECK(rc == KN_OK, "opening %s: %s", path, err.msg);
    if (!rc) {
        const double file_mib = N_TENSORS * TENSOR_FLOATS * 4.0 / (1 << 20), before = rss_mib();
        CHECK(kn_st_check_finite(f, &err) == KN_OK, "finite scan: %s", err.msg);
        double after_scan = rss_mib();
        /* the scan read all 64 MiB; at most a few pages per tensor stay (its partial edge pages) */
        CHECK(after_scan - before < 0.25 * file_mib, "the scan left %.1f of %.0f MiB resident",
              after_scan - before, file_mib);
        double expect = 0;
        for (int64_t j = 0; j < TENSOR_FLOATS; j++) expect += (float)(j % 1000) * 0.25f;
        expect *= N_TENSORS;
        double s = sum_all(f);
        double touched = rss_mib();
        CHECK(s == expect, "tensors read %.17g after the drop, written %.17g", s, expect);
        CHECK(touched - before > 0.75 * file_mib, "reading every tensor made %.1f of %.0f MiB resident",
              touched - before, file_mib);
        kn_st_drop_pages(f);
        CHECK(rss_mib() - before < 0.25 * file_mib, "kn_st_drop_pages left %.1f of %.0f MiB resident",
              rss_mib() - before, file_mib);
        CHECK(sum_all(f) == expect, "tensors changed after kn_st_drop_pages");
        kn_st_close(f);
    }
    unlink(path);
    printf("test_st_pages: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
