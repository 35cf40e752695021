/* Qwen2.5-VL's vision tower: see vision.h. */
#include "pipelines/qwen_image/vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops_image.h"

const kn_qwen_vision_consts kn_qwen25vl_vision = {16, 1e-6f, 10000.0, 112};

/* fullatt_block_indexes: hard-coded in ComfyUI, whatever the depth */
static const int64_t full_attention_blocks[] = {7, 15, 23, 31};

#define MERGE 2  /* spatial_merge_size: 2x2 patches per output row */
#define FRAMES 2 /* temporal_patch_size: the frame is repeated */
#define MIN_PIXELS 3136
#define MAX_PIXELS 12845056

/* ---- loading ------------------------------------------------------------------ */

enum { S_D, S_3D, S_I, S_4D, S_OUT, S_C, S_T, S_P, N_SIZES };

#define BVEC(field, key) KN_WSPEC_T1(kn_qwen_vision_block, field, key, S_D, 0)
#define BLIN(field, key, r, c) KN_WSPEC_LIN(kn_qwen_vision_block, field, key, r, c, 0)

static const kn_weight_spec block_specs[] = {
    BVEC(norm1, "norm1.weight"),
    BVEC(norm2, "norm2.weight"),
    BLIN(attn.qkv, "attn.qkv", S_3D, S_D),
    BLIN(attn.out, "attn.proj", S_D, S_D),
    BLIN(mlp.gate, "mlp.gate_proj", S_I, S_D),
    BLIN(mlp.up, "mlp.up_proj", S_I, S_D),
    BLIN(mlp.down, "mlp.down_proj", S_D, S_I),
};

static const kn_weight_spec model_specs[] = {
    {"patch_embed.proj.weight", offsetof(kn_qwen_vision, patch), KN_W_TENSOR, 0, 5, {S_D, S_C, S_T, S_P, S_P}},
    KN_WSPEC_T1(kn_qwen_vision, ln_q, "merger.ln_q.weight", S_D, 0),
    KN_WSPEC_LIN(kn_qwen_vision, merge_in, "merger.mlp.0", S_4D, S_4D, 0),
    KN_WSPEC_LIN(kn_qwen_vision, merge_out, "merger.mlp.2", S_OUT, S_4D, 0),
};

int kn_qwen_vision_present(const kn_st_file *f, const char *prefix) {
    char key[256];
    snprintf(key, sizeof key, "%spatch_embed.proj.weight", prefix);
    return kn_st_find(f, key) != NULL;
}

static int derive(kn_qwen_vision *m, const kn_st_file *f, const char *prefix, kn_err *err) {
    KN_TRY(kn_weights_dim(f, prefix, "patch_embed.proj.weight", 0, &m->hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "blocks.0.mlp.gate_proj.weight", 0, &m->intermediate, err));
    KN_TRY(kn_weights_dim(f, prefix, "merger.mlp.2.weight", 0, &m->out_dim, err));
    KN_TRY(kn_weights_count(f, prefix, "blocks.", &m->depth, err));
    const kn_qwen_vision_consts *k = &m->k;
    /* the 2-D RoPE gives each axis a quarter of the head: head_dim % 4 == 0 */
    if (k->heads < 1 || m->hidden % k->heads || (m->hidden / k->heads) % 4 || m->depth < 1 ||
        k->window % KN_QWEN_VISION_FACTOR || k->window < KN_QWEN_VISION_FACTOR || !(k->rope_theta > 0))
        return kn_fail(err, KN_ERR_SHAPE,
                       "%s: vision tower %spatch_embed.proj.weight of width %lld with %lld heads, %lld blocks, "
                       "%lld-px windows: needs heads dividing the width into heads of a multiple of 4, blocks, "
                       "windows a multiple of 28 px",
                       kn_st_path(f), prefix, (long long)m->hidden, (long long)k->heads, (long long)m->depth,
                       (long long)k->window);
    return KN_OK;
}

