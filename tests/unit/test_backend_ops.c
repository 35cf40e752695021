/* Every op of kernels/ops.h on every backend, in the manner of ggml's
 * test-backend-ops.
 *
 * For each op and several shapes (odd sizes, GQA, key masks, causal,
 * broadcasting, in place, every weight dtype and precision for linear):
 *  1. random inputs (fixed seed) run on the CPU through the public kn_* entry
 *     point, compared with a naive double-precision reference (kn_ref_linear,
 *     kn_ref_attention, or the formula written out below);
 *  2. on every other compiled and available backend (CUDA), once per
 *     activation dtype F32, BF16 and F16: the inputs, rounded to that dtype,
 *     are copied to the device, the op runs there and its output, copied back,
 *     is compared with the CPU's output on the same rounded inputs.
 * The error is max |got - want| / max |want| (NaN or a missing value counts as
 * infinite). Each check has its own bound; bf16/f16 activations add the
 * rounding of the output. One line per op/shape/backend, exit status 1 on any
 * failure. Without a usable GPU the device half prints one SKIP line and the
 * CPU half still runs. KN_CUDA_SYNC=1 makes CUDA errors land on their op. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/device.h"
#include "kernels/ops.h"

static int checks, failures;

/* ---- host data ----------------------------------------------------------------- */

/* The test cannot go on without its inputs. */
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory allocating %zu bytes\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

/* splitmix64, mapped to [-1, 1) */
static float frand(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1 << 23) - 1.0);
}

static float *rand_vec(int64_t n, float amp) {
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = amp * frand();
    return v;
}

static int64_t numel_of(int ndim, const int64_t *ne) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    return n;
}

/* v rounded to dtype dt: what a backend with dt activations is given. */
static void round_to(float *v, int64_t n, kn_dtype dt) {
    if (dt == KN_F32) return;
    void *tmp = xmalloc((size_t)n * kn_dtype_size(dt));
    kn_from_f32(tmp, dt, v, (size_t)n);
    kn_to_f32(v, tmp, dt, (size_t)n, 1.0f);
    free(tmp);
}

/* A weight stored as dt with `scale`: raw bytes, and the f32 values it stands for. */
typedef struct weight {
    kn_dtype dt;
    float scale;
    int64_t n;
    void *raw;
    float *deq;
} weight;

static weight weight_rand(kn_dtype dt, float scale, int64_t n, float amp) {
    weight w = {dt, scale, n, xmalloc((size_t)n * kn_dtype_size(dt)), rand_vec(n, amp)};
    for (int64_t i = 0; i < n; i++) w.deq[i] /= scale; /* stored values are real / scale */
    kn_from_f32(w.raw, dt, w.deq, (size_t)n);
    kn_to_f32(w.deq, w.raw, dt, (size_t)n, scale);
    return w;
}

static void weight_free(weight *w) {
    free(w->raw);
    free(w->deq);
}

