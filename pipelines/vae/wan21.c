/* Wan 2.1 VAE encode and decode: see wan21.h for the contract. */
#include "pipelines/vae/wan21.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops_image.h"

/* Family constants: ComfyUI's loader builds every Wan 2.1 VAE with these. */
static const int wan_dim_mult[] = {1, 2, 4, 4};
#define WAN_STAGES ((int)(sizeof wan_dim_mult / sizeof wan_dim_mult[0]))
#define WAN_RES_BLOCKS 2
#define WAN_SPATIAL_SCALE 8 /* 2^(stages - 1): one 2x resampling between stages */
#define WAN_RMS_EPS 1e-12f  /* F.normalize's default */
#define WAN_MAX_LAYERS 24   /* decoder: 3 middle + 4 stages x 3 blocks + 3 upsamples = 18 */

/* ComfyUI comfy/latent_formats.py Wan21 (scale_factor 1). */
/* ---- model ------------------------------------------------------------------- */

typedef struct wan_conv {
    kn_tensor w, b;
    int pad; /* ComfyUI CausalConv3d padding: spatial on every side, 2 * pad frames in front */
} wan_conv;

typedef enum wan_layer_kind { WAN_RESIDUAL, WAN_ATTENTION, WAN_DOWNSAMPLE, WAN_UPSAMPLE } wan_layer_kind;

typedef struct wan_residual {
    kn_tensor norm1, norm2;
    wan_conv conv1, conv2, shortcut; /* shortcut.w.data NULL: identity */
} wan_residual;

typedef struct wan_attention {
    kn_tensor norm;
    kn_tensor q_w, q_b, k_w, k_b, v_w, v_b; /* row blocks of to_qkv as [C, C] linears */
    kn_tensor proj_w, proj_b;
} wan_attention;

typedef struct wan_layer {
    wan_layer_kind kind;
    char name[48]; /* checkpoint prefix, for errors */
    union {
        wan_residual res;
        wan_attention attn;
        wan_conv resample; /* Resample.resample.1: the 2D conv after the pad or upsampling */
    };
} wan_layer;

typedef struct wan_coder {
    wan_conv conv_in;
    wan_layer layers[WAN_MAX_LAYERS];
    int n_layers;
    kn_tensor head_norm;
    wan_conv head_conv;
} wan_coder;

struct kn_wan_vae {
    kn_wan_vae_config cfg;
    wan_coder encoder, decoder;
    wan_conv mean_conv;   /* rows 0..z_dim of conv1: the posterior mean (log-variance rows unused) */
    wan_conv latent_conv; /* conv2, applied to latents before the decoder */
};

/* ---- loading ----------------------------------------------------------------- */

typedef struct wan_loader {
    const kn_st_file *f;
    kn_err *err;
    wan_coder *coder;
    const char *group; /* "encoder.downsamples", "decoder.middle", ... */
    int index;         /* next layer index in the group */
} wan_loader;

static int load_tensor(wan_loader *ld, kn_tensor *t, int ndim, const int64_t *ne, const char *fmt, ...)
    KN_PRINTF(5, 6);
static int load_tensor(wan_loader *ld, kn_tensor *t, int ndim, const int64_t *ne, const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    KN_TRY(kn_st_get(ld->f, name, t, ld->err));
    return kn_tensor_expect(t, "weight", ndim, ne, ld->err);
}

/* <prefix>.weight [out, in, (k,) k, k] (3D kernels when dims3) and <prefix>.bias [out]. */
static int load_conv(wan_loader *ld, wan_conv *c, const char *prefix, int64_t out, int64_t in, int64_t k, int dims3,
                     int pad) {
    KN_TRY(load_tensor(ld, &c->w, dims3 ? 5 : 4, (int64_t[]){out, in, k, k, k}, "%s.weight", prefix));
    c->pad = pad;
    return load_tensor(ld, &c->b, 1, (int64_t[]){out}, "%s.bias", prefix);
}

/* RMS_norm gamma: [C, 1, 1, 1] for volumes, [C, 1, 1] for images (attention). */
static int load_gamma(wan_loader *ld, kn_tensor *g, const char *prefix, int64_t c, int images) {
    return load_tensor(ld, g, images ? 3 : 4, (int64_t[]){c, 1, 1, 1}, "%s.gamma", prefix);
}

