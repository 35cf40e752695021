#include "kernels/ops_image.h"

#include <string.h>

#include "kernels/cpu/cpu_image_ops.h"

/* ---- checks shared by every op ------------------------------------------- */

static const char *role_name(const kn_tensor *t, const char *role) { return t->name ? t->name : role; }

/* Activations: F32, contiguous, on the output's device, `ndim` dims (0 = at least 1). */
static int check_act(kn_ctx *ctx, const char *op, const char *role, const kn_tensor *t, int ndim,
                     kn_device dev) {
    char d[96];
    if (t->dtype == KN_F32 && t->device == dev && kn_tensor_is_contiguous(t) &&
        (ndim ? t->ndim == ndim : t->ndim >= 1))
        return KN_OK;
    return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %s %s must be %s%d-D F32, contiguous, on the output's device",
                   op, role_name(t, role), kn_tensor_desc(t, d, sizeof d), ndim ? "" : "at least ",
                   ndim ? ndim : 1);
}

/* Weights: any float dtype, contiguous, on `dev`, exactly `numel` elements when numel >= 0. */
static int check_weight(kn_ctx *ctx, const char *op, const char *role, const kn_tensor *t, int64_t numel,
                        kn_device dev) {
    char d[96];
    if (kn_dtype_is_float(t->dtype) && t->device == dev && kn_tensor_is_contiguous(t) &&
        (numel < 0 || kn_tensor_numel(t) == numel))
        return KN_OK;
    if (numel >= 0)
        return kn_fail(&ctx->err, KN_ERR_SHAPE,
                       "%s: %s %s must be a contiguous float tensor of %lld elements on the output's device", op,
                       role_name(t, role), kn_tensor_desc(t, d, sizeof d), (long long)numel);
    return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %s %s must be a contiguous float tensor on the output's device",
                   op, role_name(t, role), kn_tensor_desc(t, d, sizeof d));
}

static int expect_shape(kn_ctx *ctx, const char *op, const char *role, const kn_tensor *t, int ndim,
                        const int64_t *ne) {
    if (kn_tensor_expect(t, role, ndim, ne, &ctx->err)) return kn_err_wrap(&ctx->err, "%s", op);
    return KN_OK;
}

/* The CUDA backend has no image kernels yet; say so instead of failing later. */
static int cpu_only(kn_ctx *ctx, const char *op, const kn_tensor *y) {
    if (y->device == KN_DEV_CPU) return KN_OK;
    return kn_fail(&ctx->err, KN_ERR_UNSUPPORTED, "%s: no CUDA kernel yet (tensors must be on the CPU)", op);
}

/* ---- convolutions --------------------------------------------------------- */

/* Defaults filled in (0 -> 1 for strides and upsampling), negatives rejected. */
static int resolve_conv_params(kn_ctx *ctx, const char *op, const kn_conv_params *p, kn_conv_params *out) {
    kn_conv_params r;
    memset(&r, 0, sizeof r);
    if (p) r = *p;
    if (r.stride_h < 0 || r.stride_w < 0 || r.stride_t < 0 || r.upsample < 0 || r.pad_top < 0 ||
        r.pad_bottom < 0 || r.pad_left < 0 || r.pad_right < 0 || r.pad_front < 0)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: negative stride, padding or upsampling factor", op);
    if (!r.stride_h) r.stride_h = 1;
    if (!r.stride_w) r.stride_w = 1;
    if (!r.stride_t) r.stride_t = 1;
    if (!r.upsample) r.upsample = 1;
    *out = r;
    return KN_OK;
}

/* Output size of one conv dim: (in * up + pads - k) / stride + 1, or 0 when the
 * padded input is shorter than the kernel. */
static int64_t conv_out_size(int64_t in, int up, int pads, int64_t k, int stride) {
    int64_t span = in * up + pads;
    return span < k ? 0 : (span - k) / stride + 1;
}

/* Checks the 5-D views (x [B, Cin, T, H, W], w [Cout, Cin, KT, KH, KW]) and
 * computes the output's frames, rows and columns. */