static const char *shape_str(char *buf, size_t len, int ndim, const int64_t *ne) {
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++) o += (size_t)snprintf(buf + o, len - o, i ? ",%lld" : "%lld", (long long)ne[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* ---- one run of an op on one backend -------------------------------------------- */

#define ENV_TENSORS 12

/* Tensors made for one run. After the first failure (rc != 0, message in
 * ctx.err) helpers do nothing, so run functions read straight through. */
typedef struct env {
    kn_ctx ctx;
    kn_dtype act; /* activation dtype; a CPU run stores F32 holding values rounded to it */
    kn_tensor owned[ENV_TENSORS];
    int n_owned;
    int rc;
} env;

static kn_tensor env_dummy;

static void env_init(env *e, kn_device dev, kn_dtype act, kn_precision prec) {
    memset(e, 0, sizeof *e);
    e->act = act;
    e->rc = kn_ctx_init(&e->ctx, dev, prec);
}

static void env_free(env *e) {
    for (int i = 0; i < e->n_owned; i++) kn_tensor_free(&e->owned[i]);
    kn_ctx_free(&e->ctx);
}

static kn_tensor *env_new(env *e, kn_dtype dt, int ndim, const int64_t *ne) {
    if (e->rc) return &env_dummy;
    kn_tensor *t = &e->owned[e->n_owned];
    e->rc = kn_tensor_new(t, dt, e->ctx.device, ndim, ne, &e->ctx.err);
    if (e->rc) return &env_dummy;
    e->n_owned++;
    return t;
}

/* A tensor holding raw bytes of dtype dt (weights, F32 masks and tables). */
static kn_tensor *put_raw(env *e, kn_dtype dt, float scale, const void *raw, int ndim, const int64_t *ne) {
    kn_tensor *t = env_new(e, dt, ndim, ne);
    if (e->rc) return t;
    t->scale = scale;
    e->rc = kn_device_memcpy(t->device, t->data, KN_DEV_CPU, raw, kn_tensor_nbytes(t), &e->ctx.err);
    return t;
}

static kn_tensor *put_f32(env *e, const float *v, int ndim, const int64_t *ne) {
    return put_raw(e, KN_F32, 1.0f, v, ndim, ne);
}

static kn_tensor *put_weight(env *e, const weight *w, int ndim, const int64_t *ne) {
    return put_raw(e, w->dt, w->scale, w->raw, ndim, ne);
}

static kn_dtype env_act_storage(const env *e) { return e->ctx.device == KN_DEV_CPU ? KN_F32 : e->act; }

/* An activation: v rounded to e->act, stored in the backend's activation dtype. */
static kn_tensor *put_act(env *e, const float *v, int ndim, const int64_t *ne) {
    int64_t n = numel_of(ndim, ne);
    kn_dtype dt = env_act_storage(e);
    float *r = xmalloc((size_t)n * sizeof *r);
    memcpy(r, v, (size_t)n * sizeof *r);
    round_to(r, n, e->act);
    void *raw = xmalloc((size_t)n * kn_dtype_size(dt));
    kn_from_f32(raw, dt, r, (size_t)n);
    kn_tensor *t = put_raw(e, dt, 1.0f, raw, ndim, ne);
    free(raw);
    free(r);
    return t;
}

static kn_tensor *new_act(env *e, int ndim, const int64_t *ne) { return env_new(e, env_act_storage(e), ndim, ne); }

/* t's values as f32 into out; returns the run's status. */
static int get(env *e, const kn_tensor *t, float *out) {
    if (e->rc) return e->rc;
    size_t n = (size_t)kn_tensor_numel(t);
    void *raw = xmalloc(kn_tensor_nbytes(t));
    e->rc = kn_device_memcpy(KN_DEV_CPU, raw, t->device, t->data, kn_tensor_nbytes(t), &e->ctx.err);
    if (!e->rc) kn_to_f32(out, raw, t->dtype, n, 1.0f);
    free(raw);
    return e->rc;
}

/* ---- checks ------------------------------------------------------------------------- */

typedef int (*run_fn)(const void *params, env *e, float *out);

typedef struct check {
    const char *op;
    char what[160];      /* shapes and options */
    run_fn run;
    const void *params;
    kn_precision prec;
    int64_t n;           /* output elements */
    const float *ref;    /* naive reference for the CPU's f32 run, or NULL */
    double ref_tol;      /* CPU vs reference */
    double dev_tol;      /* device vs CPU, F32 activations */
} check;

typedef struct backend {
    const char *name;
    kn_device dev;
    int available;
    char why[512];
} backend;

static backend backends[] = {{"cuda", KN_DEV_CUDA, 0, ""}};
#define N_BACKENDS (int)(sizeof backends / sizeof backends[0])

static const kn_dtype act_types[] = {KN_F32, KN_BF16, KN_F16};
/* Output rounding of a bf16/f16 backend, on top of the f32 bound: half an ulp
 * is at most 2^-8 (bf16) or 2^-11 (f16) of the largest value; twice that. */
static double act_rounding(kn_dtype dt) { return dt == KN_BF16 ? 8e-3 : dt == KN_F16 ? 1e-3 : 0.0; }

static double max_err(const float *got, const float *want, int64_t n) {
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (isnan(d) && !(isnan(got[i]) && isnan(want[i]))) return INFINITY;
        if (d > diff) diff = d;
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    return diff / (scale > 0.0 ? scale : 1.0);
}

static void report(const check *c, const char *against, double err, double tol, const char *msg) {
    int ok = !msg && err <= tol;
    checks++;
    failures += !ok;
    printf("%-4s %-10s %-62s %-14s err %.2e  bound %.1e%s%s\n", ok ? "ok" : "FAIL", c->op, c->what, against, err, tol,
           msg ? "  " : "", msg ? msg : "");
}

static const char *prec_name(kn_precision p) { return p == KN_PREC_BF16 ? "bf16" : p == KN_PREC_FP16 ? "fp16" : "fp32"; }

/* Runs c once; NULL on success, else the error message (in e's ctx, kept until env_free). */
static const char *run_once(const check *c, env *e, float *out) {
    if (!e->rc) e->rc = c->run(c->params, e, out);
    return e->rc ? e->ctx.err.msg : NULL;
}

static void run_check(const check *c) {
    float *cpu = xmalloc((size_t)c->n * sizeof *cpu), *alt = xmalloc((size_t)c->n * sizeof *alt);
    env e;
    env_init(&e, KN_DEV_CPU, KN_F32, c->prec);
    const char *msg = run_once(c, &e, cpu);
    if (c->ref) report(c, "cpu-vs-ref", msg ? INFINITY : max_err(cpu, c->ref, c->n), c->ref_tol, msg);
    else if (msg) report(c, "cpu", INFINITY, 0.0, msg);
    for (int b = 0; b < N_BACKENDS && !msg; b++) {
        if (!backends[b].available) continue;
        for (int a = 0; a < (int)(sizeof act_types / sizeof act_types[0]); a++) {
            char against[32];
            snprintf(against, sizeof against, "%s-%s", backends[b].name, kn_dtype_name(act_types[a]));
            const float *want = cpu;
            env ce;
            env_init(&ce, KN_DEV_CPU, act_types[a], c->prec);
            if (act_types[a] != KN_F32) { /* the CPU on the same rounded inputs */
                const char *cmsg = run_once(c, &ce, alt);
                if (cmsg) report(c, "cpu-rounded", INFINITY, 0.0, cmsg);
                want = cmsg ? NULL : alt;
            }
            float *dev = xmalloc((size_t)c->n * sizeof *dev);
            env de;
            env_init(&de, backends[b].dev, act_types[a], c->prec);
            const char *dmsg = run_once(c, &de, dev);
            double tol = c->dev_tol + act_rounding(act_types[a]);
            if (want) report(c, against, dmsg ? INFINITY : max_err(dev, want, c->n), tol, dmsg);
            env_free(&de);
            env_free(&ce);
            free(dev);
        }
    }
    env_free(&e);
    free(cpu);
    free(alt);
}

/* ---- linear ---------------------------------------------------------------------------- */

typedef struct linear_case {
    int xnd;
    int64_t xne[3], N, K, M;
    const float *x;
    weight w, b;
    int has_bias;
} linear_case;

static int run_linear(const void *vp, env *e, float *out) {
    const linear_case *p = vp;
    int64_t yne[3] = {p->xne[0], p->xne[1], p->xne[2]};
    yne[p->xnd - 1] = p->N;
    int64_t wne[2] = {p->N, p->K};
    kn_tensor *x = put_act(e, p->x, p->xnd, p->xne);
    kn_tensor *w = put_weight(e, &p->w, 2, wne);
    kn_tensor *b = p->has_bias ? put_weight(e, &p->b, 1, &p->N) : NULL;
    kn_tensor *y = new_act(e, p->xnd, yne);
    if (!e->rc) e->rc = kn_linear(&e->ctx, y, x, w, b);
    return get(e, y, out);
}

static void test_linear(int xnd, const int64_t *xne, int64_t N, kn_dtype wdt, float scale, kn_dtype bdt,
                        kn_precision prec) {
    linear_case p = {xnd, {xne[0], xnd > 1 ? xne[1] : 0, xnd > 2 ? xne[2] : 0}, N, xne[xnd - 1], 1, NULL,
                     weight_rand(wdt, scale, N * xne[xnd - 1], 1.0f), {0}, bdt != KN_DTYPE_COUNT};
    p.M = numel_of(xnd, xne) / p.K;
    float *x = rand_vec(p.M * p.K, 1.0f);
    p.x = x;
    if (p.has_bias) p.b = weight_rand(bdt, 1.0f, N, 0.5f);
    /* BF16 precision: activations and (scaled) weights are rounded to bf16,
     * products accumulate in f32, with or without bf16 units on the CPU.
     * FP16 precision: the CPU has no fp16 GEMM and computes in f32. */
    float *xr = xmalloc((size_t)(p.M * p.K) * sizeof *xr);
    float *wr = xmalloc((size_t)(N * p.K) * sizeof *wr);
    memcpy(xr, x, (size_t)(p.M * p.K) * sizeof *xr);
    memcpy(wr, p.w.deq, (size_t)(N * p.K) * sizeof *wr);
    if (prec == KN_PREC_BF16) {
        round_to(xr, p.M * p.K, KN_BF16);
        round_to(wr, N * p.K, KN_BF16);
    }
    float *ref = xmalloc((size_t)(p.M * N) * sizeof *ref);
    kn_ref_linear(ref, xr, wr, p.has_bias ? p.b.deq : NULL, p.M, N, p.K);

    check c = {"linear", "", run_linear, &p, prec, p.M * N, ref, 2e-5, 2e-5};
    /* fp16 GEMM inputs on a device against the CPU's f32; bf16 scaled weights
     * are rounded after scaling on the CPU and before it on a device */
    if (prec != KN_PREC_FP32) c.dev_tol = 1e-2;
    char xs[64];
    snprintf(c.what, sizeof c.what, "x%s w[%lld,%lld] %s*%g%s%s %s", shape_str(xs, sizeof xs, xnd, xne), (long long)N,
             (long long)p.K, kn_dtype_name(wdt), scale, p.has_bias ? " +bias " : "", p.has_bias ? kn_dtype_name(bdt) : "",
             prec_name(prec));
    run_check(&c);
    weight_free(&p.w);
    if (p.has_bias) weight_free(&p.b);
    free(x);
    free(xr);
    free(wr);
    free(ref);
}

static void test_linear_all(void) {
    static const struct { kn_dtype dt; float scale; } wts[] = {
        {KN_F32, 1.0f}, {KN_F32, 0.75f}, {KN_BF16, 1.0f}, {KN_BF16, 1.25f},
        {KN_F16, 1.0f}, {KN_F8_E4M3, 0.037f}, {KN_F8_E5M2, 0.5f},
    };
    const int64_t x1[] = {1, 7}, x2[] = {2, 17, 100}, x3[] = {33, 64};
    for (size_t i = 0; i < sizeof wts / sizeof wts[0]; i++) {
        kn_dtype bias_dt = wts[i].dt == KN_F8_E4M3 || wts[i].dt == KN_F8_E5M2 ? KN_F32 : wts[i].dt;
        test_linear(2, x1, 5, wts[i].dt, wts[i].scale, KN_DTYPE_COUNT, KN_PREC_FP32);
        test_linear(3, x2, 67, wts[i].dt, wts[i].scale, bias_dt, KN_PREC_FP32);
        test_linear(3, x2, 67, wts[i].dt, wts[i].scale, bias_dt, KN_PREC_BF16);
        test_linear(2, x3, 48, wts[i].dt, wts[i].scale, KN_DTYPE_COUNT, KN_PREC_FP16);
    }
    /* several weight panels on both backends (16 MiB on the CPU, 32 MiB on CUDA) */
    const int64_t xbig[] = {3, 4096};
    test_linear(2, xbig, 2100, KN_F8_E4M3, 0.5f, KN_F8_E4M3, KN_PREC_FP32);
    test_linear(2, xbig, 2100, KN_F16, 1.0f, KN_DTYPE_COUNT, KN_PREC_BF16);
}

/* ---- rmsnorm, layernorm ---------------------------------------------------------------- */

typedef struct norm_case {
    int layer, in_place, ndim;
    int64_t ne[4], D;
    const float *x;
    const weight *w, *b;
    float eps;
} norm_case;

static int run_norm(const void *vp, env *e, float *out) {
    const norm_case *p = vp;
    kn_tensor *x = put_act(e, p->x, p->ndim, p->ne);
    kn_tensor *w = p->w ? put_weight(e, p->w, 1, &p->D) : NULL;
    kn_tensor *b = p->b ? put_weight(e, p->b, 1, &p->D) : NULL;
    kn_tensor *y = p->in_place ? x : new_act(e, p->ndim, p->ne);
    if (!e->rc)
        e->rc = p->layer ? kn_layernorm(&e->ctx, y, x, w, b, p->eps) : kn_rmsnorm(&e->ctx, y, x, w, p->eps);
    return get(e, y, out);
}

static void test_norm(int layer, int ndim, const int64_t *ne, kn_dtype wdt, int has_b, int in_place) {
    norm_case p = {layer, in_place, ndim, {0}, ne[ndim - 1], NULL, NULL, NULL, 1e-5f};
    memcpy(p.ne, ne, (size_t)ndim * sizeof *ne);
    int64_t n = numel_of(ndim, ne), D = p.D, rows = n / D;
    float *x = rand_vec(n, 2.0f);
    for (int64_t i = 0; i < n; i++) x[i] += 0.5f; /* a non-zero mean for layernorm to remove */
    p.x = x;
    weight w = {0}, b = {0};
    if (wdt != KN_DTYPE_COUNT) {
        w = weight_rand(wdt, 1.0f, D, 1.5f);
        p.w = &w;
    }
    if (has_b) {
        b = weight_rand(wdt, 1.0f, D, 0.5f);
        p.b = &b;
    }
    float *ref = xmalloc((size_t)n * sizeof *ref);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        double mean = 0.0, var = 0.0;
        if (layer) {
            for (int64_t i = 0; i < D; i++) mean += xr[i];
            mean /= (double)D;
        }
        for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        double inv = 1.0 / sqrt(var / (double)D + p.eps);
        for (int64_t i = 0; i < D; i++)
            ref[r * D + i] = (float)((xr[i] - mean) * inv * (p.w ? w.deq[i] : 1.0) + (p.b ? b.deq[i] : 0.0));
    }
    check c = {layer ? "layernorm" : "rmsnorm", "", run_norm, &p, KN_PREC_FP32, n, ref, 1e-5, 1e-5};
    char s[64];
    snprintf(c.what, sizeof c.what, "x%s w %s%s%s", shape_str(s, sizeof s, ndim, ne),
             p.w ? kn_dtype_name(wdt) : "none", p.b ? " +b" : "", in_place ? " in-place" : "");
    run_check(&c);
    if (p.w) weight_free(&w);
    if (p.b) weight_free(&b);
    free(x);
    free(ref);
}

static void test_norm_all(void) {
    const int64_t a[] = {3, 5, 64}, b[] = {7, 33}, c[] = {2, 1000}, d[] = {1, 2, 3, 77};
    for (int layer = 0; layer < 2; layer++) {
        test_norm(layer, 3, a, KN_F32, layer, 0);
        test_norm(layer, 2, b, KN_DTYPE_COUNT, 0, 0);
        test_norm(layer, 2, c, KN_BF16, layer, 1);
        test_norm(layer, 4, d, KN_F8_E4M3, 0, 0);
    }
}

/* ---- rope ---------------------------------------------------------------------------------- */

typedef struct rope_case {
    int64_t ne[4], cne[2];
    kn_rope_mode mode;
    const float *x, *cos, *sin;
} rope_case;

static int run_rope(const void *vp, env *e, float *out) {
    const rope_case *p = vp;
    kn_tensor *x = put_act(e, p->x, 4, p->ne);
    kn_tensor *c = put_f32(e, p->cos, 2, p->cne), *s = put_f32(e, p->sin, 2, p->cne);
    if (!e->rc) e->rc = kn_rope(&e->ctx, x, c, s, p->mode);
    return get(e, x, out);
}

static void test_rope(int64_t B, int64_t L, int64_t H, int64_t D, kn_rope_mode mode) {
    int64_t P = D / 2, n = B * L * H * D;
    rope_case p = {{B, L, H, D}, {L, P}, mode, rand_vec(n, 1.0f), NULL, NULL};
    float *c = xmalloc((size_t)(L * P) * sizeof *c), *s = xmalloc((size_t)(L * P) * sizeof *s);
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < P; i++) {
            double ang = (double)(l + 3) * pow(10000.0, -(double)i / (double)P);
            c[l * P + i] = (float)cos(ang);
            s[l * P + i] = (float)sin(ang);
        }
    p.cos = c;
    p.sin = s;
    float *ref = xmalloc((size_t)n * sizeof *ref);
    for (int64_t r = 0; r < B * L * H; r++) {
        int64_t l = (r / H) % L;
        for (int64_t i = 0; i < P; i++) {
            /* interleaved pairs (2i, 2i+1); half pairs (i, i + D/2) */
            int64_t ia = mode == KN_ROPE_INTERLEAVED ? 2 * i : i, ib = mode == KN_ROPE_INTERLEAVED ? 2 * i + 1 : i + P;
            double x0 = p.x[r * D + ia], x1 = p.x[r * D + ib], cs = c[l * P + i], sn = s[l * P + i];
            ref[r * D + ia] = (float)(x0 * cs - x1 * sn);
            ref[r * D + ib] = (float)(x0 * sn + x1 * cs);
        }
    }
    check chk = {"rope", "", run_rope, &p, KN_PREC_FP32, n, ref, 1e-6, 1e-6};
    char sh[64];
    snprintf(chk.what, sizeof chk.what, "x%s %s", shape_str(sh, sizeof sh, 4, p.ne),
             mode == KN_ROPE_INTERLEAVED ? "interleaved" : "half");
    run_check(&chk);
    free((void *)p.x);
    free(c);
    free(s);
    free(ref);
}

