/* kn_zimage_dit: the Z-Image (Turbo) diffusion transformer, ComfyUI's NextDiT
 * with z_image_modulation (comfy/ldm/lumina/model.py), wired from the shared
 * attention, MLP and modulation blocks.
 *
 *   t_emb = t_embedder(1 - sigma)                       (sinusoid of 1000 t, MLP; 256 wide)
 *   cap = cap_embedder.1(RMSNorm(context)), padded with cap_pad_token to a multiple of 32
 *   img = x_embedder(patchify(x)) (features (py, px, c)), padded with x_pad_token likewise
 *   context_refiner blocks on cap (unmodulated), noise_refiner blocks on img,
 *   main blocks on [cap, img]; final layer; the image tokens unpatchified,
 *   cropped and NEGATED (ComfyUI's model output is -NextDiT(x)).
 * Block (sandwich norms, tanh gates, no shift terms):
 *   (scale_msa, gate_msa, scale_mlp, gate_mlp) = adaLN_modulation.0(t_emb)    (no SiLU)
 *   x += tanh(gate_msa) * norm2(attn(norm1(x) * (1 + scale_msa)))
 *   x += tanh(gate_mlp) * ffn_norm2(w2(silu(w1 h) * w3 h)),  h = ffn_norm1(x) * (1 + scale_mlp)
 * Attention: fused qkv without bias, per-head q/k RMSNorm (eps: float32's
 * epsilon, as torch.nn.RMSNorm without eps), 3-axis interleaved RoPE with ids
 * caption (1 + j, 0, 0), image (L_cap_padded + 1, row, col), image pads (0, 0, 0).
 * No attention mask: pad tokens attend and are attended to.
 *
 * Weights: the ComfyUI/Lumina2 layout (x_embedder, cap_embedder, t_embedder,
 * layers.N, noise_refiner.N, context_refiner.N, final_layer, x_pad_token,
 * cap_pad_token) under the file's prefix. Sizes from the weights (head width
 * from q_norm, so heads = dim / 128 in the real model); RoPE axes 32/48/48,
 * theta 256 and patch 2 are constants. Input x [B, 16, H, W] in model space,
 * timestep [B] = sigma, context [B, Lc, cap_dim]. */
#ifndef KN_ZIMAGE_DIT_H
#define KN_ZIMAGE_DIT_H

#include "pipelines/common/attention.h"
#include "pipelines/common/mlp.h"
#include "pipelines/family.h"

extern const kn_dit_family kn_z_image_dit;

typedef struct kn_zimage_block {
    kn_lin mod; /* [4D, t_emb]; w.data NULL in the context refiner */
    kn_attn attn;
    kn_mlp ffn;
    kn_tensor attn_norm1, attn_norm2, ffn_norm1, ffn_norm2;
} kn_zimage_block;

typedef struct kn_zimage_config {
    int64_t dim, in_channels, out_channels, heads, head_dim, cap_dim, t_dim, ffn_hidden;
    int64_t layers, noise_refiners, context_refiners;
    kn_dit_consts consts;
} kn_zimage_config;

typedef struct kn_zimage_dit {
    kn_dit base;
    kn_zimage_config cfg;
    kn_lin x_embed, cap_embed, t_lin1, t_lin2, final_mod, final_linear;
    kn_tensor cap_norm, x_pad, cap_pad;
    kn_zimage_block *layer, *noise_refiner, *context_refiner;
    kn_weight_table weights;
} kn_zimage_dit;

#endif
