/* Z-Image's text encoder: Qwen3-4B (pipelines/common/llm.h: the same code as
 * Qwen2.5-VL with q/k norms and no q/k/v biases). Z-Image conditions on the
 * output of the second-to-last layer without the final norm, over the whole
 * templated sequence (comfy/text_encoders/z_image.py): ComfyUI's
 * "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n" template,
 * tokenized with the Qwen2 BPE (weights off), nothing dropped; the attention
 * mask (all ones for one prompt) is not passed on. CLIPLoader with a Qwen3-4B
 * file and type lumina2 (or any type but flux/flux2) gives this encoder. */
#ifndef KN_Z_IMAGE_TEXT_H
#define KN_Z_IMAGE_TEXT_H

#include "pipelines/common/llm.h"
#include "pipelines/family.h"

extern const kn_llm_consts kn_qwen3_4b; /* 32 heads x 128, theta 1e6, eps 1e-6, q/k norms */
extern const kn_clip_family kn_z_image_clip;

/* The hidden layer Z-Image conditions on (ComfyUI layer_idx -2). */
#define KN_Z_IMAGE_TEXT_LAYER (-2)

#endif
