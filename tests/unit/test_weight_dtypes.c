/* Stored weight dtypes: a checkpoint stored F16, BF16 or fp8 "scaled" (ComfyUI's
 * scale_weight) must compute exactly what the same values stored as F32 compute.
 * The DiT fixture's linear weights are quantized to each dtype; a second file
 * holds the dequantized values in F32. Both run the fixture's case0 input and
 * must agree to float rounding. The BF16 compute precision is checked against
 * the F32 result with a bound that reflects bf16 activations. kn_first_nonfinite
 * (the load-time NaN/inf check) finds NaN and inf in every float dtype and
 * passes each dtype's largest finite values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/family.h"

#define FIXTURE KN_SOURCE_DIR "/tests/fixtures/qwen_image_dit"

static int failures;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

static double rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / den);
}

typedef struct quant_files {
    const char *quant_path, *deq_path;
} quant_files;

/* Writes `quant_path` (linear weights in `dt`, fp8 with a per-tensor scale_weight)
 * and `deq_path` (the same values widened to F32). */
static int write_quantized(const kn_st_file *src, kn_dtype dt, const quant_files *out) {
    int n = kn_st_count(src), nq = 0;
    kn_tensor *q = calloc((size_t)n * 2, sizeof *q), *d = calloc((size_t)n, sizeof *d);
    char (*names)[160] = calloc((size_t)n, sizeof *names);
    kn_err err;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const kn_tensor *t = kn_st_at(src, i);
        int64_t numel = kn_tensor_numel(t);
        int is_linear = t->ndim == 2 && strstr(t->name, ".weight");
        kn_dtype tdt = is_linear ? dt : KN_F32;
        float scale = 1.0f;
        float *vals = malloc((size_t)numel * sizeof(float));
        kn_to_f32(vals, t->data, t->dtype, (size_t)numel, 1.0f);
        if (is_linear && (dt == KN_F8_E4M3 || dt == KN_F8_E5M2)) {
            float mx = 0;
            for (int64_t j = 0; j < numel; j++) mx = fmaxf(mx, fabsf(vals[j]));
            scale = mx / (dt == KN_F8_E4M3 ? 448.0f : 57344.0f);
            for (int64_t j = 0; j < numel; j++) vals[j] /= scale;
        }
        kn_tensor_new(&q[nq], tdt, KN_DEV_CPU, t->ndim, t->ne, &err);
        kn_from_f32(q[nq].data, tdt, vals, (size_t)numel);
        q[nq].name = t->name;
        kn_tensor_new(&d[i], KN_F32, KN_DEV_CPU, t->ndim, t->ne, &err);
        kn_to_f32(d[i].data, q[nq].data, tdt, (size_t)numel, scale); /* exactly what the loader computes */
        d[i].name = t->name;
        nq++;
        if (scale != 1.0f) {
            size_t len = strlen(t->name);
            snprintf(names[i], sizeof names[i], "%.*sscale_weight", (int)(len - 6), t->name);
            kn_tensor_new(&q[nq], KN_F32, KN_DEV_CPU, 0, NULL, &err);
            *(float *)q[nq].data = scale;
            q[nq].name = names[i];
            nq++;
        }
        free(vals);
    }
    if (kn_st_write(out->quant_path, q, nq, &err) || kn_st_write(out->deq_path, d, n, &err)) {
        printf("write failed: %s\n", err.msg);
        rc = 1;
    }
    for (int i = 0; i < nq; i++) kn_tensor_free(&q[i]);
    for (int i = 0; i < n; i++) kn_tensor_free(&d[i]);
    free(q);
    free(d);
    free(names);
    return rc;
}

/* Runs the DiT on case0's inputs; out must be [1, 16, 1, 8, 8]. */
static int run_dit(const char *weights, kn_precision prec, kn_tensor *out) {
    kn_err err;
    kn_st_file *w = NULL, *c = NULL;
    kn_dit *m = NULL;
    kn_ctx ctx;
    const kn_dit_family *fam;
    const char *prefix;
    const kn_dit_consts o = {{4, 6, 6}, 0.0, 0}; /* the fixture's tiny config */
    if (kn_st_open(&w, weights, &err) || kn_st_open(&c, FIXTURE "/case0.safetensors", &err) ||
        kn_dit_detect(w, &fam, &prefix, &err) || fam->load(&m, w, prefix, &o, &err)) {
        printf("load failed: %s\n", err.msg);
        kn_st_close(w);
        kn_st_close(c);
        return 1;
    }
    kn_tensor x, sigma, context;
    kn_st_get(c, "in.x", &x, &err);
    kn_st_get(c, "in.timestep", &sigma, &err);
    kn_st_get(c, "in.context", &context, &err);
    kn_dit_input in = {&x, &sigma, &context, NULL, NULL, NULL, NULL, 0, m->ref_method, NULL};
    kn_ctx_init(&ctx, KN_DEV_CPU, prec);
    int rc = kn_dit_forward(&ctx, m, &in, out, NULL, NULL);
    if (rc) printf("forward failed: %s\n", ctx.err.msg);
    kn_ctx_free(&ctx);
    kn_dit_free(m);
    kn_st_close(w);
    kn_st_close(c);
    return rc;
}

