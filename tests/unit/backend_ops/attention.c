/* Attention cases of test_backend_ops: kn_attention (the shorthand) and
 * kn_attention_ex with key masks, a T5-style bias (per batch or broadcast),
 * GQA, causal rows, the log-sum-exp output, q/k/v as strided views (fused
 * qkv, head-major), and the ring-attention merge of two key halves through
 * their LSEs. References: kn_ref_attention in double on contiguous copies. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "tests/unit/backend_ops/harness.h"

/* How q, k and v lie in memory when the op reads them. */
enum { CONTIG, FUSED_QKV, HEAD_MAJOR };
static const char *layout_name[] = {"", " fused-qkv", " head-major"};

typedef struct attn_spec {
    int64_t B, Lq, Lk, Hq, Hkv, D;
    int causal;
    int mask;      /* 0 none, 1 random keys dropped (-inf) or penalised, 2 as 1 plus every key of the last batch */
    int layout;    /* CONTIG, FUSED_QKV (Lq == Lk), HEAD_MAJOR */
    int64_t Bb;    /* bias batch: 0 no bias, 1 broadcast, B per batch */
    int lse;       /* also check the lse output */
    int shorthand; /* through kn_attention (no bias, no lse) */
} attn_spec;

typedef struct attn_case {
    attn_spec s;
    int want_lse; /* this check's output: lse instead of out */
    int64_t split; /* merge cases: keys [0, split) and [split, Lk) run apart */
    float scale;
    const float *q, *k, *v, *mask, *bias; /* q, k, v contiguous [B, L, H, D] */
} attn_case;

/* ---- inputs --------------------------------------------------------------------------------------- */

/* x [B, L, H, D] as [B, H, L, D]. */
static float *to_head_major(const float *x, int64_t B, int64_t L, int64_t H, int64_t D) {
    float *y = xmalloc((size_t)(B * L * H * D) * sizeof *y);
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t h = 0; h < H; h++)
                memcpy(y + ((b * H + h) * L + l) * D, x + ((b * L + l) * H + h) * D, (size_t)D * sizeof *y);
    return y;
}

/* A view of t: [B, L, H, D] with strides st at `offset` elements. */
static void view4(env *e, kn_tensor *out, const kn_tensor *t, int64_t B, int64_t L, int64_t H, int64_t D,
                  const int64_t *st, int64_t offset) {
    if (!e->rc) e->rc = kn_tensor_view(out, t, 4, (int64_t[]){B, L, H, D}, st, offset, &e->ctx.err);
}

/* q, k, v on e's device, laid out as p->s.layout says. */
static void put_qkv(const attn_case *p, env *e, kn_tensor *q, kn_tensor *k, kn_tensor *v) {
    const attn_spec *s = &p->s;
    int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, Hq = s->Hq, Hkv = s->Hkv, D = s->D;
    if (s->layout == CONTIG) {
        *q = *put_act(e, p->q, 4, (int64_t[]){B, Lq, Hq, D});
        *k = *put_act(e, p->k, 4, (int64_t[]){B, Lk, Hkv, D});
        *v = *put_act(e, p->v, 4, (int64_t[]){B, Lk, Hkv, D});
    } else if (s->layout == FUSED_QKV) {
        /* one projection output row per token: [q heads | k heads | v heads] */
        int64_t W = (Hq + 2 * Hkv) * D, L = Lq;
        float *f = xmalloc((size_t)(B * L * W) * sizeof *f);
        for (int64_t r = 0; r < B * L; r++) {
            memcpy(f + r * W, p->q + r * Hq * D, (size_t)(Hq * D) * sizeof *f);
            memcpy(f + r * W + Hq * D, p->k + r * Hkv * D, (size_t)(Hkv * D) * sizeof *f);
            memcpy(f + r * W + (Hq + Hkv) * D, p->v + r * Hkv * D, (size_t)(Hkv * D) * sizeof *f);
        }
        kn_tensor *t = put_act(e, f, 3, (int64_t[]){B, L, W});
        free(f);
        const int64_t st[4] = {L * W, W, D, 1};
        view4(e, q, t, B, L, Hq, D, st, 0);
        view4(e, k, t, B, L, Hkv, D, st, Hq * D);
        view4(e, v, t, B, L, Hkv, D, st, (Hq + Hkv) * D);
    } else {
        const float *src[3] = {p->q, p->k, p->v};
        kn_tensor *dst[3] = {q, k, v};
        for (int i = 0; i < 3; i++) {
            int64_t L = i ? Lk : Lq, H = i ? Hkv : Hq;
            float *hm = to_head_major(src[i], B, L, H, D);
            kn_tensor *t = put_act(e, hm, 4, (int64_t[]){B, H, L, D});
            free(hm);
            view4(e, dst[i], t, B, L, H, D, (int64_t[]){H * L * D, D, L * D, 1}, 0);
        }
    }
}

