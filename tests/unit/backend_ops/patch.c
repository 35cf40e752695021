/* Patchify / unpatchify cases of test_backend_ops: both feature orders,
 * latents that need circular padding, 5-D video latents, token views that
 * are a range of a longer sequence (the rest of the buffer must stay as it
 * was), and a round trip. The references follow ComfyUI's code literally:
 * pad_to_patch_size (circular), then the rearrange as a loop nest in the
 * output's own order (Flux/Qwen-Image "b c (h ph) (w pw) -> b (h w) (c ph pw)";
 * Lumina/Z-Image view(C, hl, p, wl, p).permute(1, 3, 2, 4, 0)). Copies are
 * exact: every bound is 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/backend_ops/harness.h"

typedef struct patch_case {
    int xnd, p, inverse, round_trip; /* inverse: unpatchify; round_trip: unpatchify(patchify(x)) */
    kn_patch_order order;
    int64_t B, C, H, W;
    int64_t ntok, t0; /* the token buffer holds ntok tokens a batch; the op's range starts at t0 */
    const float *x, *buf; /* the latent; the token buffer's starting contents */
} patch_case;

static int64_t grid(int64_t n, int p) { return (n + p - 1) / p; }

/* ComfyUI's patchify of x [B, C, H, W] into tokens [B, ntok, F] at token t0. */
static void ref_patchify(float *tok, const patch_case *c) {
    int p = c->p;
    int64_t hl = grid(c->H, p), wl = grid(c->W, p), C = c->C, F = C * p * p;
    for (int64_t b = 0; b < c->B; b++) {
        /* pad_to_patch_size: circular padding at the bottom and right */
        int64_t Hp = hl * p, Wp = wl * p;
        float *pad = xmalloc((size_t)(C * Hp * Wp) * sizeof *pad);
        for (int64_t ch = 0; ch < C; ch++)
            for (int64_t y = 0; y < Hp; y++)
                for (int64_t x = 0; x < Wp; x++)
                    pad[(ch * Hp + y) * Wp + x] = c->x[((b * C + ch) * c->H + y % c->H) * c->W + x % c->W];
        float *o = tok + (b * c->ntok + c->t0) * F;
        int64_t n = 0; /* the output in its memory order */
        for (int64_t h = 0; h < hl; h++)
            for (int64_t w = 0; w < wl; w++) {
                if (c->order == KN_PATCH_C_PY_PX) /* (h w) (c ph pw) */
                    for (int64_t ch = 0; ch < C; ch++)
                        for (int ph = 0; ph < p; ph++)
                            for (int pw = 0; pw < p; pw++) o[n++] = pad[(ch * Hp + h * p + ph) * Wp + w * p + pw];
                else /* (h w) (ph pw c) */
                    for (int ph = 0; ph < p; ph++)
                        for (int pw = 0; pw < p; pw++)
                            for (int64_t ch = 0; ch < C; ch++) o[n++] = pad[(ch * Hp + h * p + ph) * Wp + w * p + pw];
            }
        free(pad);
    }
}

/* The inverse: the padded image filled in the same loop order, then cropped. */
static void ref_unpatchify(float *x, const patch_case *c) {
    int p = c->p;
    int64_t hl = grid(c->H, p), wl = grid(c->W, p), C = c->C, F = C * p * p, Hp = hl * p, Wp = wl * p;
    float *pad = xmalloc((size_t)(C * Hp * Wp) * sizeof *pad);
    for (int64_t b = 0; b < c->B; b++) {
        const float *t = c->buf + (b * c->ntok + c->t0) * F;
        int64_t n = 0;
        for (int64_t h = 0; h < hl; h++)
            for (int64_t w = 0; w < wl; w++) {
                if (c->order == KN_PATCH_C_PY_PX)
                    for (int64_t ch = 0; ch < C; ch++)
                        for (int ph = 0; ph < p; ph++)
                            for (int pw = 0; pw < p; pw++) pad[(ch * Hp + h * p + ph) * Wp + w * p + pw] = t[n++];
                else
                    for (int ph = 0; ph < p; ph++)
                        for (int pw = 0; pw < p; pw++)
                            for (int64_t ch = 0; ch < C; ch++) pad[(ch * Hp + h * p + ph) * Wp + w * p + pw] = t[n++];
            }
        for (int64_t ch = 0; ch < C; ch++)
            for (int64_t y = 0; y < c->H; y++)
                memcpy(x + ((b * C + ch) * c->H + y) * c->W, pad + (ch * Hp + y) * Wp, (size_t)c->W * sizeof *x);
    }
    free(pad);
}

static void x_shape(const patch_case *c, int64_t *ne) {
    ne[0] = c->B;
    ne[1] = c->C;
    if (c->xnd == 5) ne[2] = 1;
    ne[c->xnd - 2] = c->H;
    ne[c->xnd - 1] = c->W;
}

static int run_patch(const void *vp, env *e, float *out) {
    const patch_case *c = vp;
    int64_t xne[5], F = c->C * c->p * c->p, nt = grid(c->H, c->p) * grid(c->W, c->p);
    x_shape(c, xne);
    kn_tensor *buf = put_act(e, c->buf, 3, (int64_t[]){c->B, c->ntok, F}), tok;
    if (!e->rc) e->rc = kn_tensor_slice(&tok, buf, 1, c->t0, nt, &e->ctx.err);
    if (!c->inverse) {
        kn_tensor *x = put_act(e, c->x, c->xnd, xne);
        if (!e->rc) e->rc = kn_patchify(&e->ctx, &tok, x, c->p, c->order);
        return get(e, buf, out);
    }
    kn_tensor *x = new_act(e, c->xnd, xne);
    if (c->round_trip) {
        kn_tensor *x0 = put_act(e, c->x, c->xnd, xne);
        if (!e->rc) e->rc = kn_patchify(&e->ctx, &tok, x0, c->p, c->order);
    }
    if (!e->rc) e->rc = kn_unpatchify(&e->ctx, x, &tok, c->p, c->order);
    return get(e, x, out);
}

