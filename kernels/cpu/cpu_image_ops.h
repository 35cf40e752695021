/* CPU kernels behind kernels/ops_image.h.
 *
 * Same contract as cpu_ops.h: arguments were checked by ops_image.c
 * (activations F32 and contiguous, shapes agree, kn_conv_params defaults
 * resolved), so these only compute. Convolutions are im2col tiles + the shared
 * F32 GEMM, one tile per OpenMP task. kn_ref_conv3d is the naive twin the
 * unit tests compare against. */
#ifndef KN_CPU_IMAGE_OPS_H
#define KN_CPU_IMAGE_OPS_H

#include "kernels/ops_image.h"

/* Conv2d is the T = KT = 1 case: ops_image.c passes 5D views. */
int kn_cpu_conv3d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                  const kn_conv_params *p);
int kn_cpu_channel_rmsnorm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *gamma,
                           const kn_tensor *bias, float eps);
int kn_cpu_group_norm(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int groups, const kn_tensor *w,
                      const kn_tensor *b, float eps);
int kn_cpu_upsample_nearest(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int kn_cpu_pad2d(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int top, int left);
/* unshuffle = 0: y = pixel_shuffle(x); 1: y = pixel_unshuffle(x). */
int kn_cpu_pixel_shuffle(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, int r, int unshuffle);
int kn_cpu_transpose_last2(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int kn_cpu_image_to_unit(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x);
int kn_cpu_resample(kn_tensor *y, const kn_tensor *x, kn_resample_mode mode, kn_err *err);

/* Naive causal conv3d, same arguments as kn_cpu_conv3d with every tensor F32. */
void kn_ref_conv3d(kn_tensor *y, const kn_tensor *x, const kn_tensor *w, const kn_tensor *bias,
                   const kn_conv_params *p);

#endif