static void fill_mask(float *m, const attn_spec *s) {
    int64_t B = s->B, Lk = s->Lk;
    for (int64_t i = 0; i < B * Lk; i++) {
        float r = frand();
        m[i] = r < -0.6f ? -INFINITY : r < -0.3f ? -1.5f : 0.0f;
        if (s->mask == 2 && i / Lk == B - 1) m[i] = -INFINITY;
    }
    if (s->causal) /* key 0 stays visible so causal rows are never empty by accident */
        for (int64_t b = 0; b < B - (s->mask == 2); b++) m[b * Lk] = 0.0f;
}

/* Random inputs of spec s (q, k, v, then the mask, then the bias). */
static attn_case make_case(const attn_spec *s) {
    int64_t nq = s->B * s->Lq * s->Hq * s->D, nk = s->B * s->Lk * s->Hkv * s->D;
    attn_case p = {*s, 0, 0, 1.0f / sqrtf((float)s->D), rand_vec(nq, 2.0f), rand_vec(nk, 2.0f), rand_vec(nk, 1.0f),
                   NULL, NULL};
    if (s->mask) {
        float *m = xmalloc((size_t)(s->B * s->Lk) * sizeof *m);
        fill_mask(m, s);
        p.mask = m;
    }
    if (s->Bb) p.bias = rand_vec(s->Bb * s->Hq * s->Lq * s->Lk, 1.5f);
    return p;
}

static void free_case(attn_case *p) {
    free((void *)p->q);
    free((void *)p->k);
    free((void *)p->v);
    free((void *)p->mask);
    free((void *)p->bias);
}

/* kn_ref_attention on p's contiguous inputs: out [B, Lq, Hq, D] and lse [B, Hq, Lq]. */
static void reference(const attn_case *p, float *out, float *lse) {
    const attn_spec *s = &p->s;
    kn_tensor q = kn_tensor_make(KN_F32, KN_DEV_CPU, (void *)p->q, 4, (int64_t[]){s->B, s->Lq, s->Hq, s->D});
    kn_tensor k = kn_tensor_make(KN_F32, KN_DEV_CPU, (void *)p->k, 4, (int64_t[]){s->B, s->Lk, s->Hkv, s->D});
    kn_tensor v = kn_tensor_make(KN_F32, KN_DEV_CPU, (void *)p->v, 4, (int64_t[]){s->B, s->Lk, s->Hkv, s->D});
    kn_tensor o = kn_tensor_make(KN_F32, KN_DEV_CPU, out, 4, (int64_t[]){s->B, s->Lq, s->Hq, s->D});
    kn_tensor m = kn_tensor_make(KN_F32, KN_DEV_CPU, (void *)p->mask, 2, (int64_t[]){s->B, s->Lk});
    kn_tensor b = kn_tensor_make(KN_F32, KN_DEV_CPU, (void *)p->bias, 4, (int64_t[]){s->Bb, s->Hq, s->Lq, s->Lk});
    kn_tensor l = kn_tensor_make(KN_F32, KN_DEV_CPU, lse, 3, (int64_t[]){s->B, s->Hq, s->Lq});
    kn_attention_args a = {p->mask ? &m : NULL, p->bias ? &b : NULL, s->causal, p->scale, lse ? &l : NULL};
    kn_ref_attention(&o, &q, &k, &v, &a);
}

static void describe(const attn_spec *s, char *buf, size_t len, const char *extra) {
    snprintf(buf, len, "B%lld Lq%lld Lk%lld Hq%lld Hkv%lld D%lld%s%s%s%s%s", (long long)s->B, (long long)s->Lq,
             (long long)s->Lk, (long long)s->Hq, (long long)s->Hkv, (long long)s->D, s->causal ? " causal" : "",
             s->mask == 2 ? " mask+empty-batch" : s->mask ? " mask" : "",
             !s->Bb ? "" : s->Bb == 1 ? " bias-bcast" : " bias", layout_name[s->layout], extra);
}

