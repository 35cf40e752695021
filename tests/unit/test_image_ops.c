/* Tests for the image ops (kernels/ops_image.h) against naive references.
 *
 * Convolutions run through kn_conv2d / kn_conv3d on random data for every
 * geometry the VAEs use (padding 1, ZeroPad2d(0, 1, 0, 1) + stride 2, fused
 * nearest upsampling, 1x1, causal temporal kernels with and without frame
 * stride) and a few they do not (5x5, asymmetric padding, batches), with F32,
 * BF16 and F16 weights (and again in BF16 precision against the reference
 * on bf16-rounded inputs), and are compared with kn_ref_conv3d on the widened
 * weights. The other ops are checked element by element; shape errors must
 * name the offending tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_image_ops.h"
#include "check.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / (1ull << 24)) - 1.0);
}

static kn_tensor new_tensor(kn_dtype dt, int ndim, const int64_t *ne) {
    kn_tensor t;
    kn_err err;
    if (kn_tensor_new(&t, dt, KN_DEV_CPU, ndim, ne, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return t;
}

static kn_tensor random_f32(int ndim, const int64_t *ne) {
    kn_tensor t = new_tensor(KN_F32, ndim, ne);
    float *d = t.data;
    for (int64_t i = 0; i < kn_tensor_numel(&t); i++) d[i] = frand();
    return t;
}

/* The same values stored as dt (rounded), and `exact` set to what they widen to. */
static kn_tensor stored_as(const kn_tensor *src, kn_dtype dt, kn_tensor *exact) {
    kn_err err;
    kn_tensor t = new_tensor(dt, src->ndim, src->ne);
    *exact = new_tensor(KN_F32, src->ndim, src->ne);
    if (kn_tensor_copy(&t, src, &err) || kn_tensor_copy(exact, &t, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return t;
}

static double rel_l2(const kn_tensor *a, const kn_tensor *b) {
    const float *x = a->data, *y = b->data;
    double num = 0, den = 0;
    for (int64_t i = 0; i < kn_tensor_numel(a); i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    return den ? sqrt(num / den) : sqrt(num);
}

typedef struct conv_case {
    const char *what;
    int64_t b, cin, t, h, w, cout, kt, kh, kw;
    kn_conv_params p;
    int bias;
} conv_case;

static int64_t out_size(int64_t in, int up, int pads, int64_t k, int stride) {
    return (in * (up ? up : 1) + pads - k) / (stride ? stride : 1) + 1;
}

static void test_conv(kn_ctx *ctx, const conv_case *c, kn_dtype wdt) {
    const kn_conv_params *p = &c->p;
    const int conv2d = c->t == 0;
    const int64_t t = conv2d ? 1 : c->t, kt = conv2d ? 1 : c->kt;
    const int64_t to = out_size(t, 1, p->pad_front, kt, p->stride_t);
    const int64_t ho = out_size(c->h, p->upsample, p->pad_top + p->pad_bottom, c->kh, p->stride_h);
    const int64_t wo = out_size(c->w, p->upsample, p->pad_left + p->pad_right, c->kw, p->stride_w);
    kn_tensor x = random_f32(5, (int64_t[]){c->b, c->cin, t, c->h, c->w});
    kn_tensor w32 = random_f32(5, (int64_t[]){c->cout, c->cin, kt, c->kh, c->kw}), wx;
    kn_tensor w = stored_as(&w32, wdt, &wx);
    kn_tensor bias = random_f32(1, (int64_t[]){c->cout});
    kn_tensor y = new_tensor(KN_F32, 5, (int64_t[]){c->b, c->cout, to, ho, wo});
    kn_tensor ref = new_tensor(KN_F32, 5, y.ne);
    kn_conv_params rp = *p; /* the reference takes resolved defaults */
    rp.stride_h = p->stride_h ? p->stride_h : 1, rp.stride_w = p->stride_w ? p->stride_w : 1;
    rp.stride_t = p->stride_t ? p->stride_t : 1, rp.upsample = p->upsample ? p->upsample : 1;
    if (ctx->precision == KN_PREC_BF16) { /* products of bf16 values, exact in f32: the same tolerance */
        kn_tensor xr, wr, xb = stored_as(&x, KN_BF16, &xr), wb = stored_as(&wx, KN_BF16, &wr);
        kn_ref_conv3d(&ref, &xr, &wr, c->bias ? &bias : NULL, &rp);
        kn_tensor *rounded[] = {&xr, &wr, &xb, &wb};
        for (size_t i = 0; i < 4; i++) kn_tensor_free(rounded[i]);
    } else {
        kn_ref_conv3d(&ref, &x, &wx, c->bias ? &bias : NULL, &rp);
    }
    int rc;
    if (conv2d) {
        kn_tensor x4, w4, y4;
        kn_err err;
        kn_tensor_reshape(&x4, &x, 4, (int64_t[]){c->b, c->cin, c->h, c->w}, &err);
        kn_tensor_reshape(&w4, &w, 4, (int64_t[]){c->cout, c->cin, c->kh, c->kw}, &err);
        kn_tensor_reshape(&y4, &y, 4, (int64_t[]){c->b, c->cout, ho, wo}, &err);
        rc = kn_conv2d(ctx, &y4, &x4, &w4, c->bias ? &bias : NULL, p);
    } else {
        rc = kn_conv3d(ctx, &y, &x, &w, c->bias ? &bias : NULL, p);
    }
    const char *prec = ctx->precision == KN_PREC_BF16 ? ", bf16" : "";
    CHECK(rc == KN_OK, "%s (%s weights%s): %s", c->what, kn_dtype_name(wdt), prec, ctx->err.msg);
    double e = rel_l2(&y, &ref);
    CHECK(!rc && e < 1e-5, "%s (%s weights%s): rel L2 %.3e", c->what, kn_dtype_name(wdt), prec, e);
    kn_tensor *all[] = {&x, &w32, &wx, &w, &bias, &y, &ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
}

static void test_convs(kn_ctx *ctx) {
    static const conv_case cases[] = {
        {"3x3 pad 1", 1, 8, 0, 13, 17, 12, 1, 3, 3, {.pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1}, 1},
        {"ZeroPad2d(0,1,0,1) + 3x3 stride 2", 2, 6, 0, 10, 7, 6, 1, 3, 3,
         {.stride_h = 2, .stride_w = 2, .pad_bottom = 1, .pad_right = 1}, 1},
        {"nearest 2x + 3x3 pad 1", 1, 8, 0, 5, 7, 4, 1, 3, 3,
         {.upsample = 2, .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1}, 1},
        {"1x1", 2, 16, 0, 9, 11, 8, 1, 1, 1, {0}, 1},
        {"5x5 asymmetric pad, no bias", 1, 3, 0, 12, 9, 5, 1, 5, 5,
         {.pad_top = 2, .pad_bottom = 1, .pad_left = 0, .pad_right = 3}, 0},
        {"causal 3x3x3, T=1", 1, 8, 1, 9, 10, 8, 3, 3, 3,
         {.pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1, .pad_front = 2}, 1},
        {"causal 3x3x3, T=5", 2, 4, 5, 6, 7, 6, 3, 3, 3,
         {.pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1, .pad_front = 2}, 1},
        {"causal 3x1x1 time conv, T=5", 1, 4, 5, 4, 4, 8, 3, 1, 1, {.pad_front = 2}, 1},
        {"3x1x1 stride_t 2, no front pad, T=5", 1, 4, 5, 4, 3, 4, 3, 1, 1, {.stride_t = 2}, 1},
        {"1x1x1, T=3", 1, 6, 3, 5, 5, 6, 1, 1, 1, {0}, 1},
    };
    const kn_dtype dts[] = {KN_F32, KN_BF16, KN_F16};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) test_conv(ctx, &cases[i], dts[d]);
}

static void test_norms(kn_ctx *ctx) {
    const int64_t ne[5] = {2, 12, 1, 7, 9}, s = 63;
    kn_tensor x = random_f32(5, ne), y = new_tensor(KN_F32, 5, ne);
    kn_tensor gamma = random_f32(4, (int64_t[]){12, 1, 1, 1}), beta = random_f32(1, (int64_t[]){12});
    const float *xd = x.data, *g = gamma.data, *bt = beta.data;
    /* channel RMS norm, with bias and in place */
    CHECK(kn_channel_rmsnorm(ctx, &y, &x, &gamma, &beta, 1e-12f) == KN_OK, "%s", ctx->err.msg);
    double worst = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t i = 0; i < s; i++) {
            double ss = 0;
            for (int64_t c = 0; c < 12; c++) ss += (double)xd[(b * 12 + c) * s + i] * xd[(b * 12 + c) * s + i];
            for (int64_t c = 0; c < 12; c++) {
                int64_t at = (b * 12 + c) * s + i;
                double want = xd[at] / sqrt(ss) * sqrt(12.0) * g[c] + bt[c];
                worst = fmax(worst, fabs(((float *)y.data)[at] - want));
            }
        }
    CHECK(worst < 1e-5, "channel_rmsnorm: max error %.3e", worst);
    kn_tensor copy = new_tensor(KN_F32, 5, ne);
    memcpy(copy.data, x.data, kn_tensor_nbytes(&x));
    CHECK(kn_channel_rmsnorm(ctx, &copy, &copy, &gamma, &beta, 1e-12f) == KN_OK, "%s", ctx->err.msg);
    CHECK(memcmp(copy.data, y.data, kn_tensor_nbytes(&y)) == 0, "channel_rmsnorm in place differs");
    /* group norm: 3 groups of 4 channels */
    CHECK(kn_group_norm(ctx, &y, &x, 3, &beta, &gamma, 1e-6f) == KN_OK, "%s", ctx->err.msg);
    worst = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t grp = 0; grp < 3; grp++) {
            const float *base = xd + (b * 12 + grp * 4) * s;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < 4 * s; i++) mean += base[i] / (4.0 * s);
            for (int64_t i = 0; i < 4 * s; i++) var += (base[i] - mean) * (base[i] - mean) / (4.0 * s);
            for (int64_t i = 0; i < 4 * s; i++) {
                int64_t c = grp * 4 + i / s;
                double want = (base[i] - mean) / sqrt(var + 1e-6) * bt[c] + g[c];
                worst = fmax(worst, fabs(((float *)y.data)[(b * 12 + grp * 4) * s + i] - want));
            }
        }
    CHECK(worst < 1e-5, "group_norm: max error %.3e", worst);
    CHECK(kn_group_norm(ctx, &y, &x, 5, NULL, NULL, 1e-6f) == KN_ERR_SHAPE, "5 groups of 12 channels accepted");
    gamma.name = "decoder.head.0.gamma";
    kn_tensor short_gamma;
    kn_err err;
    kn_tensor_slice(&short_gamma, &gamma, 0, 0, 11, &err);
    CHECK(kn_channel_rmsnorm(ctx, &y, &x, &short_gamma, NULL, 1e-12f) == KN_ERR_SHAPE &&
              strstr(ctx->err.msg, "decoder.head.0.gamma"),
          "wrong gamma size: '%s'", ctx->err.msg);
    kn_tensor *all[] = {&x, &y, &gamma, &beta, &copy};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
}

