/* Z-Image DiT: see dit.h for the math and conventions. */
#include "pipelines/z_image/dit.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipelines/common/dit_blocks.h"

static const kn_dit_consts zimage_consts = {{32, 48, 48}, 256.0, 2};

#define NORM_EPS 1e-5f     /* the blocks' and the caption embedder's RMSNorms */
#define QK_NORM_EPS FLT_EPSILON /* torch.nn.RMSNorm(eps=None) on float32 activations */
#define FINAL_LN_EPS 1e-6f
#define PAD_MULTIPLE 32    /* caption and image tokens are padded to a multiple of this */
#define TIME_SCALE 1000.0
#define TIME_MAX_PERIOD 10000.0

/* ---- loading ------------------------------------------------------------ */

enum { S_D, S_3D, S_4D, S_HD, S_F, S_CAP, S_T, S_TH, S_TS, S_IN, S_OUT, N_SIZES };

#define BLIN(field, key, r, c, fl) KN_WSPEC_LIN(kn_zimage_block, field, key, r, c, fl)
#define BVEC(field, key, d) KN_WSPEC_T1(kn_zimage_block, field, key, d, 0)
static const kn_weight_spec block_specs[] = {
    BLIN(attn.qkv, "attention.qkv", S_3D, S_D, KN_W_NO_BIAS),
    BLIN(attn.out, "attention.out", S_D, S_D, KN_W_NO_BIAS),
    BVEC(attn.norm_q, "attention.q_norm.weight", S_HD),
    BVEC(attn.norm_k, "attention.k_norm.weight", S_HD),
    BVEC(attn_norm1, "attention_norm1.weight", S_D),
    BVEC(attn_norm2, "attention_norm2.weight", S_D),
    BVEC(ffn_norm1, "ffn_norm1.weight", S_D),
    BVEC(ffn_norm2, "ffn_norm2.weight", S_D),
    BLIN(ffn.gate, "feed_forward.w1", S_F, S_D, KN_W_NO_BIAS),
    BLIN(ffn.down, "feed_forward.w2", S_D, S_F, KN_W_NO_BIAS),
    BLIN(ffn.up, "feed_forward.w3", S_F, S_D, KN_W_NO_BIAS),
};
/* the context refiner's blocks are not modulated */
static const kn_weight_spec mod_spec = BLIN(mod, "adaLN_modulation.0", S_4D, S_T, 0);

#define MLIN(field, key, r, c) KN_WSPEC_LIN(kn_zimage_dit, field, key, r, c, 0)
static const kn_weight_spec model_specs[] = {
    MLIN(x_embed, "x_embedder", S_D, S_IN),
    KN_WSPEC_T1(kn_zimage_dit, cap_norm, "cap_embedder.0.weight", S_CAP, 0),
    MLIN(cap_embed, "cap_embedder.1", S_D, S_CAP),
    MLIN(t_lin1, "t_embedder.mlp.0", S_TH, S_TS),
    MLIN(t_lin2, "t_embedder.mlp.2", S_T, S_TH),
    MLIN(final_mod, "final_layer.adaLN_modulation.1", S_D, S_T),
    MLIN(final_linear, "final_layer.linear", S_OUT, S_D),
};