/* ---- one attention call ---------------------------------------------------------------------------- */

static int run_attention(const void *vp, env *e, float *out) {
    const attn_case *p = vp;
    const attn_spec *s = &p->s;
    int64_t qne[4] = {s->B, s->Lq, s->Hq, s->D};
    kn_tensor q, k, v;
    memset(&q, 0, sizeof q);
    k = v = q;
    put_qkv(p, e, &q, &k, &v);
    kn_tensor *m = p->mask ? put_f32(e, p->mask, 2, (int64_t[]){s->B, s->Lk}) : NULL;
    kn_tensor *b = p->bias ? put_f32(e, p->bias, 4, (int64_t[]){s->Bb, s->Hq, s->Lq, s->Lk}) : NULL;
    kn_tensor *lse = s->lse ? env_new(e, KN_F32, 3, (int64_t[]){s->B, s->Hq, s->Lq}) : NULL;
    kn_tensor *o = new_act(e, 4, qne);
    kn_attention_args a = {m, b, s->causal, p->scale, lse};
    if (!e->rc)
        e->rc = s->shorthand ? kn_attention(&e->ctx, o, &q, &k, &v, m, s->causal, p->scale)
                             : kn_attention_ex(&e->ctx, o, &q, &k, &v, &a);
    return get(e, p->want_lse ? lse : o, out);
}

/* FP32, or BF16 precision: the CPU then multiplies bf16 values (pairs on
 * bf16 units, f32 products of the rounded values elsewhere; q is rounded
 * after scaling, k and v as they are, and the probabilities before meeting
 * v), so the reference gets bf16(q * scale),
 * bf16(k), bf16(v) and scale 1, and what is left is the probabilities'
 * rounding: each is off by at most 2^-9 of itself, so the output by at most
 * 2^-9 of max |v| (4e-3 allows twice that). */
static void test_attention_prec(attn_spec s, kn_precision prec) {
    attn_case p = make_case(&s), r = p;
    int64_t no = s.B * s.Lq * s.Hq * s.D, nl = s.B * s.Hq * s.Lq;
    int64_t nq = s.B * s.Lq * s.Hq * s.D, nk = s.B * s.Lk * s.Hkv * s.D;
    float *rq = NULL, *rk = NULL, *rv = NULL;
    if (prec == KN_PREC_BF16) {
        rq = xmalloc((size_t)nq * sizeof *rq);
        rk = xmalloc((size_t)nk * sizeof *rk);
        rv = xmalloc((size_t)nk * sizeof *rv);
        for (int64_t i = 0; i < nq; i++) rq[i] = p.q[i] * p.scale;
        memcpy(rk, p.k, (size_t)nk * sizeof *rk);
        memcpy(rv, p.v, (size_t)nk * sizeof *rv);
        round_to(rq, nq, KN_BF16);
        round_to(rk, nk, KN_BF16);
        round_to(rv, nk, KN_BF16);
        r.q = rq, r.k = rk, r.v = rv, r.scale = 1.0f;
    }
    double tol = prec == KN_PREC_BF16 ? 4e-3 : 2e-5;
    float *ref = xmalloc((size_t)no * sizeof *ref), *ref_lse = xmalloc((size_t)nl * sizeof *ref_lse);
    reference(&r, ref, ref_lse);
    const char *tag = prec == KN_PREC_BF16 ? " bf16" : "";
    check c = {"attention", "", run_attention, &p, prec, no, ref, tol, prec == KN_PREC_BF16 ? 1e-2 : 2e-5};
    char extra[32];
    snprintf(extra, sizeof extra, "%s%s", s.lse ? " +lse" : "", tag);
    describe(&s, c.what, sizeof c.what, extra);
    run_check(&c);
    if (s.lse) {
        attn_case pl = p;
        pl.want_lse = 1;
        check cl = {"attn-lse", "", run_attention, &pl, prec, nl, ref_lse, tol, c.dev_tol};
        describe(&s, cl.what, sizeof cl.what, tag);
        run_check(&cl);
    }
    free_case(&p);
    free(rq);
    free(rk);
    free(rv);
    free(ref);
    free(ref_lse);
}

static void test_attention(attn_spec s) { test_attention_prec(s, KN_PREC_FP32); }

/* ---- ring attention: two key halves merged through their LSEs ------------------------------------- */

