/* kn_wan_vae: the Wan 2.1 VAE that Qwen-Image decodes and encodes with
 * (ComfyUI comfy/ldm/wan/vae.py, WanVAE).
 *
 * Contract
 *  - kn_wan_vae_load reads a checkpoint with the keys of Comfy-Org's
 *    qwen_image_vae.safetensors (no prefix). Widths come from the weights:
 *    dim = decoder.head.0.gamma, z_dim = conv2.weight, image channels =
 *    encoder.conv1.weight dim 1; the family constants (dim_mult [1, 2, 4, 4],
 *    2 residual blocks per stage, attention only in the middle) are fixed, as
 *    in ComfyUI's loader. Every weight's shape is checked at load; weights stay
 *    in the file's mapping and dtype, so the kn_st_file must outlive the model.
 *  - Images are [B, C, T, H, W] in [-1, 1]; latents [B, z_dim, T, H/8, W/8]
 *    (raw VAE latents: the Wan21 latent normalisation below belongs to the
 *    diffusion model's input and output). Only single frames (T = 1, every
 *    Qwen-Image image) are supported: each causal 3x3x3 conv then reduces to
 *    its last temporal tap and the temporal resampling convs are unused.
 *  - encode returns the posterior mean (no sampling); H and W are any size
 *    >= 8, each downsampling halves them rounding down as the model does.
 *  - Outputs are caller-allocated tensors of the shapes given by
 *    kn_wan_vae_latent_shape / kn_wan_vae_image_shape. The layers and their
 *    per-call arenas are the shared ones of pipelines/vae/blocks.h; a
 *    1024x1024 decode at the real width (dim 96) peaks near three 400 MB
 *    feature maps (~1.5 GB RSS).
 *  - encode/decode report errors in ctx->err, prefixed with the layer's
 *    checkpoint name. */
#ifndef KN_WAN_VAE_H
#define KN_WAN_VAE_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/family.h"

typedef struct kn_wan_vae_config {
    int dim;            /* base width (96 in the released model) */
    int z_dim;          /* latent channels (16) */
    int image_channels; /* encoder input channels (3) */
    int out_channels;   /* decoder output channels (3) */
} kn_wan_vae_config;

typedef struct kn_wan_vae kn_wan_vae;

int kn_wan_vae_load(kn_wan_vae **out, const kn_st_file *f, kn_err *err);
void kn_wan_vae_free(kn_wan_vae *vae);
const kn_wan_vae_config *kn_wan_vae_get_config(const kn_wan_vae *vae);

/* Output shape for an input: latent [B, z_dim, T, h, w] of image [B, C, T, H, W]
 * and the reverse. Fail (naming the input) when the input cannot be used. */
int kn_wan_vae_latent_shape(const kn_wan_vae *vae, const kn_tensor *image, int64_t ne[5], kn_err *err);
int kn_wan_vae_image_shape(const kn_wan_vae *vae, const kn_tensor *latent, int64_t ne[5], kn_err *err);

/* latent_mean = mu of encoder(image); image = decoder(latent). */
int kn_wan_vae_encode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *latent_mean, const kn_tensor *image);
int kn_wan_vae_decode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *image, const kn_tensor *latent);

/* The latent normalisation (ComfyUI latent_formats.Wan21) lives with the
 * samplers: kn_latent_wan21 in pipelines/sampling/samplers.h. */

/* The VAE family (pipelines/family.h): 4-D images [B, C, H, W] are single
 * frames; latents are [B, 16, 1, h, w]. Detected by
 * decoder.middle.0.residual.0.gamma without Wan 2.2's upsample residuals. */
extern const kn_vae_family kn_wan21_vae;

#endif