static int next_layer(wan_loader *ld, wan_layer_kind kind, wan_layer **out) {
    wan_coder *c = ld->coder;
    if (c->n_layers == WAN_MAX_LAYERS)
        return kn_fail(ld->err, KN_ERR_UNSUPPORTED, "wan_vae: more than %d layers", WAN_MAX_LAYERS);
    wan_layer *l = &c->layers[c->n_layers++];
    l->kind = kind;
    snprintf(l->name, sizeof l->name, "%s.%d", ld->group, ld->index++);
    *out = l;
    return KN_OK;
}

static int add_residual(wan_loader *ld, int64_t in, int64_t out) {
    char p[96];
    wan_layer *l = NULL;
    KN_TRY(next_layer(ld, WAN_RESIDUAL, &l));
    wan_residual *r = &l->res;
    snprintf(p, sizeof p, "%s.residual.0", l->name);
    KN_TRY(load_gamma(ld, &r->norm1, p, in, 0));
    snprintf(p, sizeof p, "%s.residual.2", l->name);
    KN_TRY(load_conv(ld, &r->conv1, p, out, in, 3, 1, 1));
    snprintf(p, sizeof p, "%s.residual.3", l->name);
    KN_TRY(load_gamma(ld, &r->norm2, p, out, 0));
    snprintf(p, sizeof p, "%s.residual.6", l->name);
    KN_TRY(load_conv(ld, &r->conv2, p, out, out, 3, 1, 1));
    if (in == out) return KN_OK;
    snprintf(p, sizeof p, "%s.shortcut", l->name);
    return load_conv(ld, &r->shortcut, p, out, in, 1, 1, 0);
}

static int add_attention(wan_loader *ld, int64_t ch) {
    char p[96];
    wan_layer *l = NULL;
    kn_tensor qkv_w, qkv_b, w2, proj_w;
    KN_TRY(next_layer(ld, WAN_ATTENTION, &l));
    wan_attention *a = &l->attn;
    snprintf(p, sizeof p, "%s.norm", l->name);
    KN_TRY(load_gamma(ld, &a->norm, p, ch, 1));
    KN_TRY(load_tensor(ld, &qkv_w, 4, (int64_t[]){3 * ch, ch, 1, 1}, "%s.to_qkv.weight", l->name));
    KN_TRY(load_tensor(ld, &qkv_b, 1, (int64_t[]){3 * ch}, "%s.to_qkv.bias", l->name));
    KN_TRY(load_tensor(ld, &proj_w, 4, (int64_t[]){ch, ch, 1, 1}, "%s.proj.weight", l->name));
    KN_TRY(load_tensor(ld, &a->proj_b, 1, (int64_t[]){ch}, "%s.proj.bias", l->name));
    /* 1x1 convs over channels are linears over tokens */
    KN_TRY(kn_tensor_reshape(&a->proj_w, &proj_w, 2, (int64_t[]){ch, ch}, ld->err));
    KN_TRY(kn_tensor_reshape(&w2, &qkv_w, 2, (int64_t[]){3 * ch, ch}, ld->err));
    kn_tensor *ws[3] = {&a->q_w, &a->k_w, &a->v_w}, *bs[3] = {&a->q_b, &a->k_b, &a->v_b};
    for (int i = 0; i < 3; i++) {
        KN_TRY(kn_tensor_slice(ws[i], &w2, 0, i * ch, ch, ld->err));
        KN_TRY(kn_tensor_slice(bs[i], &qkv_b, 0, i * ch, ch, ld->err));
    }
    return KN_OK;
}

/* Downsample keeps the channels; upsample halves them. The temporal convs
 * (time_conv) of 3D resamples only act across frames and are not loaded. */
static int add_resample(wan_loader *ld, wan_layer_kind kind, int64_t ch) {
    char p[96];
    wan_layer *l = NULL;
    KN_TRY(next_layer(ld, kind, &l));
    snprintf(p, sizeof p, "%s.resample.1", l->name);
    return load_conv(ld, &l->resample, p, kind == WAN_UPSAMPLE ? ch / 2 : ch, ch, 3, 0, 0);
}

static int add_middle(wan_loader *ld, const char *group, int64_t ch) {
    ld->group = group;
    ld->index = 0;
    KN_TRY(add_residual(ld, ch, ch));
    KN_TRY(add_attention(ld, ch));
    return add_residual(ld, ch, ch);
}

static int load_head(wan_loader *ld, const char *prefix, int64_t in, int64_t out) {
    char p[96];
    snprintf(p, sizeof p, "%s.head.0", prefix);
    KN_TRY(load_gamma(ld, &ld->coder->head_norm, p, in, 0));
    snprintf(p, sizeof p, "%s.head.2", prefix);
    return load_conv(ld, &ld->coder->head_conv, p, out, in, 3, 1, 1);
}

