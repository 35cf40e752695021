/* The KL autoencoder (Flux's ae): see kl.h for the contract. */
#include "pipelines/vae/kl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/vae/blocks.h"

#define KL_EPS 1e-6f    /* Normalize's GroupNorm eps */
#define KL_MAX_LEVELS 8 /* 2^7 compression: beyond any released KL VAE */
#define KL_MAX_RES_BLOCKS 8

struct kn_kl_vae {
    kn_vae base; /* first: the family casts back */
    kn_kl_vae_config cfg;
    int64_t width[KL_MAX_LEVELS]; /* ch * ch_mult[i] */
    kn_vae_coder encoder, decoder;
};

/* ---- loading ----------------------------------------------------------------- */

typedef struct kl_loader {
    kn_vae_loader ld;
    kn_vae_coder *coder;
    int groups;
} kl_loader;

static int add_layer(kl_loader *kl, kn_vae_layer_kind kind, kn_vae_layer **l, const char *name) {
    return kn_vae_add_layer(kl->coder, kind, l, kl->ld.err, "%s", name);
}

static int load_norm(kl_loader *kl, kn_vae_norm *n, const char *prefix, int64_t c) {
    return kn_vae_load_group_norm(&kl->ld, n, prefix, c, kl->groups, KL_EPS);
}

/* conv_in (3x3), or conv_out after norm_out when silu: SiLU, 3x3 conv. */
static int add_conv(kl_loader *kl, const char *name, int64_t out, int64_t in, int silu) {
    kn_vae_layer *l = NULL;
    KN_TRY(add_layer(kl, KN_VAE_CONV, &l, name));
    l->silu = silu;
    return kn_vae_load_conv(&kl->ld, &l->conv, name, out, in, 3, 0, 1);
}

static int add_norm(kl_loader *kl, const char *name, int64_t c) {
    kn_vae_layer *l = NULL;
    KN_TRY(add_layer(kl, KN_VAE_NORM, &l, name));
    return load_norm(kl, &l->norm, name, c);
}

/* ResnetBlock: norm1, conv1 (3x3), norm2, conv2 (3x3), nin_shortcut (1x1) when the width changes. */
static int add_residual(kl_loader *kl, const char *name, int64_t in, int64_t out) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(add_layer(kl, KN_VAE_RESIDUAL, &l, name));
    kn_vae_residual *r = &l->res;
    snprintf(p, sizeof p, "%s.norm1", l->name);
    KN_TRY(load_norm(kl, &r->norm1, p, in));
    snprintf(p, sizeof p, "%s.conv1", l->name);
    KN_TRY(kn_vae_load_conv(&kl->ld, &r->conv1, p, out, in, 3, 0, 1));
    snprintf(p, sizeof p, "%s.norm2", l->name);
    KN_TRY(load_norm(kl, &r->norm2, p, out));
    snprintf(p, sizeof p, "%s.conv2", l->name);
    KN_TRY(kn_vae_load_conv(&kl->ld, &r->conv2, p, out, out, 3, 0, 1));
    if (in == out) return KN_OK;
    snprintf(p, sizeof p, "%s.nin_shortcut", l->name);
    return kn_vae_load_conv(&kl->ld, &r->shortcut, p, out, in, 1, 0, 0);
}

/* AttnBlock: norm, then q, k, v and proj_out as 1x1 convs. */
static int add_attention(kl_loader *kl, const char *name, int64_t ch) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(add_layer(kl, KN_VAE_ATTENTION, &l, name));
    kn_vae_attention *a = &l->attn;
    snprintf(p, sizeof p, "%s.norm", l->name);
    KN_TRY(load_norm(kl, &a->norm, p, ch));
    const char *keys[4] = {"q", "k", "v", "proj_out"};
    kn_tensor *ws[4] = {&a->q_w, &a->k_w, &a->v_w, &a->proj_w}, *bs[4] = {&a->q_b, &a->k_b, &a->v_b, &a->proj_b};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s.%s", l->name, keys[i]);
        KN_TRY(kn_vae_load_1x1(&kl->ld, ws[i], bs[i], p, ch, ch));
    }
    return KN_OK;
}

/* Downsample / Upsample: the layer is <name>, its 3x3 conv <name>.conv (width kept). */
static int add_resample(kl_loader *kl, kn_vae_layer_kind kind, const char *name, int64_t ch) {
    char p[96];
    kn_vae_layer *l = NULL;
    KN_TRY(add_layer(kl, kind, &l, name));
    snprintf(p, sizeof p, "%s.conv", l->name);
    return kn_vae_load_conv(&kl->ld, &l->conv, p, ch, ch, 3, 0, 0);
}