/* ---- attention ---------------------------------------------------------------------------------- */

typedef struct attn_case {
    int64_t B, Lq, Lk, Hq, Hkv, D;
    int causal;
    float scale;
    const float *q, *k, *v, *mask;
} attn_case;

static int run_attention(const void *vp, env *e, float *out) {
    const attn_case *p = vp;
    int64_t qne[4] = {p->B, p->Lq, p->Hq, p->D}, kne[4] = {p->B, p->Lk, p->Hkv, p->D}, mne[2] = {p->B, p->Lk};
    kn_tensor *q = put_act(e, p->q, 4, qne), *k = put_act(e, p->k, 4, kne), *v = put_act(e, p->v, 4, kne);
    kn_tensor *m = p->mask ? put_f32(e, p->mask, 2, mne) : NULL;
    kn_tensor *o = new_act(e, 4, qne);
    if (!e->rc) e->rc = kn_attention(&e->ctx, o, q, k, v, m, p->causal, p->scale);
    return get(e, o, out);
}

/* mask: 0 none, 1 random keys dropped (-inf) or penalised, 2 as 1 plus every
 * key of the last batch dropped (those rows must come out 0). */
static void test_attention(int64_t B, int64_t Lq, int64_t Lk, int64_t Hq, int64_t Hkv, int64_t D, int causal,
                           int mask) {
    int64_t nq = B * Lq * Hq * D, nk = B * Lk * Hkv * D;
    attn_case p = {B, Lq, Lk, Hq, Hkv, D, causal, 1.0f / sqrtf((float)D),
                   rand_vec(nq, 2.0f), rand_vec(nk, 2.0f), rand_vec(nk, 1.0f), NULL};
    float *m = NULL;
    if (mask) {
        m = xmalloc((size_t)(B * Lk) * sizeof *m);
        for (int64_t i = 0; i < B * Lk; i++) {
            float r = frand();
            m[i] = r < -0.6f ? -INFINITY : r < -0.3f ? -1.5f : 0.0f;
            if (mask == 2 && i / Lk == B - 1) m[i] = -INFINITY;
        }
        if (causal) /* key 0 stays visible so causal rows are never empty by accident */
            for (int64_t b = 0; b < B - (mask == 2); b++) m[b * Lk] = 0.0f;
    }
    p.mask = m;
    float *ref = xmalloc((size_t)nq * sizeof *ref);
    kn_ref_attention(ref, p.q, p.k, p.v, m, causal, p.scale, B, Lq, Lk, Hq, Hkv, D);
    check c = {"attention", "", run_attention, &p, KN_PREC_FP32, nq, ref, 2e-5, 2e-5};
    snprintf(c.what, sizeof c.what, "B%lld Lq%lld Lk%lld Hq%lld Hkv%lld D%lld%s%s", (long long)B, (long long)Lq,
             (long long)Lk, (long long)Hq, (long long)Hkv, (long long)D, causal ? " causal" : "",
             mask == 2 ? " mask+empty-batch" : mask ? " mask" : "");
    run_check(&c);
    free((void *)p.q);
    free((void *)p.k);
    free((void *)p.v);
    free(m);
    free(ref);
}

