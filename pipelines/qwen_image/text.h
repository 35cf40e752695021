/* Qwen-Image's text encoder: Qwen2.5-VL-7B's text model (pipelines/common/llm.h)
 * with the Qwen2 BPE tokenizer and ComfyUI's Qwen-Image template, and the
 * conditioning rule that drops the template (comfy/text_encoders/qwen_image.py,
 * QwenImageTEModel): CLIPTextEncode with a CLIPLoader of type qwen_image. */
#ifndef KN_QWEN_IMAGE_TEXT_H
#define KN_QWEN_IMAGE_TEXT_H

#include "pipelines/common/llm.h"
#include "pipelines/family.h"

/* Qwen-Image's chat-template token ids used by the conditioning drop rule. */
#define KN_QWEN_IM_START 151644 /* <|im_start|> */
#define KN_QWEN_TOK_USER 872    /* "user" */
#define KN_QWEN_TOK_NL 198      /* "\n" */
#define KN_QWEN_IMAGE_PAD 151655 /* <|image_pad|>: one image of an Edit prompt */

extern const kn_llm_consts kn_qwen25vl_7b; /* 28 heads x 128, theta 1e6, eps 1e-6, q/k/v biases */
extern const kn_clip_family kn_qwen_image_clip;

/* Where Qwen-Image's conditioning starts in n >= 1 template token ids
 * (ComfyUI QwenImageTEModel): the 2nd <|im_start|> (the 1st when there is one),
 * +3 when followed by "user" "\n" and more tokens. Without any <|im_start|>
 * ComfyUI's index is -1 (+3 as above), which as a Python slice keeps only the
 * last token; that is returned as n - 1. Result is in [0, n). */
int64_t kn_qwen_image_template_end(const int64_t *ids, int64_t n);

/* Qwen-Image conditioning from the encoder output: cond = hidden[:, s:] with
 * s = kn_qwen_image_template_end of ids row 0 (ComfyUI encodes one template,
 * shared by the batch), copied contiguous into `arena`. cond_mask = mask[:, s:]
 * in mask's dtype, or data NULL when mask is NULL or the slice is all ones.
 * ids I64 [B, L] (the token list, an image counting as its one placeholder),
 * hidden F32 [B, L', D] (L' > L where images were spliced in: they all come
 * after s, so the index holds), mask NULL or [B, L']. */
int kn_qwen_image_conditioning(kn_arena *arena, const kn_tensor *ids, const kn_tensor *hidden,
                               const kn_tensor *mask, kn_tensor *cond, kn_tensor *cond_mask, kn_err *err);

#endif