int kn_qwen_vision_load(kn_qwen_vision *m, const kn_st_file *f, const char *prefix, const kn_qwen_vision_consts *k,
                        kn_err *err) {
    memset(m, 0, sizeof *m);
    m->k = *k;
    int rc = derive(m, f, prefix, err);
    const int64_t sizes[N_SIZES] = {[S_D] = m->hidden,    [S_3D] = 3 * m->hidden, [S_I] = m->intermediate,
                                    [S_4D] = 4 * m->hidden, [S_OUT] = m->out_dim, [S_C] = 3,
                                    [S_T] = FRAMES,        [S_P] = KN_QWEN_VISION_PATCH};
    kn_weight_binder b = {f, prefix, sizes, "qwen25_vl_vision", &m->weights, err};
    if (!rc) rc = kn_weights_bind(&b, m, "", model_specs, sizeof model_specs / sizeof model_specs[0]);
    if (!rc && !(m->block = calloc((size_t)m->depth, sizeof *m->block)))
        rc = kn_fail(err, KN_ERR_NOMEM, "qwen25_vl_vision: out of memory for %lld blocks", (long long)m->depth);
    for (int64_t i = 0; !rc && i < m->depth; i++) {
        char sub[64];
        snprintf(sub, sizeof sub, "blocks.%lld.", (long long)i);
        rc = kn_weights_bind(&b, &m->block[i], sub, block_specs, sizeof block_specs / sizeof block_specs[0]);
    }
    if (rc) kn_qwen_vision_free(m);
    return rc;
}

void kn_qwen_vision_free(kn_qwen_vision *m) {
    if (!m) return;
    free(m->block);
    m->block = NULL;
    kn_weight_table_free(&m->weights);
}

/* ---- preprocessing -------------------------------------------------------------- */

int kn_qwen_vision_smart_size(int64_t H, int64_t W, int64_t *h, int64_t *w, kn_err *err) {
    const double f = KN_QWEN_VISION_FACTOR;
    /* transformers' smart_resize refuses aspect ratios above 200; that also bounds the result */
    if (H < 1 || W < 1 || H > 200 * W || W > 200 * H)
        return kn_fail(err, KN_ERR_SHAPE, "vision preprocessing: image %lldx%lld is empty or has an aspect ratio "
                       "above 200", (long long)W, (long long)H);
    double hb = rint((double)H / f) * f, wb = rint((double)W / f) * f;
    if (hb * wb > MAX_PIXELS) {
        double beta = sqrt((double)H * (double)W / MAX_PIXELS);
        hb = fmax(f, floor((double)H / beta / f) * f);
        wb = fmax(f, floor((double)W / beta / f) * f);
    } else if (hb * wb < MIN_PIXELS) {
        double beta = sqrt(MIN_PIXELS / ((double)H * (double)W));
        hb = ceil((double)H * beta / f) * f;
        wb = ceil((double)W * beta / f) * f;
    }
    *h = (int64_t)hb;
    *w = (int64_t)wb;
    return KN_OK;
}

