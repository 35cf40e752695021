/* kn_qwen_vision: Qwen2.5-VL's vision tower as ComfyUI runs it for
 * Qwen-Image-Edit (comfy/text_encoders/qwen_vl.py: process_qwen2vl_images and
 * Qwen2VLVisionTransformer); the image side of the Qwen-Image text encoder.
 *
 * Preprocessing (kn_qwen_vision_rows): image 0 of an IMAGE [B, H, W, 3] is
 * resized bilinearly (torch, align_corners=False, no antialias; always, even
 * to its own size) to the smart size (each side a multiple of 28, area kept
 * within 3136 .. 12845056 pixels), normalised with CLIP's mean and std, and
 * cut into one row per 14x14 patch: 1176 = [channel 3][time 2][y 14][x 14],
 * the frame repeated for both time taps (the Conv3d weight's layout, so the
 * patch embedding is one GEMM). Rows come in 2x2 merge groups, groups in
 * raster order of the merged grid, each group in raster order.
 *
 * Tower (kn_qwen_vision_forward): patch embedding; rows permuted by groups
 * into window order (a window is 4x4 merge groups = 112 px, windows in raster
 * order from the top left, edge windows smaller); `depth` blocks of
 *   x += proj(attn(RMSNorm1(x)))    qkv one linear, 2-D rotate_half RoPE on
 *                                   (patch row, patch col), each query sees
 *                                   its own window, except the full-attention
 *                                   blocks 7, 15, 23, 31 (the whole image)
 *   x += down(silu(gate(h)) * up(h)),  h = RMSNorm2(x)    (all with biases)
 * then the merger: RMSNorm per row, the 4 rows of a group concatenated,
 * Linear, GELU (erf), Linear. The output keeps window order: ComfyUI does not
 * undo the permutation (transformers does), and its position ids still treat
 * the rows as raster order. Windowed attention is one kn_attn_joint per
 * window, so no buffer grows with the square of the patch count.
 *
 * Weights: "visual.*" of the Qwen2.5-VL text-encoder file (patch_embed.proj,
 * blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.*}, merger.{ln_q,mlp.0,mlp.2}),
 * in their stored dtype; the file must outlive the model. Sizes come from the
 * weights, the rest from kn_qwen_vision_consts. CPU only, like the LLM. */
#ifndef KN_QWEN_IMAGE_VISION_H
#define KN_QWEN_IMAGE_VISION_H

#include "pipelines/common/attention.h"
#include "pipelines/common/llm_clip.h"
#include "pipelines/common/mlp.h"
#include "pipelines/family.h"

#define KN_QWEN_VISION_PATCH 14    /* pixels per patch side */
#define KN_QWEN_VISION_FACTOR 28   /* patch * merge: the smart size's multiple */
#define KN_QWEN_VISION_ROW 1176    /* 3 channels x 2 frames x 14 x 14 */

/* What the weights do not record. */
typedef struct kn_qwen_vision_consts {
    int64_t heads;     /* attention heads (head_dim = hidden / heads) */
    float eps;         /* RMSNorm epsilon */
    double rope_theta;
    int64_t window;    /* window side in pixels */
} kn_qwen_vision_consts;

extern const kn_qwen_vision_consts kn_qwen25vl_vision; /* 16 heads, eps 1e-6, theta 1e4, 112-px windows */

typedef struct kn_qwen_vision_block {
    kn_tensor norm1, norm2;
    kn_attn attn; /* fused qkv, out = proj */
    kn_mlp mlp;
} kn_qwen_vision_block;

typedef struct kn_qwen_vision {
    kn_qwen_vision_consts k;
    int64_t hidden, intermediate, depth, out_dim;
    kn_tensor patch; /* [hidden, 3, 2, 14, 14] */
    kn_qwen_vision_block *block;
    kn_tensor ln_q;
    kn_lin merge_in, merge_out; /* merger.mlp.0, merger.mlp.2 */
    kn_weight_table weights;
} kn_qwen_vision;

/* 1 when the file holds a vision tower under prefix ("visual."). */
int kn_qwen_vision_present(const kn_st_file *f, const char *prefix);
/* Binds and checks every weight (errors name the tensor). Free with kn_qwen_vision_free. */
int kn_qwen_vision_load(kn_qwen_vision *m, const kn_st_file *f, const char *prefix, const kn_qwen_vision_consts *k,
                        kn_err *err);
void kn_qwen_vision_free(kn_qwen_vision *m);

/* The smart size of an H x W image (Python's round, half to even). */
int kn_qwen_vision_smart_size(int64_t H, int64_t W, int64_t *h, int64_t *w, kn_err *err);

/* The patch rows of image 0 of an IMAGE [B, H, W, 3] (F32, contiguous) into
 * `arena`: rows [gh * gw, 1176] with the patch grid (gh, gw), both even. */
int kn_qwen_vision_rows(kn_arena *arena, const kn_tensor *image, kn_tensor *rows, int64_t *gh, int64_t *gw,
                        kn_err *err);

/* out [gh * gw / 4, out_dim] (caller-allocated F32) from rows [gh * gw, 1176]
 * of a gh x gw patch grid, in window order. debug (NULL: none) receives
 * "patch_embeds", "window_index", "cu_window_seqlens", "block0" and
 * "pre_merger" as the fixtures name them. Scratch comes from arena and is
 * released before returning. Errors in ctx->err. */
int kn_qwen_vision_forward(kn_ctx *ctx, const kn_qwen_vision *m, kn_arena *arena, const kn_tensor *rows, int64_t gh,
                           int64_t gw, kn_tensor *out, kn_debug_fn debug, void *debug_user);

/* The tower as the Qwen-Image text encoder's vision encoder (llm_clip.h):
 * "visual." weights with kn_qwen25vl_vision, rows of image 0 in window order
 * on the merged grid (gh / 2, gw / 2). */
extern const kn_llm_vision kn_qwen25vl_vision_encoder;

#endif
