/* kn image scaling: comfy.utils.common_upscale and the size rules of
 * ImageScale and ImageScaleToTotalPixels, on IMAGE tensors and latents, as a
 * plain library with no node or runtime types in it. Tensors, allocation and
 * errors follow nodes/image_io.h's contract; targets above
 * KN_IMAGE_MAX_PIXELS are refused before anything is allocated. */
#ifndef KN_NODES_IMAGE_SCALE_H
#define KN_NODES_IMAGE_SCALE_H

#include "kernels/ops_image.h"
#include "nodes/image_io.h"

typedef enum kn_upscale_method {
    /* torch's modes are kn_resample's (kernels/ops_image.h) */
    KN_UPSCALE_NEAREST_EXACT = KN_RESAMPLE_NEAREST_EXACT,
    KN_UPSCALE_BILINEAR = KN_RESAMPLE_BILINEAR,
    KN_UPSCALE_AREA = KN_RESAMPLE_AREA,
    KN_UPSCALE_BICUBIC = KN_RESAMPLE_BICUBIC,
    KN_UPSCALE_LANCZOS,           /* PIL LANCZOS on the uint8-quantised image */
} kn_upscale_method;

typedef enum kn_upscale_crop { KN_CROP_DISABLED = 0, KN_CROP_CENTER } kn_upscale_crop;

/* ComfyUI's option strings ("nearest-exact", ..., "disabled", "center"). */
int kn_upscale_method_parse(const char *name, kn_upscale_method *out, kn_err *err);
int kn_upscale_crop_parse(const char *name, kn_upscale_crop *out, kn_err *err);

/* *out = common_upscale(image, width, height, method, crop) for an IMAGE
 * [B, H, W, C] (any C >= 1); out is allocated [B, height, width, C]. */
int kn_image_upscale(kn_tensor *out, const kn_tensor *image, int64_t width, int64_t height,
                     kn_upscale_method method, kn_upscale_crop crop, kn_err *err);
/* The same for channels-first samples [B, C, H, W] (latents); out is
 * [B, C, height, width]. */
int kn_common_upscale(kn_tensor *out, const kn_tensor *samples, int64_t width, int64_t height,
                      kn_upscale_method method, kn_upscale_crop crop, kn_err *err);

/* ImageScale's size rule for an input of in_w x in_h: width 0 -> max(1,
 * round(in_w * height / in_h)), height 0 -> likewise; both 0 leaves them 0,
 * which means "return the image unchanged". Python's round (half to even). */
void kn_image_scale_dims(int64_t in_w, int64_t in_h, int64_t *width, int64_t *height);
/* ImageScaleToTotalPixels' size: k = sqrt(megapixels * 1024 * 1024 / (in_w *
 * in_h)); width = round(in_w * k / steps) * steps, height likewise. Fails
 * (KN_ERR_INVALID) when a result would be 0 (torch's interpolate refuses it). */
int kn_image_total_pixels_dims(int64_t in_w, int64_t in_h, double megapixels, int64_t steps,
                               int64_t *width, int64_t *height, kn_err *err);

#endif