int kn_qwen_vision_rows(kn_arena *arena, const kn_tensor *image, kn_tensor *rows, int64_t *gh, int64_t *gw,
                        kn_err *err) {
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    char d[96];
    if (image->dtype != KN_F32 || image->device != KN_DEV_CPU || image->ndim != 4 || image->ne[0] < 1 ||
        image->ne[3] != 3 || !kn_tensor_is_contiguous(image))
        return kn_fail(err, KN_ERR_SHAPE, "vision preprocessing: image %s: expected a contiguous F32 IMAGE [B, H, W, 3]",
                       kn_tensor_desc(image, d, sizeof d));
    const int64_t H = image->ne[1], W = image->ne[2], P = KN_QWEN_VISION_PATCH;
    int64_t h, w;
    KN_TRY(kn_qwen_vision_smart_size(H, W, &h, &w, err));
    /* image 0 as [1, 3, H, W], bilinear to [1, 3, h, w] */
    kn_tensor src, img;
    KN_TRY(kn_tensor_view(&src, image, 4, (int64_t[]){1, 3, H, W}, (int64_t[]){H * W * 3, 1, W * 3, 3}, 0, err));
    KN_TRY(kn_arena_tensor(arena, &img, KN_F32, 4, (int64_t[]){1, 3, h, w}, err));
    KN_TRY(kn_resample(&img, &src, KN_RESAMPLE_BILINEAR, err));
    float *px = img.data;
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < h * w; i++) px[c * h * w + i] = (px[c * h * w + i] - mean[c]) / std[c];
    *gh = h / P;
    *gw = w / P;
    KN_TRY(kn_arena_tensor(arena, rows, KN_F32, 2, (int64_t[]){*gh * *gw, KN_QWEN_VISION_ROW}, err));
    float *out = rows->data;
    const int64_t mw = *gw / MERGE, n = *gh * *gw;
    for (int64_t r = 0; r < n; r++) {
        /* row r: merge group r / 4 (raster over the merged grid), patch r % 4 of it (raster in the group) */
        int64_t g = r / (MERGE * MERGE), t = r % (MERGE * MERGE);
        int64_t py = g / mw * MERGE + t / MERGE, pxl = g % mw * MERGE + t % MERGE;
        float *row = out + r * KN_QWEN_VISION_ROW;
        for (int c = 0; c < 3; c++)
            for (int f = 0; f < FRAMES; f++)
                for (int64_t y = 0; y < P; y++)
                    memcpy(row + ((c * FRAMES + f) * P + y) * P, px + (c * h + py * P + y) * w + pxl * P,
                           (size_t)P * sizeof(float));
    }
    return KN_OK;
}

/* ---- forward --------------------------------------------------------------------- */

/* get_window_index: merge-group ids in window order, and where each window
 * starts in patch rows (n_windows + 1 entries). */
typedef struct windows {
    int64_t *group; /* [groups] */
    int64_t *start; /* [n + 1] */
    int64_t n;
} windows;

static int window_order(kn_arena *a, const kn_qwen_vision *m, int64_t mh, int64_t mw, windows *w, kn_err *err) {
    const int64_t side = m->k.window / KN_QWEN_VISION_FACTOR, wy = (mh + side - 1) / side, wx = (mw + side - 1) / side;
    w->group = kn_arena_alloc(a, (size_t)(mh * mw) * sizeof *w->group, err);
    w->start = w->group ? kn_arena_alloc(a, (size_t)(wy * wx + 1) * sizeof *w->start, err) : NULL;
    if (!w->start) return err->code;
    int64_t g = 0;
    w->n = 0;
    w->start[0] = 0;
    for (int64_t by = 0; by < wy; by++)
        for (int64_t bx = 0; bx < wx; bx++) {
            for (int64_t i = by * side; i < mh && i < (by + 1) * side; i++)
                for (int64_t j = bx * side; j < mw && j < (bx + 1) * side; j++) w->group[g++] = i * mw + j;
            w->start[++w->n] = g * MERGE * MERGE;
        }
    return KN_OK;
}

/* Rows [1, N, D] as the fixtures' [N, D]. */
static int emit_rows(kn_debug_fn debug, void *user, const char *name, const kn_tensor *x, kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_tensor_reshape(&t, x, 2, x->ne + 1, err));
    return debug(user, name, &t);
}

static int emit_ints(kn_debug_fn debug, void *user, kn_arena *a, const char *name, const int64_t *v, int64_t n,
                     kn_err *err) {
    kn_tensor t;
    KN_TRY(kn_arena_tensor(a, &t, KN_F32, 1, &n, err));
    for (int64_t i = 0; i < n; i++) ((float *)t.data)[i] = (float)v[i];
    return debug(user, name, &t);
}