#define N_SPECS(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int derive_config(kn_zimage_dit *m, const kn_st_file *f, const char *prefix, int64_t *sizes, kn_err *err) {
    kn_zimage_config *c = &m->cfg;
    int64_t t_hidden, t_sin, out_rows;
    KN_TRY(kn_weights_dim(f, prefix, "x_embedder.weight", 0, &c->dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "x_embedder.weight", 1, &c->in_channels, err));
    KN_TRY(kn_weights_dim(f, prefix, "cap_embedder.1.weight", 1, &c->cap_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "layers.0.attention.q_norm.weight", 0, &c->head_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "layers.0.feed_forward.w1.weight", 0, &c->ffn_hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "t_embedder.mlp.2.weight", 0, &c->t_dim, err));
    KN_TRY(kn_weights_dim(f, prefix, "t_embedder.mlp.0.weight", 0, &t_hidden, err));
    KN_TRY(kn_weights_dim(f, prefix, "t_embedder.mlp.0.weight", 1, &t_sin, err));
    KN_TRY(kn_weights_dim(f, prefix, "final_layer.linear.weight", 0, &out_rows, err));
    KN_TRY(kn_weights_count(f, prefix, "layers.", &c->layers, err));
    KN_TRY(kn_weights_count(f, prefix, "noise_refiner.", &c->noise_refiners, err));
    KN_TRY(kn_weights_count(f, prefix, "context_refiner.", &c->context_refiners, err));
    const kn_dit_consts *k = &c->consts;
    int64_t p2 = (int64_t)k->patch * k->patch;
    if (k->patch < 1 || c->head_dim <= 0 || c->dim % c->head_dim || out_rows % p2 || c->in_channels % p2 ||
        t_sin % 2 || k->axes_dims[0] + k->axes_dims[1] + k->axes_dims[2] != c->head_dim)
        return kn_fail(err, KN_ERR_SHAPE,
                       "%s: inconsistent Z-Image DiT: dim %lld, head_dim %lld, RoPE axes %d+%d+%d, final layer %lld",
                       kn_st_path(f), (long long)c->dim, (long long)c->head_dim, k->axes_dims[0], k->axes_dims[1],
                       k->axes_dims[2], (long long)out_rows);
    c->heads = c->dim / c->head_dim;
    c->out_channels = out_rows / p2;
    const int64_t s[N_SIZES] = {[S_D] = c->dim,       [S_3D] = 3 * c->dim,   [S_4D] = 4 * c->dim,
                                [S_HD] = c->head_dim, [S_F] = c->ffn_hidden, [S_CAP] = c->cap_dim,
                                [S_T] = c->t_dim,     [S_TH] = t_hidden,     [S_TS] = t_sin,
                                [S_IN] = c->in_channels, [S_OUT] = out_rows};
    memcpy(sizes, s, sizeof s);
    return KN_OK;
}

/* A pad token: [1, D] in ComfyUI and diffusers files, [D] in some conversions. */
static int bind_pad(const kn_st_file *f, const char *prefix, const char *key, int64_t D, kn_tensor *t, kn_err *err) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    KN_TRY(kn_st_get(f, name, t, err));
    if (!kn_dtype_is_float(t->dtype) || kn_tensor_numel(t) != D || !kn_tensor_is_contiguous(t))
        return kn_fail(err, KN_ERR_SHAPE, "%s: %s must hold %lld float values", kn_st_path(f), name, (long long)D);
    return kn_tensor_reshape(t, t, 2, (int64_t[]){1, D}, err);
}

static int bind_blocks(kn_weight_binder *b, kn_zimage_block **out, int64_t n, const char *stem, int modulated) {
    if (!(*out = calloc((size_t)(n ? n : 1), sizeof **out))) return kn_fail(b->err, KN_ERR_NOMEM, "zimage_dit: out of memory");
    for (int64_t l = 0; l < n; l++) {
        char sub[64];
        snprintf(sub, sizeof sub, "%s%lld.", stem, (long long)l);
        KN_TRY(kn_weights_bind(b, &(*out)[l], sub, block_specs, N_SPECS(block_specs)));
        if (modulated) KN_TRY(kn_weights_bind(b, &(*out)[l], sub, &mod_spec, 1));
    }
    return KN_OK;
}

static int load(kn_zimage_dit *m, const kn_st_file *f, const char *prefix, kn_err *err) {
    int64_t sizes[N_SIZES];
    KN_TRY(derive_config(m, f, prefix, sizes, err));
    kn_weight_binder b = {f, prefix, sizes, "zimage_dit", &m->weights, err};
    KN_TRY(kn_weights_bind(&b, m, "", model_specs, N_SPECS(model_specs)));
    KN_TRY(bind_pad(f, prefix, "x_pad_token", m->cfg.dim, &m->x_pad, err));
    KN_TRY(bind_pad(f, prefix, "cap_pad_token", m->cfg.dim, &m->cap_pad, err));
    KN_TRY(bind_blocks(&b, &m->layer, m->cfg.layers, "layers.", 1));
    KN_TRY(bind_blocks(&b, &m->noise_refiner, m->cfg.noise_refiners, "noise_refiner.", 1));
    return bind_blocks(&b, &m->context_refiner, m->cfg.context_refiners, "context_refiner.", 0);
}

