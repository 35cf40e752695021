/* Op entry points: argument checks, then one dispatch per op to the backend
 * that owns the output tensor. */
#include "kernels/ops.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#ifdef KN_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#define DISPATCH(dev, op, ...) ((dev) == KN_DEV_CUDA ? kn_cuda_##op(__VA_ARGS__) : kn_cpu_##op(__VA_ARGS__))
#else
#define DISPATCH(dev, op, ...) kn_cpu_##op(__VA_ARGS__)
#endif

int kn_ctx_init(kn_ctx *ctx, kn_device dev, kn_precision prec) {
    memset(ctx, 0, sizeof *ctx);
    ctx->device = dev;
    ctx->precision = prec;
    return kn_arena_create(&ctx->scratch, dev, &ctx->err);
}

int kn_ctx_cancelled(const kn_ctx *ctx) { return ctx->cancel && atomic_load((const atomic_int *)ctx->cancel); }

int kn_ctx_check_cancel(kn_ctx *ctx, const char *op) {
    return kn_ctx_cancelled(ctx) ? kn_fail(&ctx->err, KN_ERR_CANCELLED, "%s: interrupted", op) : KN_OK;
}

void kn_ctx_free(kn_ctx *ctx) {
    kn_arena_destroy(ctx->scratch);
    ctx->scratch = NULL;
}

int kn_precision_parse(const char *s, kn_precision *out) {
    static const char *names[] = {"fp32", "bf16", "fp16"};
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (kn_precision)i;
            return KN_OK;
        }
    }
    return KN_ERR_INVALID;
}

/* ---- checks ------------------------------------------------------------- */

static const char *tname(const kn_tensor *t) { return t->name ? t->name : "tensor"; }

static int act_dtype_ok(const kn_tensor *t) {
    return t->device == KN_DEV_CPU ? t->dtype == KN_F32
                                   : (t->dtype == KN_F32 || t->dtype == KN_BF16 || t->dtype == KN_F16);
}

static int check_act(kn_ctx *ctx, const char *op, const kn_tensor *t, const char *role) {
    char d[96];
    if (!act_dtype_ok(t) || !kn_tensor_is_contiguous(t))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %s %s %s must be a contiguous activation (F32 on CPU)", op,
                       role, tname(t), kn_tensor_desc(t, d, sizeof d));
    return KN_OK;
}

/* An activation read as rows: the last dim contiguous, the others any stride. */
static int check_rows(kn_ctx *ctx, const char *op, const kn_tensor *t, const char *role) {
    char d[96];
    if (!act_dtype_ok(t) || t->ndim < 1 || (t->st[t->ndim - 1] != 1 && t->ne[t->ndim - 1] > 1))
        return kn_fail(&ctx->err, KN_ERR_SHAPE,
                       "%s: %s %s %s must be an activation (F32 on CPU) with a contiguous last dim (stride %lld)", op,
                       role, tname(t), kn_tensor_desc(t, d, sizeof d), t->ndim ? (long long)t->st[t->ndim - 1] : 0LL);
    return KN_OK;
}

static int check_same_device(kn_ctx *ctx, const char *op, const kn_tensor *a, const kn_tensor *b) {
    if (b && a->device != b->device)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: %s and %s are on different devices", op, tname(a), tname(b));
    return KN_OK;
}

/* An elementwise-style output: an activation of the input's dtype and shape. */
static int check_out(kn_ctx *ctx, const char *op, const kn_tensor *y, const kn_tensor *x) {
    char d[96];
    int rc = check_act(ctx, op, y, "output");
    if (rc) return rc;
    if (y->dtype != x->dtype)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: output %s %s must have the input's dtype %s", op, tname(y),
                       kn_tensor_desc(y, d, sizeof d), kn_dtype_name(x->dtype));
    return KN_OK;
}

static int check_same_shape(kn_ctx *ctx, const char *op, const kn_tensor *a, const kn_tensor *b) {
    char x[96], y[96];
    int ok = a->ndim == b->ndim;
    for (int i = 0; ok && i < a->ndim; i++) ok = a->ne[i] == b->ne[i];
    if (!ok)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %s %s and %s %s differ in shape", op, tname(a),
                       kn_tensor_desc(a, x, sizeof x), tname(b), kn_tensor_desc(b, y, sizeof y));
    return KN_OK;
}