/* x [1, N, D] (patch rows) into window order, and the RoPE tables of the rows in that order. */
static int to_window_order(kn_ctx *ctx, const kn_qwen_vision *m, kn_arena *a, const windows *w, int64_t mw,
                           const kn_tensor *x, kn_tensor *xw, kn_tensor *cos_t, kn_tensor *sin_t) {
    kn_err *err = &ctx->err;
    const int64_t N = x->ne[1], D = m->hidden, hd = D / m->k.heads, G = MERGE * MERGE;
    KN_TRY(kn_arena_tensor(a, xw, KN_F32, 3, x->ne, err));
    KN_TRY(kn_arena_tensor(a, cos_t, KN_F32, 2, (int64_t[]){N, hd / 2}, err));
    KN_TRY(kn_arena_tensor(a, sin_t, KN_F32, 2, (int64_t[]){N, hd / 2}, err));
    double *pos = kn_arena_alloc(a, (size_t)N * 2 * sizeof *pos, err);
    if (!pos) return err->code;
    for (int64_t r = 0; r < N; r++) {
        int64_t g = w->group[r / G], t = r % G;
        memcpy((float *)xw->data + r * D, (const float *)x->data + (g * G + t) * D, (size_t)D * sizeof(float));
        pos[2 * r] = (double)(g / mw * MERGE + t / MERGE);     /* patch row */
        pos[2 * r + 1] = (double)(g % mw * MERGE + t % MERGE); /* patch column */
    }
    const int dims[2] = {(int)(hd / 2), (int)(hd / 2)};
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 2, dims, m->k.rope_theta);
}

static int is_full_attention(int64_t block) {
    for (size_t i = 0; i < sizeof full_attention_blocks / sizeof full_attention_blocks[0]; i++)
        if (full_attention_blocks[i] == block) return 1;
    return 0;
}

/* Attention of q, k, v [1, N, D] into o, RoPE applied to q and k first (per
 * row, so windows need no tables of their own): over all rows, or per window,
 * consecutive windows of one size batched into one call. */
static int attend(kn_ctx *ctx, const kn_attn_shape *s, const windows *w, int full, kn_tensor *q, kn_tensor *k,
                  kn_tensor *v, kn_tensor *o, const kn_tensor *cos_t, const kn_tensor *sin_t) {
    kn_err *err = &ctx->err;
    const int64_t N = q->ne[1], D = q->ne[2];
    kn_tensor q4, k4;
    KN_TRY(kn_tensor_reshape(&q4, q, 4, (int64_t[]){1, N, s->heads, s->head_dim}, err));
    KN_TRY(kn_tensor_reshape(&k4, k, 4, (int64_t[]){1, N, s->heads, s->head_dim}, err));
    KN_TRY(kn_rope(ctx, &q4, cos_t, sin_t, KN_ROPE_HALF));
    KN_TRY(kn_rope(ctx, &k4, cos_t, sin_t, KN_ROPE_HALF));
    const kn_attn_args args = {0};
    if (full) return kn_attn_joint(ctx, s, q, k, v, o, &args);
    for (int64_t i = 0, j; i < w->n; i = j) {
        const int64_t r0 = w->start[i], n = w->start[i + 1] - r0;
        for (j = i + 1; j < w->n && w->start[j + 1] - w->start[j] == n; j++) {
        }
        /* windows i..j-1 are n rows each and adjacent: a batch of j - i sequences */
        const int64_t ne[3] = {j - i, n, D};
        kn_tensor t[4], b[4];
        const kn_tensor *all[4] = {q, k, v, o};
        for (int x = 0; x < 4; x++) {
            KN_TRY(kn_tensor_slice(&t[x], all[x], 1, r0, (j - i) * n, err));
            KN_TRY(kn_tensor_reshape(&b[x], &t[x], 3, ne, err));
        }
        KN_TRY(kn_attn_joint(ctx, s, &b[0], &b[1], &b[2], &b[3], &args));
    }
    return KN_OK;
}

