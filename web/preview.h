/* Latent previews and progress text as ComfyUI sends them over /ws
 * (notes/comfyui-api.md §4.4): binary frames of a big-endian uint32 event
 * type and its payload.
 *
 * Contract:
 *  - kn_preview_method_parse: ComfyUI's --preview-method values none, auto,
 *    latent2rgb, taesd. Kiln has no TAESD decoders, so auto and taesd are
 *    latent2rgb, its cheap projection.
 *  - kn_preview_frame: a PREVIEW_IMAGE frame (type 1, image format 1 =
 *    JPEG, quality 95 as ComfyUI) of the sampler's current prediction
 *    `denoised` (model latent space, [B, C, h, w] or [B, C, 1, h, w], first
 *    batch entry and frame) projected to RGB with the family's
 *    latent_rgb_factors and bias (ComfyUI's comfy/latent_formats.py;
 *    Latent2RGBPreviewer: rgb = x . F + b, pixel = clamp((rgb + 1) / 2) * 255),
 *    at latent resolution, subsampled to fit max_size. KN_ERR_UNSUPPORTED for
 *    a latent format without factors. *frame is malloc'd.
 *  - kn_progress_text_frame: a TEXT frame (type 3): uint32 length of the
 *    node id, the id, then the UTF-8 text. */
#ifndef KN_WEB_PREVIEW_H
#define KN_WEB_PREVIEW_H

#include <stddef.h>

#include "kernels/error.h"
#include "kernels/tensor.h"

struct kn_latent_format;

typedef enum kn_preview_method { KN_PREVIEW_NONE = 0, KN_PREVIEW_LATENT2RGB } kn_preview_method;

int kn_preview_method_parse(const char *s, kn_preview_method *out);

#define KN_PREVIEW_MAX_SIZE 512

int kn_preview_frame(const kn_tensor *denoised, const struct kn_latent_format *fmt, int max_size, unsigned char **frame,
                     size_t *len, kn_err *err);
int kn_progress_text_frame(const char *node_id, const char *text, unsigned char **frame, size_t *len, kn_err *err);

#endif
