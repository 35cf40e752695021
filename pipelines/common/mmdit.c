/* The double-stream DiT block: see mmdit.h. */
#include "pipelines/common/mmdit.h"

#include "pipelines/common/dit_blocks.h"

/* A contiguous [d0, d1, d2] tensor over the start of a scratch buffer. */
static kn_tensor view(const kn_tensor *buf, int64_t d0, int64_t d1, int64_t d2) {
    return kn_tensor_make(buf->dtype, buf->device, buf->data, 3, (int64_t[]){d0, d1, d2});
}

static int block(kn_ctx *ctx, const kn_weight_table *tab, const kn_mmdit_block *w, kn_tensor *img, kn_tensor *txt,
                 const kn_mmdit_args *a) {
    int64_t B = img->ne[0], Li = img->ne[1], Lt = txt->ne[1], L = Lt + Li, D = img->ne[2];
    int64_t Lmax = Li > Lt ? Li : Lt, QD = a->shape.heads * a->shape.head_dim;
    kn_arena *ar = ctx->scratch;
    kn_err *e = &ctx->err;
    kn_tensor mod_i, mod_t, mod_i0, q, k, v, o, xm, out;
    KN_TRY(kn_arena_tensor(ar, &mod_i, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
    KN_TRY(kn_arena_tensor(ar, &mod_t, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &mod_i, a->vec, &w->img.mod));
    KN_TRY(kn_lin_forward(ctx, tab, &mod_t, a->vec, &w->txt.mod));
    if (a->vec0) {
        KN_TRY(kn_arena_tensor(ar, &mod_i0, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
        KN_TRY(kn_lin_forward(ctx, tab, &mod_i0, a->vec0, &w->img.mod));
    }
    /* stream 0 is the text, stream 1 the image (+ reference tokens from n_main on) */
    const kn_mod mods[2] = {{&mod_t, NULL, Lt}, {&mod_i, a->vec0 ? &mod_i0 : NULL, a->n_main}};
    kn_tensor *xs_of[2] = {txt, img};
    const kn_mmdit_stream *st[2] = {&w->txt, &w->img};
    const int64_t t0_of[2] = {0, Lt};
    KN_TRY(kn_arena_tensor(ar, &q, KN_F32, 3, (int64_t[]){B, L, QD}, e));
    KN_TRY(kn_arena_tensor(ar, &k, KN_F32, 3, (int64_t[]){B, L, QD}, e));
    KN_TRY(kn_arena_tensor(ar, &v, KN_F32, 3, (int64_t[]){B, L, QD}, e));
    KN_TRY(kn_arena_tensor(ar, &o, KN_F32, 3, (int64_t[]){B, L, QD}, e));
    KN_TRY(kn_arena_tensor(ar, &xm, KN_F32, 3, (int64_t[]){B, Lmax, D}, e));
    KN_TRY(kn_arena_tensor(ar, &out, KN_F32, 3, (int64_t[]){B, Lmax, D}, e));

    /* attention half: both streams' q, k, v into the joint [text, image] buffers */
    for (int s = 0; s < 2; s++) {
        int64_t n = xs_of[s]->ne[1];
        kn_tensor xs = view(&xm, B, n, D), qs, ks, vs;
        KN_TRY(kn_layernorm(ctx, &xs, xs_of[s], NULL, NULL, a->ln_eps));
        KN_TRY(kn_mod_modulate(ctx, &xs, &mods[s], 0, 1));
        KN_TRY(kn_tensor_slice(&qs, &q, 1, t0_of[s], n, e));
        KN_TRY(kn_tensor_slice(&ks, &k, 1, t0_of[s], n, e));
        KN_TRY(kn_tensor_slice(&vs, &v, 1, t0_of[s], n, e));
        KN_TRY(kn_attn_project(ctx, tab, &st[s]->attn, &a->shape, &xs, &qs, &ks, &vs));
    }
    const kn_attn_args args = {.cos = a->cos,
                               .sin = a->sin,
                               .rope = KN_ROPE_INTERLEAVED,
                               .key_mask = a->key_mask,
                               .sp = a->sp,
                               .seq = a->seq};
    KN_TRY(kn_attn_joint(ctx, &a->shape, &q, &k, &v, &o, &args));
    for (int s = 0; s < 2; s++) {
        kn_tensor os = view(&out, B, xs_of[s]->ne[1], D);
        KN_TRY(kn_attn_output(ctx, tab, &st[s]->attn, &o, t0_of[s], &os));
        KN_TRY(kn_mod_gate(ctx, xs_of[s], &os, &mods[s], 2));
    }
    /* feed-forward half */
    for (int s = 0; s < 2; s++) {
        int64_t n = xs_of[s]->ne[1];
        kn_tensor xs = view(&xm, B, n, D), os = view(&out, B, n, D);
        KN_TRY(kn_layernorm(ctx, &xs, xs_of[s], NULL, NULL, a->ln_eps));
        KN_TRY(kn_mod_modulate(ctx, &xs, &mods[s], 3, 4));
        KN_TRY(kn_mlp_forward(ctx, tab, &st[s]->mlp, a->act, &xs, &os));
        KN_TRY(kn_mod_gate(ctx, xs_of[s], &os, &mods[s], 5));
    }
    return KN_OK;
}

int kn_mmdit_block_forward(kn_ctx *ctx, const kn_weight_table *tab, const kn_mmdit_block *w, kn_tensor *img,
                           kn_tensor *txt, const kn_mmdit_args *a) {
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = block(ctx, tab, w, img, txt, a);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
