/* torch.nn.functional.interpolate on the CPU (kernels/ops_image.h
 * kn_resample): per axis the source taps and weights torch precomputes
 * (UpSample.h, AdaptiveAveragePooling.cpp), then a separable weighted sum
 * over strided 4-D views. Positions and weights are float, as torch computes
 * them for float tensors; sums may associate differently from torch's
 * vectorised kernels (a few ulp). */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_image_ops.h"

/* Source taps of each output index along one axis, as torch precomputes
 * them: out[o] = sum over t < n[o] of w[o*k + t] * in[idx[o*k + t]]. */
typedef struct kn_taps {
    int k;
    int *n;
    int64_t *idx;
    float *w;
} kn_taps;

static void kn_taps_free(kn_taps *t) {
    free(t->n);
    free(t->idx);
    free(t->w);
}

/* torch's cubic convolution kernels (UpSample.h), A = -0.75. */
static float kn_cubic1(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
static float kn_cubic2(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

static int kn_taps_build(kn_taps *t, kn_resample_mode m, int64_t in, int64_t out, kn_err *err) {
    /* Scales and source positions are float, as torch computes them for
     * float tensors (compute_scales_value, area_pixel_compute_source_index). */
    float scale = (float)in / (float)out;
    int k = 1;
    if (m == KN_RESAMPLE_BILINEAR) k = 2;
    if (m == KN_RESAMPLE_BICUBIC) k = 4;
    if (m == KN_RESAMPLE_AREA) /* widest adaptive pooling window */
        for (int64_t o = 0; o < out; o++) {
            int64_t len = ((o + 1) * in + out - 1) / out - o * in / out;
            if (len > k) k = (int)len;
        }
    t->k = k;
    t->n = malloc((size_t)out * sizeof *t->n);
    t->idx = malloc((size_t)out * (size_t)k * sizeof *t->idx);
    t->w = malloc((size_t)out * (size_t)k * sizeof *t->w);
    if (!t->n || !t->idx || !t->w) return kn_fail(err, KN_ERR_NOMEM, "resample: out of memory for %lld taps", (long long)out);
    for (int64_t o = 0; o < out; o++) {
        int64_t *idx = t->idx + o * k;
        float *w = t->w + o * k;
        if (m == KN_RESAMPLE_NEAREST_EXACT) {
            int64_t s = (int64_t)floorf((float)(((double)o + 0.5) * scale)); /* double product, as torch */
            idx[0] = s < in - 1 ? s : in - 1;
            w[0] = 1.0f;
            t->n[o] = 1;
        } else if (m == KN_RESAMPLE_AREA) {
            int64_t start = o * in / out, end = ((o + 1) * in + out - 1) / out;
            t->n[o] = (int)(end - start);
            for (int64_t i = 0; i < end - start; i++) {
                idx[i] = start + i;
                w[i] = 1.0f;
            }
        } else {
            /* guard_index_and_lambda: bilinear clamps the position at 0
             * first; bicubic does not, and clamps its taps instead. */
            /* area_pixel_compute_source_index: float scale times (index + 0.5), a double */
            float real = (float)(scale * ((double)o + 0.5) - 0.5);
            if (m == KN_RESAMPLE_BILINEAR && real < 0) real = 0;
            int64_t i0 = (int64_t)floorf(real);
            if (i0 > in - 1) i0 = in - 1;
            float lambda = fminf(fmaxf(real - (float)i0, 0.0f), 1.0f);
            if (m == KN_RESAMPLE_BILINEAR) {
                idx[0] = i0;
                idx[1] = i0 + (i0 < in - 1);
                w[0] = 1.0f - lambda;
                w[1] = lambda;
                t->n[o] = 2;
            } else {
                const float a = -0.75f;
                w[0] = kn_cubic2(lambda + 1.0f, a);
                w[1] = kn_cubic1(lambda, a);
                w[2] = kn_cubic1(1.0f - lambda, a);
                w[3] = kn_cubic2(2.0f - lambda, a);
                for (int j = 0; j < 4; j++) {
                    int64_t s = i0 - 1 + j;
                    idx[j] = s < 0 ? 0 : s > in - 1 ? in - 1 : s;
                }
                t->n[o] = 4;
            }
        }
    }
    return KN_OK;
}

/* Every (n, c) plane of x into y: rows of taps weighted and summed along x,
 * then along y (the order of torch's separable kernels); "area" divides the
 * window sum by its size (adaptive_avg_pool2d). */
int kn_cpu_resample(kn_tensor *y, const kn_tensor *x, kn_resample_mode m, kn_err *err) {
    const int64_t C = y->ne[1], H = y->ne[2], W = y->ne[3];
    kn_taps ty = {0}, tx = {0};
    int rc = kn_taps_build(&ty, m, x->ne[2], H, err);
    if (rc == KN_OK) rc = kn_taps_build(&tx, m, x->ne[3], W, err);
    if (rc == KN_OK) {
        const int64_t rows = y->ne[0] * C * H, sy = x->st[2], sx = x->st[3];
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t n = r / (C * H), c = r / H % C, oy = r % H;
            const float *in = (const float *)x->data + n * x->st[0] + c * x->st[1];
            float *out = (float *)y->data + n * y->st[0] + c * y->st[1] + oy * y->st[2];
            int ny = ty.n[oy];
            const int64_t *iy = ty.idx + oy * ty.k;
            const float *wy = ty.w + oy * ty.k;
            for (int64_t ox = 0; ox < W; ox++) {
                int nx = tx.n[ox];
                const int64_t *ix = tx.idx + ox * tx.k;
                const float *wx = tx.w + ox * tx.k;
                float acc = 0.0f;
                for (int i = 0; i < ny; i++) {
                    const float *row = in + iy[i] * sy;
                    float s = 0.0f;
                    for (int j = 0; j < nx; j++) s += row[ix[j] * sx] * wx[j];
                    acc += s * wy[i];
                }
                if (m == KN_RESAMPLE_AREA) acc /= (float)(ny * nx);
                out[ox * y->st[3]] = acc;
            }
        }
    }
    kn_taps_free(&ty);
    kn_taps_free(&tx);
    return rc;
}