/* mid: ResnetBlock, AttnBlock, ResnetBlock; then norm_out, SiLU, conv_out. */
static int add_mid(kl_loader *kl, const char *coder, int64_t ch) {
    char p[96];
    snprintf(p, sizeof p, "%s.mid.block_1", coder);
    KN_TRY(add_residual(kl, p, ch, ch));
    snprintf(p, sizeof p, "%s.mid.attn_1", coder);
    KN_TRY(add_attention(kl, p, ch));
    snprintf(p, sizeof p, "%s.mid.block_2", coder);
    return add_residual(kl, p, ch, ch);
}

static int add_out(kl_loader *kl, const char *coder, int64_t in, int64_t out) {
    char p[96];
    snprintf(p, sizeof p, "%s.norm_out", coder);
    KN_TRY(add_norm(kl, p, in));
    snprintf(p, sizeof p, "%s.conv_out", coder);
    return add_conv(kl, p, out, in, 1);
}

/* Encoder: conv_in; per level res_blocks ResnetBlocks to the level's width,
 * then a Downsample (not after the last level); mid; out to 2z (mean, logvar). */
static int load_encoder(kl_loader *kl, const kn_kl_vae *m) {
    const kn_kl_vae_config *cfg = &m->cfg;
    char p[96];
    int64_t ch = cfg->ch;
    KN_TRY(add_conv(kl, "encoder.conv_in", ch, cfg->image_channels, 0));
    for (int i = 0; i < cfg->levels; i++) {
        for (int b = 0; b < cfg->res_blocks; b++, ch = m->width[i]) {
            snprintf(p, sizeof p, "encoder.down.%d.block.%d", i, b);
            KN_TRY(add_residual(kl, p, ch, m->width[i]));
        }
        if (i == cfg->levels - 1) continue;
        snprintf(p, sizeof p, "encoder.down.%d.downsample", i);
        KN_TRY(add_resample(kl, KN_VAE_DOWNSAMPLE, p, ch));
    }
    KN_TRY(add_mid(kl, "encoder", ch));
    return add_out(kl, "encoder", ch, 2 * (int64_t)cfg->z_channels);
}

/* Decoder: conv_in to the last level's width; mid; levels in reverse, each
 * res_blocks + 1 ResnetBlocks then an Upsample (not after level 0); out to image channels. */
static int load_decoder(kl_loader *kl, const kn_kl_vae *m) {
    const kn_kl_vae_config *cfg = &m->cfg;
    char p[96];
    int64_t ch = m->width[cfg->levels - 1];
    KN_TRY(add_conv(kl, "decoder.conv_in", ch, cfg->z_channels, 0));
    KN_TRY(add_mid(kl, "decoder", ch));
    for (int i = cfg->levels - 1; i >= 0; i--) {
        for (int b = 0; b < cfg->res_blocks + 1; b++, ch = m->width[i]) {
            snprintf(p, sizeof p, "decoder.up.%d.block.%d", i, b);
            KN_TRY(add_residual(kl, p, ch, m->width[i]));
        }
        if (i == 0) continue;
        snprintf(p, sizeof p, "decoder.up.%d.upsample", i);
        KN_TRY(add_resample(kl, KN_VAE_UPSAMPLE, p, ch));
    }
    return add_out(kl, "decoder", ch, cfg->out_channels);
}

/* A size off a tensor's shape, as an int in [1, max]. */
static int size_of(const kn_st_file *f, const char *key, int d, int64_t max, int *out, kn_err *err) {
    int64_t v;
    KN_TRY(kn_weights_dim(f, "", key, d, &v, err));
    if (v < 1 || v > max)
        return kn_fail(err, KN_ERR_SHAPE, "%s: '%s' dimension %d is %lld, outside [1, %lld]", kn_st_path(f), key, d,
                       (long long)v, (long long)max);
    *out = (int)v;
    return KN_OK;
}

/* 1 + the largest index N of "<stem>N.*" keys, which must be in [lo, hi]. */
static int count_of(const kn_st_file *f, const char *stem, int lo, int hi, int *out, kn_err *err) {
    int64_t n;
    KN_TRY(kn_weights_count(f, "", stem, &n, err));
    if (n < lo || n > hi)
        return kn_fail(err, KN_ERR_SHAPE, "%s: %lld '%sN' entries, expected %d to %d", kn_st_path(f), (long long)n,
                       stem, lo, hi);
    *out = (int)n;
    return KN_OK;
}

