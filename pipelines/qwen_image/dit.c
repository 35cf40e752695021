/* Qwen-Image DiT forward: see dit.h for the math and conventions. */
#include "pipelines/qwen_image/dit.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const kn_qwen_dit_family kn_qwen_image_family = {{16, 56, 56}, 10000.0, 2};

#define LN_EPS 1e-6f
#define QK_NORM_EPS 1e-6f
#define TXT_NORM_EPS 1e-6f
#define TIME_SCALE 1000.0 /* ComfyUI passes sigma; the embedding multiplies by 1000 */
#define TIME_MAX_PERIOD 10000.0

/* ---- loading ------------------------------------------------------------ */

enum { S_D, S_6D, S_2D, S_HD, S_F, S_JOINT, S_IN, S_OUT, S_T, S_NONE };

typedef struct weight_spec {
    size_t offset; /* into kn_qwen_dit_block or kn_qwen_dit */
    const char *key;
    int rows, cols; /* symbolic sizes; cols S_NONE for vectors */
} weight_spec;

#define BW(field, key, r, c) {offsetof(kn_qwen_dit_block, field), key, r, c}
static const weight_spec block_specs[] = {
    BW(img_mod_w, "img_mod.1.weight", S_6D, S_D),         BW(img_mod_b, "img_mod.1.bias", S_6D, S_NONE),
    BW(txt_mod_w, "txt_mod.1.weight", S_6D, S_D),         BW(txt_mod_b, "txt_mod.1.bias", S_6D, S_NONE),
    BW(to_q_w, "attn.to_q.weight", S_D, S_D),             BW(to_q_b, "attn.to_q.bias", S_D, S_NONE),
    BW(to_k_w, "attn.to_k.weight", S_D, S_D),             BW(to_k_b, "attn.to_k.bias", S_D, S_NONE),
    BW(to_v_w, "attn.to_v.weight", S_D, S_D),             BW(to_v_b, "attn.to_v.bias", S_D, S_NONE),
    BW(to_out_w, "attn.to_out.0.weight", S_D, S_D),       BW(to_out_b, "attn.to_out.0.bias", S_D, S_NONE),
    BW(add_q_w, "attn.add_q_proj.weight", S_D, S_D),      BW(add_q_b, "attn.add_q_proj.bias", S_D, S_NONE),
    BW(add_k_w, "attn.add_k_proj.weight", S_D, S_D),      BW(add_k_b, "attn.add_k_proj.bias", S_D, S_NONE),
    BW(add_v_w, "attn.add_v_proj.weight", S_D, S_D),      BW(add_v_b, "attn.add_v_proj.bias", S_D, S_NONE),
    BW(add_out_w, "attn.to_add_out.weight", S_D, S_D),    BW(add_out_b, "attn.to_add_out.bias", S_D, S_NONE),
    BW(norm_q, "attn.norm_q.weight", S_HD, S_NONE),       BW(norm_k, "attn.norm_k.weight", S_HD, S_NONE),
    BW(norm_added_q, "attn.norm_added_q.weight", S_HD, S_NONE),
    BW(norm_added_k, "attn.norm_added_k.weight", S_HD, S_NONE),
    BW(img_fc1_w, "img_mlp.net.0.proj.weight", S_F, S_D), BW(img_fc1_b, "img_mlp.net.0.proj.bias", S_F, S_NONE),
    BW(img_fc2_w, "img_mlp.net.2.weight", S_D, S_F),      BW(img_fc2_b, "img_mlp.net.2.bias", S_D, S_NONE),
    BW(txt_fc1_w, "txt_mlp.net.0.proj.weight", S_F, S_D), BW(txt_fc1_b, "txt_mlp.net.0.proj.bias", S_F, S_NONE),
    BW(txt_fc2_w, "txt_mlp.net.2.weight", S_D, S_F),      BW(txt_fc2_b, "txt_mlp.net.2.bias", S_D, S_NONE),
};

#define MW(field, key, r, c) {offsetof(kn_qwen_dit, field), key, r, c}
static const weight_spec model_specs[] = {
    MW(img_in_w, "img_in.weight", S_D, S_IN),         MW(img_in_b, "img_in.bias", S_D, S_NONE),
    MW(txt_in_w, "txt_in.weight", S_D, S_JOINT),      MW(txt_in_b, "txt_in.bias", S_D, S_NONE),
    MW(txt_norm, "txt_norm.weight", S_JOINT, S_NONE),
    MW(t_lin1_w, "time_text_embed.timestep_embedder.linear_1.weight", S_D, S_T),
    MW(t_lin1_b, "time_text_embed.timestep_embedder.linear_1.bias", S_D, S_NONE),
    MW(t_lin2_w, "time_text_embed.timestep_embedder.linear_2.weight", S_D, S_D),
    MW(t_lin2_b, "time_text_embed.timestep_embedder.linear_2.bias", S_D, S_NONE),
    MW(norm_out_w, "norm_out.linear.weight", S_2D, S_D), MW(norm_out_b, "norm_out.linear.bias", S_2D, S_NONE),
    MW(proj_out_w, "proj_out.weight", S_OUT, S_D),    MW(proj_out_b, "proj_out.bias", S_OUT, S_NONE),
};