static void test_attention_all(void) {
    test_attention(1, 9, 9, 2, 2, 16, 0, 0);
    test_attention(2, 13, 21, 6, 2, 64, 0, 1);   /* GQA 3:1, Lq != Lk */
    test_attention(1, 37, 37, 4, 1, 128, 1, 0);  /* causal, MQA, crosses a 32-key tile */
    test_attention(2, 45, 45, 4, 2, 40, 1, 1);   /* causal + mask, odd head dim */
    test_attention(2, 7, 19, 3, 3, 24, 0, 2);    /* a batch with every key masked */
    test_attention(1, 130, 300, 2, 1, 64, 0, 1); /* crosses the CPU's 128-query and 256-key blocks */
    test_attention(1, 5, 33, 2, 1, 256, 0, 0);   /* largest head dim */
}

/* ---- activation, softmax, affine ------------------------------------------------------------ */

typedef struct unary_case {
    int ndim, in_place, kind; /* kind: 0 activation, 1 softmax, 2 affine */
    int64_t ne[4];
    kn_act act;
    float s, t;
    const float *x;
} unary_case;

static int run_unary(const void *vp, env *e, float *out) {
    const unary_case *p = vp;
    kn_tensor *x = put_act(e, p->x, p->ndim, p->ne);
    kn_tensor *y = p->in_place ? x : new_act(e, p->ndim, p->ne);
    if (!e->rc)
        e->rc = p->kind == 0   ? kn_activation(&e->ctx, y, x, p->act)
                : p->kind == 1 ? kn_softmax(&e->ctx, y, x)
                               : kn_affine(&e->ctx, y, x, p->s, p->t);
    return get(e, y, out);
}

