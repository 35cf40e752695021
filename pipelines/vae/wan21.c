/* Wan 2.1 VAE encode and decode: see wan21.h for the contract. */
#include "pipelines/vae/wan21.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/vae/blocks.h"

/* Family constants: ComfyUI's loader builds every Wan 2.1 VAE with these. */
static const int wan_dim_mult[] = {1, 2, 4, 4};
#define WAN_STAGES ((int)(sizeof wan_dim_mult / sizeof wan_dim_mult[0]))
#define WAN_RES_BLOCKS 2
#define WAN_SPATIAL_SCALE 8 /* 2^(stages - 1): one 2x resampling between stages */
#define WAN_RMS_EPS 1e-12f  /* F.normalize's default */

/* ---- model ------------------------------------------------------------------- */

/* The encoder ends with the posterior-mean rows of conv1 (the log-variance
 * rows are unused); the decoder starts with conv2 on the latent. */
struct kn_wan_vae {
    kn_wan_vae_config cfg;
    kn_vae_coder encoder, decoder;
};

/* ---- loading ----------------------------------------------------------------- */

typedef struct wan_loader {
    kn_vae_loader ld;
    kn_vae_coder *coder;
    const char *group; /* "encoder.downsamples", "decoder.middle", ... */
    int index;         /* next layer index in the group */
} wan_loader;

/* RMS_norm gamma: [C, 1, 1, 1] for volumes, [C, 1, 1] for images (attention). */
static int load_gamma(wan_loader *wl, kn_vae_norm *n, const char *prefix, int64_t c, int images) {
    n->groups = 0;
    n->eps = WAN_RMS_EPS;
    return kn_vae_load_tensor(&wl->ld, &n->w, images ? 3 : 4, (int64_t[]){c, 1, 1, 1}, "%s.gamma", prefix);
}

static int next_layer(wan_loader *wl, kn_vae_layer_kind kind, kn_vae_layer **out) {
    return kn_vae_add_layer(wl->coder, kind, out, wl->ld.err, "%s.%d", wl->group, wl->index++);
}

/* A layer of a conv named `name`; a 1x1 conv (k 1) has no padding. */
static int add_conv(wan_loader *wl, const char *name, int64_t out, int64_t in, int64_t k, int silu) {
    kn_vae_layer *l = NULL;
    KN_TRY(kn_vae_add_layer(wl->coder, KN_VAE_CONV, &l, wl->ld.err, "%s", name));
    l->silu = silu;
    return kn_vae_load_conv(&wl->ld, &l->conv, name, out, in, k, 1, (int)(k / 2));
}

static int add_residual(wan_loader *wl, int64_t in, int64_t out) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(next_layer(wl, KN_VAE_RESIDUAL, &l));
    kn_vae_residual *r = &l->res;
    snprintf(p, sizeof p, "%s.residual.0", l->name);
    KN_TRY(load_gamma(wl, &r->norm1, p, in, 0));
    snprintf(p, sizeof p, "%s.residual.2", l->name);
    KN_TRY(kn_vae_load_conv(&wl->ld, &r->conv1, p, out, in, 3, 1, 1));
    snprintf(p, sizeof p, "%s.residual.3", l->name);
    KN_TRY(load_gamma(wl, &r->norm2, p, out, 0));
    snprintf(p, sizeof p, "%s.residual.6", l->name);
    KN_TRY(kn_vae_load_conv(&wl->ld, &r->conv2, p, out, out, 3, 1, 1));
    if (in == out) return KN_OK;
    snprintf(p, sizeof p, "%s.shortcut", l->name);
    return kn_vae_load_conv(&wl->ld, &r->shortcut, p, out, in, 1, 1, 0);
}

static int add_attention(wan_loader *wl, int64_t ch) {
    char p[96];
    kn_vae_layer *l = NULL;
    kn_tensor qkv_w, qkv_b;
    KN_TRY(next_layer(wl, KN_VAE_ATTENTION, &l));
    kn_vae_attention *a = &l->attn;
    snprintf(p, sizeof p, "%s.norm", l->name);
    KN_TRY(load_gamma(wl, &a->norm, p, ch, 1));
    snprintf(p, sizeof p, "%s.to_qkv", l->name);
    KN_TRY(kn_vae_load_1x1(&wl->ld, &qkv_w, &qkv_b, p, 3 * ch, ch));
    snprintf(p, sizeof p, "%s.proj", l->name);
    KN_TRY(kn_vae_load_1x1(&wl->ld, &a->proj_w, &a->proj_b, p, ch, ch));
    kn_tensor *ws[3] = {&a->q_w, &a->k_w, &a->v_w}, *bs[3] = {&a->q_b, &a->k_b, &a->v_b};
    for (int i = 0; i < 3; i++) {
        KN_TRY(kn_tensor_slice(ws[i], &qkv_w, 0, i * ch, ch, wl->ld.err));
        KN_TRY(kn_tensor_slice(bs[i], &qkv_b, 0, i * ch, ch, wl->ld.err));
    }
    return KN_OK;
}

