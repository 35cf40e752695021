/* Z-Image's text encoder: Qwen3-4B (pipelines/common/llm.h: the same code as
 * Qwen2.5-VL with q/k norms and no q/k/v biases). Z-Image conditions on the
 * output of the second-to-last layer without the final norm, over the whole
 * templated sequence (comfy/text_encoders/z_image.py). The Z-Image DiT and
 * its CLIP family come with the Z-Image issue; this is the encoder they use. */
#ifndef KN_Z_IMAGE_TEXT_H
#define KN_Z_IMAGE_TEXT_H

#include "pipelines/common/llm.h"

extern const kn_llm_consts kn_qwen3_4b; /* 32 heads x 128, theta 1e6, eps 1e-6, q/k norms */

/* The hidden layer Z-Image conditions on (ComfyUI layer_idx -2). */
#define KN_Z_IMAGE_TEXT_LAYER (-2)

#endif