static double act_ref(kn_act a, double v) {
    switch (a) {
    case KN_ACT_SILU: return v / (1.0 + exp(-v));
    case KN_ACT_GELU_TANH: return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    case KN_ACT_GELU_ERF: return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    case KN_ACT_QUICK_GELU: return v / (1.0 + exp(-1.702 * v));
    }
    return NAN;
}

static void test_unary(int kind, int ndim, const int64_t *ne, kn_act act, int in_place, float amp) {
    static const char *act_names[] = {"silu", "gelu_tanh", "gelu_erf", "quick_gelu"};
    unary_case p = {ndim, in_place, kind, {0}, act, 1.5f, -0.25f, NULL};
    memcpy(p.ne, ne, (size_t)ndim * sizeof *ne);
    int64_t n = numel_of(ndim, ne), D = ne[ndim - 1];
    float *x = rand_vec(n, amp), *ref = xmalloc((size_t)n * sizeof *ref);
    p.x = x;
    if (kind == 1) {
        for (int64_t r = 0; r < n / D; r++) {
            double mx = -INFINITY, sum = 0.0;
            for (int64_t i = 0; i < D; i++) mx = fmax(mx, x[r * D + i]);
            for (int64_t i = 0; i < D; i++) sum += exp(x[r * D + i] - mx);
            for (int64_t i = 0; i < D; i++) ref[r * D + i] = (float)(exp(x[r * D + i] - mx) / sum);
        }
    } else {
        for (int64_t i = 0; i < n; i++) ref[i] = (float)(kind == 0 ? act_ref(act, x[i]) : (double)x[i] * p.s + p.t);
    }
    check c = {kind == 0 ? "activation" : kind == 1 ? "softmax" : "affine", "", run_unary, &p, KN_PREC_FP32, n, ref,
               2e-6, 2e-6};
    char s[64];
    snprintf(c.what, sizeof c.what, "x%s%s%s%s", shape_str(s, sizeof s, ndim, ne), kind == 0 ? " " : "",
             kind == 0 ? act_names[act] : "", in_place ? " in-place" : "");
    run_check(&c);
    free(x);
    free(ref);
}

