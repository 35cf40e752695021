/* Every op of kernels/ops.h on every backend, in the manner of ggml's
 * test-backend-ops.
 *
 * For each op and several shapes (odd sizes, GQA, key masks, causal,
 * broadcasting, in place, strided views, every weight dtype and precision for
 * linear):
 *  1. random inputs (fixed seed) run on the CPU through the public kn_* entry
 *     point, compared with a naive double-precision reference (kn_ref_linear,
 *     kn_ref_attention, or the formula written out beside the case);
 *  2. on every other compiled and available backend (CUDA), once per
 *     activation dtype F32, BF16 and F16: the inputs, rounded to that dtype,
 *     are copied to the device, the op runs there and its output, copied back,
 *     is compared with the CPU's output on the same rounded inputs.
 * The error is max |got - want| / max |want| (NaN or a missing value counts as
 * infinite). Each check has its own bound; bf16/f16 activations add the
 * rounding of the output. One line per op/shape/backend, exit status 1 on any
 * failure. Without a usable GPU the device half prints one SKIP line and the
 * CPU half still runs. KN_CUDA_SYNC=1 makes CUDA errors land on their op.
 * Entry-point checks that must refuse bad arguments print "error-check" lines.
 *
 * The harness is in backend_ops/harness.{h,c}; attention and patchify cases
 * in backend_ops/attention.c and backend_ops/patch.c. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/ops.h"
#include "tests/unit/backend_ops/harness.h"

static const char *prec_name(kn_precision p) { return p == KN_PREC_BF16 ? "bf16" : p == KN_PREC_FP16 ? "fp16" : "fp32"; }

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
    /* bf16 weights widened inside the transpose (whole panels, depths of 8): the
     * blocked GEMM (over 320 rows) across two depth blocks, and the skinny path */
    const int64_t x4[] = {400, 264}, x5[] = {20, 264};
    test_linear(2, x4, 40, KN_BF16, 1.0f, KN_BF16, KN_PREC_FP32);
    test_linear(2, x5, 40, KN_BF16, 1.0f, KN_DTYPE_COUNT, KN_PREC_FP32);
    /* bf16 pairs (vdpbf16ps where the CPU has it): bf16 rows copied as
     * pairs over three depth blocks, blocked and skinny, a partial last
     * weight panel, and an odd depth whose last pair is padded */
    const int64_t x6[] = {400, 1056}, x7[] = {20, 1056}, x8[] = {7, 33};
    test_linear(2, x6, 40, KN_BF16, 1.0f, KN_BF16, KN_PREC_BF16);
    test_linear(2, x7, 72, KN_BF16, 1.0f, KN_DTYPE_COUNT, KN_PREC_BF16);
    test_linear(2, x8, 9, KN_F8_E4M3, 0.5f, KN_F32, KN_PREC_BF16);
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
    case KN_ACT_TANH: return tanh(v);
    }
    return NAN;
}

static void test_unary(int kind, int ndim, const int64_t *ne, kn_act act, int in_place, float amp) {
    static const char *act_names[] = {"silu", "gelu_tanh", "gelu_erf", "quick_gelu", "tanh"};
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
    for (int act = KN_ACT_SILU; act <= KN_ACT_TANH; act++) {
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

/* ---- entry-point checks ------------------------------------------------------------------- */

/* rc must be `want` with a message naming `needle`. */
static void expect_fail(const char *op, const char *what, int rc, int want, const kn_ctx *ctx, const char *needle) {
    int ok = rc == want && strstr(ctx->err.msg, needle) != NULL;
    report_bool(op, what, ok, rc ? ctx->err.msg : "accepted");
}

/* Tensors that say they are on CUDA are only descriptors here: the checks must
 * refuse them before any data is touched. */
static void test_entry_checks(void) {
    kn_ctx ctx;
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32)) {
        report_bool("checks", "context", 0, ctx.err.msg);
        return;
    }
    float buf[64] = {0};
    kn_tensor x = kn_tensor_make(KN_F32, KN_DEV_CPU, buf, 3, (int64_t[]){1, 2, 4});
    kn_tensor y_dev = kn_tensor_make(KN_F32, KN_DEV_CUDA, NULL, 3, (int64_t[]){1, 2, 4});
    kn_tensor mods = kn_tensor_make(KN_F32, KN_DEV_CPU, buf + 8, 2, (int64_t[]){1, 4});
    y_dev.name = "y_on_cuda";
    expect_fail("modulate", "y on CUDA, x on CPU", kn_modulate(&ctx, &y_dev, &x, &mods, &mods), KN_ERR_INVALID, &ctx,
                "y_on_cuda");
    kn_tensor w = kn_tensor_make(KN_F32, KN_DEV_CPU, buf + 16, 2, (int64_t[]){4, 4});
    kn_tensor b_dev = kn_tensor_make(KN_F32, KN_DEV_CUDA, NULL, 1, (int64_t[]){4});
    kn_tensor y = kn_tensor_make(KN_F32, KN_DEV_CPU, buf + 32, 3, (int64_t[]){1, 2, 4});
    b_dev.name = "bias_on_cuda";
    expect_fail("linear", "bias on CUDA, output on CPU", kn_linear(&ctx, &y, &x, &w, &b_dev), KN_ERR_INVALID, &ctx,
                "bias_on_cuda");
    expect_fail("rmsnorm", "weight on CUDA, output on CPU", kn_rmsnorm(&ctx, &y, &x, &b_dev, 1e-6f), KN_ERR_INVALID,
                &ctx, "bias_on_cuda");
    double pos[4] = {0};
    kn_tensor c = kn_tensor_make(KN_F32, KN_DEV_CPU, buf, 2, (int64_t[]){2, 4});
    kn_tensor s = kn_tensor_make(KN_F32, KN_DEV_CPU, buf + 8, 2, (int64_t[]){2, 4});
    expect_fail("rope_tab", "odd axis dims {3, 5}", kn_rope_tables(&ctx, &c, &s, pos, 2, (int[]){3, 5}, 1e4),
                KN_ERR_INVALID, &ctx, "axis 0 has 3");
    kn_tensor c0 = kn_tensor_make(KN_F32, KN_DEV_CPU, buf, 0, NULL);
    expect_fail("rope_tab", "0-D cos table", kn_rope_tables(&ctx, &c0, &s, pos, 2, (int[]){4, 4}, 1e4), KN_ERR_SHAPE,
                &ctx, "[L, 4]");
    kn_ctx_free(&ctx);
}

int main(void) {
    backends_init();
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
    test_patch_all();
    test_entry_checks();
    return checks_summary();
}