/* Downsample keeps the channels; upsample halves them. Resample.resample.1 is
 * the 2D conv after the pad or upsampling; the temporal convs (time_conv) of
 * 3D resamples only act across frames and are not loaded. */
static int add_resample(wan_loader *wl, kn_vae_layer_kind kind, int64_t ch) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(next_layer(wl, kind, &l));
    snprintf(p, sizeof p, "%s.resample.1", l->name);
    return kn_vae_load_conv(&wl->ld, &l->conv, p, kind == KN_VAE_UPSAMPLE ? ch / 2 : ch, ch, 3, 0, 0);
}

static int add_middle(wan_loader *wl, const char *group, int64_t ch) {
    wl->group = group;
    wl->index = 0;
    KN_TRY(add_residual(wl, ch, ch));
    KN_TRY(add_attention(wl, ch));
    return add_residual(wl, ch, ch);
}

/* head.0 RMS norm, head.1 SiLU, head.2 conv. */
static int add_head(wan_loader *wl, const char *coder, int64_t in, int64_t out) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(kn_vae_add_layer(wl->coder, KN_VAE_NORM, &l, wl->ld.err, "%s.head.0", coder));
    KN_TRY(load_gamma(wl, &l->norm, l->name, in, 0));
    snprintf(p, sizeof p, "%s.head.2", coder);
    return add_conv(wl, p, out, in, 3, 1);
}

/* Encoder3d: conv1, per stage residual blocks then a 2x downsample (not after
 * the last), middle (residual, attention, residual), head to 2 * z_dim; then
 * the mean rows of the model's conv1. */
static int load_encoder(wan_loader *wl, const kn_wan_vae_config *cfg, const kn_vae_conv *moments) {
    int64_t ch = cfg->dim;
    KN_TRY(add_conv(wl, "encoder.conv1", ch, cfg->image_channels, 3, 0));
    wl->group = "encoder.downsamples";
    wl->index = 0;
    for (int s = 0; s < WAN_STAGES; s++) {
        int64_t out = (int64_t)cfg->dim * wan_dim_mult[s];
        for (int r = 0; r < WAN_RES_BLOCKS; r++, ch = out) KN_TRY(add_residual(wl, ch, out));
        if (s != WAN_STAGES - 1) KN_TRY(add_resample(wl, KN_VAE_DOWNSAMPLE, ch));
    }
    KN_TRY(add_middle(wl, "encoder.middle", ch));
    KN_TRY(add_head(wl, "encoder", ch, 2 * (int64_t)cfg->z_dim));
    kn_vae_layer *l = NULL;
    KN_TRY(kn_vae_add_layer(wl->coder, KN_VAE_CONV, &l, wl->ld.err, "conv1"));
    l->conv.pad = 0;
    KN_TRY(kn_tensor_slice(&l->conv.w, &moments->w, 0, 0, cfg->z_dim, wl->ld.err));
    return kn_tensor_slice(&l->conv.b, &moments->b, 0, 0, cfg->z_dim, wl->ld.err);
}

/* conv2 on the latent, then Decoder3d mirrors the encoder: conv1, middle, per
 * stage one more residual block and a 2x upsample that halves the channels,
 * head to image channels. */
static int load_decoder(wan_loader *wl, const kn_wan_vae_config *cfg) {
    int64_t ch = (int64_t)cfg->dim * wan_dim_mult[WAN_STAGES - 1];
    KN_TRY(add_conv(wl, "conv2", cfg->z_dim, cfg->z_dim, 1, 0));
    KN_TRY(add_conv(wl, "decoder.conv1", ch, cfg->z_dim, 3, 0));
    KN_TRY(add_middle(wl, "decoder.middle", ch));
    wl->group = "decoder.upsamples";
    wl->index = 0;
    for (int s = 0; s < WAN_STAGES; s++) {
        int64_t out = (int64_t)cfg->dim * wan_dim_mult[WAN_STAGES - 1 - s];
        for (int r = 0; r < WAN_RES_BLOCKS + 1; r++, ch = out) KN_TRY(add_residual(wl, ch, out));
        if (s != WAN_STAGES - 1) {
            KN_TRY(add_resample(wl, KN_VAE_UPSAMPLE, ch));
            ch /= 2;
        }
    }
    return add_head(wl, "decoder", ch, cfg->out_channels);
}

