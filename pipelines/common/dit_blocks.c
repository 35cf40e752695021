/* DiT building blocks: see dit_blocks.h. */
#include "pipelines/common/dit_blocks.h"

#include <math.h>
#include <string.h>

void kn_dit_sinusoid(float *emb, int64_t ch, double t, double scale, double max_period) {
    int64_t half = ch / 2;
    for (int64_t k = 0; k < half; k++) {
        double arg = scale * t * exp(-log(max_period) * (double)k / (double)half);
        emb[k] = (float)cos(arg);
        emb[half + k] = (float)sin(arg);
    }
}

static int time_embed(kn_ctx *ctx, const kn_weight_table *tab, const kn_lin *l1, const kn_lin *l2, const float *t,
                      double scale, double max_period, kn_tensor *out) {
    int64_t B = out->ne[0], ch = l1->w.ne[1];
    kn_tensor sin_emb, h;
    KN_TRY(kn_arena_tensor(ctx->scratch, &sin_emb, KN_F32, 2, (int64_t[]){B, ch}, &ctx->err));
    KN_TRY(kn_arena_tensor(ctx->scratch, &h, KN_F32, 2, (int64_t[]){B, l1->w.ne[0]}, &ctx->err));
    for (int64_t b = 0; b < B; b++) kn_dit_sinusoid((float *)sin_emb.data + b * ch, ch, t[b], scale, max_period);
    KN_TRY(kn_lin_forward(ctx, tab, &h, &sin_emb, l1));
    KN_TRY(kn_activation(ctx, &h, &h, KN_ACT_SILU));
    return kn_lin_forward(ctx, tab, out, &h, l2);
}

