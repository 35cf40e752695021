/* The shared VAE layers: see blocks.h for the contract. */
#include "pipelines/vae/blocks.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kernels/ops_image.h"

/* ---- loading ----------------------------------------------------------------- */

static int load_tensor_v(const kn_vae_loader *ld, kn_tensor *t, int ndim, const int64_t *ne, const char *fmt,
                         va_list ap) {
    char name[128];
    vsnprintf(name, sizeof name, fmt, ap);
    KN_TRY(kn_st_get(ld->f, name, t, ld->err));
    return kn_tensor_expect(t, name, ndim, ne, ld->err);
}

int kn_vae_load_tensor(const kn_vae_loader *ld, kn_tensor *t, int ndim, const int64_t *ne, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = load_tensor_v(ld, t, ndim, ne, fmt, ap);
    va_end(ap);
    return rc;
}

int kn_vae_load_conv(const kn_vae_loader *ld, kn_vae_conv *c, const char *prefix, int64_t out, int64_t in, int64_t k,
                     int dims3, int pad) {
    KN_TRY(kn_vae_load_tensor(ld, &c->w, dims3 ? 5 : 4, (int64_t[]){out, in, k, k, k}, "%s.weight", prefix));
    c->pad = pad;
    return kn_vae_load_tensor(ld, &c->b, 1, (int64_t[]){out}, "%s.bias", prefix);
}

int kn_vae_load_1x1(const kn_vae_loader *ld, kn_tensor *w, kn_tensor *b, const char *prefix, int64_t out, int64_t in) {
    kn_vae_conv c;
    KN_TRY(kn_vae_load_conv(ld, &c, prefix, out, in, 1, 0, 0));
    *b = c.b;
    return kn_tensor_reshape(w, &c.w, 2, (int64_t[]){out, in}, ld->err);
}

int kn_vae_load_group_norm(const kn_vae_loader *ld, kn_vae_norm *n, const char *prefix, int64_t c, int groups,
                           float eps) {
    if (groups < 1 || c % groups)
        return kn_fail(ld->err, KN_ERR_SHAPE, "%s: '%s' has %lld channels, not a multiple of %d GroupNorm groups",
                       kn_st_path(ld->f), prefix, (long long)c, groups);
    KN_TRY(kn_vae_load_tensor(ld, &n->w, 1, (int64_t[]){c}, "%s.weight", prefix));
    KN_TRY(kn_vae_load_tensor(ld, &n->b, 1, (int64_t[]){c}, "%s.bias", prefix));
    n->groups = groups;
    n->eps = eps;
    return KN_OK;
}

int kn_vae_add_layer(kn_vae_coder *c, kn_vae_layer_kind kind, kn_vae_layer **out, kn_err *err, const char *fmt, ...) {
    if (c->n_layers == KN_VAE_MAX_LAYERS)
        return kn_fail(err, KN_ERR_UNSUPPORTED, "more than %d layers", KN_VAE_MAX_LAYERS);
    kn_vae_layer *l = &c->layers[c->n_layers++];
    memset(l, 0, sizeof *l);
    l->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->name, sizeof l->name, fmt, ap);
    va_end(ap);
    *out = l;
    return KN_OK;
}

/* ---- arenas ------------------------------------------------------------------ */

void kn_vae_run_begin(kn_vae_run *r, kn_ctx *ctx, const char *what, const kn_tensor *input) {
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->what = what;
    r->x = *input;
}

void kn_vae_run_end(kn_vae_run *r) {
    for (int i = 0; i < KN_VAE_ARENAS; i++) kn_arena_destroy(r->arena[i]);
}