static void zimage_free(kn_zimage_dit *m) {
    free(m->layer);
    free(m->noise_refiner);
    free(m->context_refiner);
    kn_weight_table_free(&m->weights);
    free(m);
}

/* ---- block -------------------------------------------------------------- */

/* x [B, L, D] through one block; t_emb NULL for the unmodulated context
 * refiner; args: the rows' RoPE tables and (sequence parallel) streams. */
static int block(kn_ctx *ctx, const kn_zimage_dit *m, const kn_zimage_block *w, kn_tensor *x, const kn_tensor *t_emb,
                 const kn_attn_args *args) {
    const kn_zimage_config *c = &m->cfg;
    const kn_weight_table *tab = &m->weights;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int64_t B = x->ne[0], D = c->dim;
    const kn_attn_shape shape = {c->heads, c->heads, c->head_dim, QK_NORM_EPS};
    kn_tensor h, q, k, v, o, n, mod, gates;
    kn_tensor *bufs[] = {&h, &q, &k, &v, &o, &n};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) KN_TRY(kn_arena_tensor(a, bufs[i], KN_F32, 3, x->ne, e));
    /* (scale_msa, gate_msa, scale_mlp, gate_mlp); the gates through tanh */
    kn_mod scales = {&mod, NULL, 0}, tanh_gates = {&gates, NULL, 0};
    if (t_emb) {
        KN_TRY(kn_arena_tensor(a, &mod, KN_F32, 2, (int64_t[]){B, 4 * D}, e));
        KN_TRY(kn_arena_tensor(a, &gates, KN_F32, 2, (int64_t[]){B, 4 * D}, e));
        KN_TRY(kn_lin_forward(ctx, tab, &mod, t_emb, &w->mod));
        KN_TRY(kn_activation(ctx, &gates, &mod, KN_ACT_TANH));
    }
    KN_TRY(kn_rmsnorm(ctx, &h, x, &w->attn_norm1, NORM_EPS));
    if (t_emb) KN_TRY(kn_mod_modulate(ctx, &h, &scales, -1, 0));
    KN_TRY(kn_attn_project(ctx, tab, &w->attn, &shape, &h, &q, &k, &v));
    KN_TRY(kn_attn_joint(ctx, &shape, &q, &k, &v, &o, args));
    KN_TRY(kn_attn_output(ctx, tab, &w->attn, &o, 0, &h));
    KN_TRY(kn_rmsnorm(ctx, &n, &h, &w->attn_norm2, NORM_EPS));
    KN_TRY(t_emb ? kn_mod_gate(ctx, x, &n, &tanh_gates, 1) : kn_binary(ctx, x, x, &n, KN_ADD));
    KN_TRY(kn_rmsnorm(ctx, &h, x, &w->ffn_norm1, NORM_EPS));
    if (t_emb) KN_TRY(kn_mod_modulate(ctx, &h, &scales, -1, 2));
    KN_TRY(kn_mlp_forward(ctx, tab, &w->ffn, KN_ACT_SILU, &h, &o));
    KN_TRY(kn_rmsnorm(ctx, &n, &o, &w->ffn_norm2, NORM_EPS));
    return t_emb ? kn_mod_gate(ctx, x, &n, &tanh_gates, 3) : kn_binary(ctx, x, x, &n, KN_ADD);
}