static void test_unary_all(void) {
    const int64_t a[] = {3, 37}, b[] = {1000}, c[] = {2, 3, 1000}, d[] = {5, 1};
    for (int act = KN_ACT_SILU; act <= KN_ACT_QUICK_GELU; act++) {
        test_unary(0, 2, a, (kn_act)act, 0, 6.0f);
        test_unary(0, 1, b, (kn_act)act, 1, 6.0f);
    }
    test_unary(1, 2, a, KN_ACT_SILU, 0, 3.0f);
    test_unary(1, 3, c, KN_ACT_SILU, 1, 30.0f); /* large logits: the max must be subtracted */
    test_unary(1, 2, d, KN_ACT_SILU, 0, 3.0f);  /* a row of one */
    test_unary(2, 2, a, KN_ACT_SILU, 0, 3.0f);
    test_unary(2, 3, c, KN_ACT_SILU, 1, 3.0f);
}

/* ---- binary ----------------------------------------------------------------------------------- */

typedef struct binary_case {
    int and_, bnd, in_place;
    int64_t ane[4], bne[4];
    kn_binop op;
    const float *a, *b;
} binary_case;

static int run_binary(const void *vp, env *e, float *out) {
    const binary_case *p = vp;
    kn_tensor *a = put_act(e, p->a, p->and_, p->ane), *b = put_act(e, p->b, p->bnd, p->bne);
    kn_tensor *y = p->in_place ? a : new_act(e, p->and_, p->ane);
    if (!e->rc) e->rc = kn_binary(&e->ctx, y, a, b, p->op);
    return get(e, y, out);
}