/* A per-channel parameter (norm weight, bias) of length n on the device of y. */
static int check_vec(kn_ctx *ctx, const char *op, const kn_tensor *y, const kn_tensor *v, int64_t n) {
    char d[96];
    if (!v) return KN_OK;
    KN_TRY(check_same_device(ctx, op, y, v));
    if (kn_tensor_numel(v) != n || !kn_dtype_is_float(v->dtype) || !kn_tensor_is_contiguous(v))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %s %s should be %lld floats", op, tname(v),
                       kn_tensor_desc(v, d, sizeof d), (long long)n);
    return KN_OK;
}

/* An F32 side input or output of the attention (mask, bias, lse): contiguous, of shape ne, on out's device. */
static int check_f32_side(kn_ctx *ctx, const kn_tensor *out, const kn_tensor *t, const char *role, int ndim,
                          const int64_t *ne) {
    char d[96];
    KN_TRY(check_same_device(ctx, "attention", out, t));
    if (kn_tensor_expect(t, role, ndim, ne, &ctx->err)) return kn_err_wrap(&ctx->err, "attention");
    if (t->dtype != KN_F32 || !kn_tensor_is_contiguous(t))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "attention: %s %s %s must be contiguous F32", role, tname(t),
                       kn_tensor_desc(t, d, sizeof d));
    return KN_OK;
}

static int last_dim(const kn_tensor *t) { return t->ndim ? (int)t->ne[t->ndim - 1] : 1; }

/* ---- ops ---------------------------------------------------------------- */

int kn_linear(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias) {
    char a[96], b[96], c[96];
    KN_TRY(kn_ctx_check_cancel(ctx, "linear"));
    KN_TRY(check_act(ctx, "linear", x, "input"));
    KN_TRY(check_act(ctx, "linear", y, "output"));
    KN_TRY(check_same_device(ctx, "linear", y, x));
    KN_TRY(check_same_device(ctx, "linear", y, w));
    if (w->ndim != 2 || !kn_dtype_is_float(w->dtype) || w->dtype == KN_F64 || !kn_tensor_is_contiguous(w) ||
        w->ne[1] != last_dim(x) || w->ne[0] != last_dim(y) || kn_tensor_rows(x) != kn_tensor_rows(y))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "linear: weight %s %s does not map input %s to output %s", tname(w),
                       kn_tensor_desc(w, a, sizeof a), kn_tensor_desc(x, b, sizeof b), kn_tensor_desc(y, c, sizeof c));
    KN_TRY(check_vec(ctx, "linear", y, bias, w->ne[0]));
    ctx->flops += 2.0 * (double)kn_tensor_rows(x) * (double)w->ne[0] * (double)w->ne[1];
    return DISPATCH(y->device, linear, ctx, y, x, w, bias);
}

int kn_linear_lora(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                   const kn_lora_adapter *ad, int n) {
    if (n == 0) return kn_linear(ctx, y, x, w, bias);
    if (n < 0 || !ad)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "linear_lora: %s: %d adapters at %p", tname(w), n, (const void *)ad);
    /* the adapters are host F32 factors: no device twin yet */
    if (y->device != KN_DEV_CPU)
        return kn_fail(&ctx->err, KN_ERR_UNSUPPORTED, "linear_lora: %s: low-rank adapters run on the CPU only",
                       tname(w));
    for (int i = 0; i < n; i++) {
        const kn_tensor *d = ad[i].down, *u = ad[i].up;
        char a[96], b[96];
        if (!d || !u || !isfinite(ad[i].scale))
            return kn_fail(&ctx->err, KN_ERR_INVALID, "linear_lora: %s: adapter %d lacks a factor or has scale %g",
                           tname(w), i, (double)ad[i].scale);
        if (d->ndim != 2 || u->ndim != 2 || d->ne[0] < 1 || d->ne[1] != w->ne[1] || u->ne[0] < 1 ||
            ad[i].row0 < 0 || ad[i].row0 > w->ne[0] - u->ne[0] || u->ne[1] != d->ne[0] || d->device != KN_DEV_CPU ||
            u->device != KN_DEV_CPU || !kn_dtype_is_float(d->dtype) || !kn_dtype_is_float(u->dtype) ||
            !kn_tensor_is_contiguous(d) || !kn_tensor_is_contiguous(u))
            return kn_fail(&ctx->err, KN_ERR_SHAPE,
                           "linear_lora: adapter %d of %s: down %s and up %s at row %lld must be contiguous CPU floats "
                           "[r, %lld], [n, r] with row + n <= %lld",
                           i, tname(w), kn_tensor_desc(d, a, sizeof a), kn_tensor_desc(u, b, sizeof b),
                           (long long)ad[i].row0, (long long)w->ne[1], (long long)w->ne[0]);
    }
    KN_TRY(kn_linear(ctx, y, x, w, bias));
    return kn_cpu_lora_accumulate(ctx, y, x, ad, n);
}