/* Encoder3d: conv1, per stage residual blocks then a 2x downsample (not after
 * the last), middle (residual, attention, residual), head to 2 * z_dim. */
static int load_encoder(wan_loader *ld, const kn_wan_vae_config *cfg) {
    int64_t ch = cfg->dim;
    ld->coder->n_layers = 0;
    KN_TRY(load_conv(ld, &ld->coder->conv_in, "encoder.conv1", ch, cfg->image_channels, 3, 1, 1));
    ld->group = "encoder.downsamples";
    ld->index = 0;
    for (int s = 0; s < WAN_STAGES; s++) {
        int64_t out = (int64_t)cfg->dim * wan_dim_mult[s];
        for (int r = 0; r < WAN_RES_BLOCKS; r++, ch = out) KN_TRY(add_residual(ld, ch, out));
        if (s != WAN_STAGES - 1) KN_TRY(add_resample(ld, WAN_DOWNSAMPLE, ch));
    }
    KN_TRY(add_middle(ld, "encoder.middle", ch));
    return load_head(ld, "encoder", ch, 2 * (int64_t)cfg->z_dim);
}

/* Decoder3d mirrors it: conv1, middle, per stage one more residual block and
 * a 2x upsample that halves the channels, head to image channels. */
static int load_decoder(wan_loader *ld, const kn_wan_vae_config *cfg) {
    int64_t ch = (int64_t)cfg->dim * wan_dim_mult[WAN_STAGES - 1];
    ld->coder->n_layers = 0;
    KN_TRY(load_conv(ld, &ld->coder->conv_in, "decoder.conv1", ch, cfg->z_dim, 3, 1, 1));
    KN_TRY(add_middle(ld, "decoder.middle", ch));
    ld->group = "decoder.upsamples";
    ld->index = 0;
    for (int s = 0; s < WAN_STAGES; s++) {
        int64_t out = (int64_t)cfg->dim * wan_dim_mult[WAN_STAGES - 1 - s];
        for (int r = 0; r < WAN_RES_BLOCKS + 1; r++, ch = out) KN_TRY(add_residual(ld, ch, out));
        if (s != WAN_STAGES - 1) {
            KN_TRY(add_resample(ld, WAN_UPSAMPLE, ch));
            ch /= 2;
        }
    }
    return load_head(ld, "decoder", ch, cfg->out_channels);
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
    wan_loader ld = {f, err, &m->encoder, NULL, 0};
    KN_TRY(load_encoder(&ld, cfg));
    ld.coder = &m->decoder;
    KN_TRY(load_decoder(&ld, cfg));
    const int64_t z = cfg->z_dim;
    wan_conv moments;
    KN_TRY(load_conv(&ld, &moments, "conv1", 2 * z, 2 * z, 1, 1, 0));
    KN_TRY(kn_tensor_slice(&m->mean_conv.w, &moments.w, 0, 0, z, err));
    KN_TRY(kn_tensor_slice(&m->mean_conv.b, &moments.b, 0, 0, z, err));
    return load_conv(&ld, &m->latent_conv, "conv2", z, z, 1, 1, 0);
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
    /* each downsample maps n to (n + 1 - 3) / 2 + 1 = n / 2 */
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

/* Per-call memory: activations ping-pong between two arenas (a layer reads x
 * from one and writes its output into the other, emptied first), and a layer's
 * temporaries go to a third, emptied when the next layer starts. Arenas unmap
 * every chunk but the first on reset, so each is kept with a first chunk big
 * enough for its largest request so far: feature maps of hundreds of MB are
 * then mapped and faulted in a few times per call instead of once per layer. */
enum { RUN_ACT0, RUN_ACT1, RUN_TMP, RUN_ARENAS };

typedef struct wan_run {
    kn_ctx *ctx;
    kn_arena *arena[RUN_ARENAS];
    size_t capacity[RUN_ARENAS]; /* bytes of each arena's first chunk */
    int next;                    /* activation arena for the next output */
    kn_tensor x;                 /* current activation [B, C, 1, H, W] */
} wan_run;

static void run_begin(wan_run *r, kn_ctx *ctx, const kn_tensor *input) {
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->x = *input;
}

static void run_end(wan_run *r) {
    for (int i = 0; i < RUN_ARENAS; i++) kn_arena_destroy(r->arena[i]);
}

/* Empties arena i, replacing it by one whose first chunk holds `bytes` when it is too small. */
static int run_reserve(wan_run *r, int i, size_t bytes) {
    kn_err *err = &r->ctx->err;
    if (r->arena[i] && bytes <= r->capacity[i]) {
        kn_arena_reset(r->arena[i], 0);
        return KN_OK;
    }
    kn_arena_destroy(r->arena[i]);
    r->arena[i] = NULL;
    r->capacity[i] = 0;
    KN_TRY(kn_arena_create(&r->arena[i], KN_DEV_CPU, err));
    if (!kn_arena_alloc(r->arena[i], bytes, err)) return err->code;
    kn_arena_reset(r->arena[i], 0);
    r->capacity[i] = bytes;
    return KN_OK;
}

/* Bytes of `count` activations [B, c, 1, h, w] (with the arena's 64-byte alignment). */
static int act_bytes(wan_run *r, int64_t count, int64_t c, int64_t h, int64_t w, size_t *out) {
    size_t n = sizeof(float);
    const int64_t dims[4] = {r->x.ne[0], c, h, w};
    for (int i = 0; i < 4; i++)
        if (kn_mul_size(n, (size_t)dims[i], &n)) goto overflow;
    if (kn_add_size(n, 64, &n) || kn_mul_size(n, (size_t)count, out)) goto overflow;
    return KN_OK;
overflow:
    return kn_fail(&r->ctx->err, KN_ERR_NOMEM, "wan_vae: feature map of %lld x %lld x %lld overflows",
                   (long long)c, (long long)h, (long long)w);
}

static int arena_act(wan_run *r, int i, kn_tensor *t, int64_t c, int64_t h, int64_t w) {
    return kn_arena_tensor(r->arena[i], t, KN_F32, 5, (int64_t[]){r->x.ne[0], c, 1, h, w}, &r->ctx->err);
}

/* An activation of x's batch in the next arena (freeing what it held). */
static int run_output(wan_run *r, kn_tensor *y, int64_t c, int64_t h, int64_t w) {
    size_t bytes = 0;
    KN_TRY(act_bytes(r, 1, c, h, w, &bytes));
    KN_TRY(run_reserve(r, r->next, bytes));
    return arena_act(r, r->next, y, c, h, w);
}

static void run_advance(wan_run *r, const kn_tensor *y) {
    r->x = *y;
    r->next = r->next == RUN_ACT0 ? RUN_ACT1 : RUN_ACT0;
}

/* Room for a layer's `count` temporaries of [B, c, 1, h, w] (freeing the last layer's). */
static int run_temps(wan_run *r, int64_t count, int64_t c, int64_t h, int64_t w) {
    size_t bytes = 0;
    KN_TRY(act_bytes(r, count, c, h, w, &bytes));
    return run_reserve(r, RUN_TMP, bytes);
}

static int temp_act(wan_run *r, kn_tensor *t, int64_t c, int64_t h, int64_t w) {
    return arena_act(r, RUN_TMP, t, c, h, w);
}

static int causal_conv(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const wan_conv *c) {
    const kn_conv_params p = {.pad_top = c->pad, .pad_bottom = c->pad, .pad_left = c->pad, .pad_right = c->pad,
                              .pad_front = 2 * c->pad};
    return kn_conv3d(ctx, y, x, &c->w, &c->b, &p);
}

static int norm_silu(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_tensor *gamma) {
    KN_TRY(kn_channel_rmsnorm(ctx, y, x, gamma, NULL, WAN_RMS_EPS));
    return kn_activation(ctx, y, y, KN_ACT_SILU);
}

/* x + conv2(silu(norm2(conv1(silu(norm1(x)))))) with x through the 1x1
 * shortcut when the width changes. norm1's output lives in the next arena and
 * the block's output replaces it there once conv1 has read it. */
static int residual_forward(wan_run *r, const wan_residual *blk) {
    kn_ctx *ctx = r->ctx;
    const kn_tensor *x = &r->x;
    const int64_t out_ch = blk->conv1.w.ne[0], h = x->ne[3], w = x->ne[4];
    kn_tensor normed, mid, y, skip;
    KN_TRY(run_temps(r, blk->shortcut.w.data ? 2 : 1, out_ch, h, w));
    KN_TRY(run_output(r, &normed, x->ne[1], h, w));
    KN_TRY(norm_silu(ctx, &normed, x, &blk->norm1));
    KN_TRY(temp_act(r, &mid, out_ch, h, w));
    KN_TRY(causal_conv(ctx, &mid, &normed, &blk->conv1));
    KN_TRY(norm_silu(ctx, &mid, &mid, &blk->norm2));
    KN_TRY(run_output(r, &y, out_ch, h, w));
    KN_TRY(causal_conv(ctx, &y, &mid, &blk->conv2));
    if (blk->shortcut.w.data) {
        KN_TRY(temp_act(r, &skip, out_ch, h, w));
        KN_TRY(causal_conv(ctx, &skip, x, &blk->shortcut));
        x = &skip;
    }
    KN_TRY(kn_binary(ctx, &y, &y, x, KN_ADD));
    run_advance(r, &y);
    return KN_OK;
}

/* Single-head self-attention over the H*W positions of each image. */
static int attention_forward(wan_run *r, const wan_attention *a) {
    kn_ctx *ctx = r->ctx;
    const int64_t batch = r->x.ne[0], ch = r->x.ne[1], h = r->x.ne[3], w = r->x.ne[4], len = h * w;
    const int64_t maps[3] = {batch, ch, len}, rows[3] = {batch, len, ch}, heads[4] = {batch, len, 1, ch};
    kn_tensor x3, normed, tok, q, k, v, o, q4, k4, v4, o4, y, y3;
    KN_TRY(run_temps(r, 6, ch, h, w));
    kn_arena *tmp = r->arena[RUN_TMP];
    KN_TRY(kn_tensor_reshape(&x3, &r->x, 3, maps, &ctx->err));
    KN_TRY(kn_arena_tensor(tmp, &normed, KN_F32, 3, maps, &ctx->err));
    KN_TRY(kn_channel_rmsnorm(ctx, &normed, &x3, &a->norm, NULL, WAN_RMS_EPS));
    kn_tensor *bufs[5] = {&tok, &q, &k, &v, &o};
    for (int i = 0; i < 5; i++) KN_TRY(kn_arena_tensor(tmp, bufs[i], KN_F32, 3, rows, &ctx->err));
    KN_TRY(kn_transpose_last2(ctx, &tok, &normed));
    KN_TRY(kn_linear(ctx, &q, &tok, &a->q_w, &a->q_b));
    KN_TRY(kn_linear(ctx, &k, &tok, &a->k_w, &a->k_b));
    KN_TRY(kn_linear(ctx, &v, &tok, &a->v_w, &a->v_b));
    KN_TRY(kn_tensor_reshape(&q4, &q, 4, heads, &ctx->err));
    KN_TRY(kn_tensor_reshape(&k4, &k, 4, heads, &ctx->err));
    KN_TRY(kn_tensor_reshape(&v4, &v, 4, heads, &ctx->err));
    KN_TRY(kn_tensor_reshape(&o4, &o, 4, heads, &ctx->err));
    KN_TRY(kn_attention(ctx, &o4, &q4, &k4, &v4, NULL, 0, 1.0f / sqrtf((float)ch)));
    KN_TRY(kn_linear(ctx, &tok, &o, &a->proj_w, &a->proj_b));
    KN_TRY(run_output(r, &y, ch, h, w));
    KN_TRY(kn_tensor_reshape(&y3, &y, 3, maps, &ctx->err));
    KN_TRY(kn_transpose_last2(ctx, &y3, &tok));
    KN_TRY(kn_binary(ctx, &y, &y, &r->x, KN_ADD));
    run_advance(r, &y);
    return KN_OK;
}

/* Downsample: ZeroPad2d(0, 1, 0, 1) then a 3x3 stride-2 conv. Upsample:
 * nearest 2x then a 3x3 conv (padding 1), fused into one conv. With T = 1
 * the (b t) c h w rearrange is a reshape. */
static int resample_forward(wan_run *r, const wan_layer *l) {
    kn_ctx *ctx = r->ctx;
    const int up = l->kind == WAN_UPSAMPLE;
    const int64_t batch = r->x.ne[0], ch = r->x.ne[1], h = r->x.ne[3], w = r->x.ne[4];
    const int64_t out_ch = l->resample.w.ne[0];
    const int64_t oh = up ? 2 * h : (h - 2) / 2 + 1, ow = up ? 2 * w : (w - 2) / 2 + 1;
    const kn_conv_params up_p = {.upsample = 2, .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1};
    const kn_conv_params down_p = {.stride_h = 2, .stride_w = 2, .pad_bottom = 1, .pad_right = 1};
    kn_tensor x4, y, y4;
    KN_TRY(kn_tensor_reshape(&x4, &r->x, 4, (int64_t[]){batch, ch, h, w}, &ctx->err));
    KN_TRY(run_output(r, &y, out_ch, oh, ow));
    KN_TRY(kn_tensor_reshape(&y4, &y, 4, (int64_t[]){batch, out_ch, oh, ow}, &ctx->err));
    KN_TRY(kn_conv2d(ctx, &y4, &x4, &l->resample.w, &l->resample.b, up ? &up_p : &down_p));
    run_advance(r, &y);
    return KN_OK;
}

static int layer_forward(wan_run *r, const wan_layer *l) {
    switch (l->kind) {
    case WAN_RESIDUAL: return residual_forward(r, &l->res);
    case WAN_ATTENTION: return attention_forward(r, &l->attn);
    case WAN_DOWNSAMPLE:
    case WAN_UPSAMPLE: return resample_forward(r, l);
    }
    return kn_fail(&r->ctx->err, KN_ERR_INVALID, "wan_vae: unknown layer kind %d", (int)l->kind);
}

static int layer_run(wan_run *r, const wan_layer *l) {
    return layer_forward(r, l) ? kn_err_wrap(&r->ctx->err, "wan_vae %s", l->name) : KN_OK;
}

/* conv_in, the layers, then head (norm, SiLU, conv); the result is r->x. */
static int coder_forward(wan_run *r, const wan_coder *c, const char *name) {
    kn_ctx *ctx = r->ctx;
    kn_tensor y, normed;
    if (run_output(r, &y, c->conv_in.w.ne[0], r->x.ne[3], r->x.ne[4]) ||
        causal_conv(ctx, &y, &r->x, &c->conv_in))
        return kn_err_wrap(&ctx->err, "wan_vae %s.conv1", name);
    run_advance(r, &y);
    for (int i = 0; i < c->n_layers; i++) KN_TRY(layer_run(r, &c->layers[i]));
    int rc = run_temps(r, 1, r->x.ne[1], r->x.ne[3], r->x.ne[4]);
    if (!rc) rc = temp_act(r, &normed, r->x.ne[1], r->x.ne[3], r->x.ne[4]);
    if (!rc) rc = norm_silu(ctx, &normed, &r->x, &c->head_norm);
    if (!rc) rc = run_output(r, &y, c->head_conv.w.ne[0], r->x.ne[3], r->x.ne[4]);
    if (!rc) rc = causal_conv(ctx, &y, &normed, &c->head_conv);
    if (rc) return kn_err_wrap(&ctx->err, "wan_vae %s.head", name);
    run_advance(r, &y);
    return KN_OK;
}

int kn_wan_vae_encode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *latent_mean, const kn_tensor *image) {
    int64_t ne[5];
    KN_TRY(kn_wan_vae_latent_shape(vae, image, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(latent_mean, "wan_vae latent_mean", 5, ne, &ctx->err));
    wan_run r;
    run_begin(&r, ctx, image);
    int rc = coder_forward(&r, &vae->encoder, "encoder");
    if (!rc && causal_conv(ctx, latent_mean, &r.x, &vae->mean_conv)) rc = kn_err_wrap(&ctx->err, "wan_vae conv1");
    run_end(&r);
    return rc;
}

int kn_wan_vae_decode(kn_ctx *ctx, const kn_wan_vae *vae, kn_tensor *image, const kn_tensor *latent) {
    int64_t ne[5];
    KN_TRY(kn_wan_vae_image_shape(vae, latent, ne, &ctx->err));
    KN_TRY(kn_tensor_expect(image, "wan_vae image", 5, ne, &ctx->err));
    wan_run r;
    kn_tensor z;
    run_begin(&r, ctx, latent);
    int rc = run_output(&r, &z, vae->cfg.z_dim, latent->ne[3], latent->ne[4]);
    if (!rc && causal_conv(ctx, &z, latent, &vae->latent_conv)) rc = kn_err_wrap(&ctx->err, "wan_vae conv2");
    if (!rc) {
        run_advance(&r, &z);
        rc = coder_forward(&r, &vae->decoder, "decoder");
    }
    if (!rc) rc = kn_tensor_copy(image, &r.x, &ctx->err);
    run_end(&r);
    return rc;
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
    m->base = (kn_vae){&kn_wan21_vae, c->image_channels, c->z_dim, 5};
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