static int block_forward(kn_ctx *ctx, const kn_qwen_vision *m, int64_t i, kn_arena *a, const windows *w,
                         kn_tensor *x, const kn_tensor *cos_t, const kn_tensor *sin_t) {
    const kn_qwen_vision_block *b = &m->block[i];
    const kn_attn_shape s = {m->k.heads, m->k.heads, m->hidden / m->k.heads, m->k.eps};
    kn_err *err = &ctx->err;
    kn_tensor h, q, k, v, att;
    KN_TRY(kn_arena_tensor(a, &h, KN_F32, 3, x->ne, err));
    KN_TRY(kn_arena_tensor(a, &q, KN_F32, 3, x->ne, err));
    KN_TRY(kn_arena_tensor(a, &k, KN_F32, 3, x->ne, err));
    KN_TRY(kn_arena_tensor(a, &v, KN_F32, 3, x->ne, err));
    KN_TRY(kn_arena_tensor(a, &att, KN_F32, 3, x->ne, err));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &b->norm1, m->k.eps));
    KN_TRY(kn_attn_project(ctx, &m->weights, &b->attn, &s, &h, &q, &k, &v));
    KN_TRY(attend(ctx, &s, w, is_full_attention(i), &q, &k, &v, &att, cos_t, sin_t));
    KN_TRY(kn_attn_output(ctx, &m->weights, &b->attn, &att, 0, &h));
    KN_TRY(kn_binary(ctx, x, x, &h, KN_ADD));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &b->norm2, m->k.eps));
    KN_TRY(kn_mlp_forward(ctx, &m->weights, &b->mlp, KN_ACT_SILU, &h, &q));
    return kn_binary(ctx, x, x, &q, KN_ADD);
}

/* The merger: RMSNorm, groups of 4 rows as one row, Linear, GELU, Linear. */
static int merge(kn_ctx *ctx, const kn_qwen_vision *m, kn_arena *a, kn_tensor *x, kn_tensor *out) {
    kn_err *err = &ctx->err;
    const int64_t groups = x->ne[1] / (MERGE * MERGE), wide = m->hidden * MERGE * MERGE;
    kn_tensor g, h;
    KN_TRY(kn_rmsnorm(ctx, x, x, &m->ln_q, m->k.eps));
    KN_TRY(kn_tensor_reshape(&g, x, 2, (int64_t[]){groups, wide}, err));
    KN_TRY(kn_arena_tensor(a, &h, KN_F32, 2, g.ne, err));
    KN_TRY(kn_lin_forward(ctx, &m->weights, &h, &g, &m->merge_in));
    KN_TRY(kn_activation(ctx, &h, &h, KN_ACT_GELU_ERF));
    return kn_lin_forward(ctx, &m->weights, out, &h, &m->merge_out);
}

static int check_inputs(const kn_qwen_vision *m, const kn_tensor *rows, int64_t gh, int64_t gw,
                        const kn_tensor *out, kn_err *err) {
    char a[96], b[96];
    if (gh < MERGE || gw < MERGE || gh % MERGE || gw % MERGE || rows->dtype != KN_F32 || rows->ndim != 2 ||
        rows->device != KN_DEV_CPU || !kn_tensor_is_contiguous(rows) || rows->ne[0] != gh * gw ||
        rows->ne[1] != KN_QWEN_VISION_ROW || out->dtype != KN_F32 || out->ndim != 2 ||
        !kn_tensor_is_contiguous(out) || out->ne[0] != gh * gw / (MERGE * MERGE) || out->ne[1] != m->out_dim)
        return kn_fail(err, KN_ERR_SHAPE,
                       "qwen25_vl_vision: patch rows %s of a %lldx%lld grid into %s: expected F32 [%lld, %d] of an "
                       "even grid into [%lld, %lld]",
                       kn_tensor_desc(rows, a, sizeof a), (long long)gh, (long long)gw, kn_tensor_desc(out, b, sizeof b),
                       (long long)(gh * gw), KN_QWEN_VISION_ROW, (long long)(gh * gw / 4), (long long)m->out_dim);
    return KN_OK;
}