/* args.cos/sin: the rows' RoPE tables; seq: their streams (sequence parallel). */
static int blocks(kn_ctx *ctx, const kn_zimage_dit *m, const kn_zimage_block *w, int64_t n, kn_tensor *x,
                  const kn_tensor *t_emb, const kn_tensor *cos, const kn_tensor *sin, const kn_sp *sp,
                  const kn_sp_seq *seq, const char *name, kn_debug_fn debug, void *user) {
    const kn_attn_args args = {.cos = cos, .sin = sin, .rope = KN_ROPE_INTERLEAVED, .sp = sp, .seq = seq};
    for (int64_t l = 0; l < n; l++) {
        size_t mark = kn_arena_mark(ctx->scratch);
        int rc = block(ctx, m, &w[l], x, t_emb, &args);
        kn_arena_reset(ctx->scratch, mark);
        KN_TRY(rc);
        if (debug) {
            char full[64];
            snprintf(full, sizeof full, "%s%lld", name, (long long)l);
            KN_TRY(debug(user, full, x));
        }
    }
    return KN_OK;
}

/* ---- model-level layout ------------------------------------------------- */

static int64_t padded(int64_t n) { return (n + PAD_MULTIPLE - 1) / PAD_MULTIPLE * PAD_MULTIPLE; }

/* dst [B, Lp, D] = src [B, L, D] followed by copies of the pad row [1, D]. */
static int pad_rows(kn_ctx *ctx, kn_tensor *dst, const kn_tensor *src, const kn_tensor *pad_row) {
    int64_t B = dst->ne[0], L = src->ne[1], Lp = dst->ne[1], D = dst->ne[2];
    kn_tensor part, row;
    KN_TRY(kn_tensor_slice(&part, dst, 1, 0, L, &ctx->err));
    KN_TRY(kn_tensor_copy(&part, src, &ctx->err));
    if (Lp == L) return KN_OK;
    KN_TRY(kn_arena_tensor(ctx->scratch, &row, KN_F32, 2, (int64_t[]){1, D}, &ctx->err));
    KN_TRY(kn_tensor_copy(&row, pad_row, &ctx->err));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = L; t < Lp; t++) memcpy((float *)dst->data + (b * Lp + t) * D, row.data, (size_t)D * sizeof(float));
    return KN_OK;
}

/* RoPE ids: caption (1 + j, 0, 0); image (Lcp + 1, row, col) from 0; image pads (0, 0, 0). */
static int rope_tables(kn_ctx *ctx, const kn_zimage_dit *m, kn_dit_grid g, int64_t Lcp, int64_t Nip, kn_tensor *cos_t,
                       kn_tensor *sin_t) {
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int64_t L = Lcp + Nip;
    KN_TRY(kn_arena_tensor(a, cos_t, KN_F32, 2, (int64_t[]){L, m->cfg.head_dim / 2}, e));
    KN_TRY(kn_arena_tensor(a, sin_t, KN_F32, 2, (int64_t[]){L, m->cfg.head_dim / 2}, e));
    double *pos = kn_arena_alloc(a, (size_t)L * 3 * sizeof(double), e);
    if (!pos) return e->code;
    memset(pos, 0, (size_t)L * 3 * sizeof(double));
    for (int64_t j = 0; j < Lcp; j++) pos[3 * j] = (double)(1 + j);
    kn_dit_grid_ids(pos + 3 * Lcp, g.hl, g.wl, (double)(Lcp + 1), 0.0, 0.0);
    return kn_rope_tables(ctx, cos_t, sin_t, pos, 3, m->cfg.consts.axes_dims, m->cfg.consts.rope_theta);
}

/* One forward of samples that share their caption length. Under sequence
 * parallelism each rank runs the blocks on its rows of the (model-padded)
 * caption and image tokens, laid out [cap; img] like the whole sequence;
 * the output tokens are gathered before unpatchify. */