static void test_binary(int and_, const int64_t *ane, int bnd, const int64_t *bne, kn_binop op, int in_place) {
    binary_case p = {and_, bnd, in_place, {0}, {0}, op, NULL, NULL};
    memcpy(p.ane, ane, (size_t)and_ * sizeof *ane);
    memcpy(p.bne, bne, (size_t)bnd * sizeof *bne);
    int64_t n = numel_of(and_, ane), nb = numel_of(bnd, bne);
    float *a = rand_vec(n, 2.0f), *b = rand_vec(nb, 2.0f), *ref = xmalloc((size_t)n * sizeof *ref);
    p.a = a;
    p.b = b;
    for (int64_t i = 0; i < n; i++) {
        /* a's coordinates, right-aligned onto b's, clamped to 0 where b has size 1 */
        int64_t rest = i, bi = 0, bstride = 1;
        for (int d = 0; d < and_; d++) {
            int64_t coord = rest % ane[and_ - 1 - d];
            rest /= ane[and_ - 1 - d];
            if (d < bnd) {
                int64_t size = bne[bnd - 1 - d];
                bi += (size == 1 ? 0 : coord) * bstride;
                bstride *= size;
            }
        }
        double u = a[i], v = b[bi];
        ref[i] = (float)(op == KN_ADD ? u + v : op == KN_SUB ? u - v : op == KN_MUL ? u * v : u / v);
    }
    check c = {"binary", "", run_binary, &p, KN_PREC_FP32, n, ref, 1e-7, 1e-7};
    char s1[64], s2[64];
    snprintf(c.what, sizeof c.what, "%s %s %s%s", shape_str(s1, sizeof s1, and_, ane),
             op == KN_ADD ? "+" : op == KN_SUB ? "-" : op == KN_MUL ? "*" : "/", shape_str(s2, sizeof s2, bnd, bne),
             in_place ? " in-place" : "");
    run_check(&c);
    free(a);
    free(b);
    free(ref);
}