static int read_config(kn_kl_vae *m, const kn_st_file *f, int groups, kn_err *err) {
    kn_kl_vae_config *cfg = &m->cfg;
    const int64_t max = 1 << 16;
    char key[96];
    int n = 0;
    if (kn_st_find(f, "post_quant_conv.weight") || kn_st_find(f, "quant_conv.weight"))
        return kn_fail(err, KN_ERR_UNSUPPORTED, "%s: has quant_conv / post_quant_conv (an AutoencoderKL); only "
                       "AutoencodingEngine files such as Flux's ae are supported", kn_st_path(f));
    KN_TRY(size_of(f, "encoder.conv_in.weight", 0, max, &cfg->ch, err));
    KN_TRY(size_of(f, "encoder.conv_in.weight", 1, max, &cfg->image_channels, err));
    KN_TRY(size_of(f, "decoder.conv_in.weight", 1, max, &cfg->z_channels, err));
    KN_TRY(size_of(f, "decoder.conv_out.weight", 0, max, &cfg->out_channels, err));
    KN_TRY(count_of(f, "encoder.down.", 1, KL_MAX_LEVELS, &cfg->levels, err));
    KN_TRY(count_of(f, "decoder.up.", cfg->levels, cfg->levels, &n, err));
    KN_TRY(count_of(f, "encoder.down.0.block.", 1, KL_MAX_RES_BLOCKS, &cfg->res_blocks, err));
    KN_TRY(count_of(f, "decoder.up.0.block.", cfg->res_blocks + 1, cfg->res_blocks + 1, &n, err));
    for (int i = 0; i < cfg->levels; i++) {
        snprintf(key, sizeof key, "encoder.down.%d.block.0.conv1.weight", i);
        KN_TRY(size_of(f, key, 0, max, &n, err));
        m->width[i] = n;
    }
    cfg->groups = groups > 0 ? groups : KN_KL_VAE_GROUPS;
    cfg->scale = 1 << (cfg->levels - 1);
    return KN_OK;
}

static int load_model(kn_kl_vae *m, const kn_st_file *f, int groups, kn_err *err) {
    KN_TRY(read_config(m, f, groups, err));
    kl_loader kl = {{f, err}, &m->encoder, m->cfg.groups};
    KN_TRY(load_encoder(&kl, m));
    kl.coder = &m->decoder;
    return load_decoder(&kl, m);
}

int kn_kl_vae_load(kn_kl_vae **out, const kn_st_file *f, int groups, kn_err *err) {
    kn_kl_vae *m = calloc(1, sizeof *m);
    *out = NULL;
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "flux_vae: out of memory");
    if (load_model(m, f, groups, err)) {
        free(m);
        return kn_err_wrap(err, "flux_vae");
    }
    const kn_kl_vae_config *c = &m->cfg;
    /* the last level's 2ch-wide input at full resolution, its output and temporaries (kl.h: ~3 such maps) */
    m->base = (kn_vae){&kn_flux_vae, c->image_channels, c->z_channels, 4, 4 * 2 * (int64_t)c->ch};
    *out = m;
    return KN_OK;
}

void kn_kl_vae_free(kn_kl_vae *vae) { free(vae); }

const kn_kl_vae_config *kn_kl_vae_get_config(const kn_kl_vae *vae) { return &vae->cfg; }

/* ---- shapes ------------------------------------------------------------------ */

/* [B, channels, H, W] with B >= 1 and H, W >= min_hw. */
static int check_maps(const kn_tensor *t, const char *what, int64_t channels, int64_t min_hw, kn_err *err) {
    char d[96];
    if (kn_tensor_expect(t, what, 4, (int64_t[]){-1, channels, -1, -1}, err)) return kn_err_wrap(err, "flux_vae");
    if (t->ne[0] < 1 || t->ne[2] < min_hw || t->ne[3] < min_hw)
        return kn_fail(err, KN_ERR_SHAPE, "flux_vae: %s %s is smaller than %lld x %lld", what,
                       kn_tensor_desc(t, d, sizeof d), (long long)min_hw, (long long)min_hw);
    return KN_OK;
}

int kn_kl_vae_latent_shape(const kn_kl_vae *vae, const kn_tensor *image, int64_t ne[4], kn_err *err) {
    const kn_kl_vae_config *c = &vae->cfg;
    KN_TRY(check_maps(image, "image", c->image_channels, c->scale, err));
    /* each downsample maps n to n / 2, so levels - 1 of them to n / scale */
    int64_t shape[4] = {image->ne[0], c->z_channels, image->ne[2] / c->scale, image->ne[3] / c->scale};
    memcpy(ne, shape, sizeof shape);
    return KN_OK;
}

