/* kn_flux_dit: the Flux.1 diffusion transformer (dev and schnell; Kontext
 * reference latents), as ComfyUI runs it (comfy/ldm/flux/model.py, layers.py).
 *
 *   vec = time_in(emb(1000 t)) + guidance_in(emb(1000 g)) [dev] + vector_in(y)
 *   txt = txt_in(context); img = img_in(patchify(x) [+ patchify(refs)])
 *   double blocks: the shared MMDiT block (pipelines/common/mmdit.h) with
 *     fused qkv, per-head q/k RMSNorm and a GELU(tanh) MLP over silu(vec)
 *   single blocks on [txt, img]: (shift, scale, gate) = modulation(silu(vec));
 *     h = LN(x)(1 + scale) + shift; [qkv | mlp] = linear1(h); q/k norm,
 *     RoPE, attention; x += gate * linear2([attn, gelu_tanh(mlp)])
 *   final layer on the image tokens: LN, (shift, scale) modulation, linear,
 *   unpatchify and crop.
 * RoPE ids: text (0, 0, 0); image (0, row, col) from 0 (not centred);
 * reference latents as the method says ("offset": index 1, stacked right or
 * below; "index": index 1, 2, ...).
 *
 * Weights: BFL key names (img_in, time_in.in_layer, double_blocks.N.img_attn.qkv,
 * single_blocks.N.linear1, final_layer.linear, ...) under the file's prefix.
 * Sizes come from the weights; the RoPE axes (16/56/56, so head_dim 128),
 * theta and patch size are constants. Input x is [B, 16, H, W] in model space,
 * timestep and guidance [B] (ComfyUI's default guidance 3.5 when the
 * conditioning carries none), pooled [B, vec_in_dim] (CLIP-L's pooled output;
 * zeros when absent, as ComfyUI does). */
#ifndef KN_FLUX_DIT_H
#define KN_FLUX_DIT_H

#include "pipelines/common/mmdit.h"
#include "pipelines/family.h"

extern const kn_dit_family kn_flux_dev_dit, kn_flux_schnell_dit;

typedef enum kn_flux_ref_method { KN_FLUX_REF_OFFSET, KN_FLUX_REF_INDEX } kn_flux_ref_method;

typedef struct kn_flux_config {
    int64_t dim, in_channels, out_channels, heads, head_dim, context_dim, vec_dim, mlp_hidden;
    int64_t depth, depth_single;
    int guidance; /* dev: has guidance_in */
    kn_dit_consts consts;
} kn_flux_config;

typedef struct kn_flux_single {
    kn_lin mod;     /* [3D, D] */
    kn_lin linear1; /* [3D + F, D] */
    kn_lin linear2; /* [D, D + F] */
    kn_attn attn;   /* only its q/k norm scales */
} kn_flux_single;

typedef struct kn_flux_dit {
    kn_dit base;
    kn_flux_config cfg;
    kn_lin img_in, txt_in, final_mod, final_linear;
    kn_mlp time_in, guidance_in, vector_in; /* MLPEmbedder: out_layer(silu(in_layer(x))) */
    kn_mmdit_block *dbl;
    kn_flux_single *single;
    kn_weight_table weights;
} kn_flux_dit;

int kn_flux_dit_load(kn_flux_dit *m, const kn_st_file *f, const char *prefix, const kn_dit_consts *consts,
                     kn_err *err);
void kn_flux_dit_free(kn_flux_dit *m);

#endif
