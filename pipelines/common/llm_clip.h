/* kn_llm_clip: a text encoder built from a decoder LLM (pipelines/common/llm.h)
 * and the Qwen2 BPE tokenizer with a family's chat template: what Qwen-Image
 * (Qwen2.5-VL-7B) and Z-Image (Qwen3-4B) condition on. A family describes its
 * encoder with a spec and wraps these functions in its kn_clip_family. */
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
    /* The conditioning from the encoder output (ids I64 [1, L], hidden F32 [1, L, D]) into
     * `arena`: cond, and mask (data NULL when none); NULL: the whole sequence, no mask. */
    int (*condition)(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden, kn_tensor *cond,
                     kn_tensor *mask, kn_err *err);
} kn_llm_clip_spec;

/* The file's "model." weights and the tokenizer under tokenizer_dir/spec->tokenizer. */
int kn_llm_clip_load(kn_clip **out, const kn_llm_clip_spec *spec, const kn_st_file *f, const char *tokenizer_dir,
                     kn_err *err);
void kn_llm_clip_free(kn_clip *c);
/* One encoder: the first text. */
int kn_llm_clip_encode(kn_ctx *ctx, const kn_clip *c, const char *const *texts, int n, kn_text_cond *out, kn_err *err);

#endif
