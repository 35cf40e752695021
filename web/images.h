/* Image work behind two routes: GET /view with preview= and channel=
 * (re-encoded on the fly, notes/comfyui-api.md §5.3) and POST /upload/mask
 * (the original image with the uploaded mask's alpha, §5.4).
 *
 * Contract:
 *  - kn_view_transformed answers a /view whose file is already open (fd is
 *    closed here): preview=FMT[;Q] sends a JPEG of quality Q (default 90;
 *    Kiln has no WebP encoder, so "webp" is answered as JPEG too, which every
 *    client that displays the image accepts), channel=rgb a PNG without
 *    alpha, channel=a a PNG whose alpha is the source's (255 when it has
 *    none) and RGB 0. A file that does not decode is sent as stored.
 *  - kn_route_upload_mask takes ComfyUI's multipart fields: image (the mask:
 *    its alpha is used), original_ref (JSON {filename, subfolder, type}; the
 *    comfy-ui-client spelling originalRef is accepted too), subfolder, type,
 *    overwrite. The original is reached through web/files.h like /view; the
 *    result keeps the original's tEXt chunks and is stored as
 *    /upload/image stores (the image part's file name, "(k)" renames).
 *    Replies {"name", "subfolder", "type"}; errors are JSON.
 *  - Decoded images are capped at KN_IMAGE_MAX_PIXELS before any pixel
 *    memory is allocated. */
#ifndef KN_WEB_IMAGES_H
#define KN_WEB_IMAGES_H

#include <stddef.h>

#include "web/http.h"

int kn_view_transformed(const kn_http *h, int fd, size_t size, const char *preview, const char *channel);

/* dirs: the output, input and temp folders. */
int kn_route_upload_mask(const kn_http *h, const char *output_dir, const char *input_dir, const char *temp_dir);

/* JPEG encoding of 8-bit RGB pixels (the latent previews): *out malloc'd. */
int kn_jpeg_encode(const unsigned char *rgb, int w, int h, int quality, unsigned char **out, size_t *len);

#endif
