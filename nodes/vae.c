/* VAEDecode and VAEEncode with the Wan 2.1 VAE (single frames).
 *
 * IMAGE is channels-last [B, H, W, C] in [0, 1]; the VAE works on
 * [B, C, 1, H, W] in [-1, 1]. Decode: clamp((y + 1) / 2, 0, 1). Encode: crop
 * to multiples of 8 (centred), drop channels past the VAE's inputs, 2x - 1;
 * the latent is the raw VAE latent (no process_in). */
#include <stdlib.h>
#include <string.h>

#include "nodes/node.h"

/* [B, C, 1, H, W] F32 in [-1, 1] -> IMAGE [B, H, W, C] clamp((y + 1) / 2, 0, 1). */
static void to_image(const kn_tensor *y, kn_tensor *img) {
    int64_t B = y->ne[0], C = y->ne[1], HW = y->ne[3] * y->ne[4];
    const float *s = y->data;
    float *d = img->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) {
                float v = (s[(b * C + c) * HW + p] + 1.0f) / 2.0f;
                d[(b * HW + p) * C + c] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            }
}

static int vae_decode(kn_node_call *c) {
    kn_object *samples, *vae;
    if (kn_in_object(c, "samples", "LATENT", &samples) || kn_in_object(c, "vae", "VAE", &vae)) return c->err->code;
    const kn_tensor *z = &((const kn_latent_obj *)samples)->samples;
    const kn_wan_vae *v = ((const kn_vae_obj *)vae)->vae;
    if (z->ndim != 4 && !(z->ndim == 5 && z->ne[2] == 1))
        return kn_node_fail(c, "samples", KN_ERR_UNSUPPORTED, "only single-frame latents [B, C, (1,) h, w] decode");
    kn_tensor z5 = *z; /* a 4-D latent is one frame */
    int64_t ne5[5] = {z->ne[0], z->ne[1], 1, z->ne[z->ndim - 2], z->ne[z->ndim - 1]};
    if (kn_tensor_reshape(&z5, z, 5, ne5, c->err)) return kn_node_fail(c, "samples", c->err->code, "%s", c->err->msg);
    int64_t ne[5];
    if (kn_wan_vae_image_shape(v, &z5, ne, c->err)) return kn_node_fail(c, "samples", c->err->code, "%s", c->err->msg);
    kn_tensor y = {0};
    kn_image_obj *img = kn_image_new("IMAGE");
    int rc = img ? kn_tensor_new(&y, KN_F32, KN_DEV_CPU, 5, ne, c->err)
                 : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (!rc && kn_wan_vae_decode(c->env->ctx, v, &y, &z5)) rc = kn_node_fail(c, NULL, c->env->ctx->err.code, "%s", c->env->ctx->err.msg);
    int64_t ine[4] = {ne[0], ne[3], ne[4], ne[1]};
    if (!rc) rc = kn_tensor_new(&img->t, KN_F32, KN_DEV_CPU, 4, ine, c->err);
    if (!rc) to_image(&y, &img->t);
    kn_tensor_free(&y);
    if (rc) {
        if (img) kn_object_release(&img->base);
        return rc;
    }
    kn_out_object(c, 0, &img->base);
    return KN_OK;
}

static int vae_encode(kn_node_call *c) {
    kn_object *pixels, *vae;
    if (kn_in_object(c, "pixels", "IMAGE", &pixels) || kn_in_object(c, "vae", "VAE", &vae)) return c->err->code;
    const kn_tensor *im = &((const kn_image_obj *)pixels)->t;
    const kn_wan_vae *v = ((const kn_vae_obj *)vae)->vae;
    /* a Wan VAE encodes an image batch as the frames of one video; Kiln's VAE runs single frames */
    if (im->ndim != 4 || im->ne[0] != 1)
        return kn_node_fail(c, "pixels", KN_ERR_UNSUPPORTED, "only a single image [1, H, W, C] encodes");
    int64_t H = im->ne[1], W = im->ne[2], C = im->ne[3];
    int64_t h = H / 8 * 8, w = W / 8 * 8, y0 = (H % 8) / 2, x0 = (W % 8) / 2;
    int64_t vc = kn_wan_vae_get_config(v)->image_channels;
    if (h < 8 || w < 8 || C < vc)
        return kn_node_fail(c, "pixels", KN_ERR_SHAPE, "image %lldx%lld with %lld channels is too small to encode",
                            (long long)W, (long long)H, (long long)C);
    int64_t ne[5] = {1, vc, 1, h, w};
    kn_tensor x = {0};
    kn_latent_obj *lat = kn_latent_new();
    int rc = lat ? kn_tensor_new(&x, KN_F32, KN_DEV_CPU, 5, ne, c->err)
                 : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (!rc) {
        const float *s = im->data;
        float *d = x.data;
        for (int64_t ch = 0; ch < vc; ch++)
            for (int64_t yy = 0; yy < h; yy++)
                for (int64_t xx = 0; xx < w; xx++)
                    d[(ch * h + yy) * w + xx] = s[((yy + y0) * W + xx + x0) * C + ch] * 2.0f - 1.0f;
    }
    int64_t lne[5];
    if (!rc && kn_wan_vae_latent_shape(v, &x, lne, c->err)) rc = kn_node_fail(c, "pixels", c->err->code, "%s", c->err->msg);
    if (!rc) rc = kn_tensor_new(&lat->samples, KN_F32, KN_DEV_CPU, 5, lne, c->err);
    if (!rc && kn_wan_vae_encode(c->env->ctx, v, &lat->samples, &x))
        rc = kn_node_fail(c, NULL, c->env->ctx->err.code, "%s", c->env->ctx->err.msg);
    kn_tensor_free(&x);
    if (rc) {
        if (lat) kn_object_release(&lat->base);
        return rc;
    }
    kn_out_object(c, 0, &lat->base);
    return KN_OK;
}

const kn_node_def kn_nodes_vae[] = {
    {"VAEDecode", vae_decode},
    {"VAEEncode", vae_encode},
    {NULL, NULL},
};
