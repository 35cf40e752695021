/* The pages of mapped safetensors files leave the process and come back
 * unchanged: the finite-value scan's (kn_st_drop_pages) and the loaded-model
 * store's release (kn_st_release, also from the page cache). */
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

/* A /proc/self/status memory field ("VmRSS", "RssFile") in MiB, -1 when unreadable. */
static double status_mib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256], fmt[64];
    long long kib = -1;
    snprintf(fmt, sizeof fmt, "%s: %%lld kB", key);
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, fmt, &kib) == 1) break;
    if (f) fclose(f);
    return kib < 0 ? -1.0 : (double)kib / 1024.0;
}

static double rss_mib(void) { return status_mib("VmRSS"); }

/* A file name of this process under $KN_TEST_TMP (else /tmp). */
static void tmp_path(char *out, size_t len, const char *what) {
    const char *base = getenv("KN_TEST_TMP");
    snprintf(out, len, "%s/st_pages_%s_%d.safetensors", base && *base ? base : "/tmp", what, (int)getpid());
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

/* kn_st_release drops a file's (and a view's) pages from the process; they fault back in unchanged. */
static void test_release(void) {
    enum { N = 4 << 20 }; /* 16 MiB per tensor */
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    if (!a || !b) return;
    for (int i = 0; i < N; i++) a[i] = (float)i, b[i] = (float)-i;
    const int64_t ne = N;
    kn_tensor t[2] = {kn_tensor_make(KN_F32, KN_DEV_CPU, a, 1, &ne), kn_tensor_make(KN_F32, KN_DEV_CPU, b, 1, &ne)};
    t[0].name = "a.w";
    t[1].name = "b.w";
    char path[600];
    tmp_path(path, sizeof path, "release");
    kn_err err;
    kn_st_file *f = NULL, *view = NULL;
    CHECK(kn_st_write(path, t, 2, &err) == KN_OK && kn_st_open(&f, path, &err) == KN_OK &&
              kn_st_view(&view, f, "b.", &err) == KN_OK,
          "%s", err.msg);
    free(a);
    free(b);
    if (!view) {
        kn_st_close(f);
        return;
    }
    int mapped = 0;
    CHECK(kn_st_span_bytes(f, &mapped) == 2 * (size_t)N * 4 && mapped, "the file spans both tensors, mapped");
    CHECK(kn_st_span_bytes(view, &mapped) == (size_t)N * 4 && mapped, "the view spans its tensor");
    const float *x = kn_st_find(f, "a.w")->data, *y = kn_st_find(view, "w")->data;
    double sum = 0;
    for (int i = 0; i < N; i += 1024) sum += x[i] + y[i]; /* one read per page */
    double before = status_mib("RssFile");
    kn_st_release(view);
    double after_view = status_mib("RssFile");
    kn_st_release(f);
    double after = status_mib("RssFile");
    CHECK(before - after_view >= 15 && after_view - after >= 15,
          "released pages leave the process: the view's, then the rest (RssFile %.1f -> %.1f -> %.1f MiB)", before,
          after_view, after);
    double again = 0;
    for (int i = 0; i < N; i += 1024) again += x[i] + y[i];
    CHECK(again == sum && x[N - 1] == (float)(N - 1) && y[N - 1] == (float)-(N - 1),
          "the pages fault back in unchanged");
    kn_st_close(view);
    kn_st_close(f);
    unlink(path);
}

/* The scan reads every byte but leaves none resident; reads bring pages back,
 * kn_st_drop_pages sends them away again. */
static void test_scan_drops(void) {
    char path[600];
    tmp_path(path, sizeof path, "scan");
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
}

int main(void) {
    test_scan_drops();
    test_release();
    printf("test_st_pages: %d checks, %d failed\n", checks, failures);
    return failures != 0;
}