#define N_MODEL_SPECS ((int64_t)(sizeof model_specs / sizeof model_specs[0]))
#define N_BLOCK_SPECS ((int64_t)(sizeof block_specs / sizeof block_specs[0]))

/* The number of weight field w of m (model fields, then block by block), or
 * -1 when w is not one: the index of its adapter list. Addresses compared as
 * integers since w may be any tensor a caller passes. */
static int64_t slot_index(const kn_qwen_dit *m, const kn_tensor *w) {
    uintptr_t p = (uintptr_t)w, base = (uintptr_t)m, b0 = (uintptr_t)m->block;
    if (p >= base && p < base + sizeof *m) {
        for (int64_t i = 0; i < N_MODEL_SPECS; i++)
            if (p - base == model_specs[i].offset) return i;
        return -1;
    }
    if (!m->block || p < b0 || p >= b0 + (uintptr_t)m->cfg.layers * sizeof *m->block) return -1;
    int64_t l = (int64_t)((p - b0) / sizeof *m->block);
    size_t off = (size_t)(p - b0) - (size_t)l * sizeof *m->block;
    for (int64_t i = 0; i < N_BLOCK_SPECS; i++)
        if (off == block_specs[i].offset) return N_MODEL_SPECS + l * N_BLOCK_SPECS + i;
    return -1;
}

/* Every linear of the DiT: the weight plus the adapters beside its slot. */
static int linear(kn_ctx *ctx, const kn_qwen_dit *m, kn_tensor *y, const kn_tensor *x, const kn_tensor *w,
                  const kn_tensor *b) {
    int64_t i = m->adapters ? slot_index(m, w) : -1;
    const kn_adapter_list *a = i >= 0 ? &m->adapters[i] : NULL;
    return kn_linear_lora(ctx, y, x, w, b, a ? a->ad : NULL, a ? a->n : 0);
}

static int64_t sym_size(const kn_qwen_dit_config *c, int64_t time_ch, int s) {
    int64_t p2 = (int64_t)c->family.patch * c->family.patch;
    switch (s) {
    case S_D: return c->dim;
    case S_6D: return 6 * c->dim;
    case S_2D: return 2 * c->dim;
    case S_HD: return c->head_dim;
    case S_F: return c->mlp_hidden;
    case S_JOINT: return c->joint_dim;
    case S_IN: return c->in_channels;
    case S_OUT: return c->out_channels * p2;
    case S_T: return time_ch;
    }
    return -1;
}

static int bind(const kn_st_file *f, const char *prefix, const char *key, const kn_qwen_dit_config *c,
                int64_t time_ch, const weight_spec *s, kn_tensor *t, kn_err *err) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    KN_TRY(kn_st_get(f, name, t, err));
    int64_t ne[2] = {sym_size(c, time_ch, s->rows), sym_size(c, time_ch, s->cols)};
    return kn_tensor_expect(t, "qwen_image_dit weight", s->cols == S_NONE ? 1 : 2, ne, err);
}

/* The size of a named weight's dimension, or an error naming it. */
static int dim_of(const kn_st_file *f, const char *prefix, const char *key, int d, int64_t *out, kn_err *err) {
    char name[256];
    kn_tensor t;
    snprintf(name, sizeof name, "%s%s", prefix, key);
    KN_TRY(kn_st_get(f, name, &t, err));
    if (d >= t.ndim) return kn_fail(err, KN_ERR_SHAPE, "%s: '%s' has %d dims", kn_st_path(f), name, t.ndim);
    *out = t.ne[d];
    return KN_OK;
}

