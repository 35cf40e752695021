/* kn image ops: convolutions, channel norms and resampling of image and
 * video tensors, for VAEs and latent packing.
 *
 * Same rules as kernels/ops.h: one entry point per op, shapes and dtypes
 * checked here (errors name the tensors), then dispatch on the output's device.
 *
 * Layouts are PyTorch's, outermost first: images [N, C, H, W], videos
 * [B, C, T, H, W]. Activations are F32 and contiguous; conv weights
 * [Cout, Cin, (KT,) KH, KW], norm weights and biases may be any float dtype
 * (with tensor->scale) and are widened as they are used.
 */
#ifndef KN_OPS_IMAGE_H
#define KN_OPS_IMAGE_H

#include "kernels/ops.h"

/* Convolution geometry. Zero means the default, so designated initialisers
 * only name what differs: strides 1, no padding, no upsampling.
 *  - pad_*: zero padding of each side (torch Conv2d padding=p is p on all
 *    four; nn.ZeroPad2d((0, 1, 0, 1)) before a conv is pad_right = pad_bottom = 1).
 *  - upsample: x is read as if nearest-upsampled by this integer factor first
 *    (nn.Upsample(scale_factor=u, mode="nearest"/"nearest-exact") then the
 *    conv), without materialising the u*u times larger input.
 *  - stride_t, pad_front: conv3d only; pad_front zero frames go before the
 *    first (ComfyUI's CausalConv3d(padding=p) has pad_front = 2 * p and pads
 *    nothing after the last frame). */
typedef struct kn_conv_params {
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right;
    int upsample;
    int stride_t;
    int pad_front;
} kn_conv_params;

/* y [N, Cout, Ho, Wo] = conv2d(x [N, Cin, H, W], w [Cout, Cin, KH, KW]) + bias [Cout]
 * (bias may be NULL), with Ho = (H*u + pad_top + pad_bottom - KH) / stride_h + 1
 * and Wo likewise. p may be NULL (all defaults). */
int kn_conv2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
              const kn_conv_params *p);

/* Causal 3D convolution: y [B, Cout, To, Ho, Wo] from x [B, Cin, T, H, W],
 * w [Cout, Cin, KT, KH, KW], bias [Cout] or NULL, with
 * To = (T + pad_front - KT) / stride_t + 1 and Ho, Wo as in kn_conv2d. Taps that
 * fall on padding frames are skipped, so T = 1 with pad_front = KT - 1 costs one
 * 2D convolution with the last temporal tap. */
int kn_conv3d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
              const kn_conv_params *p);

/* Channel RMS norm over dim 1 of x [B, C, ...] (ComfyUI/Wan RMS_norm):
 *   y = x / max(||x[b, :, s]||_2, eps) * sqrt(C) * gamma[c] (+ bias[c])
 * gamma and bias hold C elements in any shape ([C], [C, 1, 1], ...); bias may
 * be NULL. F.normalize's eps is 1e-12. In place allowed. */
int kn_channel_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *gamma,
                       const kn_tensor *bias, float eps);

/* torch GroupNorm over x [N, C, ...]: C split into `groups` groups, each
 * normalised over its channels and all positions, then * w[c] + b[c] (w and b
 * [C] or both NULL). In place allowed. */
int kn_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int groups, const kn_tensor *w,
                  const kn_tensor *b, float eps);

/* Nearest upsampling of the last two dims by an integer factor read from the
 * shapes: y [..., H*f, W*f] from x [..., H, W] (for integer factors torch's
 * "nearest" and "nearest-exact" agree). */
int kn_upsample_nearest(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

/* Zero padding of the last two dims: y [..., top + H + bottom, left + W + right]. */
int kn_pad2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int top, int bottom, int left, int right);

/* torch pixel_shuffle / pixel_unshuffle with factor r:
 *   shuffle:   y [N, C, H*r, W*r] from x [N, C*r*r, H, W],
 *              y[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]
 *   unshuffle: the inverse. */
int kn_pixel_shuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r);
int kn_pixel_unshuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r);

/* y [..., N, M] = x [..., M, N] transposed in the last two dims (channel-first
 * feature maps to token rows and back). */
int kn_transpose_last2(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

/* torch.nn.functional.interpolate(x, size=(h, w), mode, align_corners=False),
 * no antialias: y [N, C, h, w] from x [N, C, H, W], both F32 on the CPU with
 * any non-negative strides (channels-last images and crops are views). Area
 * is adaptive average pooling (for up- and downscaling alike). Host-side
 * image preparation rather than a model op, so it takes no context: errors
 * go to err. */
typedef enum kn_resample_mode {
    KN_RESAMPLE_NEAREST_EXACT, /* "nearest-exact" */
    KN_RESAMPLE_BILINEAR,
    KN_RESAMPLE_AREA,
    KN_RESAMPLE_BICUBIC,       /* A = -0.75 */
} kn_resample_mode;
int kn_resample(kn_tensor *y, const kn_tensor *x, kn_resample_mode mode, kn_err *err);

/* ComfyUI's VAE process_output: y = clamp((x + 1) / 2, 0, 1), [-1, 1] decoder
 * output to [0, 1] pixels. In place allowed. */
int kn_image_to_unit(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);

#endif