static int forward_batch(kn_ctx *ctx, const kn_zimage_dit *m, const kn_tensor *x, const kn_tensor *sigma,
                         const kn_tensor *context, const kn_sp *sp, kn_tensor *out, kn_debug_fn debug, void *user) {
    const kn_zimage_config *c = &m->cfg;
    const kn_weight_table *tab = &m->weights;
    kn_arena *a = ctx->scratch;
    kn_err *e = &ctx->err;
    int p = c->consts.patch;
    int64_t B = x->ne[0], D = c->dim, Lc = context->ne[1], Lcp = padded(Lc);
    kn_dit_grid g = kn_dit_grid_of(x, p);
    int64_t Ni = g.hl * g.wl, Nip = padded(Ni);
    const kn_sp_seq seq = {2, {Lcp, Nip}}, seq_c = {1, {Lcp}}, seq_i = {1, {Nip}};
    int64_t Lcl = kn_sp_local(sp, Lcp), Nil = kn_sp_local(sp, Nip), L = Lcl + Nil;
    kn_tensor cos_f, sin_f, cos_t, sin_t, t_emb, cn, ce, cap_f, cap, tokens, xe, img_f, img, joint, part;
    KN_TRY(rope_tables(ctx, m, g, Lcp, Nip, &cos_f, &sin_f));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &cos_f, 0, &cos_t));
    KN_TRY(kn_sp_shard(ctx, sp, &seq, &sin_f, 0, &sin_t));
    /* the model's time runs the other way: t = 1 - sigma */
    float *t = kn_arena_alloc(a, (size_t)B * sizeof(float), e);
    if (!t) return e->code;
    for (int64_t b = 0; b < B; b++) t[b] = 1.0f - ((const float *)sigma->data)[b];
    KN_TRY(kn_arena_tensor(a, &t_emb, KN_F32, 2, (int64_t[]){B, c->t_dim}, e));
    KN_TRY(kn_dit_time_embed(ctx, tab, &m->t_lin1, &m->t_lin2, t, TIME_SCALE, TIME_MAX_PERIOD, &t_emb));

    /* both embeddings run on every token (cheap: narrow inputs), then each rank keeps its rows */
    KN_TRY(kn_arena_tensor(a, &cn, KN_F32, 3, context->ne, e));
    KN_TRY(kn_arena_tensor(a, &ce, KN_F32, 3, (int64_t[]){B, Lc, D}, e));
    KN_TRY(kn_arena_tensor(a, &cap_f, KN_F32, 3, (int64_t[]){B, Lcp, D}, e));
    KN_TRY(kn_rmsnorm(ctx, &cn, context, &m->cap_norm, NORM_EPS));
    KN_TRY(kn_lin_forward(ctx, tab, &ce, &cn, &m->cap_embed));
    KN_TRY(pad_rows(ctx, &cap_f, &ce, &m->cap_pad));

    KN_TRY(kn_arena_tensor(a, &tokens, KN_F32, 3, (int64_t[]){B, Ni, c->in_channels}, e));
    KN_TRY(kn_arena_tensor(a, &xe, KN_F32, 3, (int64_t[]){B, Ni, D}, e));
    KN_TRY(kn_arena_tensor(a, &img_f, KN_F32, 3, (int64_t[]){B, Nip, D}, e));
    KN_TRY(kn_dit_patchify(ctx, &tokens, x, NULL, 0, p, KN_PATCH_PY_PX_C));
    KN_TRY(kn_lin_forward(ctx, tab, &xe, &tokens, &m->x_embed));
    KN_TRY(pad_rows(ctx, &img_f, &xe, &m->x_pad));
    if (debug) {
        KN_TRY(debug(user, "t_emb", &t_emb));
        KN_TRY(debug(user, "cap_embed", &ce));
        KN_TRY(debug(user, "x_embed", &xe));
    }
    KN_TRY(kn_sp_shard(ctx, sp, &seq_c, &cap_f, 1, &cap));
    KN_TRY(kn_sp_shard(ctx, sp, &seq_i, &img_f, 1, &img));

    /* the refiners see their own tokens with their rows of the joint RoPE tables */
    kn_tensor cos_c, sin_c, cos_i, sin_i;
    KN_TRY(kn_tensor_slice(&cos_c, &cos_t, 0, 0, Lcl, e));
    KN_TRY(kn_tensor_slice(&sin_c, &sin_t, 0, 0, Lcl, e));
    KN_TRY(kn_tensor_slice(&cos_i, &cos_t, 0, Lcl, Nil, e));
    KN_TRY(kn_tensor_slice(&sin_i, &sin_t, 0, Lcl, Nil, e));
    KN_TRY(blocks(ctx, m, m->context_refiner, c->context_refiners, &cap, NULL, &cos_c, &sin_c, sp, &seq_c,
                  "context_refiner", debug, user));
    KN_TRY(blocks(ctx, m, m->noise_refiner, c->noise_refiners, &img, &t_emb, &cos_i, &sin_i, sp, &seq_i,
                  "noise_refiner", debug, user));
    KN_TRY(kn_arena_tensor(a, &joint, KN_F32, 3, (int64_t[]){B, L, D}, e));
    KN_TRY(kn_tensor_slice(&part, &joint, 1, 0, Lcl, e));
    KN_TRY(kn_tensor_copy(&part, &cap, e));
    KN_TRY(kn_tensor_slice(&part, &joint, 1, Lcl, Nil, e));
    KN_TRY(kn_tensor_copy(&part, &img, e));
    KN_TRY(blocks(ctx, m, m->layer, c->layers, &joint, &t_emb, &cos_t, &sin_t, sp, &seq, "layer", debug, user));

    /* final layer: LN(x) * (1 + scale), scale = linear(silu(t_emb)); then linear, image rows, negated */
    int64_t F = m->final_linear.w.ne[0];
    kn_tensor st, scale, proj, proj_i;
    KN_TRY(kn_arena_tensor(a, &st, KN_F32, 2, (int64_t[]){B, c->t_dim}, e));
    KN_TRY(kn_arena_tensor(a, &scale, KN_F32, 2, (int64_t[]){B, D}, e));
    KN_TRY(kn_activation(ctx, &st, &t_emb, KN_ACT_SILU));
    KN_TRY(kn_lin_forward(ctx, tab, &scale, &st, &m->final_mod));
    KN_TRY(kn_layernorm(ctx, &joint, &joint, NULL, NULL, FINAL_LN_EPS));
    KN_TRY(kn_mod_modulate(ctx, &joint, &(kn_mod){&scale, NULL, 0}, -1, 0));
    KN_TRY(kn_arena_tensor(a, &proj, KN_F32, 3, (int64_t[]){B, L, F}, e));
    KN_TRY(kn_lin_forward(ctx, tab, &proj, &joint, &m->final_linear));
    if (debug) KN_TRY(debug(user, "final_layer", &proj));
    KN_TRY(kn_tensor_slice(&part, &proj, 1, Lcl, Nil, e));
    KN_TRY(kn_arena_tensor(a, &proj_i, KN_F32, 3, (int64_t[]){B, Nil, F}, e));
    KN_TRY(kn_tensor_copy(&proj_i, &part, e));
    KN_TRY(kn_dit_unpatchify(ctx, out, &proj_i, sp, Nip, p, KN_PATCH_PY_PX_C));
    return kn_affine(ctx, out, out, -1.0f, 0.0f);
}