static int conv_check(kn_ctx *ctx, const char *op, const kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                      const kn_tensor *bias, const kn_conv_params *p, int64_t out_tyx[3]) {
    char a[96], b[96];
    if (y->data == x->data) return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: y must not alias x", op);
    if (w->ne[1] != x->ne[1])
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: weight %s %s expects %lld input channels, x %s has %lld", op,
                       role_name(w, "w"), kn_tensor_desc(w, a, sizeof a), (long long)w->ne[1],
                       kn_tensor_desc(x, b, sizeof b), (long long)x->ne[1]);
    if (bias && check_weight(ctx, op, "bias", bias, w->ne[0], x->device)) return ctx->err.code;
    out_tyx[0] = conv_out_size(x->ne[2], 1, p->pad_front, w->ne[2], p->stride_t);
    out_tyx[1] = conv_out_size(x->ne[3], p->upsample, p->pad_top + p->pad_bottom, w->ne[3], p->stride_h);
    out_tyx[2] = conv_out_size(x->ne[4], p->upsample, p->pad_left + p->pad_right, w->ne[4], p->stride_w);
    if (!out_tyx[0] || !out_tyx[1] || !out_tyx[2])
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: kernel of %s %s is larger than the padded input %s", op,
                       role_name(w, "w"), kn_tensor_desc(w, a, sizeof a), kn_tensor_desc(x, b, sizeof b));
    return KN_OK;
}

/* The convolution's multiply-adds x 2 into ctx->flops (benchmarks read it), then the kernel. */
static int run_conv(kn_ctx *ctx, kn_tensor *y5, const kn_tensor *x5, const kn_tensor *w5, const kn_tensor *bias,
                    const kn_conv_params *r) {
    ctx->flops += 2.0 * (double)kn_tensor_numel(y5) * (double)(kn_tensor_numel(w5) / w5->ne[0]);
    return kn_cpu_conv3d(ctx, y5, x5, w5, bias, r);
}

int kn_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
              const kn_conv_params *p) {
    static const char op[] = "conv2d";
    kn_conv_params r;
    int64_t out[3];
    if (kn_ctx_check_cancel(ctx, op) || cpu_only(ctx, op, y) || resolve_conv_params(ctx, op, p, &r) ||
        check_act(ctx, op, "x", x, 4, y->device) || check_act(ctx, op, "y", y, 4, y->device) ||
        check_weight(ctx, op, "weight", w, -1, y->device))
        return ctx->err.code;
    if (w->ndim != 4) return expect_shape(ctx, op, "weight", w, 4, (int64_t[]){-1, x->ne[1], -1, -1});
    if (r.stride_t != 1 || r.pad_front)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: stride_t and pad_front are for conv3d", op);
    kn_tensor x5 = *x, w5 = *w, y5 = *y;
    const int64_t xne[5] = {x->ne[0], x->ne[1], 1, x->ne[2], x->ne[3]};
    const int64_t wne[5] = {w->ne[0], w->ne[1], 1, w->ne[2], w->ne[3]};
    if (kn_tensor_reshape(&x5, x, 5, xne, &ctx->err) || kn_tensor_reshape(&w5, w, 5, wne, &ctx->err) ||
        conv_check(ctx, op, y, &x5, &w5, bias, &r, out))
        return ctx->err.code;
    if (expect_shape(ctx, op, "y", y, 4, (int64_t[]){x->ne[0], w->ne[0], out[1], out[2]})) return ctx->err.code;
    const int64_t yne[5] = {y->ne[0], y->ne[1], 1, y->ne[2], y->ne[3]};
    if (kn_tensor_reshape(&y5, y, 5, yne, &ctx->err)) return ctx->err.code;
    return run_conv(ctx, &y5, &x5, &w5, bias, &r);
}

int kn_conv3d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
              const kn_conv_params *p) {
    static const char op[] = "conv3d";
    kn_conv_params r;
    int64_t out[3];
    if (kn_ctx_check_cancel(ctx, op) || cpu_only(ctx, op, y) || resolve_conv_params(ctx, op, p, &r) ||
        check_act(ctx, op, "x", x, 5, y->device) || check_act(ctx, op, "y", y, 5, y->device) ||
        check_weight(ctx, op, "weight", w, -1, y->device))
        return ctx->err.code;
    if (w->ndim != 5) return expect_shape(ctx, op, "weight", w, 5, (int64_t[]){-1, x->ne[1], -1, -1, -1});
    if (conv_check(ctx, op, y, x, w, bias, &r, out) ||
        expect_shape(ctx, op, "y", y, 5, (int64_t[]){x->ne[0], w->ne[0], out[0], out[1], out[2]}))
        return ctx->err.code;
    return run_conv(ctx, y, x, w, bias, &r);
}