/* Columns [c0, c0 + n) of the rows of x [rows, cols]. */
static float *columns(const float *x, int64_t rows, int64_t cols, int64_t c0, int64_t n) {
    float *y = xmalloc((size_t)(rows * n) * sizeof *y);
    for (int64_t r = 0; r < rows; r++) memcpy(y + r * n, x + r * cols + c0, (size_t)n * sizeof *y);
    return y;
}

/* Attention over keys [0, split) and [split, Lk) separately (k and v as
 * slices of the full tensors, masks and biases cut to match), then the
 * partial outputs merged as ring attention does:
 *   lse = logaddexp(lse1, lse2), out = out1 exp(lse1 - lse) + out2 exp(lse2 - lse). */
static int run_merge(const void *vp, env *e, float *out) {
    const attn_case *p = vp;
    const attn_spec *s = &p->s;
    int64_t B = s->B, Lq = s->Lq, Lk = s->Lk, Hq = s->Hq, D = s->D, no = B * Lq * Hq * D, nl = B * Hq * Lq;
    kn_tensor *q = put_act(e, p->q, 4, (int64_t[]){B, Lq, Hq, D});
    kn_tensor *k = put_act(e, p->k, 4, (int64_t[]){B, Lk, s->Hkv, D});
    kn_tensor *v = put_act(e, p->v, 4, (int64_t[]){B, Lk, s->Hkv, D});
    float *o[2], *l[2];
    for (int part = 0; part < 2; part++) {
        int64_t k0 = part ? p->split : 0, nk = part ? Lk - p->split : p->split;
        kn_tensor ks, vs, *m = NULL, *b = NULL;
        if (!e->rc) e->rc = kn_tensor_slice(&ks, k, 1, k0, nk, &e->ctx.err);
        if (!e->rc) e->rc = kn_tensor_slice(&vs, v, 1, k0, nk, &e->ctx.err);
        if (p->mask) {
            float *mh = columns(p->mask, B, Lk, k0, nk);
            m = put_f32(e, mh, 2, (int64_t[]){B, nk});
            free(mh);
        }
        if (p->bias) {
            float *bh = columns(p->bias, s->Bb * Hq * Lq, Lk, k0, nk);
            b = put_f32(e, bh, 4, (int64_t[]){s->Bb, Hq, Lq, nk});
            free(bh);
        }
        kn_tensor *ot = new_act(e, 4, (int64_t[]){B, Lq, Hq, D});
        kn_tensor *lt = env_new(e, KN_F32, 3, (int64_t[]){B, Hq, Lq});
        kn_attention_args a = {m, b, 0, p->scale, lt};
        if (!e->rc) e->rc = kn_attention_ex(&e->ctx, ot, q, &ks, &vs, &a);
        o[part] = xmalloc((size_t)no * sizeof(float));
        l[part] = xmalloc((size_t)nl * sizeof(float));
        get(e, ot, o[part]);
        get(e, lt, l[part]);
    }
    for (int64_t bq = 0; !e->rc && bq < B * Lq; bq++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t li = ((bq / Lq) * Hq + h) * Lq + bq % Lq, oi = (bq * Hq + h) * D;
            double l1 = l[0][li], l2 = l[1][li], mx = fmax(l1, l2);
            double w1 = mx == -INFINITY ? 0.0 : exp(l1 - mx), w2 = mx == -INFINITY ? 0.0 : exp(l2 - mx);
            for (int64_t d = 0; d < D; d++)
                out[oi + d] = w1 + w2 > 0.0 ? (float)((o[0][oi + d] * w1 + o[1][oi + d] * w2) / (w1 + w2)) : 0.0f;
        }
    for (int part = 0; part < 2; part++) {
        free(o[part]);
        free(l[part]);
    }
    return e->rc;
}

/* mask 3: like 1, but batch 0 sees no key of the first half (its first partial result is empty). */
static void test_merge(attn_spec s, int64_t split) {
    int empty_half = s.mask == 3;
    if (empty_half) s.mask = 1;
    attn_case p = make_case(&s);
    p.split = split;
    if (empty_half)
        for (int64_t j = 0; j < split; j++) ((float *)p.mask)[j] = -INFINITY;
    int64_t no = s.B * s.Lq * s.Hq * s.D;
    float *ref = xmalloc((size_t)no * sizeof *ref);
    reference(&p, ref, NULL);
    check c = {"attn-merge", "", run_merge, &p, KN_PREC_FP32, no, ref, 2e-5, 2e-5};
    char extra[48];
    snprintf(extra, sizeof extra, " keys %lld+%lld%s", (long long)split, (long long)(s.Lk - split),
             empty_half ? " b0-first-empty" : "");
    describe(&s, c.what, sizeof c.what, extra);
    run_check(&c);
    free_case(&p);
    free(ref);
}

