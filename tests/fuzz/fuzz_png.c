/* libFuzzer target for image loading from memory (kn_image_load_mem), which
 * routes PNG to libpng and everything else to stb_image, and for the PNG
 * tEXt reader.
 *
 * Any input must either be refused with a message and no tensors, or yield an
 * image [N, H, W, 3] and mask [N, H, W] within the pixel limit whose values
 * lie in [0, 1]; every element is read so ASan sees a short allocation. */
#include <stdint.h>
#include <stdlib.h>

#include "nodes/image_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kn_tensor img, mask;
    kn_err err;
    kn_err_clear(&err);
    if (kn_image_load_mem(data, size, "fuzz", &img, &mask, &err) != KN_OK) {
        if (img.data || mask.data || err.msg[0] == '\0') abort(); /* a refusal must say why and leave nothing */
    } else {
        int64_t n = img.ne[0], h = img.ne[1], w = img.ne[2];
        if (img.ndim != 4 || img.ne[3] != 3 || mask.ndim != 3 || mask.ne[0] != n || mask.ne[1] != h ||
            mask.ne[2] != w || n * h * w > KN_IMAGE_MAX_PIXELS)
            abort();
        const float *p = img.data, *m = mask.data;
        for (int64_t i = 0; i < n * h * w * 3; i++)
            if (!(p[i] >= 0.0f && p[i] <= 1.0f)) abort();
        for (int64_t i = 0; i < n * h * w; i++)
            if (!(m[i] >= 0.0f && m[i] <= 1.0f)) abort();
    }
    kn_tensor_free(&img);
    kn_tensor_free(&mask);

    kn_png_text *texts;
    int ntexts;
    if (kn_png_read_text_mem(data, size, "fuzz", &texts, &ntexts, &err) == KN_OK) {
        for (int i = 0; i < ntexts; i++)
            if (kn_png_text_get(texts, ntexts, texts[i].key) == NULL) abort();
        free(texts);
    }
    return 0;
}
