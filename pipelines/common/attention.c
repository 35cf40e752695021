/* The shared attention block: see attention.h. */
#include "pipelines/common/attention.h"

#include <math.h>

/* dst = src, through a contiguous copy when dst is a strided view. */
static int put(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src) {
    if (dst->data == src->data) return KN_OK;
    return kn_tensor_copy(dst, src, &ctx->err);
}

/* A contiguous [B, n, width] tensor: dst itself when it is contiguous, else scratch. */
static int target(kn_ctx *ctx, kn_tensor *dst, kn_tensor *out) {
    if (kn_tensor_is_contiguous(dst)) {
        *out = *dst;
        return KN_OK;
    }
    return kn_arena_tensor(ctx->scratch, out, KN_F32, dst->ndim, dst->ne, &ctx->err);
}

static int head_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *w, int64_t heads, float eps) {
    if (!w->data) return KN_OK;
    kn_tensor h;
    int64_t ne[4] = {y->ne[0], y->ne[1], heads, y->ne[2] / heads};
    KN_TRY(kn_tensor_reshape(&h, y, 4, ne, &ctx->err));
    return kn_rmsnorm(ctx, &h, &h, w, eps);
}

static int project(kn_ctx *ctx, const kn_attn_shape *s, const kn_weight_table *tab, const kn_attn *w,
                   const kn_tensor *x, kn_tensor *q, kn_tensor *k, kn_tensor *v) {
    kn_tensor yq, yk, yv;
    if (w->qkv.w.data) {
        /* one GEMM for all three; the rows split into q, k, v */
        int64_t B = x->ne[0], n = x->ne[1], QD = s->heads * s->head_dim, KD = s->kv_heads * s->head_dim;
        kn_tensor all;
        KN_TRY(kn_arena_tensor(ctx->scratch, &all, KN_F32, 3, (int64_t[]){B, n, QD + 2 * KD}, &ctx->err));
        KN_TRY(kn_lin_forward(ctx, tab, &all, x, &w->qkv));
        KN_TRY(kn_tensor_slice(&yq, &all, 2, 0, QD, &ctx->err));
        KN_TRY(kn_tensor_slice(&yk, &all, 2, QD, KD, &ctx->err));
        KN_TRY(kn_tensor_slice(&yv, &all, 2, QD + KD, KD, &ctx->err));
        KN_TRY(put(ctx, v, &yv));
        KN_TRY(put(ctx, q, &yq));
        KN_TRY(put(ctx, k, &yk));
    } else {
        KN_TRY(target(ctx, q, &yq));
        KN_TRY(kn_lin_forward(ctx, tab, &yq, x, &w->q));
        KN_TRY(put(ctx, q, &yq));
        KN_TRY(target(ctx, k, &yk));
        KN_TRY(kn_lin_forward(ctx, tab, &yk, x, &w->k));
        KN_TRY(put(ctx, k, &yk));
        KN_TRY(target(ctx, v, &yv));
        KN_TRY(kn_lin_forward(ctx, tab, &yv, x, &w->v));
        KN_TRY(put(ctx, v, &yv));
    }
    return KN_OK;
}

int kn_attn_qk_norm(kn_ctx *ctx, const kn_attn *w, const kn_attn_shape *s, kn_tensor *q, kn_tensor *k) {
    int rc = KN_OK;
    /* the norms run in the joint buffers: a row range of a contiguous [B, L, D]
     * buffer is contiguous for B == 1 and otherwise normalised row by row below */
    for (int i = 0; !rc && i < 2; i++) {
        kn_tensor *t = i ? k : q;
        const kn_tensor *nw = i ? &w->norm_k : &w->norm_q;
        int64_t heads = i ? s->kv_heads : s->heads;
        if (kn_tensor_is_contiguous(t)) {
            rc = head_norm(ctx, t, nw, heads, s->norm_eps);
            continue;
        }
        for (int64_t b = 0; !rc && b < t->ne[0]; b++) {
            kn_tensor row;
            rc = kn_tensor_slice(&row, t, 0, b, 1, &ctx->err);
            if (!rc) rc = head_norm(ctx, &row, nw, heads, s->norm_eps);
        }
    }
    return rc;
}

int kn_attn_project(kn_ctx *ctx, const kn_weight_table *tab, const kn_attn *w, const kn_attn_shape *s,
                    const kn_tensor *x, kn_tensor *q, kn_tensor *k, kn_tensor *v) {
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = project(ctx, s, tab, w, x, q, k, v);
    if (!rc) rc = kn_attn_qk_norm(ctx, w, s, q, k);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

int kn_attn_joint(kn_ctx *ctx, const kn_attn_shape *s, kn_tensor *q, kn_tensor *k, const kn_tensor *v, kn_tensor *o,
                  const kn_attn_args *a) {
    int64_t B = q->ne[0], Lq = q->ne[1], Lk = k->ne[1];
    kn_tensor q4, k4, v4, o4;
    kn_err *e = &ctx->err;
    KN_TRY(kn_tensor_reshape(&q4, q, 4, (int64_t[]){B, Lq, s->heads, s->head_dim}, e));
    KN_TRY(kn_tensor_reshape(&k4, k, 4, (int64_t[]){B, Lk, s->kv_heads, s->head_dim}, e));
    KN_TRY(kn_tensor_reshape(&v4, v, 4, (int64_t[]){B, Lk, s->kv_heads, s->head_dim}, e));
    KN_TRY(kn_tensor_reshape(&o4, o, 4, (int64_t[]){B, Lq, s->heads, s->head_dim}, e));
    if (a->cos) {
        KN_TRY(kn_rope(ctx, &q4, a->cos, a->sin, a->rope));
        KN_TRY(kn_rope(ctx, &k4, a->cos, a->sin, a->rope));
    }
    float scale = a->scale ? a->scale : (float)(1.0 / sqrt((double)s->head_dim));
    if (kn_sp_size(a->sp) > 1) {
        if (a->bias || a->causal || s->kv_heads != s->heads || !a->seq)
            return kn_fail(e, KN_ERR_UNSUPPORTED, "sequence parallel attention: no bias, causal mask or grouped "
                                                  "kv heads, and the streams must be given");
        return kn_sp_attention(ctx, a->sp, a->seq, &o4, &q4, &k4, &v4, a->key_mask, scale);
    }
    const kn_attention_args args = {a->key_mask, a->bias, a->causal, scale, NULL};
    return kn_attention_ex(ctx, &o4, &q4, &k4, &v4, &args);
}

int kn_attn_output(kn_ctx *ctx, const kn_weight_table *tab, const kn_attn *w, const kn_tensor *o, int64_t t0,
                   kn_tensor *y) {
    kn_tensor rows;
    KN_TRY(kn_tensor_slice(&rows, o, 1, t0, y->ne[1], &ctx->err));
    if (kn_tensor_is_contiguous(&rows)) return kn_lin_forward(ctx, tab, y, &rows, &w->out);
    size_t mark = kn_arena_mark(ctx->scratch);
    kn_tensor c;
    int rc = kn_arena_tensor(ctx->scratch, &c, KN_F32, 3, rows.ne, &ctx->err);
    if (!rc) rc = kn_tensor_copy(&c, &rows, &ctx->err);
    if (!rc) rc = kn_lin_forward(ctx, tab, y, &c, &w->out);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
