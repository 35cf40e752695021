/* CPU patchify / unpatchify: latents [B, C, (1,) H, W] to DiT tokens and back.
 * Pure data movement; each token (patchify) or each latent row (unpatchify)
 * is written by one thread. */
#include "kernels/cpu/cpu_ops.h"

typedef struct patch_geom {
    int64_t B, C, H, W, hl, wl;
    int64_t tst0, tst1; /* token view strides: batch, token */
} patch_geom;

static patch_geom geom_of(const kn_tensor *tokens, const kn_tensor *x, int p) {
    int nd = x->ndim;
    patch_geom g = {x->ne[0], x->ne[1], x->ne[nd - 2], x->ne[nd - 1], 0, 0, tokens->st[0], tokens->st[1]};
    g.hl = (g.H + p - 1) / p;
    g.wl = (g.W + p - 1) / p;
    return g;
}

/* Where channel c of patch pixel (py, px) sits in a token. */
static inline int64_t feature(kn_patch_order order, int64_t C, int p, int64_t c, int py, int px) {
    return order == KN_PATCH_C_PY_PX ? (c * p + py) * p + px : ((int64_t)py * p + px) * C + c;
}

int kn_cpu_patchify(kn_ctx *ctx, kn_tensor *tokens, const kn_tensor *x, int p, kn_patch_order order) {
    patch_geom g = geom_of(tokens, x, p);
    const float *xd = x->data;
    float *td = tokens->data;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < g.B; b++)
        for (int64_t i = 0; i < g.hl; i++)
            for (int64_t j = 0; j < g.wl; j++) {
                float *tok = td + b * g.tst0 + (i * g.wl + j) * g.tst1;
                for (int64_t c = 0; c < g.C; c++)
                    for (int py = 0; py < p; py++) {
                        /* circular padding: rows and columns past the edge wrap to the start */
                        const float *row = xd + ((b * g.C + c) * g.H + (i * p + py) % g.H) * g.W;
                        for (int px = 0; px < p; px++) tok[feature(order, g.C, p, c, py, px)] = row[(j * p + px) % g.W];
                    }
            }
    return KN_OK;
}

int kn_cpu_unpatchify(kn_ctx *ctx, kn_tensor *x, const kn_tensor *tokens, int p, kn_patch_order order) {
    patch_geom g = geom_of(tokens, x, p);
    const float *td = tokens->data;
    float *xd = x->data;
    /* only the latent's own H x W pixels are read back: the padding is cropped */
#pragma omp parallel for collapse(3) schedule(static)
    for (int64_t b = 0; b < g.B; b++)
        for (int64_t c = 0; c < g.C; c++)
            for (int64_t y = 0; y < g.H; y++) {
                float *row = xd + ((b * g.C + c) * g.H + y) * g.W;
                const float *toks = td + b * g.tst0 + (y / p) * g.wl * g.tst1;
                for (int64_t xx = 0; xx < g.W; xx++)
                    row[xx] = toks[(xx / p) * g.tst1 + feature(order, g.C, p, c, (int)(y % p), (int)(xx % p))];
            }
    return KN_OK;
}