static void test_layout_ops(kn_ctx *ctx) {
    const int64_t n = 2, c = 3, h = 5, w = 7;
    kn_tensor x = random_f32(4, (int64_t[]){n, c, h, w});
    const float *xd = x.data;
    int bad = 0;
    /* nearest 3x upsampling */
    kn_tensor up = new_tensor(KN_F32, 4, (int64_t[]){n, c, 3 * h, 3 * w});
    CHECK(kn_upsample_nearest(ctx, &up, &x) == KN_OK, "%s", ctx->err.msg);
    for (int64_t pl = 0; pl < n * c; pl++)
        for (int64_t i = 0; i < 3 * h; i++)
            for (int64_t j = 0; j < 3 * w; j++)
                bad += ((float *)up.data)[(pl * 3 * h + i) * 3 * w + j] != xd[(pl * h + i / 3) * w + j / 3];
    CHECK(!bad, "upsample_nearest: %d wrong", bad);
    /* pad (1, 2, 3, 0) */
    kn_tensor pad = new_tensor(KN_F32, 4, (int64_t[]){n, c, h + 3, w + 3});
    CHECK(kn_pad2d(ctx, &pad, &x, 1, 2, 3, 0) == KN_OK, "%s", ctx->err.msg);
    bad = 0;
    for (int64_t pl = 0; pl < n * c; pl++)
        for (int64_t i = 0; i < h + 3; i++)
            for (int64_t j = 0; j < w + 3; j++) {
                int in = i >= 1 && i < h + 1 && j >= 3;
                float want = in ? xd[(pl * h + i - 1) * w + j - 3] : 0.0f;
                bad += ((float *)pad.data)[(pl * (h + 3) + i) * (w + 3) + j] != want;
            }
    CHECK(!bad, "pad2d: %d wrong", bad);
    /* pixel shuffle by 2 of [n, 12, h, w], then unshuffle back */
    kn_tensor packed = random_f32(4, (int64_t[]){n, 12, h, w});
    kn_tensor spread = new_tensor(KN_F32, 4, (int64_t[]){n, 3, 2 * h, 2 * w});
    kn_tensor back = new_tensor(KN_F32, 4, packed.ne);
    CHECK(kn_pixel_shuffle(ctx, &spread, &packed, 2) == KN_OK, "%s", ctx->err.msg);
    bad = 0;
    for (int64_t b = 0; b < n; b++)
        for (int64_t ch = 0; ch < 3; ch++)
            for (int64_t i = 0; i < 2 * h; i++)
                for (int64_t j = 0; j < 2 * w; j++) {
                    float got = ((float *)spread.data)[((b * 3 + ch) * 2 * h + i) * 2 * w + j];
                    int64_t pc = ch * 4 + (i % 2) * 2 + j % 2;
                    bad += got != ((float *)packed.data)[((b * 12 + pc) * h + i / 2) * w + j / 2];
                }
    CHECK(!bad, "pixel_shuffle: %d wrong", bad);
    CHECK(kn_pixel_unshuffle(ctx, &back, &spread, 2) == KN_OK, "%s", ctx->err.msg);
    CHECK(memcmp(back.data, packed.data, kn_tensor_nbytes(&packed)) == 0, "pixel_unshuffle does not invert");
    /* transpose of the last two dims, sizes across block edges */
    kn_tensor big = random_f32(3, (int64_t[]){2, 37, 70}), tr = new_tensor(KN_F32, 3, (int64_t[]){2, 70, 37});
    CHECK(kn_transpose_last2(ctx, &tr, &big) == KN_OK, "%s", ctx->err.msg);
    bad = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t i = 0; i < 37; i++)
            for (int64_t j = 0; j < 70; j++)
                bad += ((float *)tr.data)[(b * 70 + j) * 37 + i] != ((float *)big.data)[(b * 37 + i) * 70 + j];
    CHECK(!bad, "transpose_last2: %d wrong", bad);
    /* [-1, 1] -> [0, 1] with clamping */
    float vals[5] = {-3.0f, -1.0f, 0.0f, 0.5f, 2.0f}, want[5] = {0.0f, 0.0f, 0.5f, 0.75f, 1.0f};
    kn_tensor v = kn_tensor_make(KN_F32, KN_DEV_CPU, vals, 1, (int64_t[]){5});
    CHECK(kn_image_to_unit(ctx, &v, &v) == KN_OK && memcmp(vals, want, sizeof vals) == 0, "image_to_unit");
    /* shape errors name the op and the tensor */
    kn_tensor wrong = new_tensor(KN_F32, 4, (int64_t[]){n, c, 2 * h, 3 * w});
    CHECK(kn_upsample_nearest(ctx, &wrong, &x) == KN_ERR_SHAPE && strstr(ctx->err.msg, "upsample_nearest"),
          "unequal upsampling factors accepted: '%s'", ctx->err.msg);
    kn_tensor cw = random_f32(4, (int64_t[]){4, c + 1, 3, 3});
    cw.name = "encoder.conv1.weight";
    CHECK(kn_conv2d(ctx, &wrong, &x, &cw, NULL, NULL) == KN_ERR_SHAPE && strstr(ctx->err.msg, "encoder.conv1.weight"),
          "channel mismatch: '%s'", ctx->err.msg);
    kn_tensor *all[] = {&x, &up, &pad, &packed, &spread, &back, &big, &tr, &wrong, &cw};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kn_tensor_free(all[i]);
}

int main(void) {
    kn_ctx ctx;
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_FP32)) {
        fprintf(stderr, "kn_ctx_init failed\n");
        return 1;
    }
    test_convs(&ctx);
    test_norms(&ctx);
    test_layout_ops(&ctx);
    kn_ctx_free(&ctx);
    /* BF16 precision: the convolutions' GEMMs on bf16-rounded weights and inputs */
    if (kn_ctx_init(&ctx, KN_DEV_CPU, KN_PREC_BF16)) {
        fprintf(stderr, "kn_ctx_init failed\n");
        return 1;
    }
    test_convs(&ctx);
    kn_ctx_free(&ctx);
    printf("test_image_ops: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
