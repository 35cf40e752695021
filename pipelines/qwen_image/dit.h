/* kn_qwen_dit: the Qwen-Image MMDiT (QwenImageTransformer2DModel), wired from
 * the shared blocks (pipelines/common).
 *
 * Joint text/image attention over [text, image, ref_1, ...] tokens; every
 * block is the shared double-stream block (pipelines/common/mmdit.h) over
 * silu(temb) with split q/k/v projections, 3-axis RoPE and a GELU(tanh) MLP.
 * Then norm_out (LN with scale, shift from temb) and proj_out, unpatchified.
 *
 * Weights: diffusers key names (img_in, txt_in, txt_norm, time_text_embed.*,
 * transformer_blocks.N.*, norm_out.linear, proj_out) under the file's prefix
 * ("model.diffusion_model." or none). Kept in their stored dtype; the file
 * must outlive the model. Sizes come from the weights; the RoPE axis split,
 * theta and patch size are constants (kn_dit_consts) since no weight
 * records them.
 *
 * Input (kn_dit_input): x is the latent in model space [B, 16, 1, H, W] (odd
 * H, W padded circularly and cropped back), timestep [B] = sigma, context
 * [B, Lt, joint_dim] already template-dropped, an optional text mask [B, Lt]
 * (1 keep), reference latents [B, 16, 1, h_i, w_i] for Qwen-Image-Edit with
 * ref_method a kn_qwen_ref_method. */
#ifndef KN_QWEN_DIT_H
#define KN_QWEN_DIT_H

#include "pipelines/common/mmdit.h"
#include "pipelines/family.h"

extern const kn_dit_consts kn_qwen_image_consts; /* [16, 56, 56], 10000, 2 */
extern const kn_dit_family kn_qwen_image_dit;

typedef enum kn_qwen_ref_method {
    KN_QWEN_REF_INDEX,               /* ref i at RoPE frame i, modulated with temb(sigma) */
    KN_QWEN_REF_INDEX_TIMESTEP_ZERO, /* same frames, ref tokens modulated with temb(0) (Edit-2511) */
} kn_qwen_ref_method;

typedef struct kn_qwen_dit_config {
    int64_t dim, in_channels, out_channels, heads, head_dim, joint_dim, mlp_hidden, layers;
    kn_dit_consts consts;
} kn_qwen_dit_config;

typedef struct kn_qwen_dit {
    kn_dit base;
    kn_qwen_dit_config cfg;
    kn_lin img_in, txt_in, t_lin1, t_lin2, norm_out, proj_out;
    kn_tensor txt_norm;
    kn_mmdit_block *block; /* cfg.layers entries, owned */
    kn_weight_table weights;
} kn_qwen_dit;

int kn_qwen_dit_load(kn_qwen_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *consts,
                     kn_err *err);
void kn_qwen_dit_free(kn_qwen_dit *m);


/* One block on prepared streams, for benchmarks and block-level tests.
 *   img [B, Li, dim], txt [B, Lt, dim] updated in place; tvec = silu(temb) [B, dim];
 *   tvec0: silu(temb(0)) for ref tokens from token n_main on, or NULL;
 *   cos/sin [Lt + Li, head_dim/2]; key_mask [B, Lt + Li] or NULL;
 *   sp (NULL: one rank) and seq: the rows are this rank's of seq's {text, image}. */
int kn_qwen_dit_block_forward(kn_ctx *ctx, const kn_qwen_dit *m, int64_t layer, kn_tensor *img, kn_tensor *txt,
                              const kn_tensor *tvec, const kn_tensor *tvec0, int64_t n_main, const kn_tensor *cos,
                              const kn_tensor *sin, const kn_tensor *key_mask, const kn_sp *sp,
                              const kn_sp_seq *seq);

#endif