/* Empties arena i, replacing it by one whose first chunk holds `bytes` when it is too small. */
static int run_reserve(kn_vae_run *r, int i, size_t bytes) {
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

/* Bytes of `count` feature maps [B, c, h, w] (with the arena's 64-byte alignment). */
static int map_bytes(kn_vae_run *r, int64_t count, int64_t c, int64_t h, int64_t w, size_t *out) {
    size_t n = sizeof(float);
    const int64_t dims[4] = {r->x.ne[0], c, h, w};
    for (int i = 0; i < 4; i++)
        if (kn_mul_size(n, (size_t)dims[i], &n)) goto overflow;
    if (kn_add_size(n, 64, &n) || kn_mul_size(n, (size_t)count, out)) goto overflow;
    return KN_OK;
overflow:
    return kn_fail(&r->ctx->err, KN_ERR_NOMEM, "feature map of %lld x %lld x %lld overflows", (long long)c,
                   (long long)h, (long long)w);
}

static int arena_map(kn_vae_run *r, int i, kn_tensor *t, int64_t c, int64_t h, int64_t w) {
    return kn_arena_tensor(r->arena[i], t, KN_F32, 4, (int64_t[]){r->x.ne[0], c, h, w}, &r->ctx->err);
}

/* A feature map of x's batch in the next activation arena (freeing what it held). */
static int run_output(kn_vae_run *r, kn_tensor *y, int64_t c, int64_t h, int64_t w) {
    size_t bytes = 0;
    KN_TRY(map_bytes(r, 1, c, h, w, &bytes));
    KN_TRY(run_reserve(r, r->next, bytes));
    return arena_map(r, r->next, y, c, h, w);
}

static void run_advance(kn_vae_run *r, const kn_tensor *y) {
    r->x = *y;
    r->next = r->next == KN_VAE_ACT0 ? KN_VAE_ACT1 : KN_VAE_ACT0;
}

/* Room for a layer's `count` temporaries of [B, c, h, w] (freeing the last layer's). */
static int run_temps(kn_vae_run *r, int64_t count, int64_t c, int64_t h, int64_t w) {
    size_t bytes = 0;
    KN_TRY(map_bytes(r, count, c, h, w, &bytes));
    return run_reserve(r, KN_VAE_TMP, bytes);
}

static int temp_map(kn_vae_run *r, kn_tensor *t, int64_t c, int64_t h, int64_t w) {
    return arena_map(r, KN_VAE_TMP, t, c, h, w);
}

/* ---- layers ------------------------------------------------------------------ */

/* A 5-D view [B, C, 1, H, W] of a feature map, for Wan's causal 3D convs. */
static int as_frame(kn_tensor *v, const kn_tensor *t, kn_err *err) {
    return kn_tensor_reshape(v, t, 5, (int64_t[]){t->ne[0], t->ne[1], 1, t->ne[2], t->ne[3]}, err);
}

static int conv_forward(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_vae_conv *c) {
    kn_conv_params p = {.pad_top = c->pad, .pad_bottom = c->pad, .pad_left = c->pad, .pad_right = c->pad};
    if (c->w.ndim == 4) return kn_conv2d(ctx, y, x, &c->w, &c->b, &p);
    kn_tensor x5, y5;
    KN_TRY(as_frame(&x5, x, &ctx->err));
    KN_TRY(as_frame(&y5, y, &ctx->err));
    p.pad_front = 2 * c->pad;
    return kn_conv3d(ctx, &y5, &x5, &c->w, &c->b, &p);
}

static int norm_forward(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_vae_norm *n) {
    if (n->groups) return kn_group_norm(ctx, y, x, n->groups, &n->w, &n->b, n->eps);
    return kn_channel_rmsnorm(ctx, y, x, &n->w, NULL, n->eps);
}

static int norm_silu(kn_ctx *ctx, kn_tensor *y, const kn_tensor *x, const kn_vae_norm *n) {
    KN_TRY(norm_forward(ctx, y, x, n));
    return kn_activation(ctx, y, y, KN_ACT_SILU);
}

static int conv_layer(kn_vae_run *r, const kn_vae_layer *l) {
    const kn_tensor *x = &r->x;
    const int64_t h = x->ne[2], w = x->ne[3];
    kn_tensor act, y;
    if (l->silu) {
        KN_TRY(run_temps(r, 1, x->ne[1], h, w));
        KN_TRY(temp_map(r, &act, x->ne[1], h, w));
        KN_TRY(kn_activation(r->ctx, &act, x, KN_ACT_SILU));
        x = &act;
    }
    KN_TRY(run_output(r, &y, l->conv.w.ne[0], h, w));
    KN_TRY(conv_forward(r->ctx, &y, x, &l->conv));
    run_advance(r, &y);
    return KN_OK;
}

static int norm_layer(kn_vae_run *r, const kn_vae_norm *n) {
    kn_tensor y;
    KN_TRY(run_output(r, &y, r->x.ne[1], r->x.ne[2], r->x.ne[3]));
    KN_TRY(norm_forward(r->ctx, &y, &r->x, n));
    run_advance(r, &y);
    return KN_OK;
}

/* norm1's output lives in the next arena and the block's output replaces it
 * there once conv1 has read it. */
static int residual_layer(kn_vae_run *r, const kn_vae_residual *blk) {
    kn_ctx *ctx = r->ctx;
    const kn_tensor *x = &r->x;
    const int64_t out_ch = blk->conv1.w.ne[0], h = x->ne[2], w = x->ne[3];
    kn_tensor normed, mid, y, skip;
    KN_TRY(run_temps(r, blk->shortcut.w.data ? 2 : 1, out_ch, h, w));
    KN_TRY(run_output(r, &normed, x->ne[1], h, w));
    KN_TRY(norm_silu(ctx, &normed, x, &blk->norm1));
    KN_TRY(temp_map(r, &mid, out_ch, h, w));
    KN_TRY(conv_forward(ctx, &mid, &normed, &blk->conv1));
    KN_TRY(norm_silu(ctx, &mid, &mid, &blk->norm2));
    KN_TRY(run_output(r, &y, out_ch, h, w));
    KN_TRY(conv_forward(ctx, &y, &mid, &blk->conv2));
    if (blk->shortcut.w.data) {
        KN_TRY(temp_map(r, &skip, out_ch, h, w));
        KN_TRY(conv_forward(ctx, &skip, x, &blk->shortcut));
        x = &skip;
    }
    KN_TRY(kn_binary(ctx, &y, &y, x, KN_ADD));
    run_advance(r, &y);
    return KN_OK;
}

/* Positions become token rows [B, H*W, C] for the linears and attention. */
static int attention_layer(kn_vae_run *r, const kn_vae_attention *a) {
    kn_ctx *ctx = r->ctx;
    const int64_t batch = r->x.ne[0], ch = r->x.ne[1], h = r->x.ne[2], w = r->x.ne[3], len = h * w;
    const int64_t maps[3] = {batch, ch, len}, rows[3] = {batch, len, ch}, heads[4] = {batch, len, 1, ch};
    kn_tensor normed, normed3, tok, q, k, v, o, q4, k4, v4, o4, y, y3;
    KN_TRY(run_temps(r, 6, ch, h, w));
    KN_TRY(temp_map(r, &normed, ch, h, w));
    KN_TRY(norm_forward(ctx, &normed, &r->x, &a->norm));
    KN_TRY(kn_tensor_reshape(&normed3, &normed, 3, maps, &ctx->err));
    kn_tensor *bufs[5] = {&tok, &q, &k, &v, &o};
    for (int i = 0; i < 5; i++) KN_TRY(kn_arena_tensor(r->arena[KN_VAE_TMP], bufs[i], KN_F32, 3, rows, &ctx->err));
    KN_TRY(kn_transpose_last2(ctx, &tok, &normed3));
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

/* Downsample: ZeroPad2d((0, 1, 0, 1)) then the 3x3 stride-2 conv, so n maps
 * to (n + 1 - 3) / 2 + 1 = n / 2. Upsample: the conv reads x nearest-upsampled. */
static int resample_layer(kn_vae_run *r, const kn_vae_layer *l) {
    const int up = l->kind == KN_VAE_UPSAMPLE;
    const int64_t h = r->x.ne[2], w = r->x.ne[3];
    const int64_t oh = up ? 2 * h : (h - 2) / 2 + 1, ow = up ? 2 * w : (w - 2) / 2 + 1;
    const kn_conv_params up_p = {.upsample = 2, .pad_top = 1, .pad_bottom = 1, .pad_left = 1, .pad_right = 1};
    const kn_conv_params down_p = {.stride_h = 2, .stride_w = 2, .pad_bottom = 1, .pad_right = 1};
    kn_tensor y;
    if (!up && (h < 2 || w < 2))
        return kn_fail(&r->ctx->err, KN_ERR_SHAPE, "%lld x %lld is too small to downsample", (long long)h,
                       (long long)w);
    KN_TRY(run_output(r, &y, l->conv.w.ne[0], oh, ow));
    KN_TRY(kn_conv2d(r->ctx, &y, &r->x, &l->conv.w, &l->conv.b, up ? &up_p : &down_p));
    run_advance(r, &y);
    return KN_OK;
}

static int layer_forward(kn_vae_run *r, const kn_vae_layer *l) {
    switch (l->kind) {
    case KN_VAE_CONV: return conv_layer(r, l);
    case KN_VAE_NORM: return norm_layer(r, &l->norm);
    case KN_VAE_RESIDUAL: return residual_layer(r, &l->res);
    case KN_VAE_ATTENTION: return attention_layer(r, &l->attn);
    case KN_VAE_DOWNSAMPLE:
    case KN_VAE_UPSAMPLE: return resample_layer(r, l);
    }
    return kn_fail(&r->ctx->err, KN_ERR_INVALID, "unknown layer kind %d", (int)l->kind);
}

int kn_vae_coder_forward(kn_vae_run *r, const kn_vae_coder *c) {
    for (int i = 0; i < c->n_layers; i++) {
        const kn_vae_layer *l = &c->layers[i];
        if (layer_forward(r, l)) return kn_err_wrap(&r->ctx->err, "%s %s", r->what, l->name);
        if (r->debug) KN_TRY(r->debug(r->debug_user, l->name, &r->x));
    }
    return KN_OK;
}