/* ---- argument checks ---------------------------------------------------------------------------------- */

static void expect(const char *what, int rc, int want, const kn_ctx *ctx, const char *needle) {
    report_bool("attention", what, rc == want && (!needle || strstr(ctx->err.msg, needle)),
                rc ? ctx->err.msg : "accepted");
}

static void test_attention_errors(void) {
    kn_ctx ctx;
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32)) {
        report_bool("attention", "context", 0, ctx.err.msg);
        return;
    }
    enum { B = 2, L = 3, H = 2, D = 4 };
    static float qkv[B * L * 3 * H * D], o[B * L * H * D], bias[B * H * L * (L + 1)], lse[B * H * L];
    kn_tensor fused = kn_tensor_make(KN_F32, KN_DEV_CPU, qkv, 3, (int64_t[]){B, L, 3 * H * D});
    kn_tensor out = kn_tensor_make(KN_F32, KN_DEV_CPU, o, 4, (int64_t[]){B, L, H, D});
    const int64_t ne[4] = {B, L, H, D}, st[4] = {L * 3 * H * D, 3 * H * D, D, 1};
    kn_tensor q, k, v, bad;
    fused.name = "qkv";
    expect("fused views", kn_tensor_view(&q, &fused, 4, ne, st, 0, &ctx.err) ||
                              kn_tensor_view(&k, &fused, 4, ne, st, H * D, &ctx.err) ||
                              kn_tensor_view(&v, &fused, 4, ne, st, 2 * H * D, &ctx.err),
           KN_OK, &ctx, NULL);
    expect("view one element past the end", kn_tensor_view(&bad, &fused, 4, ne, st, 2 * H * D + 1, &ctx.err),
           KN_ERR_SHAPE, &ctx, "qkv");
    expect("view with a negative stride",
           kn_tensor_view(&bad, &fused, 4, ne, (int64_t[]){L * 3 * H * D, 3 * H * D, -D, 1}, 2 * H * D, &ctx.err),
           KN_ERR_SHAPE, &ctx, "qkv");
    expect("view with a huge stride",
           kn_tensor_view(&bad, &fused, 4, ne, (int64_t[]){INT64_MAX / 2, 3 * H * D, D, 1}, 0, &ctx.err),
           KN_ERR_SHAPE, &ctx, "qkv");
    kn_attention_args a = {NULL, NULL, 0, 0.5f, NULL};
    expect("fused views accepted", kn_attention_ex(&ctx, &out, &q, &k, &v, &a), KN_OK, &ctx, NULL);
    expect("no args", kn_attention_ex(&ctx, &out, &q, &k, &v, NULL), KN_ERR_INVALID, &ctx, "NULL");
    kn_tensor q2 = q;
    q2.st[3] = 2;
    q2.name = "q_strided_dim";
    expect("head dim not contiguous", kn_attention_ex(&ctx, &out, &q2, &k, &v, &a), KN_ERR_SHAPE, &ctx,
           "q_strided_dim");
    kn_tensor b = kn_tensor_make(KN_F32, KN_DEV_CPU, bias, 4, (int64_t[]){B, H, L, L + 1});
    b.name = "t5_bias";
    a.bias = &b;
    expect("bias [B, H, Lq, Lk + 1]", kn_attention_ex(&ctx, &out, &q, &k, &v, &a), KN_ERR_SHAPE, &ctx, "t5_bias");
    b = kn_tensor_make(KN_F32, KN_DEV_CPU, bias, 4, (int64_t[]){3, H, L, L});
    b.name = "t5_bias";
    expect("bias batch 3 for B 2", kn_attention_ex(&ctx, &out, &q, &k, &v, &a), KN_ERR_SHAPE, &ctx, "t5_bias");
    a.bias = NULL;
    kn_tensor l = kn_tensor_make(KN_F32, KN_DEV_CPU, lse, 3, (int64_t[]){B, L, H});
    l.name = "lse_bhl";
    a.lse = &l;
    expect("lse [B, Lq, Hq]", kn_attention_ex(&ctx, &out, &q, &k, &v, &a), KN_ERR_SHAPE, &ctx, "lse_bhl");
    a.lse = NULL;
    a.scale = NAN;
    expect("NaN scale", kn_attention_ex(&ctx, &out, &q, &k, &v, &a), KN_ERR_INVALID, &ctx, "scale");
    kn_ctx_free(&ctx);
}