/* ---- norms ------------------------------------------------------------------ */

int kn_channel_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *gamma,
                       const kn_tensor *bias, float eps) {
    static const char op[] = "channel_rmsnorm";
    if (cpu_only(ctx, op, y) || check_act(ctx, op, "x", x, 0, y->device) ||
        check_act(ctx, op, "y", y, x->ndim, y->device))
        return ctx->err.code;
    if (x->ndim < 2) return expect_shape(ctx, op, "x", x, 2, (int64_t[]){-1, -1});
    if (expect_shape(ctx, op, "y", y, x->ndim, x->ne) || check_weight(ctx, op, "gamma", gamma, x->ne[1], y->device) ||
        (bias && check_weight(ctx, op, "bias", bias, x->ne[1], y->device)))
        return ctx->err.code;
    return kn_cpu_channel_rmsnorm(ctx, y, x, gamma, bias, eps);
}

int kn_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int groups, const kn_tensor *w,
                  const kn_tensor *b, float eps) {
    static const char op[] = "group_norm";
    char d[96];
    if (cpu_only(ctx, op, y) || check_act(ctx, op, "x", x, 0, y->device) ||
        check_act(ctx, op, "y", y, x->ndim, y->device))
        return ctx->err.code;
    if (x->ndim < 2) return expect_shape(ctx, op, "x", x, 2, (int64_t[]){-1, -1});
    if (groups <= 0 || x->ne[1] % groups)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: %d groups do not divide the channels of x %s", op, groups,
                       kn_tensor_desc(x, d, sizeof d));
    if (!w != !b) return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: weight and bias must both be given or both NULL", op);
    if (expect_shape(ctx, op, "y", y, x->ndim, x->ne) ||
        (w && (check_weight(ctx, op, "weight", w, x->ne[1], y->device) ||
               check_weight(ctx, op, "bias", b, x->ne[1], y->device))))
        return ctx->err.code;
    return kn_cpu_group_norm(ctx, y, x, groups, w, b, eps);
}

/* ---- resampling and layout -------------------------------------------------- */

/* x and y F32 with at least two dims and equal leading dims. */
static int check_planes(kn_ctx *ctx, const char *op, const kn_tensor *y, const kn_tensor *x) {
    char a[96], b[96];
    if (cpu_only(ctx, op, y) || check_act(ctx, op, "x", x, 0, y->device) ||
        check_act(ctx, op, "y", y, x->ndim, y->device))
        return ctx->err.code;
    int ok = x->ndim >= 2;
    for (int i = 0; ok && i + 2 < x->ndim; i++) ok = x->ne[i] == y->ne[i];
    if (ok) return KN_OK;
    return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: y %s and x %s need at least 2 dims and equal leading dims", op,
                   kn_tensor_desc(y, a, sizeof a), kn_tensor_desc(x, b, sizeof b));
}

int kn_upsample_nearest(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    static const char op[] = "upsample_nearest";
    char a[96], b[96];
    if (check_planes(ctx, op, y, x)) return ctx->err.code;
    const int64_t h = x->ne[x->ndim - 2], w = x->ne[x->ndim - 1];
    const int64_t oh = y->ne[y->ndim - 2], ow = y->ne[y->ndim - 1];
    if (h < 1 || w < 1 || oh % h || ow % w || oh / h != ow / w || oh < h)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: y %s is not x %s scaled by one integer factor", op,
                       kn_tensor_desc(y, a, sizeof a), kn_tensor_desc(x, b, sizeof b));
    return kn_cpu_upsample_nearest(ctx, y, x);
}