int kn_dit_time_embed(kn_ctx *ctx, const kn_weight_table *tab, const kn_lin *l1, const kn_lin *l2, const float *t,
                      double scale, double max_period, kn_tensor *out) {
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = time_embed(ctx, tab, l1, l2, t, scale, max_period, out);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

/* Chunk k of a [B, k*D] modulation tensor, optionally of one sample; k < 0:
 * zeros (one zero row of scratch, read with a batch stride of 0). */
static int chunk(kn_ctx *ctx, const kn_tensor *mod, int64_t b, int k, int64_t D, kn_tensor *out) {
    if (k < 0) {
        kn_tensor zero;
        KN_TRY(kn_arena_tensor(ctx->scratch, &zero, KN_F32, 1, &D, &ctx->err));
        memset(zero.data, 0, (size_t)D * sizeof(float));
        return kn_tensor_view(out, &zero, 2, (int64_t[]){b >= 0 ? 1 : mod->ne[0], D}, (int64_t[]){0, 1}, 0, &ctx->err);
    }
    kn_tensor rows = *mod;
    if (b >= 0) KN_TRY(kn_tensor_slice(&rows, mod, 0, b, 1, &ctx->err));
    return kn_tensor_slice(out, &rows, 1, (int64_t)k * D, D, &ctx->err);
}

/* One op (modulate when delta is NULL, else gate) on tokens [t0, t0+n) of
 * sample b (b < 0: all samples, all tokens) with the chunks of `mod`. */
static int apply(kn_ctx *ctx, kn_tensor *x, const kn_tensor *delta, const kn_tensor *mod, int64_t b, int64_t t0,
                 int64_t n, int k0, int k1) {
    int64_t D = x->ne[2];
    kn_tensor xs = *x, ds, c0, c1;
    if (b >= 0) {
        kn_tensor xb;
        KN_TRY(kn_tensor_slice(&xb, x, 0, b, 1, &ctx->err));
        KN_TRY(kn_tensor_slice(&xs, &xb, 1, t0, n, &ctx->err));
    }
    KN_TRY(chunk(ctx, mod, b, k0, D, &c0));
    if (delta) {
        ds = *delta;
        if (b >= 0) {
            kn_tensor db;
            KN_TRY(kn_tensor_slice(&db, delta, 0, b, 1, &ctx->err));
            KN_TRY(kn_tensor_slice(&ds, &db, 1, t0, n, &ctx->err));
        }
        return kn_gate_add(ctx, &xs, &ds, &c0);
    }
    KN_TRY(chunk(ctx, mod, b, k1, D, &c1));
    return kn_modulate(ctx, &xs, &xs, &c0, &c1);
}

/* Applies the op with m->mod to tokens [0, n_main) and m->mod0 to the rest. */
static int apply_segments(kn_ctx *ctx, kn_tensor *x, const kn_tensor *delta, const kn_mod *m, int k0, int k1) {
    int64_t B = x->ne[0], L = x->ne[1];
    if (!m->mod0 || m->n_main >= L) return apply(ctx, x, delta, m->mod, -1, 0, L, k0, k1);
    for (int64_t b = 0; b < B; b++) {
        KN_TRY(apply(ctx, x, delta, m->mod, b, 0, m->n_main, k0, k1));
        KN_TRY(apply(ctx, x, delta, m->mod0, b, m->n_main, L - m->n_main, k0, k1));
    }
    return KN_OK;
}

int kn_mod_modulate(kn_ctx *ctx, kn_tensor *x, const kn_mod *m, int shift, int scale) {
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = apply_segments(ctx, x, NULL, m, shift, scale);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

int kn_mod_gate(kn_ctx *ctx, kn_tensor *x, const kn_tensor *delta, const kn_mod *m, int gate) {
    return apply_segments(ctx, x, delta, m, gate, 0);
}

int kn_dit_final_norm(kn_ctx *ctx, const kn_weight_table *tab, const kn_lin *lin, const kn_tensor *vec, kn_tensor *x,
                      int shift_first, float eps) {
    int64_t B = x->ne[0], D = x->ne[2];
    size_t mark = kn_arena_mark(ctx->scratch);
    kn_tensor emb, a, b;
    int rc = kn_arena_tensor(ctx->scratch, &emb, KN_F32, 2, (int64_t[]){B, 2 * D}, &ctx->err);
    if (!rc) rc = kn_lin_forward(ctx, tab, &emb, vec, lin);
    if (!rc) rc = kn_tensor_slice(&a, &emb, 1, 0, D, &ctx->err);
    if (!rc) rc = kn_tensor_slice(&b, &emb, 1, D, D, &ctx->err);
    if (!rc) rc = kn_layernorm(ctx, x, x, NULL, NULL, eps);
    if (!rc) rc = shift_first ? kn_modulate(ctx, x, x, &a, &b) : kn_modulate(ctx, x, x, &b, &a);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

void kn_dit_grid_ids(double *pos, int64_t hl, int64_t wl, double frame, double row0, double col0) {
    for (int64_t i = 0; i < hl; i++)
        for (int64_t j = 0; j < wl; j++, pos += 3) {
            pos[0] = frame;
            pos[1] = row0 + (double)i;
            pos[2] = col0 + (double)j;
        }
}

kn_dit_grid kn_dit_grid_of(const kn_tensor *x, int p) {
    kn_dit_grid g = {x->ne[x->ndim - 2], x->ne[x->ndim - 1], 0, 0};
    g.hl = (g.H + p - 1) / p;
    g.wl = (g.W + p - 1) / p;
    return g;
}

int kn_dit_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, const kn_tensor *const *refs, int n_refs,
                    int p, kn_patch_order order) {
    int64_t t0 = 0;
    for (int r = -1; r < n_refs; r++) {
        const kn_tensor *src = r < 0 ? x : refs[r];
        kn_dit_grid g = kn_dit_grid_of(src, p);
        kn_tensor part;
        KN_TRY(kn_tensor_slice(&part, tokens, 1, t0, g.hl * g.wl, &ctx->err));
        KN_TRY(kn_patchify(ctx, &part, src, p, order));
        t0 += g.hl * g.wl;
    }
    return KN_OK;
}

int kn_dit_unpatchify(kn_ctx *ctx, kn_tensor *out, const kn_tensor *tokens, const kn_sp *sp, int64_t n, int p,
                      kn_patch_order order) {
    kn_dit_grid g = kn_dit_grid_of(out, p);
    kn_tensor all = *tokens, part;
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = KN_OK;
    if (kn_sp_size(sp) > 1) {
        rc = kn_arena_tensor(ctx->scratch, &all, KN_F32, 3, (int64_t[]){tokens->ne[0], n, tokens->ne[2]}, &ctx->err);
        if (!rc) rc = kn_sp_gather(ctx, sp, n, tokens, 1, &all);
    }
    if (!rc) rc = kn_tensor_slice(&part, &all, 1, 0, g.hl * g.wl, &ctx->err);
    if (!rc) rc = kn_unpatchify(ctx, out, &part, p, order);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
