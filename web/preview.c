/* Latent previews: see web/preview.h. */
#include "web/preview.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/sampling/samplers.h"
#include "web/images.h"

/* ComfyUI's latent_rgb_factors ([channel][R, G, B]) and latent_rgb_factors_bias. */
static const float flux_factors[16][3] = {
    {-0.0346f, 0.0244f, 0.0681f},  {0.0034f, 0.0210f, 0.0687f},   {0.0275f, -0.0668f, -0.0433f},
    {-0.0174f, 0.0160f, 0.0617f},  {0.0859f, 0.0721f, 0.0329f},   {0.0004f, 0.0383f, 0.0115f},
    {0.0405f, 0.0861f, 0.0915f},   {-0.0236f, -0.0185f, -0.0259f}, {-0.0245f, 0.0250f, 0.1180f},
    {0.1008f, 0.0755f, -0.0421f},  {-0.0515f, 0.0201f, 0.0011f},  {0.0428f, -0.0012f, -0.0036f},
    {0.0817f, 0.0765f, 0.0749f},   {-0.1264f, -0.0522f, -0.1103f}, {-0.0280f, -0.0881f, -0.0499f},
    {-0.1262f, -0.0982f, -0.0778f}};
static const float flux_bias[3] = {-0.0329f, -0.0718f, -0.0851f};
static const float wan21_factors[16][3] = {
    {-0.1299f, -0.1692f, 0.2932f}, {0.0671f, 0.0406f, 0.0442f},   {0.3568f, 0.2548f, 0.1747f},
    {0.0372f, 0.2344f, 0.1420f},   {0.0313f, 0.0189f, -0.0328f},  {0.0296f, -0.0956f, -0.0665f},
    {-0.3477f, -0.4059f, -0.2925f}, {0.0166f, 0.1902f, 0.1975f},  {-0.0412f, 0.0267f, -0.1364f},
    {-0.1293f, 0.0740f, 0.1636f},  {0.0680f, 0.3019f, 0.1128f},   {0.0032f, 0.0581f, 0.0639f},
    {-0.1251f, 0.0927f, 0.1699f},  {0.0060f, -0.0633f, 0.0005f},  {0.3477f, 0.2275f, 0.2950f},
    {0.1984f, 0.0913f, 0.1861f}};
static const float wan21_bias[3] = {-0.1835f, -0.0868f, -0.3360f};

int kn_preview_method_parse(const char *s, kn_preview_method *out) {
    if (!strcmp(s, "none")) *out = KN_PREVIEW_NONE;
    else if (!strcmp(s, "auto") || !strcmp(s, "latent2rgb") || !strcmp(s, "taesd")) *out = KN_PREVIEW_LATENT2RGB;
    else return KN_ERR_INVALID;
    return KN_OK;
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

int kn_preview_frame(const kn_tensor *x, const struct kn_latent_format *fmt, int max_size, unsigned char **frame,
                     size_t *len, kn_err *err) {
    *frame = NULL;
    *len = 0;
    const float(*F)[3] = fmt == &kn_latent_flux ? flux_factors : fmt == &kn_latent_wan21 ? wan21_factors : NULL;
    const float *bias = fmt == &kn_latent_flux ? flux_bias : wan21_bias;
    if (!F) return kn_fail(err, KN_ERR_UNSUPPORTED, "no latent preview for the %s latent format", fmt->name);
    if (x->dtype != KN_F32 || (x->ndim != 4 && x->ndim != 5) || x->ne[1] != 16)
        return kn_fail(err, KN_ERR_SHAPE, "latent preview: expected a [B, 16, (1,) h, w] f32 latent");
    int64_t h = x->ne[x->ndim - 2], w = x->ne[x->ndim - 1], plane = h * w;
    int64_t step = 1;
    while ((h + step - 1) / step > max_size || (w + step - 1) / step > max_size) step++;
    int oh = (int)((h + step - 1) / step), ow = (int)((w + step - 1) / step);
    unsigned char *rgb = malloc((size_t)oh * ow * 3);
    if (!rgb) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    const float *d = x->data; /* batch 0, frame 0: channel c's plane starts at c * frames * plane */
    int64_t cstride = x->ndim == 5 ? x->ne[2] * plane : plane;
    for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
            int64_t at = i * step * w + j * step;
            for (int k = 0; k < 3; k++) {
                float v = bias[k];
                for (int c = 0; c < 16; c++) v += d[c * cstride + at] * F[c][k];
                v = (v + 1.0f) * 0.5f;
                v = v != v ? 0.0f : v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
                rgb[((size_t)i * ow + j) * 3 + k] = (unsigned char)(v * 255.0f);
            }
        }
    unsigned char *jpeg = NULL;
    size_t jlen = 0;
    int rc = kn_jpeg_encode(rgb, ow, oh, 95, &jpeg, &jlen);
    free(rgb);
    if (rc) return kn_fail(err, KN_ERR_NOMEM, "latent preview: JPEG encoding failed");
    unsigned char *f = malloc(jlen + 8);
    if (!f) {
        free(jpeg);
        return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    }
    put_u32(f, 1); /* PREVIEW_IMAGE */
    put_u32(f + 4, 1); /* JPEG */
    memcpy(f + 8, jpeg, jlen);
    free(jpeg);
    *frame = f;
    *len = jlen + 8;
    return KN_OK;
}

int kn_progress_text_frame(const char *node_id, const char *text, unsigned char **frame, size_t *len, kn_err *err) {
    size_t nl = strlen(node_id), tl = strlen(text);
    unsigned char *f = malloc(8 + nl + tl);
    if (!f) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    put_u32(f, 3); /* TEXT */
    put_u32(f + 4, (uint32_t)nl);
    memcpy(f + 8, node_id, nl);
    memcpy(f + 8 + nl, text, tl);
    *frame = f;
    *len = 8 + nl + tl;
    return KN_OK;
}