int kn_pad2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int top, int bottom, int left, int right) {
    static const char op[] = "pad2d";
    char a[96], b[96];
    if (check_planes(ctx, op, y, x)) return ctx->err.code;
    if (top < 0 || bottom < 0 || left < 0 || right < 0)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: negative padding", op);
    if (y->ne[y->ndim - 2] != x->ne[x->ndim - 2] + top + bottom ||
        y->ne[y->ndim - 1] != x->ne[x->ndim - 1] + left + right)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: y %s is not x %s padded by (%d, %d, %d, %d)", op,
                       kn_tensor_desc(y, a, sizeof a), kn_tensor_desc(x, b, sizeof b), top, bottom, left, right);
    return kn_cpu_pad2d(ctx, y, x, top, left);
}

/* packed [N, C*r*r, H, W] <-> spread [N, C, H*r, W*r] */
static int pixel_shuffle_dir(kn_ctx *ctx, const char *op, kn_tensor *y, const kn_tensor *x, int r, int unshuffle) {
    char a[96];
    const kn_tensor *packed = unshuffle ? y : x, *spread = unshuffle ? x : y;
    if (cpu_only(ctx, op, y) || check_act(ctx, op, "x", x, 4, y->device) || check_act(ctx, op, "y", y, 4, y->device))
        return ctx->err.code;
    if (r < 1 || spread->ne[2] % r || spread->ne[3] % r)
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: factor %d does not divide the spatial size of %s", op, r,
                       kn_tensor_desc(spread, a, sizeof a));
    const int64_t want[4] = {spread->ne[0], spread->ne[1] * r * r, spread->ne[2] / r, spread->ne[3] / r};
    if (expect_shape(ctx, op, unshuffle ? "y" : "x", packed, 4, want)) return ctx->err.code;
    return kn_cpu_pixel_shuffle(ctx, y, x, r, unshuffle);
}

int kn_pixel_shuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r) {
    return pixel_shuffle_dir(ctx, "pixel_shuffle", y, x, r, 0);
}

int kn_pixel_unshuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r) {
    return pixel_shuffle_dir(ctx, "pixel_unshuffle", y, x, r, 1);
}

int kn_transpose_last2(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    static const char op[] = "transpose_last2";
    char a[96], b[96];
    if (check_planes(ctx, op, y, x)) return ctx->err.code;
    if (y->ne[y->ndim - 2] != x->ne[x->ndim - 1] || y->ne[y->ndim - 1] != x->ne[x->ndim - 2])
        return kn_fail(&ctx->err, KN_ERR_SHAPE, "%s: y %s is not x %s with the last two dims swapped", op,
                       kn_tensor_desc(y, a, sizeof a), kn_tensor_desc(x, b, sizeof b));
    if (y->data == x->data) return kn_fail(&ctx->err, KN_ERR_INVALID, "%s: y must not alias x", op);
    return kn_cpu_transpose_last2(ctx, y, x);
}

int kn_image_to_unit(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x) {
    static const char op[] = "image_to_unit";
    if (cpu_only(ctx, op, y) || check_act(ctx, op, "x", x, 0, y->device) ||
        check_act(ctx, op, "y", y, x->ndim, y->device) || expect_shape(ctx, op, "y", y, x->ndim, x->ne))
        return ctx->err.code;
    return kn_cpu_image_to_unit(ctx, y, x);
}

int kn_resample(kn_tensor *y, const kn_tensor *x, kn_resample_mode mode, kn_err *err) {
    char a[96], b[96];
    int ok = (unsigned)mode <= KN_RESAMPLE_BICUBIC;
    for (int i = 0; ok && i < 2; i++) {
        const kn_tensor *t = i ? y : x;
        ok = t->dtype == KN_F32 && t->device == KN_DEV_CPU && t->ndim == 4;
        for (int d = 0; ok && d < 4; d++) ok = t->ne[d] >= 1 && t->st[d] >= 0;
    }
    if (ok) ok = y->ne[0] == x->ne[0] && y->ne[1] == x->ne[1];
    if (!ok)
        return kn_fail(err, KN_ERR_SHAPE, "resample: x %s and y %s must be non-empty 4-D F32 CPU [N, C, H, W] views "
                       "of one N and C (mode %d)", kn_tensor_desc(x, a, sizeof a), kn_tensor_desc(y, b, sizeof b),
                       (int)mode);
    return kn_cpu_resample(y, x, mode, err);
}