static int check_inputs(kn_ctx *ctx, const kn_zimage_dit *m, const kn_dit_input *in, const kn_tensor *out) {
    const kn_zimage_config *c = &m->cfg;
    kn_err *e = &ctx->err;
    int p = c->consts.patch;
    const kn_tensor *x = in->x;
    KN_TRY(kn_tensor_expect(x, "zimage_dit input latent", 4, (int64_t[]){-1, c->in_channels / (p * p), -1, -1}, e));
    int64_t B = x->ne[0];
    KN_TRY(kn_tensor_expect(in->timestep, "zimage_dit timestep", 1, (int64_t[]){B}, e));
    KN_TRY(kn_tensor_expect(in->context, "zimage_dit context", 3, (int64_t[]){B, -1, c->cap_dim}, e));
    if (in->context_mask)
        KN_TRY(kn_tensor_expect(in->context_mask, "zimage_dit context mask", 2, (int64_t[]){B, in->context->ne[1]}, e));
    KN_TRY(kn_tensor_expect(out, "zimage_dit output", 4, (int64_t[]){B, c->out_channels, x->ne[2], x->ne[3]}, e));
    if (x->ne[2] < 1 || x->ne[3] < 1 || in->context->ne[1] < 1)
        return kn_fail(e, KN_ERR_SHAPE, "zimage_dit: empty latent or context");
    if (in->n_refs) return kn_fail(e, KN_ERR_UNSUPPORTED, "zimage_dit: Z-Image takes no reference latents");
    const kn_tensor *all[] = {x, in->timestep, in->context, out, in->context_mask};
    for (size_t i = 0; i < 5; i++)
        if (all[i] && (!kn_tensor_is_contiguous(all[i]) || all[i]->device != KN_DEV_CPU || (i < 4 && all[i]->dtype != KN_F32)))
            return kn_fail(e, KN_ERR_SHAPE, "zimage_dit: inputs and output must be contiguous F32 on the CPU");
    return KN_OK;
}

