/* kn_kl_vae: the KL autoencoder Flux.1 encodes and decodes with (ae.safetensors;
 * ComfyUI comfy/ldm/models/autoencoder.py AutoencodingEngine over the Encoder
 * and Decoder of comfy/ldm/modules/diffusionmodules/model.py, built by
 * comfy/sd.py's "decoder.conv_in.weight" branch).
 *
 * Contract
 *  - kn_kl_vae_load reads a checkpoint with ae.safetensors' keys (encoder.*,
 *    decoder.*, no prefix) and no quant_conv / post_quant_conv (files with them
 *    are AutoencoderKL, refused). Sizes come from the weights: ch and image
 *    channels from encoder.conv_in, z_channels from decoder.conv_in dim 1, the
 *    number of levels and residual blocks by counting keys, each level's width
 *    from its first block; every weight's shape is checked at load. The family
 *    constants no weight records are ComfyUI's: GroupNorm of 32 groups with eps
 *    1e-6 (Normalize), attention only in the middle (attn_resolutions []).
 *    Weights stay in the file's mapping and dtype: the kn_st_file outlives the model.
 *  - Images are [B, C, H, W] in [-1, 1] (ComfyUI's process_input 2x - 1 is the
 *    caller's); latents [B, z, H / s, W / s] with s = 2^(levels - 1) (8), raw
 *    VAE latents: the Flux latent format (kn_latent_flux, scale 0.3611, shift
 *    0.1159) belongs to the diffusion model. encode returns the posterior mean
 *    (DiagonalGaussianRegularizer, first z channels of the moments); H and W
 *    are any size >= s, each downsampling halves them rounding down.
 *  - Outputs are caller-allocated F32 tensors of the shapes given by
 *    kn_kl_vae_latent_shape / kn_kl_vae_image_shape. Layers and per-call arenas
 *    are pipelines/vae/blocks.h's; a 1024x1024 decode at the real width
 *    (ch 128) peaks near three 1 GB feature maps (the 256-channel input of the
 *    last level and its temporaries), about 3 GB.
 *  - encode/decode report errors in ctx->err, prefixed with the layer's
 *    checkpoint name ("flux_vae decoder.up.1.block.0"). */
#ifndef KN_PIPELINES_VAE_KL_H
#define KN_PIPELINES_VAE_KL_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"
#include "pipelines/family.h"

#define KN_KL_VAE_GROUPS 32 /* ComfyUI's Normalize: GroupNorm(32, eps 1e-6) */

typedef struct kn_kl_vae_config {
    int ch;             /* base width (128 in Flux's ae) */
    int levels;         /* len(ch_mult): 4 */
    int res_blocks;     /* num_res_blocks: 2 (the decoder has one more per level) */
    int z_channels;     /* latent channels: 16 */
    int image_channels; /* encoder input channels: 3 */
    int out_channels;   /* decoder output channels: 3 */
    int groups;         /* GroupNorm groups */
    int scale;          /* spatial compression, 2^(levels - 1) */
} kn_kl_vae_config;

typedef struct kn_kl_vae kn_kl_vae;

/* groups: the GroupNorm group count, 0 for the family's (KN_KL_VAE_GROUPS);
 * tests with tiny widths pass theirs. */
int kn_kl_vae_load(kn_kl_vae **out, const kn_st_file *f, int groups, kn_err *err);
void kn_kl_vae_free(kn_kl_vae *vae);
const kn_kl_vae_config *kn_kl_vae_get_config(const kn_kl_vae *vae);

/* Output shape for an input: latent [B, z, h, w] of image [B, C, H, W] and the
 * reverse (moments have 2z channels). Fail (naming the input) when it cannot be used. */
int kn_kl_vae_latent_shape(const kn_kl_vae *vae, const kn_tensor *image, int64_t ne[4], kn_err *err);
int kn_kl_vae_image_shape(const kn_kl_vae *vae, const kn_tensor *latent, int64_t ne[4], kn_err *err);

/* latent_mean = the mean half of encoder(image); moments [B, 2z, h, w] (mean
 * then log-variance), when not NULL, receives the whole encoder output.
 * image = decoder(latent). debug, when not NULL, sees each layer's output
 * under its checkpoint name ("decoder.mid.attn_1"). */
int kn_kl_vae_encode(kn_ctx *ctx, const kn_kl_vae *vae, kn_tensor *latent_mean, kn_tensor *moments,
                     const kn_tensor *image, kn_debug_fn debug, void *debug_user);
int kn_kl_vae_decode(kn_ctx *ctx, const kn_kl_vae *vae, kn_tensor *image, const kn_tensor *latent,
                     kn_debug_fn debug, void *debug_user);

/* The VAE family (pipelines/family.h): Flux's ae, 4-D latents [B, 16, h, w];
 * detected by a 4-D decoder.conv_in.weight of 16 input channels. */
extern const kn_vae_family kn_flux_vae;

#endif
