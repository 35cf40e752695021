/* kn_llm_clip: a text encoder built from a decoder LLM (pipelines/common/llm.h)
 * and the Qwen2 BPE tokenizer with a family's chat template: what Qwen-Image
 * (Qwen2.5-VL-7B) and Z-Image (Qwen3-4B) condition on. A family describes its
 * encoder with a spec and wraps these functions in its kn_clip_family; one
 * whose encoder sees images (Qwen-Image-Edit) adds a vision tower, whose rows
 * are spliced into the LLM's input in place of image-pad tokens (kn_llm_vl). */
#ifndef KN_PIPELINES_LLM_CLIP_H
#define KN_PIPELINES_LLM_CLIP_H

#include "pipelines/common/llm.h"
#include "pipelines/family.h"
#include "pipelines/tokenizers/prompt.h"

typedef struct kn_llm_clip_spec {
    const kn_clip_family *family;
    const kn_llm_consts *consts;
    const char *tokenizer;     /* sub-folder of the tokenizer data */
    kn_qwen_family template;   /* the chat template kn_prompt_qwen wraps the prompt in */
    int64_t layer;             /* 0: the last layer after the final norm; else that hidden layer
                                * (negative from the end, ComfyUI's layer_idx), without the norm */
    /* The conditioning from the encoder output (the template's ids I64 [1, L], hidden F32
     * [1, L', D], longer than ids where images were spliced in) into `arena`: cond, and mask
     * (data NULL when none); NULL: the whole sequence, no mask. */
    int (*condition)(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden, kn_tensor *cond,
                     kn_tensor *mask, kn_err *err);
} kn_llm_clip_spec;

/* The file's "model." weights and the tokenizer under tokenizer_dir/spec->tokenizer. */
int kn_llm_clip_load(kn_clip **out, const kn_llm_clip_spec *spec, const kn_st_file *f, const char *tokenizer_dir,
                     kn_err *err);
void kn_llm_clip_free(kn_clip *c);
/* One encoder: the first text. */
int kn_llm_clip_encode(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out, kn_err *err);

/* ---- prompts with images (Qwen2.5-VL) ---------------------------------------------- */

/* A vision encoder whose rows replace image-pad tokens in the LLM's input. */
typedef struct kn_llm_vision {
    /* The tower from the encoder's file; *out NULL (and KN_OK) when the file has none. */
    int (*load)(void **out, const kn_st_file *f, kn_err *err);
    void (*free)(void *tower);
    /* rows [n, width] into arena for image 0 of an IMAGE [B, H, W, 3], on a merged grid[0] x grid[1]
     * (n = grid[0] * grid[1]), in the order the tower emits them. Errors in ctx->err. */
    int (*encode)(kn_ctx *ctx, const void *tower, kn_arena *arena, const kn_tensor *image, kn_tensor *rows,
                  int64_t grid[2], kn_debug_fn debug, void *debug_user);
} kn_llm_vision;

/* The LLM with a vision encoder: ComfyUI's Qwen25_7BVLI. */
typedef struct kn_llm_vl {
    const kn_llm *llm;
    const kn_llm_vision *vision;
    const void *tower;   /* NULL: the file has no tower (prompts with images fail, naming it) */
    int32_t image_pad;   /* the token an image replaces (<|image_pad|>) */
    const int *mrope;    /* M-RoPE sections for sequences with images */
} kn_llm_vl;

/* The LLM's outputs (into arena) for ids I64 [1, L] whose first n image-pad
 * tokens are replaced, each by the rows of images[k] (SDClipModel's splice:
 * L' = L - n + sum of the rows). The sequence's M-RoPE positions follow
 * Qwen2-VL's rule: text tokens count on in all three streams, row j of an
 * image at index s gets (t, h, w) = (s, s + j / mw, s + j % mw) plus the
 * shift so far, and the text after it continues from s + max(mh, mw). With no
 * image replaced this is kn_llm_forward on ids, bit for bit. debug (NULL:
 * none) receives "image<k>_embeds", "input_embeds" [1, L', D] and
 * "position_ids" [3, L'] (F32), plus the tower's intermediates. Errors in
 * ctx->err. */
int kn_llm_vl_forward(kn_ctx *ctx, const kn_llm_vl *m, kn_arena *arena, const kn_tensor *ids,
                      const kn_tensor *const *images, int n, const kn_llm_outputs *out, kn_debug_fn debug,
                      void *debug_user);

/* What a family whose encoder sees images adds to its spec. */
typedef struct kn_llm_clip_images {
    const kn_llm_vision *vision;
    kn_qwen_family template; /* for prompts with images and no template of the caller's */
    int32_t image_pad;
    int mrope[3];
} kn_llm_clip_images;

/* kn_llm_clip_load plus the vision tower from the same file; the clip gets
 * an encode_images (pipelines/family.h). */
int kn_llm_clip_load_images(kn_clip **out, const kn_llm_clip_spec *spec, const kn_llm_clip_images *images,
                            const kn_st_file *f, const char *tokenizer_dir, kn_err *err);

#endif
