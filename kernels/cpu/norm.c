/* CPU normalisations over the last dim and rotary embeddings. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* Optional per-channel parameter as F32 (NULL stays NULL). */
static int param_f32(kn_ctx *ctx, const kn_tensor *p, const float **out) {
    *out = NULL;
    if (!p) return KN_OK;
    kn_tensor f;
    int rc = kn_cpu_weight_f32(ctx, &f, p);
    if (rc == KN_OK) *out = f.data;
    return rc;
}

int kn_cpu_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, float eps) {
    int64_t rows = kn_tensor_rows(x), D = x->ne[x->ndim - 1];
    size_t mark = kn_arena_mark(ctx->scratch);
    const float *wf;
    int rc = param_f32(ctx, w, &wf);
    if (rc) return rc;
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        float ss = 0.0f;
        for (int64_t i = 0; i < D; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)D + eps);
        if (wf)
            for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * inv * wf[i];
        else
            for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * inv;
    }
    kn_arena_reset(ctx->scratch, mark);
    return KN_OK;
}

int kn_cpu_layernorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *b,
                     float eps) {
    int64_t rows = kn_tensor_rows(x), D = x->ne[x->ndim - 1];
    size_t mark = kn_arena_mark(ctx->scratch);
    const float *wf, *bf;
    int rc = param_f32(ctx, w, &wf);
    if (rc == KN_OK) rc = param_f32(ctx, b, &bf);
    if (rc) {
        kn_arena_reset(ctx->scratch, mark); /* w may have been widened */
        return rc;
    }
    const float *xd = x->data;
    float *yd = y->data;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xd + r * D;
        float *yr = yd + r * D;
        float mean = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < D; i++) mean += xr[i];
        mean /= (float)D;
        for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        float inv = 1.0f / sqrtf(var / (float)D + eps);
        for (int64_t i = 0; i < D; i++) {
            float v = (xr[i] - mean) * inv;
            if (wf) v *= wf[i];
            if (bf) v += bf[i];
            yr[i] = v;
        }
    }
    kn_arena_reset(ctx->scratch, mark);
    return KN_OK;
}

int kn_cpu_rope(kn_ctx *ctx, kn_tensor *x, const kn_tensor *cos, const kn_tensor *sin, kn_rope_mode mode) {
    int64_t B = x->ne[0], L = x->ne[1], H = x->ne[2], D = x->ne[3], P = D / 2;
    /* pair i is (x[2i], x[2i+1]) interleaved, (x[i], x[i+D/2]) in half mode */
    int64_t first_step = mode == KN_ROPE_INTERLEAVED ? 2 : 1;
    int64_t second_off = mode == KN_ROPE_INTERLEAVED ? 1 : P;
    float *xd = x->data;
    const float *cd = cos->data, *sd = sin->data;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t l = 0; l < L; l++) {
            const float *c = cd + l * P, *s = sd + l * P;
            for (int64_t h = 0; h < H; h++) {
                float *v = xd + ((b * L + l) * H + h) * D;
                for (int64_t i = 0; i < P; i++) {
                    float x0 = v[i * first_step], x1 = v[i * first_step + second_off];
                    v[i * first_step] = x0 * c[i] - x1 * s[i];
                    v[i * first_step + second_off] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
    return KN_OK;
}