/* Size of dimension d of a named tensor. */
static int dim_of(const kn_st_file *f, const char *name, int d, int *out, kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_st_get(f, name, &t, err));
    if (d >= t.ndim || t.ne[d] < 1 || t.ne[d] > (1 << 20))
        return kn_fail(err, KN_ERR_SHAPE, "%s: '%s' has no usable dimension %d", kn_st_path(f), name, d);
    *out = (int)t.ne[d];
    return KN_OK;
}

static int load_model(kn_wan_vae *m, const kn_st_file *f, kn_err *err) {
    kn_wan_vae_config *cfg = &m->cfg;
    KN_TRY(dim_of(f, "decoder.head.0.gamma", 0, &cfg->dim, err));
    KN_TRY(dim_of(f, "conv2.weight", 0, &cfg->z_dim, err));
    KN_TRY(dim_of(f, "encoder.conv1.weight", 1, &cfg->image_channels, err));
    KN_TRY(dim_of(f, "decoder.head.2.weight", 0, &cfg->out_channels, err));
    wan_loader wl = {{f, err}, &m->encoder, NULL, 0};
    kn_vae_conv moments;
    KN_TRY(kn_vae_load_conv(&wl.ld, &moments, "conv1", 2 * (int64_t)cfg->z_dim, 2 * (int64_t)cfg->z_dim, 1, 1, 0));
    KN_TRY(load_encoder(&wl, cfg, &moments));
    wl.coder = &m->decoder;
    return load_decoder(&wl, cfg);
}

int kn_wan_vae_load(kn_wan_vae **out, const kn_st_file *f, kn_err *err) {
    kn_wan_vae *m = calloc(1, sizeof *m);
    *out = NULL;
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "wan_vae: out of memory");
    if (load_model(m, f, err)) {
        free(m);
        return kn_err_wrap(err, "wan_vae");
    }
    *out = m;
    return KN_OK;
}

void kn_wan_vae_free(kn_wan_vae *vae) { free(vae); }

const kn_wan_vae_config *kn_wan_vae_get_config(const kn_wan_vae *vae) { return &vae->cfg; }

/* ---- shapes ------------------------------------------------------------------ */

/* [B, channels, 1, H, W] F32 with H and W at least `min_hw`. */
static int check_frames(const kn_tensor *t, const char *what, int64_t channels, int64_t min_hw, kn_err *err) {
    char d[96];
    if (kn_tensor_expect(t, what, 5, (int64_t[]){-1, channels, -1, -1, -1}, err)) return kn_err_wrap(err, "wan_vae");
    if (t->ne[2] != 1)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "wan_vae: %s %s has %lld frames; only single images (T = 1) are "
                       "supported", what, kn_tensor_desc(t, d, sizeof d), (long long)t->ne[2]);
    if (t->ne[0] < 1 || t->ne[3] < min_hw || t->ne[4] < min_hw)
        return kn_fail(err, KN_ERR_SHAPE, "wan_vae: %s %s is smaller than %lld x %lld", what,
                       kn_tensor_desc(t, d, sizeof d), (long long)min_hw, (long long)min_hw);
    return KN_OK;
}

int kn_wan_vae_latent_shape(const kn_wan_vae *vae, const kn_tensor *image, int64_t ne[5], kn_err *err) {
    KN_TRY(check_frames(image, "image", vae->cfg.image_channels, WAN_SPATIAL_SCALE, err));
    /* each downsample maps n to n / 2 */
    int64_t shape[5] = {image->ne[0], vae->cfg.z_dim, 1, image->ne[3] / WAN_SPATIAL_SCALE,
                        image->ne[4] / WAN_SPATIAL_SCALE};
    memcpy(ne, shape, sizeof shape);
    return KN_OK;
}

int kn_wan_vae_image_shape(const kn_wan_vae *vae, const kn_tensor *latent, int64_t ne[5], kn_err *err) {
    KN_TRY(check_frames(latent, "latent", vae->cfg.z_dim, 1, err));
    int64_t shape[5] = {latent->ne[0], vae->cfg.out_channels, 1, latent->ne[3] * WAN_SPATIAL_SCALE,
                        latent->ne[4] * WAN_SPATIAL_SCALE};
    memcpy(ne, shape, sizeof shape);
    return KN_OK;
}

/* ---- forward ----------------------------------------------------------------- */

/* The single frame [B, C, H, W] of a [B, C, 1, H, W] volume (same memory). */
static int frame_of(const kn_tensor *t, kn_tensor *f, kn_err *err) {
    return kn_tensor_reshape(f, t, 4, (int64_t[]){t->ne[0], t->ne[1], t->ne[3], t->ne[4]}, err);
}