int kn_qwen_dit_load(kn_qwen_dit *m, const kn_st_file *f, const kn_qwen_dit_family *family, kn_err *err) {
    memset(m, 0, sizeof *m);
    const char *prefix = kn_st_find(f, "model.diffusion_model.img_in.weight") ? "model.diffusion_model." : "";
    kn_qwen_dit_config *c = &m->cfg;
    c->family = *family;
    int64_t time_ch = 0, patch_ch = 0;
    KN_TRY(dim_of(f, prefix, "img_in.weight", 0, &c->dim, err));
    KN_TRY(dim_of(f, prefix, "img_in.weight", 1, &c->in_channels, err));
    KN_TRY(dim_of(f, prefix, "txt_in.weight", 1, &c->joint_dim, err));
    KN_TRY(dim_of(f, prefix, "transformer_blocks.0.attn.norm_q.weight", 0, &c->head_dim, err));
    KN_TRY(dim_of(f, prefix, "transformer_blocks.0.img_mlp.net.0.proj.weight", 0, &c->mlp_hidden, err));
    KN_TRY(dim_of(f, prefix, "time_text_embed.timestep_embedder.linear_1.weight", 1, &time_ch, err));
    KN_TRY(dim_of(f, prefix, "proj_out.weight", 0, &patch_ch, err));
    int64_t p2 = (int64_t)family->patch * family->patch;
    int axes = family->axes_dims[0] + family->axes_dims[1] + family->axes_dims[2];
    if (c->head_dim <= 0 || c->dim % c->head_dim || patch_ch % p2 || time_ch % 2 || axes != c->head_dim ||
        family->axes_dims[0] % 2 || family->axes_dims[1] % 2 || family->axes_dims[2] % 2)
        return kn_fail(err, KN_ERR_SHAPE,
                       "%s: inconsistent Qwen-Image DiT: dim %lld, head_dim %lld, RoPE axes %d+%d+%d, proj_out %lld",
                       kn_st_path(f), (long long)c->dim, (long long)c->head_dim, family->axes_dims[0],
                       family->axes_dims[1], family->axes_dims[2], (long long)patch_ch);
    c->heads = c->dim / c->head_dim;
    c->out_channels = patch_ch / p2;
    char name[256];
    for (c->layers = 0;; c->layers++) {
        snprintf(name, sizeof name, "%stransformer_blocks.%lld.img_mod.1.weight", prefix, (long long)c->layers);
        if (!kn_st_find(f, name)) break;
    }
    c->default_ref_method = kn_st_find(f, "__index_timestep_zero__") ? KN_QWEN_REF_INDEX_TIMESTEP_ZERO
                                                                      : KN_QWEN_REF_INDEX;
    for (size_t i = 0; i < sizeof model_specs / sizeof model_specs[0]; i++) {
        const weight_spec *s = &model_specs[i];
        KN_TRY(bind(f, prefix, s->key, c, time_ch, s, (kn_tensor *)((char *)m + s->offset), err));
    }
    m->block = calloc((size_t)(c->layers ? c->layers : 1), sizeof *m->block);
    m->adapters = calloc((size_t)(N_MODEL_SPECS + c->layers * N_BLOCK_SPECS), sizeof *m->adapters);
    if (!m->block || !m->adapters) {
        kn_qwen_dit_free(m);
        return kn_fail(err, KN_ERR_NOMEM, "qwen_image_dit: out of memory");
    }
    for (int64_t l = 0; l < c->layers; l++) {
        for (size_t i = 0; i < sizeof block_specs / sizeof block_specs[0]; i++) {
            const weight_spec *s = &block_specs[i];
            char key[160];
            snprintf(key, sizeof key, "transformer_blocks.%lld.%s", (long long)l, s->key);
            int rc = bind(f, prefix, key, c, time_ch, s, (kn_tensor *)((char *)&m->block[l] + s->offset), err);
            if (rc) {
                kn_qwen_dit_free(m);
                return rc;
            }
        }
    }
    return KN_OK;
}

void kn_qwen_dit_free(kn_qwen_dit *m) {
    free(m->block);
    free(m->adapters);
    m->block = NULL;
    m->adapters = NULL;
}

kn_tensor *kn_qwen_dit_weight(kn_qwen_dit *m, const char *key) {
    static const char blocks[] = "transformer_blocks.";
    for (size_t i = 0; i < sizeof model_specs / sizeof model_specs[0]; i++)
        if (strcmp(key, model_specs[i].key) == 0) return (kn_tensor *)((char *)m + model_specs[i].offset);
    if (strncmp(key, blocks, sizeof blocks - 1) != 0) return NULL;
    char *end;
    long long l = strtoll(key + sizeof blocks - 1, &end, 10);
    if (end == key + sizeof blocks - 1 || *end != '.' || l < 0 || l >= m->cfg.layers) return NULL;
    for (size_t i = 0; i < sizeof block_specs / sizeof block_specs[0]; i++)
        if (strcmp(end + 1, block_specs[i].key) == 0) return (kn_tensor *)((char *)&m->block[l] + block_specs[i].offset);
    return NULL;
}

kn_adapter_list *kn_qwen_dit_adapters(kn_qwen_dit *m, const char *key) {
    const kn_tensor *w = kn_qwen_dit_weight(m, key);
    int64_t i = w && w->ndim == 2 && m->adapters ? slot_index(m, w) : -1;
    return i >= 0 ? &m->adapters[i] : NULL;
}

/* ---- block -------------------------------------------------------------- */

/* Chunk k of a [B, 6D] (or [B, 2D]) modulation tensor, optionally of one sample. */
static int mod_chunk(kn_ctx *ctx, const kn_tensor *mod, int64_t b, int64_t k, int64_t D, kn_tensor *out) {
    kn_tensor rows = *mod;
    if (b >= 0) KN_TRY(kn_tensor_slice(&rows, mod, 0, b, 1, &ctx->err));
    return kn_tensor_slice(out, &rows, 1, k * D, D, &ctx->err);
}

typedef enum { SEG_MODULATE, SEG_GATE } seg_op;

/* Applies chunk(s) of `mod` to tokens [0, n_main) and of `mod0` (when given) to
 * the rest: Edit-2511 reference tokens are modulated with temb(0). */