static int forward(kn_ctx *ctx, const kn_qwen_vision *m, kn_arena *a, const kn_tensor *rows, int64_t gh, int64_t gw,
                   kn_tensor *out, kn_debug_fn debug, void *user) {
    kn_err *err = &ctx->err;
    const int64_t N = gh * gw, mh = gh / MERGE, mw = gw / MERGE;
    kn_tensor patch, x, xw, cos_t, sin_t;
    windows w = {0};
    KN_TRY(kn_tensor_reshape(&patch, &m->patch, 2, (int64_t[]){m->hidden, KN_QWEN_VISION_ROW}, err));
    KN_TRY(kn_arena_tensor(a, &x, KN_F32, 3, (int64_t[]){1, N, m->hidden}, err));
    KN_TRY(kn_linear(ctx, &x, rows, &patch, NULL));
    KN_TRY(window_order(a, m, mh, mw, &w, err));
    if (debug) {
        KN_TRY(emit_rows(debug, user, "patch_embeds", &x, err));
        KN_TRY(emit_ints(debug, user, a, "window_index", w.group, mh * mw, err));
        KN_TRY(emit_ints(debug, user, a, "cu_window_seqlens", w.start, w.n + 1, err));
    }
    KN_TRY(to_window_order(ctx, m, a, &w, mw, &x, &xw, &cos_t, &sin_t));
    for (int64_t i = 0; i < m->depth; i++) {
        size_t mark = kn_arena_mark(a);
        int rc = block_forward(ctx, m, i, a, &w, &xw, &cos_t, &sin_t);
        kn_arena_reset(a, mark);
        if (rc) return kn_err_wrap(err, "qwen25_vl_vision: block %lld", (long long)i);
        if (debug && i == 0) KN_TRY(emit_rows(debug, user, "block0", &xw, err));
    }
    if (debug) KN_TRY(emit_rows(debug, user, "pre_merger", &xw, err));
    return merge(ctx, m, a, &xw, out);
}

int kn_qwen_vision_forward(kn_ctx *ctx, const kn_qwen_vision *m, kn_arena *arena, const kn_tensor *rows, int64_t gh,
                           int64_t gw, kn_tensor *out, kn_debug_fn debug, void *debug_user) {
    if (ctx->device != KN_DEV_CPU)
        return kn_fail(&ctx->err, KN_ERR_UNSUPPORTED, "qwen25_vl_vision: runs on the CPU only so far");
    KN_TRY(check_inputs(m, rows, gh, gw, out, &ctx->err));
    size_t mark = kn_arena_mark(arena);
    int rc = forward(ctx, m, arena, rows, gh, gw, out, debug, debug_user);
    kn_arena_reset(arena, mark);
    return rc;
}

/* ---- as the text encoder's vision encoder ------------------------------------------ */

static int encoder_load(void **out, const kn_st_file *f, kn_err *err) {
    *out = NULL;
    if (!kn_qwen_vision_present(f, "visual.")) return KN_OK;
    kn_qwen_vision *m = malloc(sizeof *m);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "qwen25_vl_vision: out of memory");
    if (kn_qwen_vision_load(m, f, "visual.", &kn_qwen25vl_vision, err)) {
        free(m);
        return err->code;
    }
    *out = m;
    return KN_OK;
}

static void encoder_free(void *tower) {
    kn_qwen_vision_free(tower);
    free(tower);
}

static int encoder_encode(kn_ctx *ctx, const void *tower, kn_arena *arena, const kn_tensor *image, kn_tensor *rows,
                          int64_t grid[2], kn_debug_fn debug, void *debug_user) {
    const kn_qwen_vision *m = tower;
    kn_err *err = &ctx->err;
    kn_tensor px;
    int64_t h = 0, w = 0, gh = 0, gw = 0;
    /* the output first, so that the patch rows can go with the scratch */
    if (image->ndim == 4) KN_TRY(kn_qwen_vision_smart_size(image->ne[1], image->ne[2], &h, &w, err));
    KN_TRY(kn_arena_tensor(arena, rows, KN_F32, 2,
                           (int64_t[]){h / KN_QWEN_VISION_FACTOR * (w / KN_QWEN_VISION_FACTOR), m->out_dim}, err));
    size_t mark = kn_arena_mark(arena);
    int rc = kn_qwen_vision_rows(arena, image, &px, &gh, &gw, err);
    if (!rc) rc = kn_qwen_vision_forward(ctx, m, arena, &px, gh, gw, rows, debug, debug_user);
    kn_arena_reset(arena, mark);
    grid[0] = gh / MERGE;
    grid[1] = gw / MERGE;
    return rc;
}

const kn_llm_vision kn_qwen25vl_vision_encoder = {encoder_load, encoder_free, encoder_encode};