/* out = coder(in), both single-frame volumes of checked shapes. */
static int run_coder(kn_ctx *ctx, const kn_vae_coder *c, kn_tensor *out, const kn_tensor *in) {
    kn_tensor x, y;
    KN_TRY(frame_of(in, &x, &ctx->err));
    KN_TRY(frame_of(out, &y, &ctx->err));
    kn_vae_run r;
    kn_vae_run_begin(&r, ctx, "wan_vae", &x);
    int rc = kn_vae_coder_forward(&r, c);
    if (!rc) rc = kn_tensor_copy(&y, &r.x, &ctx->err);
    kn_vae_run_end(&r);
    return rc;
}

int kn_wan_vae_encode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *latent_mean, const kn_tensor *image) {
    int64_t ne[5];
    KN_TRY(kn_wan_vae_latent_shape(vae, image, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(latent_mean, "wan_vae latent_mean", 5, ne, &ctx->err));
    return run_coder(ctx, &vae->encoder, latent_mean, image);
}

int kn_wan_vae_decode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *image, const kn_tensor *latent) {
    int64_t ne[5];
    KN_TRY(kn_wan_vae_image_shape(vae, latent, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(image, "wan_vae image", 5, ne, &ctx->err));
    return run_coder(ctx, &vae->decoder, image, latent);
}

/* ---- the VAE family ---------------------------------------------------------- */

typedef struct wan21_model {
    kn_vae base;
    kn_wan_vae *vae;
} wan21_model;

static void family_free(kn_vae *v) {
    wan21_model *m = (wan21_model *)v;
    if (!m) return;
    kn_wan_vae_free(m->vae);
    free(m);
}

static int family_load(kn_vae **out, const kn_st_file *f, kn_err *err) {
    wan21_model *m = calloc(1, sizeof *m);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "out of memory");
    if (kn_wan_vae_load(&m->vae, f, err)) {
        free(m);
        return err->code;
    }
    const kn_wan_vae_config *c = kn_wan_vae_get_config(m->vae);
    /* wan21.h measures ~3 dim-wide full-resolution maps; 2dim-wide ones at half resolution add a quarter each */
    m->base = (kn_vae){&kn_wan21_vae, c->image_channels, c->z_dim, 5, 4 * 2 * (int64_t)c->dim};
    *out = &m->base;
    return KN_OK;
}

/* A 4-D image or latent as the single-frame volume [B, C, 1, H, W] the VAE runs on (same memory). */
static int as_volume(const kn_tensor *t, kn_tensor *v, kn_err *err) {
    if (t->ndim == 5) {
        *v = *t;
        return KN_OK;
    }
    if (t->ndim != 4) return kn_fail(err, KN_ERR_SHAPE, "wan21_vae: expected a 4-D or 5-D tensor, got %d dims", t->ndim);
    return kn_tensor_reshape(v, t, 5, (int64_t[]){t->ne[0], t->ne[1], 1, t->ne[2], t->ne[3]}, err);
}

static int family_latent_shape(const kn_vae *v, const kn_tensor *image, int64_t *ne, int *ndim, kn_err *err) {
    kn_tensor x;
    KN_TRY(as_volume(image, &x, err));
    *ndim = 5;
    return kn_wan_vae_latent_shape(((const wan21_model *)v)->vae, &x, ne, err);
}

static int family_image_shape(const kn_vae *v, const kn_tensor *latent, int64_t ne[4], kn_err *err) {
    kn_tensor z;
    int64_t ne5[5];
    KN_TRY(as_volume(latent, &z, err));
    KN_TRY(kn_wan_vae_image_shape(((const wan21_model *)v)->vae, &z, ne5, err));
    if (ne5[2] != 1) return kn_fail(err, KN_ERR_UNSUPPORTED, "wan21_vae: only single-frame latents decode to images");
    int64_t out[4] = {ne5[0], ne5[1], ne5[3], ne5[4]};
    memcpy(ne, out, sizeof out);
    return KN_OK;
}

static int family_encode(kn_ctx *ctx, const kn_vae *v, kn_tensor *latent, const kn_tensor *image) {
    kn_tensor x;
    KN_TRY(as_volume(image, &x, &ctx->err));
    return kn_wan_vae_encode(ctx, ((const wan21_model *)v)->vae, latent, &x);
}

static int family_decode(kn_ctx *ctx, const kn_vae *v, kn_tensor *image, const kn_tensor *latent) {
    kn_tensor z, y;
    KN_TRY(as_volume(latent, &z, &ctx->err));
    KN_TRY(as_volume(image, &y, &ctx->err));
    return kn_wan_vae_decode(ctx, ((const wan21_model *)v)->vae, &y, &z);
}

const kn_vae_family kn_wan21_vae = {"wan21",           "Wan 2.1 VAE",      family_load,   family_free,
                                    family_latent_shape, family_image_shape, family_encode, family_decode};
