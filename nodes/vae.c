/* VAEDecode and VAEEncode through the VAE's family (pipelines/family.h).
 *
 * IMAGE is channels-last [B, H, W, C] in [0, 1]; VAEs take and give
 * channels-first [B, C, H, W] in [-1, 1]. Decode: ComfyUI's process_output
 * clamp((y + 1) / 2, 0, 1) (kn_image_to_unit). Encode: crop to multiples of 8
 * (centred), drop channels past the VAE's inputs, 2x - 1; the latent is the
 * raw VAE latent in the VAE's layout (no process_in). Both refuse, before
 * allocating, an image whose feature maps would exceed the memory budget
 * (kn_vae.peak_channels per pixel; nodes/model_store.h), naming the input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops_image.h"
#include "nodes/model_store.h"
#include "nodes/node.h"

/* img [B, H, W, C] = y [B, C, H, W]. */
static void channels_last(const kn_tensor *y, kn_tensor *img) {
    int64_t B = y->ne[0], C = y->ne[1], HW = y->ne[2] * y->ne[3];
    const float *s = y->data;
    float *d = img->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) d[(b * HW + p) * C + c] = s[(b * C + c) * HW + p];
}

/* The VAE's feature maps at full resolution (kn_vae.peak_channels) and the
 * image's own copies, for B images of H x W, against the memory budget. */
static int check_peak(kn_node_call *c, const char *input, const kn_vae *v, int64_t B, int64_t H, int64_t W,
                      const char *doing) {
    char what[256];
    double pixels = (double)B * (double)H * (double)W;
    snprintf(what, sizeof what, "%s %lldx%lld at batch %lld with the %s", doing, (long long)W, (long long)H,
             (long long)B, v->family->title);
    return kn_models_check_peak(c, input, 4.0 * pixels * (double)(v->peak_channels + 2 * v->image_channels), what);
}

static int vae_decode(kn_node_call *c) {
    kn_object *samples, *vae;
    if (kn_in_object(c, "samples", "LATENT", &samples) || kn_in_object(c, "vae", "VAE", &vae)) return c->err->code;
    const kn_tensor *z = &((const kn_latent_obj *)samples)->samples;
    const kn_vae *v = ((const kn_vae_obj *)vae)->vae;
    kn_ctx *ctx = c->env->ctx;
    int64_t ne[4];
    if (v->family->image_shape(v, z, ne, c->err)) return kn_node_fail(c, "samples", c->err->code, "%s", c->err->msg);
    if (check_peak(c, "samples", v, ne[0], ne[2], ne[3], "decoding")) return c->err->code;
    kn_models_use(c->env->models, &vae, 1);
    kn_tensor y = {0};
    kn_image_obj *img = kn_image_new("IMAGE");
    int rc = img ? kn_tensor_new(&y, KN_F32, KN_DEV_CPU, 4, ne, c->err)
                 : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    if (!rc && (v->family->decode(ctx, v, &y, z) || kn_image_to_unit(ctx, &y, &y)))
        rc = kn_node_fail(c, NULL, ctx->err.code, "%s", ctx->err.msg);
    if (!rc) rc = kn_tensor_new(&img->t, KN_F32, KN_DEV_CPU, 4, (int64_t[]){ne[0], ne[2], ne[3], ne[1]}, c->err);
    if (!rc) channels_last(&y, &img->t);
    kn_tensor_free(&y);
    if (rc) {
        if (img) kn_object_release(&img->base);
        return rc;
    }
    kn_out_object(c, 0, &img->base);
    return KN_OK;
}

int kn_vae_encode_pixels(kn_node_call *c, const char *input, const kn_vae_obj *vae, const kn_tensor *im,
                         kn_latent_obj **out) {
    const kn_vae *v = vae->vae;
    /* a video VAE encodes an image batch as the frames of one video; Kiln runs it on single frames */
    if (im->ndim != 4 || (v->latent_ndim == 5 && im->ne[0] != 1))
        return kn_node_fail(c, input, KN_ERR_UNSUPPORTED, "%s encodes a single image [1, H, W, C]",
                            v->family->title);
    int64_t B = im->ne[0], H = im->ne[1], W = im->ne[2], C = im->ne[3];
    int64_t h = H / 8 * 8, w = W / 8 * 8, y0 = (H % 8) / 2, x0 = (W % 8) / 2;
    int64_t vc = v->image_channels;
    if (h < 8 || w < 8 || C < vc)
        return kn_node_fail(c, input, KN_ERR_SHAPE, "image %lldx%lld with %lld channels is too small to encode",
                            (long long)W, (long long)H, (long long)C);
    if (check_peak(c, input, v, B, h, w, "encoding")) return c->err->code;
    kn_models_use(c->env->models, (kn_object *const *)&vae, 1);
    kn_tensor x = {0};
    kn_latent_obj *lat = kn_latent_new();
    int rc = lat ? kn_tensor_new(&x, KN_F32, KN_DEV_CPU, 4, (int64_t[]){B, vc, h, w}, c->err)
                 : kn_node_fail(c, NULL, KN_ERR_NOMEM, "out of memory");
    for (int64_t b = 0; !rc && b < B; b++) {
        const float *s = (const float *)im->data + b * H * W * C;
        float *d = (float *)x.data + b * vc * h * w;
        for (int64_t ch = 0; ch < vc; ch++)
            for (int64_t yy = 0; yy < h; yy++)
                for (int64_t xx = 0; xx < w; xx++)
                    d[(ch * h + yy) * w + xx] = s[((yy + y0) * W + xx + x0) * C + ch] * 2.0f - 1.0f;
    }
    int64_t lne[KN_MAX_DIMS];
    int lnd = 0;
    if (!rc && v->family->latent_shape(v, &x, lne, &lnd, c->err))
        rc = kn_node_fail(c, input, c->err->code, "%s", c->err->msg);
    if (!rc) rc = kn_tensor_new(&lat->samples, KN_F32, KN_DEV_CPU, lnd, lne, c->err);
    if (!rc && v->family->encode(c->env->ctx, v, &lat->samples, &x))
        rc = kn_node_fail(c, NULL, c->env->ctx->err.code, "%s", c->env->ctx->err.msg);
    kn_tensor_free(&x);
    if (rc) {
        if (lat) kn_object_release(&lat->base);
        return rc;
    }
    *out = lat;
    return KN_OK;
}

static int vae_encode(kn_node_call *c) {
    kn_object *pixels, *vae;
    kn_latent_obj *lat;
    if (kn_in_object(c, "pixels", "IMAGE", &pixels) || kn_in_object(c, "vae", "VAE", &vae) ||
        kn_vae_encode_pixels(c, "pixels", (const kn_vae_obj *)vae, &((const kn_image_obj *)pixels)->t, &lat))
        return c->err->code;
    kn_out_object(c, 0, &lat->base);
    return KN_OK;
}

const kn_node_def kn_nodes_vae[] = {
    {"VAEDecode", vae_decode},
    {"VAEEncode", vae_encode},
    {NULL, NULL},
};