/* Samples whose captions differ in length (a mask with padding) run one by one,
 * each on its own caption: ComfyUI never batches conditionings of different
 * lengths, and NextDiT ignores masks. */
static int forward(kn_ctx *ctx, const kn_dit *d, const kn_dit_input *in, kn_tensor *out, kn_debug_fn debug,
                   void *user) {
    const kn_zimage_dit *m = (const kn_zimage_dit *)d;
    KN_TRY(check_inputs(ctx, m, in, out));
    if (!in->context_mask) return forward_batch(ctx, m, in->x, in->timestep, in->context, in->sp, out, debug, user);
    int64_t B = in->x->ne[0], Lc = in->context->ne[1];
    float *mv = kn_arena_alloc(ctx->scratch, (size_t)(B * Lc) * sizeof(float), &ctx->err);
    if (!mv) return ctx->err.code;
    kn_to_f32(mv, in->context_mask->data, in->context_mask->dtype, (size_t)(B * Lc), 1.0f);
    for (int64_t b = 0; b < B; b++) {
        int64_t n = 0;
        while (n < Lc && mv[b * Lc + n] == 1.0f) n++;
        if (n == 0) return kn_fail(&ctx->err, KN_ERR_SHAPE, "zimage_dit: sample %lld has an empty caption", (long long)b);
        kn_tensor xb, tb, row, cb, ob;
        KN_TRY(kn_tensor_slice(&xb, in->x, 0, b, 1, &ctx->err));
        KN_TRY(kn_tensor_slice(&tb, in->timestep, 0, b, 1, &ctx->err));
        KN_TRY(kn_tensor_slice(&row, in->context, 0, b, 1, &ctx->err));
        KN_TRY(kn_tensor_slice(&cb, &row, 1, 0, n, &ctx->err));
        KN_TRY(kn_tensor_slice(&ob, out, 0, b, 1, &ctx->err));
        size_t mark = kn_arena_mark(ctx->scratch);
        int rc = forward_batch(ctx, m, &xb, &tb, &cb, in->sp, &ob, debug, user);
        kn_arena_reset(ctx->scratch, mark);
        KN_TRY(rc);
    }
    return KN_OK;
}

/* ---- the diffusion-model family ---------------------------------------- */

static int family_load(kn_dit **out, const kn_st_file *f, const char *prefix, const kn_dit_consts *o, kn_err *err) {
    kn_zimage_dit *m = calloc(1, sizeof *m);
    if (!m) return kn_fail(err, KN_ERR_NOMEM, "zimage_dit: out of memory");
    m->cfg.consts = kn_dit_consts_with(&zimage_consts, o);
    if (load(m, f, prefix, err)) {
        zimage_free(m);
        return err->code;
    }
    m->base = (kn_dit){&kn_z_image_dit, &m->weights, m->cfg.out_channels, 0, m->cfg.cap_dim, 0, m->cfg.dim,
                       m->cfg.ffn_hidden, m->cfg.consts.patch};
    *out = &m->base;
    return KN_OK;
}

static void family_free(kn_dit *d) {
    if (d) zimage_free((kn_zimage_dit *)d);
}

/* comfy.utils.z_image_to_diffusers: diffusers module names, to_q/to_k/to_v as
 * row thirds (units of dim) of the fused attention.qkv. Every block kind gets
 * the same rows (ComfyUI gives the context refiner adaLN names too; they
 * match no tensor of it). */