static int apply_mod(kn_ctx *ctx, seg_op op, kn_tensor *x, const kn_tensor *delta, const kn_tensor *mod,
                     const kn_tensor *mod0, int64_t n_main, int64_t k) {
    int64_t B = x->ne[0], L = x->ne[1], D = x->ne[2];
    kn_tensor c0, c1;
    if (!mod0 || n_main >= L) {
        KN_TRY(mod_chunk(ctx, mod, -1, k, D, &c0));
        if (op == SEG_GATE) return kn_gate_add(ctx, x, delta, &c0);
        KN_TRY(mod_chunk(ctx, mod, -1, k + 1, D, &c1));
        return kn_modulate(ctx, x, x, &c0, &c1);
    }
    for (int64_t b = 0; b < B; b++) {
        for (int seg = 0; seg < 2; seg++) {
            int64_t t0 = seg ? n_main : 0, n = seg ? L - n_main : n_main;
            const kn_tensor *m = seg ? mod0 : mod;
            kn_tensor xb, xs, db, ds;
            KN_TRY(kn_tensor_slice(&xb, x, 0, b, 1, &ctx->err));
            KN_TRY(kn_tensor_slice(&xs, &xb, 1, t0, n, &ctx->err));
            KN_TRY(mod_chunk(ctx, m, b, k, D, &c0));
            if (op == SEG_GATE) {
                KN_TRY(kn_tensor_slice(&db, delta, 0, b, 1, &ctx->err));
                KN_TRY(kn_tensor_slice(&ds, &db, 1, t0, n, &ctx->err));
                KN_TRY(kn_gate_add(ctx, &xs, &ds, &c0));
            } else {
                KN_TRY(mod_chunk(ctx, m, b, k + 1, D, &c1));
                KN_TRY(kn_modulate(ctx, &xs, &xs, &c0, &c1));
            }
        }
    }
    return KN_OK;
}

/* dst (a [B, n, D] view into a joint buffer) = norm?(x @ w^T + b), through tmp
 * when the view is not contiguous (batch > 1). */
static int project(kn_ctx *ctx, const kn_qwen_dit *m, kn_tensor *dst, kn_tensor *tmp, const kn_tensor *x, const kn_tensor *w,
                   const kn_tensor *b, const kn_tensor *head_norm, int64_t heads) {
    kn_tensor *y = kn_tensor_is_contiguous(dst) ? dst : tmp;
    KN_TRY(linear(ctx, m, y, x, w, b));
    if (head_norm) {
        kn_tensor h;
        int64_t ne[4] = {y->ne[0], y->ne[1], heads, y->ne[2] / heads};
        KN_TRY(kn_tensor_reshape(&h, y, 4, ne, &ctx->err));
        KN_TRY(kn_rmsnorm(ctx, &h, &h, head_norm, QK_NORM_EPS));
    }
    return y == dst ? KN_OK : kn_tensor_copy(dst, y, &ctx->err);
}

/* A contiguous [B, n, D] copy of rows [t0, t0+n) of a joint buffer (a view when B == 1). */
static int rows_of(kn_ctx *ctx, const kn_tensor *joint, int64_t t0, int64_t n, kn_tensor *tmp, kn_tensor *out) {
    KN_TRY(kn_tensor_slice(out, joint, 1, t0, n, &ctx->err));
    if (kn_tensor_is_contiguous(out)) return KN_OK;
    KN_TRY(kn_tensor_copy(tmp, out, &ctx->err));
    *out = *tmp;
    return KN_OK;
}

/* A contiguous [d0, d1, d2] tensor over the start of a scratch buffer. */
static kn_tensor view(const kn_tensor *buf, int64_t d0, int64_t d1, int64_t d2) {
    return kn_tensor_make(buf->dtype, buf->device, buf->data, 3, (int64_t[]){d0, d1, d2});
}

/* One stream's feed-forward half: x += gate2 * fc2(gelu(fc1(LN(x)*(1+scale2)+shift2))). */
static int stream_mlp(kn_ctx *ctx, const kn_qwen_dit *m, kn_tensor *x, const kn_tensor *mod, const kn_tensor *mod0, int64_t n_main,
                      const kn_tensor *fc1_w, const kn_tensor *fc1_b, const kn_tensor *fc2_w, const kn_tensor *fc2_b,
                      kn_tensor *xm, kn_tensor *hid, kn_tensor *o) {
    KN_TRY(kn_layernorm(ctx, xm, x, NULL, NULL, LN_EPS));
    KN_TRY(apply_mod(ctx, SEG_MODULATE, xm, NULL, mod, mod0, n_main, 3));
    KN_TRY(linear(ctx, m, hid, xm, fc1_w, fc1_b));
    KN_TRY(kn_activation(ctx, hid, hid, KN_ACT_GELU_TANH));
    KN_TRY(linear(ctx, m, o, hid, fc2_w, fc2_b));
    return apply_mod(ctx, SEG_GATE, x, o, mod, mod0, n_main, 5);
}

