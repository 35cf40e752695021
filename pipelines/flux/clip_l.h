/* kn_clip_text: CLIP's text transformer (CLIP-L as Flux conditions on it),
 * as ComfyUI runs it (comfy/clip_model.py CLIPTextModel).
 *
 *   x = token_embedding[ids] + position_embedding[0..L)
 *   per layer: x += out_proj(attn(LN1(x)))      causal, heads x head_dim
 *              x += fc2(quick_gelu(fc1(LN2(x))))
 *   hidden = final_layer_norm(x)
 *   pooled[b] = hidden[b, first EOS of row b]   (no text_projection: Flux)
 *
 * Weights: "text_model.*" (+ "text_projection.weight", unused) as in
 * clip_l.safetensors. Sizes come from the weights; the head width (64) is a
 * constant no weight records. */
#ifndef KN_FLUX_CLIP_L_H
#define KN_FLUX_CLIP_L_H

#include "pipelines/common/attention.h"
#include "pipelines/common/mlp.h"

#define KN_CLIP_BOS 49406
#define KN_CLIP_EOS 49407

typedef struct kn_clip_text_consts {
    int64_t head_dim;
    float eps; /* LayerNorm */
} kn_clip_text_consts;

extern const kn_clip_text_consts kn_clip_l_consts; /* head_dim 64, eps 1e-5 */

typedef struct kn_clip_text_layer {
    kn_tensor ln1_w, ln1_b, ln2_w, ln2_b;
    kn_attn attn;
    kn_mlp mlp;
} kn_clip_text_layer;

typedef struct kn_clip_text {
    int64_t vocab, positions, hidden, heads, layers;
    kn_clip_text_consts consts;
    kn_tensor tok_embed, pos_embed, final_w, final_b;
    kn_lin projection; /* text_projection (SDXL, SD3 use it; Flux does not); w.data NULL when absent */
    kn_clip_text_layer *layer;
    kn_weight_table weights;
} kn_clip_text;

int kn_clip_text_load(kn_clip_text *m, const kn_st_file *f, const kn_clip_text_consts *consts, kn_err *err);
void kn_clip_text_free(kn_clip_text *m);

/* What a forward returns (each NULL when not wanted), F32 in the caller's arena. */
typedef struct kn_clip_text_outputs {
    kn_tensor *hidden;       /* [B, L, D]: final_layer_norm(last layer) */
    kn_tensor *pooled;       /* [B, D]: hidden at each row's first EOS (the last token when none) */
    kn_tensor *projected;    /* [B, P]: text_projection(pooled); the file must have it */
    kn_tensor *layer;        /* [B, L, D]: output of layer `layer_index` (negative from the end) */
    kn_tensor *layer_normed; /* the same through final_layer_norm (ComfyUI's clip skip) */
    int64_t layer_index;
} kn_clip_text_outputs;

/* ids: I64 [B, L], L <= positions. */
int kn_clip_text_forward(kn_ctx *ctx, const kn_clip_text *m, kn_arena *arena, const kn_tensor *ids,
                         const kn_clip_text_outputs *out);

#endif