void test_attention_all(void) {
    /* through the kn_attention shorthand */
    test_attention((attn_spec){1, 9, 9, 2, 2, 16, 0, 0, CONTIG, 0, 0, 1});
    test_attention((attn_spec){2, 13, 21, 6, 2, 64, 0, 1, CONTIG, 0, 0, 1});   /* GQA 3:1, Lq != Lk */
    test_attention((attn_spec){1, 37, 37, 4, 1, 128, 1, 0, CONTIG, 0, 0, 1});  /* causal, MQA, crosses a 32-key tile */
    test_attention((attn_spec){2, 45, 45, 4, 2, 40, 1, 1, CONTIG, 0, 0, 1});   /* causal + mask, odd head dim */
    test_attention((attn_spec){2, 7, 19, 3, 3, 24, 0, 2, CONTIG, 0, 0, 1});    /* a batch with every key masked */
    /* crosses the CPU's 128-query and 256-key blocks */
    test_attention((attn_spec){1, 130, 300, 2, 1, 64, 0, 1, CONTIG, 0, 0, 1});
    test_attention((attn_spec){1, 5, 33, 2, 1, 256, 0, 0, CONTIG, 0, 0, 1});   /* largest head dim */
    /* kn_attention_ex */
    test_attention((attn_spec){2, 13, 21, 6, 2, 64, 0, 1, CONTIG, 1, 1, 0});    /* GQA, bias broadcast over batch */
    test_attention((attn_spec){2, 45, 45, 4, 2, 40, 1, 1, CONTIG, 2, 1, 0});    /* causal + bias per batch */
    test_attention((attn_spec){2, 7, 19, 3, 3, 24, 0, 2, CONTIG, 2, 1, 0});     /* empty rows: out 0, lse -inf */
    test_attention((attn_spec){2, 37, 37, 4, 2, 64, 0, 1, FUSED_QKV, 0, 1, 0}); /* GQA fused qkv views */
    test_attention((attn_spec){1, 130, 130, 3, 3, 48, 1, 0, FUSED_QKV, 1, 1, 0}); /* fused, causal + bias */
    test_attention((attn_spec){2, 45, 77, 4, 2, 40, 0, 1, HEAD_MAJOR, 2, 1, 0});  /* [B, H, L, D] views */
    test_attention((attn_spec){1, 130, 300, 2, 1, 64, 0, 0, HEAD_MAJOR, 0, 0, 0});
    /* BF16 precision: odd head dim and key count (padded pairs), several
     * key blocks, causal, GQA, bias and lse, fused views */
    test_attention_prec((attn_spec){2, 45, 45, 4, 2, 40, 1, 1, CONTIG, 2, 1, 0}, KN_PREC_BF16);
    test_attention_prec((attn_spec){1, 130, 301, 2, 1, 64, 0, 1, CONTIG, 0, 0, 1}, KN_PREC_BF16);
    test_attention_prec((attn_spec){1, 37, 37, 4, 1, 27, 1, 0, CONTIG, 0, 0, 1}, KN_PREC_BF16);
    test_attention_prec((attn_spec){2, 37, 37, 4, 2, 128, 0, 1, FUSED_QKV, 0, 1, 0}, KN_PREC_BF16);
    /* ring attention's merge */
    test_merge((attn_spec){2, 33, 50, 6, 2, 64, 0, 1, CONTIG, 0, 1, 0}, 23);
    test_merge((attn_spec){2, 21, 300, 4, 4, 32, 0, 1, CONTIG, 2, 1, 0}, 131);   /* bias, crosses key blocks */
    test_merge((attn_spec){2, 17, 40, 2, 1, 16, 0, 3, CONTIG, 1, 1, 0}, 20);     /* one half empty for batch 0 */
    test_merge((attn_spec){3, 9, 24, 2, 2, 16, 0, 2, CONTIG, 0, 1, 0}, 8);       /* a batch empty in both halves */
    test_attention_errors();
}