static void test_binary_all(void) {
    const int64_t a[] = {2, 3, 4, 5};
    const int64_t same[] = {2, 3, 4, 5}, last[] = {5}, mid[] = {3, 1, 5}, outer[] = {2, 1, 1, 1}, one[] = {1},
                  col[] = {4, 1};
    const int64_t odd[] = {3, 7, 13}, odd_b[] = {7, 1};
    for (int op = KN_ADD; op <= KN_DIV; op++) {
        test_binary(4, a, 4, same, (kn_binop)op, 0);
        test_binary(4, a, 1, last, (kn_binop)op, 0);
        test_binary(4, a, 3, mid, (kn_binop)op, op == KN_ADD);
    }
    test_binary(4, a, 4, outer, KN_MUL, 1);
    test_binary(4, a, 1, one, KN_SUB, 0);
    test_binary(4, a, 2, col, KN_ADD, 0);
    test_binary(3, odd, 2, odd_b, KN_MUL, 0);
}

/* ---- modulate, gate_add ------------------------------------------------------------------------ */

/* shift/scale/gate are [B, D] column slices of one [B, 6D] activation, as a
 * DiT's modulation linear produces them; chunk c starts at column c * D.
 * gate_add reads its gate from chunk c_scale. */
typedef struct mod_case {
    int gate, in_place;
    int64_t B, L, D;
    const float *x, *acc, *mods;
    int c_shift, c_scale;
} mod_case;

static int run_mod(const void *vp, env *e, float *out) {
    const mod_case *p = vp;
    int64_t xne[3] = {p->B, p->L, p->D}, mne[2] = {p->B, 6 * p->D};
    kn_tensor *x = put_act(e, p->x, 3, xne), *mods = put_act(e, p->mods, 2, mne);
    kn_tensor shift, scale;
    if (!e->rc) e->rc = kn_tensor_slice(&shift, mods, 1, p->c_shift * p->D, p->D, &e->ctx.err);
    if (!e->rc) e->rc = kn_tensor_slice(&scale, mods, 1, p->c_scale * p->D, p->D, &e->ctx.err);
    kn_tensor *y;
    if (p->gate) {
        y = put_act(e, p->acc, 3, xne);
        if (!e->rc) e->rc = kn_gate_add(&e->ctx, y, x, &scale);
    } else {
        y = p->in_place ? x : new_act(e, 3, xne);
        if (!e->rc) e->rc = kn_modulate(&e->ctx, y, x, &shift, &scale);
    }
    return get(e, y, out);
}

static void test_mod(int gate, int64_t B, int64_t L, int64_t D, int in_place) {
    int64_t n = B * L * D;
    mod_case p = {gate, in_place, B, L, D, rand_vec(n, 2.0f), rand_vec(n, 2.0f), rand_vec(B * 6 * D, 1.0f), 0, 1};
    if (gate) p.c_scale = 5; /* the gate: the last chunk */
    float *ref = xmalloc((size_t)n * sizeof *ref);
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t d = 0; d < D; d++) {
                int64_t i = (b * L + l) * D + d;
                double x = p.x[i], sh = p.mods[b * 6 * D + p.c_shift * D + d], sc = p.mods[b * 6 * D + p.c_scale * D + d];
                ref[i] = (float)(gate ? p.acc[i] + sc * x : x * (1.0 + sc) + sh);
            }
    check c = {gate ? "gate_add" : "modulate", "", run_mod, &p, KN_PREC_FP32, n, ref, 1e-6, 1e-6};
    snprintf(c.what, sizeof c.what, "x[%lld,%lld,%lld] rows of [%lld,%lld]%s", (long long)B, (long long)L,
             (long long)D, (long long)B, (long long)(6 * D), in_place ? " in-place" : "");
    run_check(&c);
    free((void *)p.x);
    free((void *)p.acc);
    free((void *)p.mods);
    free(ref);
}

static void test_mod_all(void) {
    test_mod(0, 2, 5, 24, 0);
    test_mod(0, 3, 7, 33, 1);
    test_mod(1, 2, 5, 24, 0);
    test_mod(1, 1, 9, 17, 0);
}

int main(void) {
    for (int b = 0; b < N_BACKENDS; b++) {
        if (backends[b].dev == KN_DEV_CUDA)
            backends[b].available = kn_cuda_available(backends[b].why, sizeof backends[b].why);
        if (!backends[b].available) printf("SKIP %s: %s\n", backends[b].name, backends[b].why);
    }
    test_linear_all();
    test_norm_all();
    test_rope(2, 5, 3, 16, KN_ROPE_INTERLEAVED);
    test_rope(2, 5, 3, 16, KN_ROPE_HALF);
    test_rope(1, 7, 2, 128, KN_ROPE_INTERLEAVED);
    test_rope(1, 7, 2, 128, KN_ROPE_HALF);
    test_attention_all();
    test_unary_all();
    test_binary_all();
    test_mod_all();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