int kn_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps) {
    KN_TRY(check_act(ctx, "rmsnorm", x, "input"));
    KN_TRY(check_same_shape(ctx, "rmsnorm", y, x));
    KN_TRY(check_out(ctx, "rmsnorm", y, x));
    KN_TRY(check_same_device(ctx, "rmsnorm", y, x));
    KN_TRY(check_vec(ctx, "rmsnorm", y, w, last_dim(x)));
    return DISPATCH(y->device, rmsnorm, ctx, y, x, w, eps);
}

int kn_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b, float eps) {
    KN_TRY(check_act(ctx, "layernorm", x, "input"));
    KN_TRY(check_same_shape(ctx, "layernorm", y, x));
    KN_TRY(check_out(ctx, "layernorm", y, x));
    KN_TRY(check_same_device(ctx, "layernorm", y, x));
    KN_TRY(check_vec(ctx, "layernorm", y, w, last_dim(x)));
    KN_TRY(check_vec(ctx, "layernorm", y, b, last_dim(x)));
    return DISPATCH(y->device, layernorm, ctx, y, x, w, b, eps);
}

int kn_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode) {
    char a[96], b[96];
    KN_TRY(check_act(ctx, "rope", x, "input"));
    if (x->ndim != 4 || x->ne[3] % 2 || cos->ndim != 2 || cos->dtype != KN_F32 || cos->ne[0] != x->ne[1] ||
        cos->ne[1] != x->ne[3] / 2 || sin->ndim != 2 || sin->dtype != KN_F32 || sin->ne[0] != cos->ne[0] ||
        sin->ne[1] != cos->ne[1] || !kn_tensor_is_contiguous(cos) || !kn_tensor_is_contiguous(sin))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "rope: x %s %s needs [B, L, H, D] with contiguous cos/sin F32 [L, D/2], got %s",
                       tname(x), kn_tensor_desc(x, a, sizeof a), kn_tensor_desc(cos, b, sizeof b));
    KN_TRY(check_same_device(ctx, "rope", x, cos));
    KN_TRY(check_same_device(ctx, "rope", x, sin));
    return DISPATCH(x->device, rope, ctx, x, cos, sin, mode);
}

/* cos and sin: caller-allocated CPU F32 [L, half] tables. */
static int check_tables(kn_ctx *ctx, const char *op, const kn_tensor *cos_t, const kn_tensor *sin_t, int64_t half) {
    char dc[96], ds[96];
    if (cos_t->ndim != 2 || sin_t->ndim != 2 || cos_t->dtype != KN_F32 || sin_t->dtype != KN_F32 ||
        cos_t->device != KN_DEV_CPU || sin_t->device != KN_DEV_CPU || cos_t->ne[1] != half ||
        sin_t->ne[0] != cos_t->ne[0] || sin_t->ne[1] != half || !kn_tensor_is_contiguous(cos_t) ||
        !kn_tensor_is_contiguous(sin_t))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: cos %s and sin %s must be CPU F32 [L, %lld]", op,
                       kn_tensor_desc(cos_t, dc, sizeof dc), kn_tensor_desc(sin_t, ds, sizeof ds), (long long)half);
    return KN_OK;
}