int kn_kl_vae_image_shape(const kn_kl_vae *vae, const kn_tensor *latent, int64_t ne[4], kn_err *err) {
    const kn_kl_vae_config *c = &vae->cfg;
    KN_TRY(check_maps(latent, "latent", c->z_channels, 1, err));
    int64_t shape[4] = {latent->ne[0], c->out_channels, latent->ne[2] * c->scale, latent->ne[3] * c->scale};
    memcpy(ne, shape, sizeof shape);
    return KN_OK;
}

/* ---- forward ----------------------------------------------------------------- */

int kn_kl_vae_encode(kn_ctx *ctx, const kn_kl_vae *vae, kn_tensor *latent_mean, kn_tensor *moments,
                     const kn_tensor *image, kn_debug_fn debug, void *debug_user) {
    const int64_t z = vae->cfg.z_channels;
    int64_t ne[4];
    KN_TRY(kn_kl_vae_latent_shape(vae, image, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(latent_mean, "flux_vae latent_mean", 4, ne, &ctx->err));
    ne[1] = 2 * z;
    if (moments) KN_TRY(kn_tensor_expect(moments, "flux_vae moments", 4, ne, &ctx->err));
    kn_vae_run r;
    kn_tensor mean;
    kn_vae_run_begin(&r, ctx, "flux_vae", image);
    r.debug = debug;
    r.debug_user = debug_user;
    int rc = kn_vae_coder_forward(&r, &vae->encoder);
    if (!rc && moments) rc = kn_tensor_copy(moments, &r.x, &ctx->err);
    /* DiagonalGaussianRegularizer(sample=False): the mode, i.e. the mean channels */
    if (!rc) rc = kn_tensor_slice(&mean, &r.x, 1, 0, z, &ctx->err);
    if (!rc) rc = kn_tensor_copy(latent_mean, &mean, &ctx->err);
    kn_vae_run_end(&r);
    return rc;
}

int kn_kl_vae_decode(kn_ctx *ctx, const kn_kl_vae *vae, kn_tensor *image, const kn_tensor *latent, kn_debug_fn debug,
                     void *debug_user) {
    int64_t ne[4];
    KN_TRY(kn_kl_vae_image_shape(vae, latent, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(image, "flux_vae image", 4, ne, &ctx->err));
    kn_vae_run r;
    kn_vae_run_begin(&r, ctx, "flux_vae", latent);
    r.debug = debug;
    r.debug_user = debug_user;
    int rc = kn_vae_coder_forward(&r, &vae->decoder);
    if (!rc) rc = kn_tensor_copy(image, &r.x, &ctx->err);
    kn_vae_run_end(&r);
    return rc;
}

/* ---- the VAE family ---------------------------------------------------------- */

static int family_load(kn_vae **out, const kn_st_file *f, kn_err *err) {
    kn_kl_vae *m = NULL;
    KN_TRY(kn_kl_vae_load(&m, f, 0, err));
    *out = &m->base;
    return KN_OK;
}

static void family_free(kn_vae *v) { kn_kl_vae_free((kn_kl_vae *)v); }

static int family_latent_shape(const kn_vae *v, const kn_tensor *image, int64_t *ne, int *ndim, kn_err *err) {
    *ndim = 4;
    return kn_kl_vae_latent_shape((const kn_kl_vae *)v, image, ne, err);
}

static int family_image_shape(const kn_vae *v, const kn_tensor *latent, int64_t ne[4], kn_err *err) {
    return kn_kl_vae_image_shape((const kn_kl_vae *)v, latent, ne, err);
}

static int family_encode(kn_ctx *ctx, const kn_vae *v, kn_tensor *latent, const kn_tensor *image) {
    return kn_kl_vae_encode(ctx, (const kn_kl_vae *)v, latent, NULL, image, NULL, NULL);
}

static int family_decode(kn_ctx *ctx, const kn_vae *v, kn_tensor *image, const kn_tensor *latent) {
    return kn_kl_vae_decode(ctx, (const kn_kl_vae *)v, image, latent, NULL, NULL);
}

const kn_vae_family kn_flux_vae = {"flux",        "Flux VAE",          family_load,   family_free,
                                   family_latent_shape, family_image_shape, family_encode, family_decode};
