/* kn image I/O: the pixel work behind ComfyUI's image nodes (SaveImage,
 * PreviewImage, LoadImage; scaling is nodes/image_scale.h), as a plain
 * library with no node or runtime types in it.
 *
 * Contract:
 *  - IMAGE tensors are ComfyUI's: F32, CPU, contiguous [B, H, W, C] (C = 3 from
 *    the loaders), values nominally in [0, 1]. MASK tensors are F32 [B, H, W].
 *    Functions that produce tensors allocate them with kn_tensor_new; the
 *    caller releases them with kn_tensor_free (also after a failure: outputs
 *    are then zeroed descriptors, which kn_tensor_free accepts).
 *  - Pixels are quantised as ComfyUI does: u8 = (uint8)clip(255 * x, 0, 255),
 *    truncation after the clip, not rounding; NaN becomes 0.
 *  - Every input file or buffer is untrusted. Malformed, truncated or lying
 *    data (bad CRC, impossible sizes) gives KN_ERR_FORMAT (KN_ERR_IO for
 *    open/read failures, KN_ERR_UNSUPPORTED for formats not decoded here) with
 *    a message naming the file or buffer name; never a crash. Images whose
 *    decoded size would exceed KN_IMAGE_MAX_PIXELS (width * height * frames)
 *    are refused before any pixel memory is allocated.
 *  - Nothing here keeps state; all functions are safe to call from several
 *    threads at once.
 */
#ifndef KN_NODES_IMAGE_IO_H
#define KN_NODES_IMAGE_IO_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/error.h"
#include "kernels/tensor.h"

/* Upper bound on decoded pixels (all frames together): 2^26 = 8192 x 8192,
 * 768 MiB of F32 RGB. A few hundred bytes of PNG can claim this much, so the
 * cap is what one upload may cost the server, not ComfyUI's 16384^2 limit. */
#define KN_IMAGE_MAX_PIXELS ((int64_t)1 << 26)

/* ComfyUI's SaveImage and PreviewImage zlib levels. */
#define KN_PNG_COMPRESS_SAVE 4
#define KN_PNG_COMPRESS_PREVIEW 1

/* ComfyUI's np.clip(255. * x, 0, 255).astype(np.uint8): truncation after the
 * clip; NaN becomes 0. */
uint8_t kn_image_quantise(float x);
/* KN_ERR_SHAPE naming `what` unless t is a contiguous 4-D F32 CPU tensor with
 * no empty dimension. */
int kn_image_check_f32_4d(const kn_tensor *t, const char *what, kn_err *err);

/* ---- PNG writing and tEXt metadata -------------------------------------- */

/* One tEXt chunk. Keys are 1..79 Latin-1 characters (PNG's rule); values are
 * written as given (ComfyUI's "prompt" and "workflow" are JSON strings). */
typedef struct kn_png_text {
    const char *key;
    const char *value;
} kn_png_text;

/* Encode image[index] (an IMAGE [B, H, W, C], C = 3; C = 4 is written as
 * RGBA, C = 1 as gray) as an 8-bit PNG with the given tEXt chunks in order,
 * at zlib level compress_level (0..9). *out is malloc'd (free() it), *out_len
 * its size. */
int kn_png_encode(const kn_tensor *image, int64_t index, const kn_png_text *texts, int ntexts,
                  int compress_level, uint8_t **out, size_t *out_len, kn_err *err);
/* kn_png_encode written to `path` (created or truncated). */
int kn_png_write(const char *path, const kn_tensor *image, int64_t index, const kn_png_text *texts,
                 int ntexts, int compress_level, kn_err *err);

/* The tEXt chunks of a PNG (zTXt and iTXt are skipped), in file order.
 * *texts is one malloc'd block holding the array and its strings: free() it.
 * A PNG without text gives *ntexts = 0 and *texts = NULL. `name` labels the
 * buffer in error messages. */
int kn_png_read_text_mem(const void *data, size_t len, const char *name, kn_png_text **texts,
                         int *ntexts, kn_err *err);
int kn_png_read_text(const char *path, kn_png_text **texts, int *ntexts, kn_err *err);
/* Value of the first chunk called key, or NULL. */
const char *kn_png_text_get(const kn_png_text *texts, int ntexts, const char *key);

/* ---- Loading (LoadImage) ------------------------------------------------- */

/* Decode an image file as ComfyUI's LoadImage does: every frame that has the
 * first frame's size becomes one batch entry of image [N, H, W, 3]; mask
 * [N, H, W] is 1 - alpha where the source has alpha (an alpha channel or PNG
 * tRNS transparency), else zeros of the image size (the fork's rule; upstream
 * uses 64 x 64 zeros). Formats: PNG (libpng: every bit depth and colour type,
 * interlaced; 16-bit samples keep their high byte as PIL does), JPEG (with
 * EXIF orientation applied), BMP, GIF (all frames), TGA, PSD, HDR, PNM (via
 * stb_image). See image_io.c for where this departs from PIL. */
int kn_image_load(const char *path, kn_tensor *image, kn_tensor *mask, kn_err *err);
/* The same from memory (uploads, the fuzzer); `name` labels the buffer. */
int kn_image_load_mem(const void *data, size_t len, const char *name, kn_tensor *image,
                      kn_tensor *mask, kn_err *err);

#endif