int kn_rope_tables(kn_ctx *ctx, kn_tensor *cos_t, kn_tensor *sin_t, const double *pos, int n_axes,
                   const int *dims, double theta) {
    int64_t half = 0;
    for (int ax = 0; ax < n_axes; ax++) {
        if (dims[ax] < 0 || dims[ax] % 2)
            return kn_fail(&ctx->err, KN_ERR_INVALID, "rope tables: axis %d has %d channels (must be even)", ax,
                           dims[ax]);
        half += dims[ax] / 2;
    }
    KN_TRY(check_tables(ctx, "rope tables", cos_t, sin_t, half));
    int64_t L = cos_t->ne[0];
    float *c = cos_t->data, *s = sin_t->data;
    for (int64_t l = 0; l < L; l++) {
        int64_t col = l * half;
        for (int a = 0; a < n_axes; a++) {
            for (int k = 0; k < dims[a] / 2; k++, col++) {
                double ang = pos[l * n_axes + a] * pow(theta, -2.0 * k / dims[a]);
                c[col] = (float)cos(ang);
                s[col] = (float)sin(ang);
            }
        }
    }
    return KN_OK;
}

int kn_mrope_tables(kn_ctx *ctx, kn_tensor *cos_t, kn_tensor *sin_t, const double *pos, int n_streams,
                    const int *sections, double theta) {
    int64_t half = 0;
    for (int i = 0; i < n_streams; i++) {
        if (sections[i] < 0)
            return kn_fail(&ctx->err, KN_ERR_INVALID, "mrope tables: section %d has %d pairs", i, sections[i]);
        half += sections[i];
    }
    KN_TRY(check_tables(ctx, "mrope tables", cos_t, sin_t, half));
    const int64_t L = cos_t->ne[0];
    const int dims = (int)(2 * half);
    float *c = cos_t->data, *s = sin_t->data;
    for (int64_t l = 0; l < L; l++) {
        int64_t col = l * half;
        for (int st = 0, k = 0; st < n_streams; st++)
            for (int j = 0; j < sections[st]; j++, k++, col++) {
                double ang = pos[l * n_streams + st] * pow(theta, -2.0 * k / dims);
                c[col] = (float)cos(ang);
                s[col] = (float)sin(ang);
            }
    }
    return KN_OK;
}

int kn_attention_ex(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                    const kn_attention_args *a) {
    char dq[96], dk[96], dv[96];
    KN_TRY(kn_ctx_check_cancel(ctx, "attention"));
    if (!a) return kn_fail(&ctx->err, KN_ERR_INVALID, "attention: no arguments (kn_attention_args is NULL)");
    KN_TRY(check_rows(ctx, "attention", q, "query"));
    KN_TRY(check_rows(ctx, "attention", k, "key"));
    KN_TRY(check_rows(ctx, "attention", v, "value"));
    KN_TRY(check_act(ctx, "attention", out, "output"));
    KN_TRY(check_same_shape(ctx, "attention", out, q));
    KN_TRY(check_same_shape(ctx, "attention", k, v));
    KN_TRY(check_same_device(ctx, "attention", out, q));
    KN_TRY(check_same_device(ctx, "attention", out, k));
    KN_TRY(check_same_device(ctx, "attention", out, v));
    if (q->ndim != 4 || k->ndim != 4 || q->ne[0] != k->ne[0] || q->ne[3] != k->ne[3] || k->ne[2] == 0 ||
        q->ne[2] % k->ne[2] || (a->causal && q->ne[1] != k->ne[1]))
        return kn_fail(&ctx->err, KN_ERR_SHAPE,
                       "attention: q %s, k %s, v %s must be [B, L, H, D] with query heads a multiple of kv heads%s",
                       kn_tensor_desc(q, dq, sizeof dq), kn_tensor_desc(k, dk, sizeof dk),
                       kn_tensor_desc(v, dv, sizeof dv), a->causal ? " and Lq == Lk (causal)" : "");
    if (!isfinite(a->scale))
        return kn_fail(&ctx->err, KN_ERR_INVALID, "attention: scale %g is not finite", (double)a->scale);
    int64_t B = q->ne[0], Lq = q->ne[1], Hq = q->ne[2], Lk = k->ne[1];
    if (a->key_mask) KN_TRY(check_f32_side(ctx, out, a->key_mask, "key mask", 2, (int64_t[]){B, Lk}));
    if (a->bias) {
        int64_t Bb = a->bias->ndim == 4 && a->bias->ne[0] == 1 ? 1 : B; /* broadcast over the batch */
        KN_TRY(check_f32_side(ctx, out, a->bias, "bias", 4, (int64_t[]){Bb, Hq, Lq, Lk}));
    }
    if (a->lse) KN_TRY(check_f32_side(ctx, out, a->lse, "lse", 3, (int64_t[]){B, Hq, Lq}));
    /* q k^T and p v: 4 B Hq Lq Lk D, half of it under a causal mask */
    ctx->flops += (a->causal ? 2.0 : 4.0) * (double)q->ne[0] * (double)q->ne[2] * (double)q->ne[1] * (double)k->ne[1] *
                  (double)q->ne[3];
    return DISPATCH(out->device, attention, ctx, out, q, k, v, a);
}

