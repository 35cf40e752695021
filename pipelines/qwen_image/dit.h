/* kn_qwen_dit: the Qwen-Image MMDiT (QwenImageTransformer2DModel) on Kiln ops.
 *
 * Joint text/image attention over [text, image, ref_1, ...] tokens; every block:
 *   mod = Linear(silu(temb)) -> (shift1, scale1, gate1, shift2, scale2, gate2)
 *   x_m = LN(x) * (1 + scale1) + shift1 per stream; q/k/v per stream with
 *   RMSNorm on q and k per head; 3-axis interleaved RoPE on the joint q, k;
 *   attention; x += gate1 * out_proj; x += gate2 * MLP(LN(x)*(1+scale2)+shift2)
 *   with MLP = Linear -> GELU(tanh) -> Linear.
 * Then norm_out (LN with scale, shift from temb) and proj_out, unpatchified.
 *
 * Weights: diffusers key names (img_in, txt_in, txt_norm, time_text_embed.*,
 * transformer_blocks.N.*, norm_out.linear, proj_out), optionally under
 * "model.diffusion_model.". Kept in their stored dtype; the file must outlive
 * the model. Sizes come from the weights; the RoPE axis split and theta are
 * family constants (kn_qwen_dit_family) since no weight records them.
 *
 * Inputs are ComfyUI's: x is the latent in model space [B, 16, 1, H, W]
 * (odd H, W padded circularly and cropped back), sigma [B] in [0, 1],
 * context [B, Lt, joint_dim] already template-dropped, an optional text
 * mask [B, Lt] (1 keep), and reference latents for Qwen-Image-Edit. */
#ifndef KN_QWEN_DIT_H
#define KN_QWEN_DIT_H

#include "kernels/ops.h"
#include "kernels/safetensors.h"

typedef struct kn_qwen_dit_family {
    int axes_dims[3]; /* RoPE dims per axis (frame, row, col); sum = head_dim */
    double rope_theta;
    int patch;        /* spatial patch size */
} kn_qwen_dit_family;

extern const kn_qwen_dit_family kn_qwen_image_family; /* [16, 56, 56], 10000, 2 */

typedef enum kn_qwen_ref_method {
    KN_QWEN_REF_INDEX,               /* ref i at RoPE frame i, modulated with temb(sigma) */
    KN_QWEN_REF_INDEX_TIMESTEP_ZERO, /* same frames, ref tokens modulated with temb(0) (Edit-2511) */
} kn_qwen_ref_method;

typedef struct kn_qwen_dit_config {
    int64_t dim, in_channels, out_channels, heads, head_dim, joint_dim, mlp_hidden, layers;
    kn_qwen_ref_method default_ref_method; /* index_timestep_zero when the file carries the marker key */
    kn_qwen_dit_family family;
} kn_qwen_dit_config;

typedef struct kn_qwen_dit_block {
    kn_tensor img_mod_w, img_mod_b, txt_mod_w, txt_mod_b;
    kn_tensor to_q_w, to_q_b, to_k_w, to_k_b, to_v_w, to_v_b, to_out_w, to_out_b;
    kn_tensor add_q_w, add_q_b, add_k_w, add_k_b, add_v_w, add_v_b, add_out_w, add_out_b;
    kn_tensor norm_q, norm_k, norm_added_q, norm_added_k;
    kn_tensor img_fc1_w, img_fc1_b, img_fc2_w, img_fc2_b;
    kn_tensor txt_fc1_w, txt_fc1_b, txt_fc2_w, txt_fc2_b;
} kn_qwen_dit_block;

typedef struct kn_qwen_dit {
    kn_qwen_dit_config cfg;
    kn_tensor img_in_w, img_in_b, txt_in_w, txt_in_b, txt_norm;
    kn_tensor t_lin1_w, t_lin1_b, t_lin2_w, t_lin2_b;
    kn_tensor norm_out_w, norm_out_b, proj_out_w, proj_out_b;
    kn_qwen_dit_block *block; /* cfg.layers entries, owned */
    /* Runtime low-rank adapters beside every weight slot (model slots, then
     * block by block), owned, all empty after load: loras/lora.c fills the
     * lists and every linear reads its own through kn_linear_lora. */
    kn_adapter_list *adapters;
} kn_qwen_dit;

int kn_qwen_dit_load(kn_qwen_dit *m, const kn_st_file *f, const kn_qwen_dit_family *family, kn_err *err);
void kn_qwen_dit_free(kn_qwen_dit *m);
/* The field holding the weight with checkpoint key `key` (no "model.diffusion_model."
 * prefix), or NULL: LoRA patching swaps these views (loras/lora.h). */
kn_tensor *kn_qwen_dit_weight(kn_qwen_dit *m, const char *key);
/* The adapter list beside that weight, or NULL when `key` is not a linear's
 * weight: runtime LoRA adapters attach here (loras/lora.h). */
kn_adapter_list *kn_qwen_dit_adapters(kn_qwen_dit *m, const char *key);

typedef struct kn_qwen_dit_input {
    const kn_tensor *x;            /* [B, C, 1, H, W] */
    const kn_tensor *sigma;        /* [B] */
    const kn_tensor *context;      /* [B, Lt, joint_dim] */
    const kn_tensor *context_mask; /* [B, Lt] or NULL */
    const kn_tensor *const *refs;  /* n_refs latents [B, C, 1, h_i, w_i] */
    int n_refs;
    kn_qwen_ref_method ref_method;
} kn_qwen_dit_input;

/* Intermediates for debugging (names as in the fixtures: "img_in", "block0_img", ...). */
typedef int (*kn_debug_fn)(void *user, const char *name, const kn_tensor *t);

/* out: F32 [B, out_channels, 1, H, W] (caller-allocated). debug may be NULL. */
int kn_qwen_dit_forward(kn_ctx *ctx, const kn_qwen_dit *m, const kn_qwen_dit_input *in, kn_tensor *out,
                        kn_debug_fn debug, void *debug_user);

/* One block on prepared streams, for benchmarks and block-level tests.
 *   img [B, Li, dim], txt [B, Lt, dim] updated in place; tvec = silu(temb) [B, dim];
 *   tvec0: silu(temb(0)) for ref tokens from token n_main on, or NULL;
 *   cos/sin [Lt + Li, head_dim/2]; key_mask [B, Lt + Li] or NULL. */
int kn_qwen_dit_block_forward(kn_ctx *ctx, const kn_qwen_dit *m, int64_t layer, kn_tensor *img, kn_tensor *txt,
                              const kn_tensor *tvec, const kn_tensor *tvec0, int64_t n_main, const kn_tensor *cos,
                              const kn_tensor *sin, const kn_tensor *key_mask);

#endif