/* mode 0 patchify, 1 unpatchify, 2 round trip. */
static void test_patch(int mode, int xnd, int64_t B, int64_t C, int64_t H, int64_t W, int p, kn_patch_order order,
                       int64_t extra_before, int64_t extra_after) {
    int64_t nt = grid(H, p) * grid(W, p), F = C * p * p, ntok = extra_before + nt + extra_after;
    patch_case c = {xnd, p, mode > 0, mode == 2, order, B, C, H, W, ntok, extra_before, NULL, NULL};
    float *x = rand_vec(B * C * H * W, 2.0f), *buf = rand_vec(B * ntok * F, 2.0f);
    c.x = x;
    c.buf = buf;
    int64_t n = mode ? B * C * H * W : B * ntok * F;
    float *ref = xmalloc((size_t)n * sizeof *ref);
    if (mode == 0) {
        memcpy(ref, buf, (size_t)n * sizeof *ref); /* tokens outside the range stay as they were */
        ref_patchify(ref, &c);
    } else if (mode == 1) {
        ref_unpatchify(ref, &c);
    } else {
        memcpy(ref, x, (size_t)n * sizeof *ref);
    }
    static const char *modes[] = {"patchify", "unpatchify", "patch-trip"};
    check chk = {modes[mode], "", run_patch, &c, KN_PREC_FP32, n, ref, 0.0, 0.0};
    int64_t xne[5];
    x_shape(&c, xne);
    char xs[64];
    snprintf(chk.what, sizeof chk.what, "x%s p%d %s tokens %lld of %lld+%lld+%lld", shape_str(xs, sizeof xs, xnd, xne),
             p, order == KN_PATCH_C_PY_PX ? "(c,py,px)" : "(py,px,c)", (long long)nt, (long long)extra_before,
             (long long)nt, (long long)extra_after);
    run_check(&chk);
    free(x);
    free(buf);
    free(ref);
}

static void test_patch_errors(void) {
    kn_ctx ctx;
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32)) {
        report_bool("patchify", "context", 0, ctx.err.msg);
        return;
    }
    static float xd[2 * 3 * 5 * 5], td[2 * 9 * 12];
    kn_tensor x = kn_tensor_make(KN_F32, KN_DEV_CPU, xd, 4, (int64_t[]){2, 3, 5, 5});
    kn_tensor tok = kn_tensor_make(KN_F32, KN_DEV_CPU, td, 3, (int64_t[]){2, 9, 12});
    x.name = "latent";
    tok.name = "img_tokens";
    int rc = kn_patchify(&ctx, &tok, &x, 2, KN_PATCH_C_PY_PX);
    report_bool("patchify", "x[2,3,5,5] p2 -> [2,9,12]", rc == KN_OK, rc ? ctx.err.msg : "accepted");
    tok.ne[1] = 8;
    rc = kn_patchify(&ctx, &tok, &x, 2, KN_PATCH_C_PY_PX);
    report_bool("patchify", "8 tokens for a 3x3 grid", rc == KN_ERR_SHAPE && strstr(ctx.err.msg, "img_tokens"),
                rc ? ctx.err.msg : "accepted");
    tok.ne[1] = 9;
    rc = kn_unpatchify(&ctx, &x, &tok, 0, KN_PATCH_PY_PX_C);
    report_bool("unpatchify", "patch size 0", rc == KN_ERR_SHAPE && strstr(ctx.err.msg, "latent"),
                rc ? ctx.err.msg : "accepted");
    kn_tensor x5 = kn_tensor_make(KN_F32, KN_DEV_CPU, xd, 5, (int64_t[]){1, 3, 2, 5, 5});
    rc = kn_patchify(&ctx, &tok, &x5, 2, KN_PATCH_C_PY_PX);
    report_bool("patchify", "video latent with 2 frames", rc == KN_ERR_SHAPE, rc ? ctx.err.msg : "accepted");
    kn_ctx_free(&ctx);
}

void test_patch_all(void) {
    for (int order = KN_PATCH_C_PY_PX; order <= KN_PATCH_PY_PX_C; order++) {
        kn_patch_order o = (kn_patch_order)order;
        test_patch(0, 4, 2, 3, 6, 8, 2, o, 0, 0);   /* whole patches */
        test_patch(0, 5, 1, 16, 5, 7, 2, o, 0, 0);  /* [B, C, 1, H, W], circular padding of both edges */
        test_patch(0, 4, 2, 4, 4, 5, 3, o, 7, 4);   /* p 3, a token range inside a longer sequence */
        test_patch(1, 4, 2, 3, 6, 8, 2, o, 0, 0);
        test_patch(1, 5, 1, 16, 5, 7, 2, o, 5, 0);  /* crops the padding, reads a range */
        test_patch(1, 4, 2, 4, 4, 5, 3, o, 0, 6);
        test_patch(2, 5, 2, 16, 9, 11, 2, o, 3, 2); /* unpatchify(patchify(x)) == x */
    }
    test_patch(0, 4, 1, 2, 1, 1, 2, KN_PATCH_C_PY_PX, 0, 0); /* a 1x1 latent: padding repeats the pixel */
    test_patch_errors();
}