int kn_attention(kn_ctx *ctx, kn_tensor *out, const kn_tensor *q, const kn_tensor *k, const kn_tensor *v,
                 const kn_tensor *key_mask, int causal, float scale) {
    kn_attention_args a = {key_mask, NULL, causal, scale, NULL};
    return kn_attention_ex(ctx, out, q, k, v, &a);
}

/* x [B, C, H, W] or [B, C, 1, H, W] and tokens [B, hl*wl, C*p*p] for patch size p. */
static int check_patch(kn_ctx *ctx, const char *op, const kn_tensor *tokens, const kn_tensor *x, int p) {
    char dt[96], dx[96];
    KN_TRY(check_act(ctx, op, x, "latent"));
    KN_TRY(check_rows(ctx, op, tokens, "tokens"));
    KN_TRY(check_same_device(ctx, op, tokens, x));
    if (tokens->dtype != x->dtype)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: tokens %s %s and latent %s %s differ in dtype", op,
                       tname(tokens), kn_tensor_desc(tokens, dt, sizeof dt), tname(x),
                       kn_tensor_desc(x, dx, sizeof dx));
    int nd = x->ndim;
    if (p < 1 || (nd != 4 && !(nd == 5 && x->ne[2] == 1)))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: latent %s %s must be [B, C, H, W] or [B, C, 1, H, W] (patch %d)",
                       op, tname(x), kn_tensor_desc(x, dx, sizeof dx), p);
    int64_t C = x->ne[1], H = x->ne[nd - 2], W = x->ne[nd - 1];
    int64_t hl = (H + p - 1) / p, wl = (W + p - 1) / p;
    if (tokens->ndim != 3 || tokens->ne[0] != x->ne[0] || tokens->ne[1] != hl * wl || tokens->ne[2] != C * p * p)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: tokens %s %s must be [B, %lld, %lld] for latent %s %s, patch %d",
                       op, tname(tokens), kn_tensor_desc(tokens, dt, sizeof dt), (long long)(hl * wl),
                       (long long)(C * p * p), tname(x), kn_tensor_desc(x, dx, sizeof dx), p);
    return KN_OK;
}

int kn_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order) {
    KN_TRY(check_patch(ctx, "patchify", tokens, x, p));
    return DISPATCH(tokens->device, patchify, ctx, tokens, x, p, order);
}

int kn_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order) {
    KN_TRY(check_patch(ctx, "unpatchify", tokens, x, p));
    return DISPATCH(x->device, unpatchify, ctx, x, tokens, p, order);
}

int kn_activation(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, kn_act act) {
    KN_TRY(check_act(ctx, "activation", x, "input"));
    KN_TRY(check_same_shape(ctx, "activation", y, x));
    KN_TRY(check_out(ctx, "activation", y, x));
    KN_TRY(check_same_device(ctx, "activation", y, x));
    return DISPATCH(y->device, activation, ctx, y, x, act);
}

int kn_softmax(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    KN_TRY(check_act(ctx, "softmax", x, "input"));
    KN_TRY(check_same_shape(ctx, "softmax", y, x));
    KN_TRY(check_out(ctx, "softmax", y, x));
    KN_TRY(check_same_device(ctx, "softmax", y, x));
    return DISPATCH(y->device, softmax, ctx, y, x);
}