#define BLOCK_ROWS(stem)                                                                                       \
    {stem ".#.attention.to_q", stem ".#.attention.qkv.weight", 0, 1, 0},                                      \
    {stem ".#.attention.to_k", stem ".#.attention.qkv.weight", 1, 1, 0},                                      \
    {stem ".#.attention.to_v", stem ".#.attention.qkv.weight", 2, 1, 0},                                      \
    {stem ".#.attention.to_out.0", stem ".#.attention.out.weight", 0, 0, 0},                                  \
    {stem ".#.attention.norm_q", stem ".#.attention.q_norm.weight", 0, 0, 0},                                 \
    {stem ".#.attention.norm_k", stem ".#.attention.k_norm.weight", 0, 0, 0},                                 \
    {stem ".#.attention_norm1", stem ".#.attention_norm1.weight", 0, 0, 0},                                   \
    {stem ".#.attention_norm2", stem ".#.attention_norm2.weight", 0, 0, 0},                                   \
    {stem ".#.feed_forward.w1", stem ".#.feed_forward.w1.weight", 0, 0, 0},                                   \
    {stem ".#.feed_forward.w2", stem ".#.feed_forward.w2.weight", 0, 0, 0},                                   \
    {stem ".#.feed_forward.w3", stem ".#.feed_forward.w3.weight", 0, 0, 0},                                   \
    {stem ".#.ffn_norm1", stem ".#.ffn_norm1.weight", 0, 0, 0},                                               \
    {stem ".#.ffn_norm2", stem ".#.ffn_norm2.weight", 0, 0, 0},                                               \
    {stem ".#.adaLN_modulation.0", stem ".#.adaLN_modulation.0.weight", 0, 0, 0}
#define GL(d, c) {d, c ".weight", 0, 0, 0}
static const kn_key_rename diffusers_rows[] = {
    BLOCK_ROWS("layers"),
    BLOCK_ROWS("context_refiner"),
    BLOCK_ROWS("noise_refiner"),
    /* the diffusers model's per-patch-size module lists, of which Z-Image has the 2x2 ("2-1") */
    GL("all_final_layer.2-1.linear", "final_layer.linear"),
    GL("all_final_layer.2-1.adaLN_modulation.1", "final_layer.adaLN_modulation.1"), /* no swap, unlike Flux */
    GL("all_x_embedder.2-1", "x_embedder"),
    GL("cap_embedder.0", "cap_embedder.0"),
    GL("cap_embedder.1", "cap_embedder.1"),
    GL("t_embedder.mlp.0", "t_embedder.mlp.0"),
    GL("t_embedder.mlp.2", "t_embedder.mlp.2"),
};
#undef BLOCK_ROWS
#undef GL
static const kn_key_renames diffusers = {"x_embedder.weight", diffusers_rows,
                                         (int)(sizeof diffusers_rows / sizeof diffusers_rows[0])};

/* comfy.lora.model_lora_keys_unet for model_base.Lumina2: the checkpoint's own
 * names (ComfyUI-saved, kohya), then the diffusers names under diffusion_model.
 * (ai-toolkit), transformer. (diffusers/PEFT), lycoris_ (LyCORIS) and bare
 * (DiffSynth). Bare and transformer. ComfyUI names such as attention.qkv map
 * nothing, as in ComfyUI. */
static const kn_key_alias lora_keys[] = {
    {"diffusion_model.", 0, 1, NULL},      {"lora_unet_", 1, 0, NULL}, {"diffusion_model.", 0, 0, &diffusers},
    {"transformer.", 0, 0, &diffusers}, {"lycoris_", 1, 0, &diffusers}, {"", 0, 0, &diffusers},
};
/* meta.json of the LoRA fixtures spells the family "zimage" */
static const char *const aliases[] = {"zimage", NULL};

/* ComfyUI supported_models.ZImage: Flux latents, ModelSamplingDiscreteFlow shift 3 */
const kn_dit_family kn_z_image_dit = {
    "z_image", "Z-Image", family_load, family_free, forward, &kn_latent_flux, 4, KN_MS_DISCRETE_FLOW, 3.0, 1.0,
    lora_keys, (int)(sizeof lora_keys / sizeof lora_keys[0]), NULL, 0, "z_image", aliases,
};