static int block_forward(kn_ctx *ctx, const kn_qwen_dit *m, const kn_qwen_dit_block *w, kn_tensor *img,
                         kn_tensor *txt, const kn_tensor *tvec, const kn_tensor *tvec0, int64_t n_main,
                         const kn_tensor *cos, const kn_tensor *sin, const kn_tensor *key_mask) {
    const kn_qwen_dit_config *c = &m->cfg;
    int64_t B = img->ne[0], Li = img->ne[1], Lt = txt->ne[1], L = Lt + Li, D = c->dim, F = c->mlp_hidden;
    int64_t Lmax = Li > Lt ? Li : Lt;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    kn_tensor mod_i, mod_t, mod_i0, q, k, v, o, xm, tmp, hid, out;
    KN_TRY(kn_arena_tensor(a, &mod_i, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
    KN_TRY(kn_arena_tensor(a, &mod_t, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
    KN_TRY(linear(ctx, m, &mod_i, tvec, &w->img_mod_w, &w->img_mod_b));
    KN_TRY(linear(ctx, m, &mod_t, tvec, &w->txt_mod_w, &w->txt_mod_b));
    const kn_tensor *mod0 = NULL;
    if (tvec0) {
        KN_TRY(kn_arena_tensor(a, &mod_i0, KN_F32, 2, (int64_t[]){B, 6 * D}, e));
        KN_TRY(linear(ctx, m, &mod_i0, tvec0, &w->img_mod_w, &w->img_mod_b));
        mod0 = &mod_i0;
    }
    int64_t joint_ne[3] = {B, L, D};
    KN_TRY(kn_arena_tensor(a, &q, KN_F32, 3, joint_ne, e));
    KN_TRY(kn_arena_tensor(a, &k, KN_F32, 3, joint_ne, e));
    KN_TRY(kn_arena_tensor(a, &v, KN_F32, 3, joint_ne, e));
    KN_TRY(kn_arena_tensor(a, &o, KN_F32, 3, joint_ne, e));
    KN_TRY(kn_arena_tensor(a, &xm, KN_F32, 3, (int64_t[]){B, Lmax, D}, e));
    KN_TRY(kn_arena_tensor(a, &tmp, KN_F32, 3, (int64_t[]){B, Lmax, D}, e));
    KN_TRY(kn_arena_tensor(a, &out, KN_F32, 3, (int64_t[]){B, Lmax, D}, e));
    KN_TRY(kn_arena_tensor(a, &hid, KN_F32, 3, (int64_t[]){B, Lmax, F}, e));

    /* attention half: both streams' q, k, v into the joint [text, image] buffers */
    for (int s = 0; s < 2; s++) {
        kn_tensor *x = s ? img : txt;
        int64_t n = x->ne[1], t0 = s ? Lt : 0;
        kn_tensor xs, ts, qs, ks, vs;
        xs = view(&xm, B, n, xm.ne[2]);
        ts = view(&tmp, B, n, tmp.ne[2]);
        KN_TRY(kn_layernorm(ctx, &xs, x, NULL, NULL, LN_EPS));
        KN_TRY(apply_mod(ctx, SEG_MODULATE, &xs, NULL, s ? &mod_i : &mod_t, s ? mod0 : NULL, s ? n_main : n, 0));
        KN_TRY(kn_tensor_slice(&qs, &q, 1, t0, n, e));
        KN_TRY(kn_tensor_slice(&ks, &k, 1, t0, n, e));
        KN_TRY(kn_tensor_slice(&vs, &v, 1, t0, n, e));
        KN_TRY(project(ctx, m, &qs, &ts, &xs, s ? &w->to_q_w : &w->add_q_w, s ? &w->to_q_b : &w->add_q_b,
                    s ? &w->norm_q : &w->norm_added_q, c->heads));
        KN_TRY(project(ctx, m, &ks, &ts, &xs, s ? &w->to_k_w : &w->add_k_w, s ? &w->to_k_b : &w->add_k_b,
                    s ? &w->norm_k : &w->norm_added_k, c->heads));
        KN_TRY(project(ctx, m, &vs, &ts, &xs, s ? &w->to_v_w : &w->add_v_w, s ? &w->to_v_b : &w->add_v_b, NULL,
                    c->heads));
    }
    kn_tensor q4, k4, v4, o4;
    int64_t ne4[4] = {B, L, c->heads, c->head_dim};
    KN_TRY(kn_tensor_reshape(&q4, &q, 4, ne4, e));
    KN_TRY(kn_tensor_reshape(&k4, &k, 4, ne4, e));
    KN_TRY(kn_tensor_reshape(&v4, &v, 4, ne4, e));
    KN_TRY(kn_tensor_reshape(&o4, &o, 4, ne4, e));
    KN_TRY(kn_rope(ctx, &q4, cos, sin, KN_ROPE_INTERLEAVED));
    KN_TRY(kn_rope(ctx, &k4, cos, sin, KN_ROPE_INTERLEAVED));
    KN_TRY(kn_attention(ctx, &o4, &q4, &k4, &v4, key_mask, 0, 1.0f / sqrtf((float)c->head_dim)));
    for (int s = 0; s < 2; s++) {
        kn_tensor *x = s ? img : txt;
        int64_t n = x->ne[1];
        kn_tensor att, ts, os;
        ts = view(&tmp, B, n, tmp.ne[2]);
        os = view(&out, B, n, out.ne[2]);
        KN_TRY(rows_of(ctx, &o, s ? Lt : 0, n, &ts, &att));
        KN_TRY(linear(ctx, m, &os, &att, s ? &w->to_out_w : &w->add_out_w, s ? &w->to_out_b : &w->add_out_b));
        KN_TRY(apply_mod(ctx, SEG_GATE, x, &os, s ? &mod_i : &mod_t, s ? mod0 : NULL, s ? n_main : n, 2));
    }
    /* feed-forward half */
    for (int s = 0; s < 2; s++) {
        kn_tensor *x = s ? img : txt;
        int64_t n = x->ne[1];
        kn_tensor xs, hs, os;
        xs = view(&xm, B, n, D);
        hs = view(&hid, B, n, F);
        os = view(&out, B, n, D);
        KN_TRY(stream_mlp(ctx, m, x, s ? &mod_i : &mod_t, s ? mod0 : NULL, s ? n_main : n,
                       s ? &w->img_fc1_w : &w->txt_fc1_w, s ? &w->img_fc1_b : &w->txt_fc1_b,
                       s ? &w->img_fc2_w : &w->txt_fc2_w, s ? &w->img_fc2_b : &w->txt_fc2_b, &xs, &hs, &os));
    }
    return KN_OK;
}

int kn_qwen_dit_block_forward(kn_ctx *ctx, const kn_qwen_dit *m, int64_t layer, kn_tensor *img, kn_tensor *txt,
                              const kn_tensor *tvec, const kn_tensor *tvec0, int64_t n_main, const kn_tensor *cos,
                              const kn_tensor *sin, const kn_tensor *key_mask) {
    const kn_qwen_dit_config *c = &m->cfg;
    if (layer < 0 || layer >= c->layers)
        return kn_fail(&ctx->err, KN_ERR_INVALID, "qwen_image_dit: block %lld of %lld", (long long)layer,
                       (long long)c->layers);
    int64_t B = img->ne[0];
    KN_TRY(kn_tensor_expect(img, "qwen_image_dit image stream", 3, (int64_t[]){-1, -1, c->dim}, &ctx->err));
    KN_TRY(kn_tensor_expect(txt, "qwen_image_dit text stream", 3, (int64_t[]){B, -1, c->dim}, &ctx->err));
    KN_TRY(kn_tensor_expect(tvec, "qwen_image_dit time vector", 2, (int64_t[]){B, c->dim}, &ctx->err));
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = block_forward(ctx, m, &m->block[layer], img, txt, tvec, tvec0, n_main, cos, sin, key_mask);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}

/* ---- model-level layout: patches, RoPE tables, time embedding ---------- */

typedef struct grid {
    int64_t H, W, hl, wl; /* latent size and patch grid */
} grid;

static grid grid_of(const kn_tensor *x, int p) {
    grid g = {x->ne[3], x->ne[4], 0, 0};
    g.hl = (g.H + p - 1) / p;
    g.wl = (g.W + p - 1) / p;
    return g;
}

/* tokens[b, t0 + i*wl + j, c*p*p + py*p + px] = x[b, c, 0, (i*p+py) % H, (j*p+px) % W]:
 * circular padding to the patch grid, tokens in raster order. */
static void patchify(float *tokens, int64_t ntok_all, int64_t t0, const kn_tensor *x, int p) {
    int64_t B = x->ne[0], C = x->ne[1];
    grid g = grid_of(x, p);
    int64_t F = C * p * p;
    const float *xd = x->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < g.hl; i++)
            for (int64_t j = 0; j < g.wl; j++) {
                float *tok = tokens + (b * ntok_all + t0 + i * g.wl + j) * F;
                for (int64_t c = 0; c < C; c++)
                    for (int py = 0; py < p; py++)
                        for (int px = 0; px < p; px++) {
                            int64_t y = (i * p + py) % g.H, xx = (j * p + px) % g.W;
                            tok[c * p * p + py * p + px] = xd[((b * C + c) * g.H + y) * g.W + xx];
                        }
            }
}

static void unpatchify(kn_tensor *out, const float *tokens, int64_t ntok_all, int p) {
    int64_t B = out->ne[0], C = out->ne[1];
    grid g = grid_of(out, p);
    int64_t F = C * p * p;
    float *od = out->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t y = 0; y < g.H; y++)
                for (int64_t xx = 0; xx < g.W; xx++) {
                    const float *tok = tokens + (b * ntok_all + (y / p) * g.wl + xx / p) * F;
                    od[((b * C + c) * g.H + y) * g.W + xx] = tok[c * p * p + (y % p) * p + xx % p];
                }
}

/* [cos(args), sin(args)], args_k = 1000 sigma * max_period^(-k/half). */
static void time_sinusoid(float *emb, int64_t ch, double sigma) {
    int64_t half = ch / 2;
    for (int64_t k = 0; k < half; k++) {
        double arg = TIME_SCALE * sigma * exp(-log(TIME_MAX_PERIOD) * (double)k / (double)half);
        emb[k] = (float)cos(arg);
        emb[half + k] = (float)sin(arg);
    }
}

/* silu(temb(sigma)) for each sample: the vector every modulation reads. */
static int time_vector(kn_ctx *ctx, const kn_qwen_dit *m, const float *sigma, int use_zero, kn_tensor *tvec,
                       kn_tensor *temb_out) {
    int64_t B = tvec->ne[0], ch = m->t_lin1_w.ne[1], D = m->cfg.dim;
    kn_tensor sin_emb, h;
    KN_TRY(kn_arena_tensor(ctx->scratch, &sin_emb, KN_F32, 2, (int64_t[]){B, ch}, &ctx->err));
    KN_TRY(kn_arena_tensor(ctx->scratch, &h, KN_F32, 2, (int64_t[]){B, D}, &ctx->err));
    for (int64_t b = 0; b < B; b++) time_sinusoid((float *)sin_emb.data + b * ch, ch, use_zero ? 0.0 : sigma[b]);
    KN_TRY(linear(ctx, m, &h, &sin_emb, &m->t_lin1_w, &m->t_lin1_b));
    KN_TRY(kn_activation(ctx, &h, &h, KN_ACT_SILU));
    KN_TRY(linear(ctx, m, tvec, &h, &m->t_lin2_w, &m->t_lin2_b));
    if (temb_out) KN_TRY(kn_tensor_copy(temb_out, tvec, &ctx->err));
    return kn_activation(ctx, tvec, tvec, KN_ACT_SILU);
}

static int check_inputs(kn_ctx *ctx, const kn_qwen_dit *m, const kn_qwen_dit_input *in, const kn_tensor *out) {
    const kn_qwen_dit_config *c = &m->cfg;
    kn_err *e = &ctx->err;
    int p = c->family.patch;
    int64_t C = c->in_channels / (p * p);
    const kn_tensor *x = in->x;
    KN_TRY(kn_tensor_expect(x, "qwen_image_dit input latent", 5, (int64_t[]){-1, C, 1, -1, -1}, e));
    int64_t B = x->ne[0];
    KN_TRY(kn_tensor_expect(in->sigma, "qwen_image_dit sigma", 1, (int64_t[]){B}, e));
    KN_TRY(kn_tensor_expect(in->context, "qwen_image_dit context", 3, (int64_t[]){B, -1, c->joint_dim}, e));
    if (in->context_mask)
        KN_TRY(kn_tensor_expect(in->context_mask, "qwen_image_dit context mask", 2,
                             (int64_t[]){B, in->context->ne[1]}, e));
    for (int r = 0; r < in->n_refs; r++)
        KN_TRY(kn_tensor_expect(in->refs[r], "qwen_image_dit reference latent", 5, (int64_t[]){B, C, 1, -1, -1}, e));
    KN_TRY(kn_tensor_expect(out, "qwen_image_dit output", 5, (int64_t[]){B, c->out_channels, 1, x->ne[3], x->ne[4]},
                         e));
    if (x->ne[3] < 1 || x->ne[4] < 1 || in->context->ne[1] < 1)
        return kn_fail(e, KN_ERR_SHAPE, "qwen_image_dit: empty latent or context");
    const kn_tensor *all[] = {x, in->sigma, in->context, out};
    for (size_t i = 0; i < 4; i++)
        if (all[i]->dtype != KN_F32 || !kn_tensor_is_contiguous(all[i]) || all[i]->device != KN_DEV_CPU)
            return kn_fail(e, KN_ERR_SHAPE, "qwen_image_dit: inputs and output must be contiguous F32 on the CPU");
    return KN_OK;
}

static int forward(kn_ctx *ctx, const kn_qwen_dit *m, const kn_qwen_dit_input *in, kn_tensor *out,
                   kn_debug_fn debug, void *user) {
    const kn_qwen_dit_config *c = &m->cfg;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int p = c->family.patch;
    int64_t B = in->x->ne[0], D = c->dim, Lt = in->context->ne[1], P = c->head_dim / 2;
    grid g = grid_of(in->x, p);
    int64_t n_main = g.hl * g.wl, Ni = n_main;
    for (int r = 0; r < in->n_refs; r++) {
        grid gr = grid_of(in->refs[r], p);
        Ni += gr.hl * gr.wl;
    }
    int64_t L = Lt + Ni;

    /* RoPE ids: text tokens at txt_start + j on all axes, after the main grid's
     * half-extent; image tokens at (frame, row - hl/2, col - wl/2). */
    kn_tensor cos_t, sin_t;
    KN_TRY(kn_arena_tensor(a, &cos_t, KN_F32, 2, (int64_t[]){L, P}, e));
    KN_TRY(kn_arena_tensor(a, &sin_t, KN_F32, 2, (int64_t[]){L, P}, e));
    double *pos = kn_arena_alloc(a, (size_t)L * 3 * sizeof(double), e);
    if (!pos) return e->code;
    int64_t txt_start = g.hl / 2 > g.wl / 2 ? g.hl / 2 : g.wl / 2;
    for (int64_t j = 0; j < Lt; j++) pos[3 * j] = pos[3 * j + 1] = pos[3 * j + 2] = (double)(txt_start + j);
    int64_t t = Lt;
    for (int r = -1; r < in->n_refs; r++) {
        grid gr = grid_of(r < 0 ? in->x : in->refs[r], p);
        for (int64_t i = 0; i < gr.hl; i++)
            for (int64_t jj = 0; jj < gr.wl; jj++, t++) {
                pos[3 * t] = (double)(r + 1);
                pos[3 * t + 1] = (double)(i - gr.hl / 2);
                pos[3 * t + 2] = (double)(jj - gr.wl / 2);
            }
    }
    KN_TRY(kn_rope_tables(ctx, &cos_t, &sin_t, pos, 3, c->family.axes_dims, c->family.rope_theta));

    /* text padding: ComfyUI turns an integer mask into (m - 1) * FLT_MAX on text keys */
    kn_tensor mask_t, *key_mask = NULL;
    if (in->context_mask) {
        KN_TRY(kn_arena_tensor(a, &mask_t, KN_F32, 2, (int64_t[]){B, L}, e));
        float *md = mask_t.data;
        float *mv = kn_arena_alloc(a, (size_t)(B * Lt) * sizeof(float), e);
        if (!mv) return e->code;
        kn_to_f32(mv, in->context_mask->data, in->context_mask->dtype, (size_t)(B * Lt), 1.0f);
        int is_float = kn_dtype_is_float(in->context_mask->dtype);
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < L; j++)
                md[b * L + j] = j >= Lt ? 0.0f : is_float ? mv[b * Lt + j] : (mv[b * Lt + j] - 1.0f) * FLT_MAX;
        key_mask = &mask_t;
    }

    kn_tensor tokens, img, txt_n, txt, tvec, temb, tvec0;
    KN_TRY(kn_arena_tensor(a, &tokens, KN_F32, 3, (int64_t[]){B, Ni, c->in_channels}, e));
    patchify(tokens.data, Ni, 0, in->x, p);
    for (int r = 0, t0 = (int)n_main; r < in->n_refs; r++) {
        grid gr = grid_of(in->refs[r], p);
        patchify(tokens.data, Ni, t0, in->refs[r], p);
        t0 += (int)(gr.hl * gr.wl);
    }
    KN_TRY(kn_arena_tensor(a, &img, KN_F32, 3, (int64_t[]){B, Ni, D}, e));
    KN_TRY(linear(ctx, m, &img, &tokens, &m->img_in_w, &m->img_in_b));
    KN_TRY(kn_arena_tensor(a, &txt_n, KN_F32, 3, (int64_t[]){B, Lt, c->joint_dim}, e));
    KN_TRY(kn_arena_tensor(a, &txt, KN_F32, 3, (int64_t[]){B, Lt, D}, e));
    KN_TRY(kn_rmsnorm(ctx, &txt_n, in->context, &m->txt_norm, TXT_NORM_EPS));
    KN_TRY(linear(ctx, m, &txt, &txt_n, &m->txt_in_w, &m->txt_in_b));
    KN_TRY(kn_arena_tensor(a, &tvec, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_arena_tensor(a, &temb, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(time_vector(ctx, m, in->sigma->data, 0, &tvec, &temb));
    const kn_tensor *tv0 = NULL;
    if (in->n_refs > 0 && in->ref_method == KN_QWEN_REF_INDEX_TIMESTEP_ZERO) {
        KN_TRY(kn_arena_tensor(a, &tvec0, KN_F32, 2, (int64_t[]){B, D}, e));
        KN_TRY(time_vector(ctx, m, in->sigma->data, 1, &tvec0, NULL));
        tv0 = &tvec0;
    }
    if (debug) {
        KN_TRY(debug(user, "rope_cos", &cos_t));
        KN_TRY(debug(user, "rope_sin", &sin_t));
        KN_TRY(debug(user, "img_in", &img));
        KN_TRY(debug(user, "txt_in", &txt));
        KN_TRY(debug(user, "temb", &temb));
    }
    for (int64_t l = 0; l < c->layers; l++) {
        KN_TRY(kn_qwen_dit_block_forward(ctx, m, l, &img, &txt, &tvec, tv0, n_main, &cos_t, &sin_t, key_mask));
        if (debug) {
            char name[64];
            snprintf(name, sizeof name, "block%lld_txt", (long long)l);
            KN_TRY(debug(user, name, &txt));
            snprintf(name, sizeof name, "block%lld_img", (long long)l);
            KN_TRY(debug(user, name, &img));
        }
    }
    /* norm_out: LN(img) * (1 + scale) + shift with (scale, shift) = Linear(silu(temb)) */
    kn_tensor emb, scale, shift, proj;
    KN_TRY(kn_arena_tensor(a, &emb, KN_F32, 2, (int64_t[]){B, 2 * D}, e));
    KN_TRY(linear(ctx, m, &emb, &tvec, &m->norm_out_w, &m->norm_out_b));
    KN_TRY(kn_tensor_slice(&scale, &emb, 1, 0, D, e));
    KN_TRY(kn_tensor_slice(&shift, &emb, 1, D, D, e));
    KN_TRY(kn_layernorm(ctx, &img, &img, NULL, NULL, LN_EPS));
    KN_TRY(kn_modulate(ctx, &img, &img, &shift, &scale));
    if (debug) KN_TRY(debug(user, "norm_out", &img));
    KN_TRY(kn_arena_tensor(a, &proj, KN_F32, 3, (int64_t[]){B, Ni, m->proj_out_w.ne[0]}, e));
    KN_TRY(linear(ctx, m, &proj, &img, &m->proj_out_w, &m->proj_out_b));
    unpatchify(out, proj.data, Ni, p);
    return KN_OK;
}

int kn_qwen_dit_forward(kn_ctx *ctx, const kn_qwen_dit *m, const kn_qwen_dit_input *in, kn_tensor *out,
                        kn_debug_fn debug, void *debug_user) {
    KN_TRY(check_inputs(ctx, m, in, out));
    size_t mark = kn_arena_mark(ctx->scratch);
    int rc = forward(ctx, m, in, out, debug, debug_user);
    kn_arena_reset(ctx->scratch, mark);
    return rc;
}