static void test_nonfinite(void) {
    static const kn_dtype types[] = {KN_F32, KN_F16, KN_BF16, KN_F8_E4M3, KN_F8_E5M2};
    enum { N = 10000, AT = 7777 };
    float *f = malloc(N * sizeof *f);
    unsigned char *buf = malloc(N * 4);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        kn_dtype t = types[k];
        /* ramps up to past each dtype's largest finite value: fp8 saturates, wider types reach 1e30 */
        for (int i = 0; i < N; i++) f[i] = (i % 2 ? -1.0f : 1.0f) * (t == KN_F32 ? 1e30f : 448.0f) * (float)i / N;
        kn_from_f32(buf, t, f, N);
        char what[128];
        snprintf(what, sizeof what, "%s: finite values pass", kn_dtype_name(t));
        check(kn_first_nonfinite(buf, t, N) == -1, what);
        float specials[2] = {NAN, -INFINITY};
        for (int s = 0; s < (t == KN_F8_E4M3 ? 1 : 2); s++) { /* e4m3fn has no infinity */
            kn_from_f32(buf + (size_t)AT * kn_dtype_size(t), t, &specials[s], 1);
            snprintf(what, sizeof what, "%s: %s found at element %d", kn_dtype_name(t), s ? "-inf" : "NaN", AT);
            check(kn_first_nonfinite(buf, t, N) == AT, what);
            kn_from_f32(buf + (size_t)AT * kn_dtype_size(t), t, &f[AT], 1);
        }
    }
    free(f);
    free(buf);
}

int main(void) {
    test_nonfinite();
    const char *tmp = getenv("KN_TEST_TMP") ? getenv("KN_TEST_TMP") : "/tmp";
    kn_st_file *src = NULL;
    kn_err err;
    if (kn_st_open(&src, FIXTURE "/model.safetensors", &err)) {
        printf("FAIL %s\n", err.msg);
        return 1;
    }
    static const struct {
        kn_dtype dt;
        const char *label;
    } cases[] = {{KN_F16, "F16"}, {KN_BF16, "BF16"}, {KN_F8_E4M3, "F8_E4M3 scaled"}, {KN_F8_E5M2, "F8_E5M2 scaled"}};
    int64_t ne[5] = {1, 16, 1, 8, 8};
    kn_tensor a, b;
    kn_tensor_new(&a, KN_F32, KN_DEV_CPU, 5, ne, &err);
    kn_tensor_new(&b, KN_F32, KN_DEV_CPU, 5, ne, &err);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char qp[1024], dp[1024], what[256];
        snprintf(qp, sizeof qp, "%s/dit_%s.safetensors", tmp, kn_dtype_name(cases[i].dt));
        snprintf(dp, sizeof dp, "%s/dit_%s_deq.safetensors", tmp, kn_dtype_name(cases[i].dt));
        quant_files qf = {qp, dp};
        if (write_quantized(src, cases[i].dt, &qf) || run_dit(qp, KN_PREC_FP32, &a) ||
            run_dit(dp, KN_PREC_FP32, &b)) {
            check(0, cases[i].label);
            continue;
        }
        double e = rel_l2(a.data, b.data, kn_tensor_numel(&a));
        snprintf(what, sizeof what, "%s weights compute as their F32 values: rel_l2 %.2e <= 1e-6", cases[i].label, e);
        check(e <= 1e-6, what);
        if (cases[i].dt == KN_BF16) {
            /* bf16 activations: each GEMM input loses ~2^-9 relative; measured 2.4e-3 here */
            if (run_dit(qp, KN_PREC_BF16, &a)) {
                check(0, "BF16 precision forward");
                continue;
            }
            e = rel_l2(a.data, b.data, kn_tensor_numel(&a));
            snprintf(what, sizeof what, "BF16 compute precision vs F32: rel_l2 %.2e <= 1e-2", e);
            check(e <= 1e-2 && e > 0, what);
        }
    }
    kn_tensor_free(&a);
    kn_tensor_free(&b);
    kn_st_close(src);
    printf("%d failed\n", failures);
    return failures != 0;
}