int kn_binary(kn_ctx *ctx, kn_tensor *y, const kn_tensor *a, const kn_tensor *b, kn_binop op) {
    char s1[96], s2[96];
    KN_TRY(check_act(ctx, "binary", a, "input"));
    KN_TRY(check_act(ctx, "binary", b, "input"));
    KN_TRY(check_same_shape(ctx, "binary", y, a));
    KN_TRY(check_out(ctx, "binary", y, a));
    KN_TRY(check_out(ctx, "binary", b, a));
    KN_TRY(check_same_device(ctx, "binary", y, a));
    KN_TRY(check_same_device(ctx, "binary", y, b));
    int ok = b->ndim <= a->ndim;
    for (int i = 0; ok && i < b->ndim; i++) {
        int64_t nb = b->ne[b->ndim - 1 - i], na = a->ne[a->ndim - 1 - i];
        ok = nb == na || nb == 1;
    }
    if (!ok)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "binary: %s %s does not broadcast to %s %s", tname(b),
                       kn_tensor_desc(b, s1, sizeof s1), tname(a), kn_tensor_desc(a, s2, sizeof s2));
    return DISPATCH(y->device, binary, ctx, y, a, b, op);
}

int kn_affine(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, float s, float t) {
    KN_TRY(check_act(ctx, "affine", x, "input"));
    KN_TRY(check_same_shape(ctx, "affine", y, x));
    KN_TRY(check_out(ctx, "affine", y, x));
    KN_TRY(check_same_device(ctx, "affine", y, x));
    return DISPATCH(y->device, affine, ctx, y, x, s, t);
}

/* shift/scale/gate: [B, D] F32 rows, possibly strided views into [B, k*D]. */
static int check_mod_vec(kn_ctx *ctx, const char *op, const kn_tensor *x, const kn_tensor *v) {
    char a[96], b[96];
    KN_TRY(check_same_device(ctx, op, x, v));
    if (v->dtype != x->dtype || v->ndim != 2 || v->ne[0] != x->ne[0] || v->ne[1] != x->ne[2] || v->st[1] != 1)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: modulation %s %s must be [B, D] rows for x %s", op, tname(v),
                       kn_tensor_desc(v, a, sizeof a), kn_tensor_desc(x, b, sizeof b));
    return KN_OK;
}

int kn_modulate(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *shift, const kn_tensor *scale) {
    KN_TRY(check_act(ctx, "modulate", x, "input"));
    KN_TRY(check_same_shape(ctx, "modulate", y, x));
    KN_TRY(check_out(ctx, "modulate", y, x));
    KN_TRY(check_same_device(ctx, "modulate", y, x));
    if (x->ndim != 3) return kn_fail(&ctx->err, KN_ERR_SHAPE, "modulate: x must be [B, L, D]");
    KN_TRY(check_mod_vec(ctx, "modulate", x, shift));
    KN_TRY(check_mod_vec(ctx, "modulate", x, scale));
    return DISPATCH(y->device, modulate, ctx, y, x, shift, scale);
}

int kn_gate_add(kn_ctx *ctx, kn_tensor *acc, const kn_tensor *x, const kn_tensor *gate) {
    KN_TRY(check_act(ctx, "gate_add", x, "input"));
    KN_TRY(check_act(ctx, "gate_add", acc, "accumulator"));
    KN_TRY(check_same_shape(ctx, "gate_add", acc, x));
    KN_TRY(check_out(ctx, "gate_add", acc, x));
    KN_TRY(check_same_device(ctx, "gate_add", acc, x));
    if (x->ndim != 3) return kn_fail(&ctx->err, KN_ERR_SHAPE, "gate_add: x must be [B, L, D]");
    KN_TRY(check_mod_vec(ctx, "gate_add", x, gate));
    return DISPATCH(acc->device, gate_add, ctx, acc, x, gate);
}

int kn_weight_f32(kn_ctx *ctx, kn_tensor *out, const kn_tensor *w) {
    char d[96];
    if (ctx->device != KN_DEV_CPU || w->device != KN_DEV_CPU || !kn_dtype_is_float(w->dtype) || !kn_tensor_is_contiguous(w))
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "weight %s %s: expected contiguous float weights on CPU", tname(w),
                       kn_tensor_desc(w, d, sizeof d));
    return kn_cpu_weight_f32(ctx, out, w);
}
