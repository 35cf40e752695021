/* The harness of test_backend_ops: see harness.h. */
#include "tests/unit/backend_ops/harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/device.h"

static int checks, failures;

/* ---- host data ----------------------------------------------------------------- */

/* The test cannot go on without its inputs. */
void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory allocating %zu bytes\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

/* splitmix64, mapped to [-1, 1) */
float frand(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1 << 23) - 1.0);
}

float *rand_vec(int64_t n, float amp) {
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = amp * frand();
    return v;
}

int64_t numel_of(int ndim, const int64_t *ne) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ne[i];
    return n;
}

/* v rounded to dtype dt: what a backend with dt activations is given. */
void round_to(float *v, int64_t n, kn_dtype dt) {
    if (dt == KN_F32) return;
    void *tmp = xmalloc((size_t)n * kn_dtype_size(dt));
    kn_from_f32(tmp, dt, v, (size_t)n);
    kn_to_f32(v, tmp, dt, (size_t)n, 1.0f);
    free(tmp);
}

weight weight_rand(kn_dtype dt, float scale, int64_t n, float amp) {
    weight w = {dt, scale, n, xmalloc((size_t)n * kn_dtype_size(dt)), rand_vec(n, amp)};
    for (int64_t i = 0; i < n; i++) w.deq[i] /= scale; /* stored values are real / scale */
    kn_from_f32(w.raw, dt, w.deq, (size_t)n);
    kn_to_f32(w.deq, w.raw, dt, (size_t)n, scale);
    return w;
}

void weight_free(weight *w) {
    free(w->raw);
    free(w->deq);
}

const char *shape_str(char *buf, size_t len, int ndim, const int64_t *ne) {
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++) o += (size_t)snprintf(buf + o, len - o, i ? ",%lld" : "%lld", (long long)ne[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* ---- one run of an op on one backend -------------------------------------------- */

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

kn_tensor *env_new(env *e, kn_dtype dt, int ndim, const int64_t *ne) {
    if (e->rc) return &env_dummy;
    kn_tensor *t = &e->owned[e->n_owned];
    e->rc = kn_tensor_new(t, dt, e->ctx.device, ndim, ne, &e->ctx.err);
    if (e->rc) return &env_dummy;
    e->n_owned++;
    return t;
}

/* A tensor holding raw bytes of dtype dt (weights, F32 masks and tables). */
kn_tensor *put_raw(env *e, kn_dtype dt, float scale, const void *raw, int ndim, const int64_t *ne) {
    kn_tensor *t = env_new(e, dt, ndim, ne);
    if (e->rc) return t;
    t->scale = scale;
    e->rc = kn_device_memcpy(t->device, t->data, KN_DEV_CPU, raw, kn_tensor_nbytes(t), &e->ctx.err);
    return t;
}

kn_tensor *put_f32(env *e, const float *v, int ndim, const int64_t *ne) {
    return put_raw(e, KN_F32, 1.0f, v, ndim, ne);
}

kn_tensor *put_weight(env *e, const weight *w, int ndim, const int64_t *ne) {
    return put_raw(e, w->dt, w->scale, w->raw, ndim, ne);
}

static kn_dtype env_act_storage(const env *e) { return e->ctx.device == KN_DEV_CPU ? KN_F32 : e->act; }

/* An activation: v rounded to e->act, stored in the backend's activation dtype. */
kn_tensor *put_act(env *e, const float *v, int ndim, const int64_t *ne) {
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

kn_tensor *new_act(env *e, int ndim, const int64_t *ne) { return env_new(e, env_act_storage(e), ndim, ne); }

/* t's values as f32 into out; returns the run's status. */
int get(env *e, const kn_tensor *t, float *out) {
    if (e->rc) return e->rc;
    size_t n = (size_t)kn_tensor_numel(t);
    void *raw = xmalloc(kn_tensor_nbytes(t));
    e->rc = kn_device_memcpy(KN_DEV_CPU, raw, t->device, t->data, kn_tensor_nbytes(t), &e->ctx.err);
    if (!e->rc) kn_to_f32(out, raw, t->dtype, n, 1.0f);
    free(raw);
    return e->rc;
}

/* ---- checks ------------------------------------------------------------------------- */

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

double max_err(const float *got, const float *want, int64_t n) {
    double diff = 0.0, scale = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (got[i] == want[i]) continue; /* also -inf == -inf (an lse row that saw no key) */
        double d = fabs((double)got[i] - want[i]);
        if (isnan(d) && !(isnan(got[i]) && isnan(want[i]))) return INFINITY;
        if (isinf(d)) return INFINITY;
        if (d > diff) diff = d;
    }
    for (int64_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs(want[i]) > scale) scale = fabs(want[i]);
    return diff / (scale > 0.0 ? scale : 1.0);
}

static void report(const check *c, const char *against, double err, double tol, const char *msg) {
    int ok = !msg && err <= tol;
    checks++;
    failures += !ok;
    printf("%-4s %-10s %-62s %-14s err %.2e  bound %.1e%s%s\n", ok ? "ok" : "FAIL", c->op, c->what, against, err, tol,
           msg ? "  " : "", msg ? msg : "");
}

/* Runs c once; NULL on success, else the error message (in e's ctx, kept until env_free). */
static const char *run_once(const check *c, env *e, float *out) {
    if (!e->rc) e->rc = c->run(c->params, e, out);
    return e->rc ? e->ctx.err.msg : NULL;
}

void run_check(const check *c) {
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

void report_bool(const char *op, const char *what, int ok, const char *detail) {
    checks++;
    failures += !ok;
    printf("%-4s %-10s %-62s %-14s %s\n", ok ? "ok" : "FAIL", op, what, "error-check", detail ? detail : "");
}

void backends_init(void) {
    for (int b = 0; b < N_BACKENDS; b++) {
        if (backends[b].dev == KN_DEV_CUDA)
            backends[b].available = kn_cuda_available(backends[b].why, sizeof backends[b].why);
        if (!backends[b].available) printf("SKIP %s: %s\n", backends[b].name, backends[b].why);
    }
}

int checks_summary(void) {
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
